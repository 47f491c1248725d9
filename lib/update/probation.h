/*
 * probation.h - whether a newly activated version does as well in the field
 * as the one it replaced: running statistics of one version's requests
 * (error rate, fallback rate, latency p95, mean confidence), the health
 * rules that judge them (a package's `health` section, or the device's
 * probation settings), and the decision: keep watching, pass (promote to
 * known-good) or breach (roll back, with a reason naming the metric and
 * both numbers).
 *
 * Pure logic: no threads, no files, no runtime. The runtime feeds requests
 * in (lib/runtime/probation.c), persists the statistics with
 * keel__probation_stats_json / _parse, and acts on the decision.
 *
 * The rule (docs/update.md, "Probation"):
 *   - A version is judged against every reference it has: the absolute
 *     limits of its health section (max_error_rate, max_fallback_rate,
 *     max_p95_ms, min_mean_confidence), the previous version's statistics
 *     collected while it served (when they hold at least min_requests
 *     requests), and the package's `baseline` section (the publisher's
 *     measured figures). Rates are compared additively (new <= reference +
 *     tolerance), p95 by ratio (new <= reference * p95_ratio + p95_slack_ms),
 *     mean confidence additively (new >= reference - tolerance).
 *   - Nothing is decided before min_requests requests.
 *   - Inside the window a breach is declared early only when it is
 *     statistically clear: the 95 % Wilson lower bound of a rate (errors,
 *     fallbacks, requests slower than the p95 limit) above its limit, or the
 *     upper bound of the mean confidence below its limit.
 *   - When the window closes (requests reached, or time elapsed), the point
 *     estimates decide: any limit exceeded is a breach, else a pass.
 *
 * Thread safety: none; the caller serialises access to one stats value.
 */
#ifndef KEEL_UPDATE_PROBATION_H
#define KEEL_UPDATE_PROBATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* Latency histogram: 8 buckets per power of two of microseconds (about 9 %
 * wide), from 1 us to 2^32 us (71 minutes); a p95 is exact to a bucket. */
#define KEEL__PROBATION_SUB     8
#define KEEL__PROBATION_BUCKETS (32 * KEEL__PROBATION_SUB + 1)

/* Defaults when a health section or a setting does not say. */
#define KEEL__PROBATION_MIN_REQUESTS 30
#define KEEL__PROBATION_TOL_ERROR    0.02
#define KEEL__PROBATION_TOL_FALLBACK 0.05
#define KEEL__PROBATION_TOL_CONF     0.05
#define KEEL__PROBATION_P95_RATIO    1.5
#define KEEL__PROBATION_P95_SLACK_MS 2.0

/* One version's requests while it served. */
typedef struct keel__probation_stats {
    uint64_t requests;  /* outcomes seen */
    uint64_t errors;    /* every tier failed */
    uint64_t fallbacks; /* answered by a tier other than the first */
    uint64_t scored;    /* answers that carried a confidence */
    double conf_sum, conf_sq;
    int64_t started; /* wall-clock s the watch began (the caller sets it; else the first add) */
    uint32_t lat[KEEL__PROBATION_BUCKETS]; /* answered requests' latency */
} keel__probation_stats;

/* Figures a reference gives: the previous version's, or the baseline's.
 * Negative: not known. */
typedef struct keel__probation_figures {
    double error_rate, fallback_rate, p95_ms, mean_confidence;
} keel__probation_figures;

/* A package's health rules (its `health` section over the device's
 * settings). Limits: negative means none. */
typedef struct keel__health {
    uint64_t requests;     /* window: decide after this many requests (0: no count) */
    uint64_t seconds;      /* ... or this long after the first request (0: no time) */
    uint64_t min_requests; /* no decision on fewer */
    double max_error_rate, max_fallback_rate, max_p95_ms, min_mean_confidence;
    double tol_error, tol_fallback, p95_ratio, p95_slack_ms, tol_confidence;
    keel__probation_figures baseline; /* the manifest's `baseline` (negative: none) */
} keel__health;

typedef enum keel__probation_decision {
    KEEL__PROBATION_CONTINUE = 0,
    KEEL__PROBATION_PASS,
    KEEL__PROBATION_BREACH,
} keel__probation_decision;

/* "continue", "pass", "breach". */
const char *keel__probation_decision_name(keel__probation_decision d);

/* Defaults: the window given (requests, seconds), no absolute limits, the
 * default tolerances and minimum sample, no baseline. */
void keel__health_defaults(keel__health *h, uint64_t requests, uint64_t seconds);

/* Reads a manifest's `health` and `baseline` sections (manifest: keel.json's
 * bytes, len; no terminator needed) over *h. *ret_has_health: the manifest
 * has a `health` section. Errors name the field ("keel.json: health.
 * tolerance.error_rate: expected a number from 0 to 1"); unknown fields of
 * `health` are refused (a misspelt limit must not pass as no limit). *h is
 * written only on success. A health section without a window
 * (`probation.requests` or `.minutes`) keeps the window *h had. */
KEEL_WUR int keel__health_from_manifest(const void *manifest, size_t len, keel__health *h,
                                        bool *ret_has_health, keel_error *err);

/* Whether h describes a probation at all (a window). */
bool keel__health_applies(const keel__health *h);

/* Counts one request: ok (answered) or not, degraded (a fallback tier
 * answered), its latency and its confidence (negative: none). now: wall s. */
void keel__probation_add(keel__probation_stats *s, bool ok, bool degraded, uint64_t ns,
                         double confidence, int64_t now);

/* The figures of s (negative where there is no data). */
void keel__probation_figures_of(const keel__probation_stats *s, keel__probation_figures *ret);
/* Latency p95 in ms (-1: no answered request). */
double keel__probation_p95_ms(const keel__probation_stats *s);

/* Decides. prev: the previous version's statistics (NULL: none), prev_version
 * names it in reasons. now: wall s. reason (n bytes): why, for a pass or a
 * breach ("error_rate 0.450 > 0.020 (previous version 2.0.0: 0.000 + 0.02)");
 * what is missing for a continue. */
keel__probation_decision keel__probation_decide(const keel__health *h,
                                                const keel__probation_stats *cur,
                                                const keel__probation_stats *prev,
                                                const char *prev_version, int64_t now, char *reason,
                                                size_t n);

/* The stats as a JSON object (appended to b): requests, errors, fallbacks,
 * scored, conf_sum, conf_sq, started, lat (sparse [[bucket, count], ...]). */
KEEL_WUR int keel__probation_stats_json(const keel__probation_stats *s, keel_buf *b);
/* Reads what _json wrote (a cJSON object, as const void * so that this
 * header stays free of cJSON); bounded, every field checked. */
KEEL_WUR int keel__probation_stats_parse(const void *cjson_obj, keel__probation_stats *ret,
                                         keel_error *err);

#endif
