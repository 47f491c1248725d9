/*
 * engine.c - the registry of served models: one per package name, swapped
 * in place when the store serves another version. Readers take a reference
 * under a short lock; the old model is freed by whoever drops the last one,
 * so requests in flight finish on the version they started with.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/model.h"

#define MOD       "infer"
#define NFAMILIES 8

typedef struct entry {
    char name[KEEL_NAME_MAX];
    keel__model *m;
    char error[512]; /* why the serving version could not be loaded ("" ok) */
    char failed_digest[72];
} entry;

struct keel__infer {
    keel_store *store;
    keel__infer_opts opts;
    char cache_dir[PATH_MAX];
    pthread_mutex_t mu;         /* entries */
    pthread_mutex_t refresh_mu; /* one refresh at a time */
    entry *entries;
    size_t n;
    keel__metric_family *fam[NFAMILIES]; /* NULL without opts.metrics */
};

static int metrics_register(keel__infer *e, keel_error *err);
static void metrics_unregister(keel__infer *e);
static void attach_series(keel__infer *e, keel__model *m);
static void remove_series(keel__infer *e, const char *name);
static void collect(void *ctx);

int keel__infer_new(keel_store *store, const keel__infer_opts *o, keel__infer **ret,
                    keel_error *err)
{
    keel__infer *e = calloc(1, sizeof(*e));
    if (!e)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    e->store = store;
    if (o)
        e->opts = *o;
    if (o && o->cache_dir) {
        keel__strlcpy(e->cache_dir, o->cache_dir, sizeof(e->cache_dir));
        e->opts.cache_dir = e->cache_dir;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->refresh_mu, NULL);
    int rc = e->opts.metrics ? metrics_register(e, err) : KEEL_OK;
    if (rc) {
        keel__infer_free(e);
        return rc;
    }
    *ret = e;
    return KEEL_OK;
}

keel__model *keel__infer_model_ref(keel__model *m)
{
    atomic_fetch_add(&m->refs, 1);
    return m;
}

void keel__model_unref(keel__model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        keel__model_free(m);
}

void keel__infer_free(keel__infer *e)
{
    if (!e)
        return;
    if (e->opts.metrics) /* the collector first: it reads the entries */
        keel__metrics_collector_remove(e->opts.metrics, collect, e);
    for (size_t i = 0; i < e->n; i++)
        keel__model_unref(e->entries[i].m);
    metrics_unregister(e); /* after the models: they hold series of its families */
    free(e->entries);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->refresh_mu);
    free(e);
}

struct version_ctx {
    keel_store *s;
    const char *name, *version;
};

static int version_path(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    struct version_ctx *v = ctx;
    return keel_store_version_file(v->s, v->name, v->version, rel, buf, n, err);
}

int keel__model_load(keel__infer *e, const char *name, const char *version, keel__model **ret,
                     keel_error *err)
{
    char *man = NULL;
    size_t len = 0;
    struct version_ctx v = {e->store, name, version};
    int rc = keel_store_version_manifest(e->store, name, version, &man, &len, err);
    if (!rc)
        rc = keel__model_build(man, len, version_path, &v, &e->opts, ret, err);
    free(man);
    return rc;
}

keel__model *keel__infer_get(keel__infer *e, const char *name)
{
    keel__model *m = NULL;
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->n; i++)
        if (!strcmp(e->entries[i].name, name) && (m = e->entries[i].m))
            atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&e->mu);
    return m;
}

