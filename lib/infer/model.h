/*
 * model.h - the insides of a loaded package version, shared by tier.c
 * (the chain, sessions, routing), load.c (building one from a manifest),
 * engine.c (the registry, status, metrics) and selftest.c. Nothing outside
 * lib/infer includes this.
 */
#ifndef KEEL_INFER_MODEL_H
#define KEEL_INFER_MODEL_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

#include "infer/infer.h"
#include "infer/pipeline.h"

#define KEEL__MAX_CONSTS 8
#define KEEL__NBUCKETS   15

extern const double keel__latency_bounds[KEEL__NBUCKETS];

enum { BR_CLOSED, BR_OPEN, BR_HALF_OPEN };
const char *keel__breaker_name(int state);
struct tier;
/* The breaker's state as a reader sees it (open past cool-down = half-open). */
int keel__breaker_state(const struct tier *t, uint64_t now);

typedef struct breaker {
    int state;
    unsigned consecutive; /* failures in a row */
    uint64_t window;      /* last outcomes, bit 1 = failure */
    unsigned nwindow;
    uint64_t open_until, cooldown_ns;
    unsigned trips;
    bool probing;
} breaker;

typedef struct policy {
    unsigned failures;     /* consecutive hard failures that trip (default 3) */
    double error_rate;     /* failure share over the window that trips (default 0.5) */
    unsigned window;       /* outcomes considered, <= 64 (default 20) */
    unsigned min_requests; /* before the rate counts (default 10) */
    uint64_t cooldown_ns;  /* open -> half-open (default 5 s) */
} policy;

/* Outcomes of a tier attempt, the values of keel_infer_requests_total's
 * outcome label. */
enum {
    KEEL__OUT_OK,
    KEEL__OUT_ERROR,
    KEEL__OUT_TIMEOUT,
    KEEL__OUT_SKIPPED,
    KEEL__OUT_OVERLOADED,
    KEEL__NOUTCOMES
};

typedef struct tier tier;
struct tier {
    char name[32];
    const keel__backend *be;
    char model_path[PATH_MAX];
    char model_hex[65];
    cJSON *spec;  /* owned copy of the manifest's tier object */
    cJSON *files; /* owned: the backend's files op's files, resolved (graph tiers); or NULL */
    _Atomic(void *) inst;
    char load_error[512];
    keel__tensor consts[KEEL__MAX_CONSTS]; /* names and data owned */
    size_t nconsts;
    uint64_t deadline_ns, memory_budget;
    unsigned max_inflight, inflight;
    breaker br;
    /* counters for status (model lock) */
    uint64_t ok, failed, fallbacks, transitions_in;
    /* registry series (engine.c attaches them before a served model is
     * shared; NULL without a registry and for models loaded only for a
     * self-test): keel_infer_requests_total by outcome, latency */
    keel__metric_series *m_req[KEEL__NOUTCOMES], *m_latency;
};

typedef struct session {
    char id[128];
    pthread_mutex_t mu;
    unsigned refs;
    uint64_t last_used;
    void *bs[KEEL__MAX_TIERS]; /* each tier's backend session, made on first use */
} session;

typedef struct keel__model model;
struct keel__model {
    atomic_uint refs;
    char name[KEEL_NAME_MAX], version[KEEL_VERSION_MAX], digest[72];
    keel__infer_opts eng_opts;
    keel__tensor in[KEEL__MAX_IO], out[KEEL__MAX_IO]; /* the contract; names owned */
    size_t nin, nout;
    tier tiers[KEEL__MAX_TIERS];
    size_t ntiers;
    keel__pre pre;
    keel__post post;
    policy pol;
    /* inference records ("records" in the manifest) */
    int rec_mode; /* 0 none, 1 all, 2 sampled, 3 low confidence */
    double rec_rate, rec_below;
    atomic_uint_fast64_t rec_counter;
    /* hybrid routing ("routing" in the manifest) */
    int route_mode;
    double route_below;
    uint64_t route_deadline_ms;
    cJSON *validation;       /* owned copy, or NULL */
    pthread_mutex_t mu;      /* breakers, counters, sessions */
    pthread_mutex_t load_mu; /* lazy tier (re)loads */
    session **sessions;
    size_t nsessions;
    uint64_t sessions_expired, sessions_evicted;
    int serving_tier; /* the tier that served last, -1 none yet */
    int64_t serving_since;
    uint64_t transitions, all_failed;
    /* registry series, as the tiers' */
    keel__metric_series *m_transitions, *m_all_failed;
};

/* Builds a model from a manifest; files resolved through `path_of`. */
typedef int (*keel__path_fn)(void *ctx, const char *rel, char *buf, size_t n, keel_error *err);
KEEL_WUR int keel__model_build(const char *manifest, size_t len, keel__path_fn path_of, void *ctx,
                               const keel__infer_opts *o, keel__model **ret, keel_error *err);
void keel__model_free(keel__model *m);
/* The checks keel__model_build makes of a manifest (contract, tiers and
 * backends, pre/post-processing, policy, records, routing, the files it
 * names through path_of), without loading any tier: what activation would
 * refuse in keel.json, for keel pack and keel lint (lib/infer/lint.c). */
KEEL_WUR int keel__model_check(const char *manifest, size_t len, keel__path_fn path_of, void *ctx,
                               keel_error *err);
/* Frees a client session and its backend sessions (tier.c). */
void keel__session_free(keel__model *m, session *s);
KEEL_WUR int keel__model_tier_load(keel__model *m, size_t ti, keel_error *err);
/* Why the tiers that are not loaded failed to ("primary: why; rules: why")
 * into buf; "" when none failed. Takes load_mu unless a load holds it
 * (then says so). */
void keel__model_load_errors(keel__model *m, char *buf, size_t n);

#endif
