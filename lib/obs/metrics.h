/*
 * metrics.h - the metrics registry: counter, gauge, histogram and summary
 * families (name, HELP, TYPE, label names, histogram bucket bounds), their
 * series by label values, collectors that fill values at scrape time, and
 * two renderers of the same data: Prometheus text exposition 0.0.4 and JSON.
 *
 * obs sits just above core: it includes only core headers, so every module
 * (store, infer, queue, sync, ...) may register metrics. It does not know
 * what a metric means and reads no other module's state: the module that
 * owns a number either updates a series handle on its hot path or
 * registers a collector that copies the number in when a scrape renders
 * (queue depth from keel_queue_stats_get, breaker states). It does not
 * serve HTTP: the caller hands the rendered buffer to whoever asked.
 *
 * Thread safety: every function is thread-safe. Updates through a series
 * handle (inc, set, add, observe) are lock-free atomics and never allocate;
 * finding or creating a series takes the registry's lock and may allocate,
 * so hot paths get their handles once. Renders are serialized: collectors
 * run one scrape at a time, never concurrently with each other.
 *
 * Ownership: the registry copies every string it is given (names, help,
 * label names and values, bounds). A series handle from keel__metrics_series
 * carries a reference the caller releases with keel__metric_series_unref; a
 * removed series stops being rendered at once and is freed with its last
 * reference, so a handle never dangles. Families live until
 * keel__metrics_unregister or keel__metrics_free; release every handle of a
 * family first (debug builds assert it).
 */
#ifndef KEEL_OBS_METRICS_H
#define KEEL_OBS_METRICS_H

#include "core/core.h"

#define KEEL_METRICS_MAX_LABELS   4    /* label names per family */
#define KEEL_METRICS_MAX_BUCKETS  32   /* histogram bounds, +Inf not counted */
#define KEEL_METRICS_NAME_MAX     128  /* metric and label names, bytes */
#define KEEL_METRICS_HELP_MAX     512  /* HELP text, bytes */
#define KEEL_METRICS_VALUE_MAX    256  /* one label value, bytes */
#define KEEL_METRICS_MAX_SERIES   4096 /* series per family */
#define KEEL_METRICS_MAX_FAMILIES 256  /* families per registry */

typedef enum keel__metric_type {
    KEEL_METRIC_COUNTER,
    KEEL_METRIC_GAUGE,
    KEEL_METRIC_HISTOGRAM,
    KEEL_METRIC_SUMMARY /* _sum and _count only, no quantiles */
} keel__metric_type;

typedef struct keel__metrics keel__metrics;
typedef struct keel__metric_family keel__metric_family;
typedef struct keel__metric_series keel__metric_series;

/* What a module registers. Names follow Prometheus: metric
 * [a-zA-Z_:][a-zA-Z0-9_:]*, label [a-zA-Z_][a-zA-Z0-9_]* (not "__..."; not
 * "le" on a histogram, not "quantile" on a summary). */
typedef struct keel__metric_desc {
    const char *name;
    const char *help;
    keel__metric_type type;
    size_t nlabels;
    const char *labels[KEEL_METRICS_MAX_LABELS];
    /* histogram only: finite, strictly increasing upper bounds; +Inf is implied */
    const double *bounds;
    size_t nbounds;
} keel__metric_desc;

KEEL_WUR int keel__metrics_new(keel__metrics **ret, keel_error *err);
/* Frees the registry, its families and series. NULL is fine. */
void keel__metrics_free(keel__metrics *reg);

/* Registers a family; rendered in registration order. Registering the same
 * name again with an identical description returns the existing family (a
 * module restarted, a model reloaded); a different one is KEEL_ECONFLICT.
 * *ret is valid until unregistered or the registry is freed. */
KEEL_WUR int keel__metrics_register(keel__metrics *reg, const keel__metric_desc *d,
                                    keel__metric_family **ret, keel_error *err);
/* Removes a family and its series (NULL is fine). */
void keel__metrics_unregister(keel__metrics *reg, keel__metric_family *f);

/* Finds or creates the series with these label values (the family's
 * nlabels, in the order the names were registered; NULL when it has none).
 * *ret holds a reference: release it with keel__metric_series_unref. */
KEEL_WUR int keel__metrics_series(keel__metric_family *f, const char *const *values,
                                  keel__metric_series **ret, keel_error *err);
void keel__metric_series_unref(keel__metric_series *s);

/* Hot-path updates on a handle: atomics, no lock, no allocation. A call of
 * the wrong type for the family is ignored (debug builds assert). */
void keel__metric_inc(keel__metric_series *s, uint64_t n);         /* counter */
void keel__metric_counter_set(keel__metric_series *s, uint64_t v); /* counter owned elsewhere */
void keel__metric_gauge_set(keel__metric_series *s, double v);     /* gauge */
void keel__metric_gauge_add(keel__metric_series *s, double v);     /* gauge */
void keel__metric_observe(keel__metric_series *s, double v);       /* histogram, summary */
/* summary owned elsewhere: replaces _sum and _count */
void keel__metric_summary_set(keel__metric_series *s, double sum, uint64_t count);

/* For collectors: finds or creates the series and sets it (gauge: v;
 * counter: v rounded down, negative as 0), no handle kept. */
KEEL_WUR int keel__metrics_set(keel__metric_family *f, const char *const *values, double v,
                               keel_error *err);

/* Removes the series whose label `label` equals value (label NULL: every
 * series of the family), e.g. the series of a model that was unloaded.
 * Returns how many were removed. */
size_t keel__metrics_remove(keel__metric_family *f, const char *label, const char *value);
/* The same over every family that has the label. */
size_t keel__metrics_remove_all(keel__metrics *reg, const char *label, const char *value);

/* A collector runs at the start of every render, one render at a time, and
 * fills values it does not update on its own (keel__metrics_set,
 * keel__metric_*_set). It must not call a renderer or collector_add/remove. */
typedef void (*keel__metrics_collect_fn)(void *ctx);
KEEL_WUR int keel__metrics_collector_add(keel__metrics *reg, keel__metrics_collect_fn fn, void *ctx,
                                         keel_error *err);
/* After it returns, fn is not running and will not run again with ctx. */
void keel__metrics_collector_remove(keel__metrics *reg, keel__metrics_collect_fn fn, void *ctx);

/* Runs the collectors, then appends every family in Prometheus text
 * exposition format 0.0.4 (Content-Type: text/plain; version=0.0.4) to b.
 * Fails only when b cannot grow. */
KEEL_WUR int keel__metrics_prometheus(keel__metrics *reg, keel_buf *b);
/* The same data as one JSON document:
 * {"format":1,"families":[{"name","type","help","labels":[..],"series":[
 *   {"labels":{"model":"vad"},"value":3}                              counter, gauge
 *   {"labels":{..},"buckets":[{"le":0.1,"count":2},..,{"le":"+Inf","count":5}],
 *    "sum":0.3,"count":5}                                             histogram
 *   {"labels":{..},"sum":0.3,"count":5}                               summary
 * ]}]}; non-finite numbers are the strings "NaN", "+Inf", "-Inf". */
KEEL_WUR int keel__metrics_json(keel__metrics *reg, keel_buf *b);

#endif