/* Sets name's model (NULL: drop the entry unless err says why). Takes m. */
static void put(keel__infer *e, const char *name, keel__model *m, const char *why,
                const char *digest)
{
    keel__model *old = NULL;
    pthread_mutex_lock(&e->mu);
    size_t i = 0;
    while (i < e->n && strcmp(e->entries[i].name, name))
        i++;
    if (i == e->n) {
        entry *grown = realloc(e->entries, (e->n + 1) * sizeof(entry));
        if (!grown) {
            pthread_mutex_unlock(&e->mu);
            keel__model_unref(m);
            return;
        }
        e->entries = grown;
        memset(&e->entries[e->n], 0, sizeof(entry));
        keel__strlcpy(e->entries[e->n].name, name, KEEL_NAME_MAX);
        e->n++;
    }
    entry *en = &e->entries[i];
    if (m || !why) { /* the old version's series go with it; m starts at 0 */
        old = en->m;
        remove_series(e, name);
        if (m)
            attach_series(e, m);
        en->m = m;
    }
    keel__strlcpy(en->error, why ? why : "", sizeof(en->error));
    keel__strlcpy(en->failed_digest, why && digest ? digest : "", sizeof(en->failed_digest));
    if (!m && !why) { /* gone */
        e->entries[i] = e->entries[--e->n];
    }
    pthread_mutex_unlock(&e->mu);
    keel__model_unref(old);
}

int keel__infer_refresh(keel__infer *e, keel_error *err)
{
    keel_serving *sv = NULL;
    size_t n = 0;
    pthread_mutex_lock(&e->refresh_mu);
    int rc = keel_store_serving_list(e->store, &sv, &n, err);
    if (rc) {
        pthread_mutex_unlock(&e->refresh_mu);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (sv[i].slot == KEEL_SLOT_NONE)
            continue;
        keel__model *cur = keel__infer_get(e, sv[i].name);
        bool same = cur && !strcmp(cur->digest, sv[i].digest);
        keel__model_unref(cur);
        pthread_mutex_lock(&e->mu);
        for (size_t k = 0; k < e->n; k++)
            if (!strcmp(e->entries[k].name, sv[i].name) &&
                !strcmp(e->entries[k].failed_digest, sv[i].digest))
                same = true; /* failed before: the same bytes fail the same way */
        pthread_mutex_unlock(&e->mu);
        if (same)
            continue;
        keel__model *m = NULL;
        keel_error e2 = {0};
        uint64_t t0 = keel__now_mono_ns();
        int lrc = keel__model_load(e, sv[i].name, sv[i].version, &m, &e2);
        if (lrc == KEEL_ENOTFOUND) { /* not an inference package */
            put(e, sv[i].name, NULL, NULL, NULL);
            continue;
        }
        if (lrc) {
            KEEL_LOG_E(MOD, "%s %s cannot serve inference: %s", sv[i].name, sv[i].version, e2.msg);
            put(e, sv[i].name, NULL, e2.msg, sv[i].digest);
            continue;
        }
        KEEL_LOG_I(MOD, "serving %s %s (%zu tiers) loaded in %.1f ms", m->name, m->version,
                   m->ntiers, (double)(keel__now_mono_ns() - t0) / 1e6);
        put(e, sv[i].name, m, NULL, NULL);
    }
    /* names no longer served */
    pthread_mutex_lock(&e->mu);
    for (size_t k = 0; k < e->n;) {
        bool found = false;
        for (size_t i = 0; i < n; i++)
            found |= !strcmp(sv[i].name, e->entries[k].name) && sv[i].slot != KEEL_SLOT_NONE;
        if (found) {
            k++;
            continue;
        }
        keel__model *old = e->entries[k].m;
        remove_series(e, e->entries[k].name);
        e->entries[k] = e->entries[--e->n];
        pthread_mutex_unlock(&e->mu);
        keel__model_unref(old);
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    free(sv);
    pthread_mutex_unlock(&e->refresh_mu);
    return KEEL_OK;
}

const char *keel__model_name(const keel__model *m)
{
    return m->name;
}

const char *keel__model_version(const keel__model *m)
{
    return m->version;
}

bool keel__model_ready(keel__model *m)
{
    for (size_t i = 0; i < m->ntiers; i++)
        if (atomic_load(&m->tiers[i].inst))
            return true;
    return false;
}

void keel__model_load_errors(keel__model *m, char *buf, size_t n)
{
    size_t o = 0;
    if (!n)
        return;
    buf[0] = 0;
    if (pthread_mutex_trylock(&m->load_mu)) {
        snprintf(buf, n, "a tier is loading");
        return;
    }
    for (size_t i = 0; i < m->ntiers && o < n; i++) {
        const tier *t = &m->tiers[i];
        if (!atomic_load(&t->inst) && t->load_error[0])
            o +=
                (size_t)snprintf(buf + o, n - o, "%s%s: %s", o ? "; " : "", t->name, t->load_error);
    }
    pthread_mutex_unlock(&m->load_mu);
}

const char *keel__model_image_input(const keel__model *m)
{
    return m->pre.kind == KEEL__PRE_IMAGE ? m->pre.input : NULL;
}

const keel__tensor *keel__model_input(const keel__model *m, size_t i)
{
    return i < m->nin ? &m->in[i] : NULL;
}

bool keel__infer_ready(keel__infer *e, char *why, size_t n)
{
    bool ok = true;
    size_t o = 0;
    if (n)
        why[0] = 0;
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->n; i++) {
        const entry *en = &e->entries[i];
        char tiers[512];
        const char *problem = NULL;
        if (!en->m) {
            problem = en->error;
        } else if (!keel__model_ready(en->m)) {
            keel__model_load_errors(en->m, tiers, sizeof(tiers));
            problem = tiers;
        }
        if (!problem)
            continue;
        ok = false;
        if (o < n)
            o += (size_t)snprintf(why + o, n - o, "%s%s: %s%s", o ? "; " : "", en->name,
                                  problem == tiers ? "no tier could load: " : "", problem);
    }
    pthread_mutex_unlock(&e->mu);
    return ok;
}

/* --- metadata and status ------------------------------------------------------------- */

void keel__model_describe(const keel__model *m, keel__model_desc *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->name = m->name;
    ret->version = m->version;
    ret->digest = m->digest;
    ret->inputs = m->in;
    ret->ninputs = m->nin;
    ret->outputs = m->out;
    ret->noutputs = m->nout;
    ret->image_input = keel__model_image_input(m);
    for (size_t i = 0; i < m->ntiers; i++) {
        ret->tiers[i] = m->tiers[i].name;
        ret->backends[i] = m->tiers[i].be->name;
        ret->caps[i] = m->tiers[i].be->caps;
    }
    ret->ntiers = m->ntiers;
}

static cJSON *model_status(keel__model *m)
{
    cJSON *o = cJSON_CreateObject(), *tiers = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "version", m->version);
    cJSON_AddStringToObject(o, "digest", m->digest);
    pthread_mutex_lock(&m->mu);
    cJSON_AddStringToObject(o, "serving_tier",
                            m->serving_tier >= 0 ? m->tiers[m->serving_tier].name : "");
    cJSON_AddBoolToObject(o, "degraded", m->serving_tier > 0);
    cJSON_AddNumberToObject(o, "tier_transitions", (double)m->transitions);
    cJSON_AddNumberToObject(o, "all_tiers_failed", (double)m->all_failed);
    cJSON_AddNumberToObject(o, "sessions", (double)m->nsessions);
    for (size_t i = 0; i < m->ntiers; i++) {
        tier *t = &m->tiers[i];
        void *inst = atomic_load(&t->inst);
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", t->name);
        cJSON_AddStringToObject(x, "backend", t->be->name);
        cJSON_AddBoolToObject(x, "loaded", inst != NULL);
        if (t->load_error[0])
            cJSON_AddStringToObject(x, "load_error", t->load_error);
        if (inst && t->be->device)
            cJSON_AddStringToObject(x, "device", t->be->device(inst));
        cJSON_AddNumberToObject(x, "memory_bytes",
                                inst && t->be->memory ? (double)t->be->memory(inst) : 0);
        cJSON_AddStringToObject(x, "breaker",
                                keel__breaker_name(keel__breaker_state(t, keel__now_mono_ns())));
        cJSON_AddNumberToObject(x, "breaker_trips", t->br.trips);
        cJSON_AddNumberToObject(x, "served", (double)t->ok);
        cJSON_AddNumberToObject(x, "failed", (double)t->failed);
        cJSON_AddNumberToObject(x, "deadline_ms", (double)t->deadline_ns / 1e6);
        cJSON_AddItemToArray(tiers, x);
    }
    pthread_mutex_unlock(&m->mu);
    cJSON_AddItemToObject(o, "tiers", tiers);
    return o;
}

char *keel__infer_status_json(keel__infer *e)
{
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->n; i++) {
        cJSON *x = e->entries[i].m ? model_status(e->entries[i].m) : cJSON_CreateObject();
        if (e->entries[i].error[0])
            cJSON_AddStringToObject(x, "error", e->entries[i].error);
        cJSON_AddItemToObject(o, e->entries[i].name, x);
    }
    pthread_mutex_unlock(&e->mu);
    char *s = keel__json_print(o);
    cJSON_Delete(o);
    return s;
}

/* --- metrics ----------------------------------------------------------------------------
 *
 * Counted on the request path (tier.c, through the handles attach_series
 * gives a model before it serves): requests by outcome, latency,
 * transitions, all-tiers-failed. Copied in at scrape time (collect): breaker
 * states and trips (time and load failures change them), memory, sessions. */

enum {
    F_REQUESTS,
    F_LATENCY,
    F_TRANSITIONS,
    F_BREAKER,
    F_TRIPS,
    F_MEMORY,
    F_ALL_FAILED,
    F_SESSIONS
};

static const keel__metric_desc families[NFAMILIES] = {
    [F_REQUESTS] = {.name = "keel_infer_requests_total",
                    .help = "Inference attempts per tier and outcome.",
                    .type = KEEL_METRIC_COUNTER,
                    .nlabels = 3,
                    .labels = {"model", "tier", "outcome"}},
    [F_LATENCY] = {.name = "keel_infer_latency_seconds",
                   .help = "Latency of successful tier runs.",
                   .type = KEEL_METRIC_HISTOGRAM,
                   .nlabels = 2,
                   .labels = {"model", "tier"},
                   .bounds = keel__latency_bounds,
                   .nbounds = KEEL__NBUCKETS},
    [F_TRANSITIONS] = {.name = "keel_infer_tier_transitions_total",
                       .help = "Changes of the tier that serves.",
                       .type = KEEL_METRIC_COUNTER,
                       .nlabels = 1,
                       .labels = {"model"}},
    [F_BREAKER] = {.name = "keel_infer_breaker_state",
                   .help = "Circuit breaker: 0 closed, 1 open, 2 half-open.",
                   .type = KEEL_METRIC_GAUGE,
                   .nlabels = 2,
                   .labels = {"model", "tier"}},
    [F_TRIPS] = {.name = "keel_infer_breaker_trips_total",
                 .help = "Times a tier's breaker opened.",
                 .type = KEEL_METRIC_COUNTER,
                 .nlabels = 2,
                 .labels = {"model", "tier"}},
    [F_MEMORY] = {.name = "keel_infer_model_memory_bytes",
                  .help = "Memory attributed to a loaded tier model.",
                  .type = KEEL_METRIC_GAUGE,
                  .nlabels = 2,
                  .labels = {"model", "tier"}},
    [F_ALL_FAILED] = {.name = "keel_infer_all_tiers_failed_total",
                      .help = "Requests no tier could answer.",
                      .type = KEEL_METRIC_COUNTER,
                      .nlabels = 1,
                      .labels = {"model"}},
    [F_SESSIONS] = {.name = "keel_infer_sessions",
                    .help = "Open stateful sessions.",
                    .type = KEEL_METRIC_GAUGE,
                    .nlabels = 1,
                    .labels = {"model"}},
};

static const char *const outcomes[KEEL__NOUTCOMES] = {
    [KEEL__OUT_OK] = "ok",
    [KEEL__OUT_ERROR] = "error",
    [KEEL__OUT_TIMEOUT] = "timeout",
    [KEEL__OUT_SKIPPED] = "skipped",
    [KEEL__OUT_OVERLOADED] = "overloaded",
};

/* Removes every series of model `name` from the engine's families. e->mu held. */
static void remove_series(keel__infer *e, const char *name)
{
    for (size_t f = 0; e->fam[F_REQUESTS] && f < NFAMILIES; f++)
        (void)keel__metrics_remove(e->fam[f], "model", name);
}

/* Gives m, about to serve, its counted series (at 0). e->mu held, before m
 * is shared. Without memory for them m serves uncounted. */
static void attach_series(keel__infer *e, keel__model *m)
{
    keel_error err;
    int rc = KEEL_OK;
    if (!e->fam[F_REQUESTS])
        return;
    for (size_t i = 0; !rc && i < m->ntiers; i++) {
        tier *t = &m->tiers[i];
        for (size_t o = 0; !rc && o < KEEL__NOUTCOMES; o++) {
            const char *v[] = {m->name, t->name, outcomes[o]};
            rc = keel__metrics_series(e->fam[F_REQUESTS], v, &t->m_req[o], &err);
        }
        const char *v[] = {m->name, t->name};
        if (!rc)
            rc = keel__metrics_series(e->fam[F_LATENCY], v, &t->m_latency, &err);
    }
    const char *v[] = {m->name};
    if (!rc)
        rc = keel__metrics_series(e->fam[F_TRANSITIONS], v, &m->m_transitions, &err);
    if (!rc)
        rc = keel__metrics_series(e->fam[F_ALL_FAILED], v, &m->m_all_failed, &err);
    if (rc)
        KEEL_LOG_W(MOD, "%s %s: its metrics are not counted: %s", m->name, m->version, err.msg);
}

/* The collector: what is not counted on the request path. */
static void collect(void *ctx)
{
    keel__infer *e = ctx;
    uint64_t now = keel__now_mono_ns();
    keel_error err;
    int rc = KEEL_OK;
    pthread_mutex_lock(&e->mu); /* put cannot remove series under us */
    for (size_t k = 0; k < e->n; k++) {
        keel__model *m = e->entries[k].m;
        if (!m)
            continue;
        pthread_mutex_lock(&m->mu);
        for (size_t i = 0; i < m->ntiers; i++) {
            tier *t = &m->tiers[i];
            void *inst = atomic_load(&t->inst);
            const char *v[] = {m->name, t->name};
            rc |= keel__metrics_set(e->fam[F_BREAKER], v, keel__breaker_state(t, now), &err);
            rc |= keel__metrics_set(e->fam[F_TRIPS], v, t->br.trips, &err);
            rc |= keel__metrics_set(e->fam[F_MEMORY], v,
                                    inst && t->be->memory ? (double)t->be->memory(inst) : 0, &err);
        }
        const char *v[] = {m->name};
        rc |= keel__metrics_set(e->fam[F_SESSIONS], v, (double)m->nsessions, &err);
        pthread_mutex_unlock(&m->mu);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc)
        KEEL_LOG_D(MOD, "metrics incomplete: %s", err.msg);
}

static int metrics_register(keel__infer *e, keel_error *err)
{
    int rc = KEEL_OK;
    for (size_t f = 0; !rc && f < NFAMILIES; f++)
        rc = keel__metrics_register(e->opts.metrics, &families[f], &e->fam[f], err);
    if (!rc)
        rc = keel__metrics_collector_add(e->opts.metrics, collect, e, err);
    if (rc)
        metrics_unregister(e);
    return rc;
}

static void metrics_unregister(keel__infer *e)
{
    if (!e->opts.metrics)
        return;
    keel__metrics_collector_remove(e->opts.metrics, collect, e);
    for (size_t f = 0; f < NFAMILIES; f++) {
        keel__metrics_unregister(e->opts.metrics, e->fam[f]);
        e->fam[f] = NULL;
    }
}
