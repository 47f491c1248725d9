/*
 * probation.c - the runtime's side of probation (update/probation.h): every
 * request's outcome (KEEL__BUS_OUTCOME) is counted for the version that
 * answered it; when a version becomes active over a different one
 * (KEEL__BUS_ACTIVATE: the API, the update pipeline, an import) and its
 * manifest's `health` section or the probation settings ask for it, the
 * version is watched against the statistics its predecessor gathered while
 * it served. The decision and what follows run on the jobs thread, never
 * in a bus callback: a breach rolls back (KEEL__BUS_ROLLBACK slot action),
 * records "not to retry" in STATE_DIR/update/verdicts.json and publishes
 * KEEL__BUS_UPDATE "rolled_back"; a pass marks the version known-good and
 * publishes "promoted".
 *
 * What is watched, and the statistics, are kept in
 * STATE_DIR/update/probation.json (written every few seconds while
 * requests come, and at every decision and at close), so a restart resumes
 * a probation where it was.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "keel/layout.h"
#include "runtime/rt.h"
#include "update/probation.h"
#include "update/verdict.h"

#define MOD          "probation"
#define MAX_PACKAGES 256
#define SAVE_EVERY_S 5
#define FILE_MAX     (8u << 20)
/* a health section without a window, and no probation settings */
#define DEFAULT_WINDOW_REQUESTS 100

typedef enum watch_state {
    W_NONE = 0, /* not on probation */
    W_SETUP,    /* activated: the job reads its health rules */
    W_WATCHING,
    W_PASSED,   /* promoted known-good */
    W_BREACHED, /* rolled back (or the rollback failed: reason says) */
} watch_state;

static const char *const state_names[] = {"none", "setup", "watching", "passed", "breached"};

typedef struct pkg {
    char name[KEEL_NAME_MAX];
    char version[KEEL_VERSION_MAX]; /* the version whose outcomes st counts */
    keel__probation_stats st;
    bool unannounced; /* version was first seen in an outcome, before its activation event */
    char prev_version[KEEL_VERSION_MAX]; /* the one it replaced ("": none) */
    keel__probation_stats prev;
    watch_state w;
    keel__health h;
    bool has_health;
    char watched[KEEL_VERSION_MAX];   /* the version on probation */
    char reference[KEEL_VERSION_MAX]; /* the version it was judged against ("": none) */
    /* once decided: the figures the decision saw (st, prev move on) */
    keel__probation_stats wst, wprev;
    char reason[512];
} pkg;

struct keel__rt_probation {
    keel__runtime *rt;
    pthread_mutex_t mu;
    pkg *p;
    size_t n;
    int sub, job;
    bool dirty;
    int64_t saved_at;
    char path[PATH_MAX];
    keel__metric_family *fam[7];
    bool collecting;
};

/* --- the packages table (mu held) ----------------------------------------------------------- */

static pkg *find(keel__rt_probation *pr, const char *name, bool create)
{
    for (size_t i = 0; i < pr->n; i++)
        if (!strcmp(pr->p[i].name, name))
            return &pr->p[i];
    if (!create || pr->n == MAX_PACKAGES || strlen(name) >= KEEL_NAME_MAX)
        return NULL;
    pkg *p = &pr->p[pr->n++];
    memset(p, 0, sizeof(*p));
    keel__strlcpy(p->name, name, sizeof(p->name));
    return p;
}

/* A new version serves name: its predecessor's statistics become the reference. */
static void switch_version(pkg *p, const char *version, int64_t now)
{
    if (p->version[0]) {
        keel__strlcpy(p->prev_version, p->version, sizeof(p->prev_version));
        p->prev = p->st;
    }
    keel__strlcpy(p->version, version, sizeof(p->version));
    memset(&p->st, 0, sizeof(p->st));
    p->st.started = now;
}

/* --- bus callbacks: quick, under mu, no I/O --------------------------------------------------- */

static void on_event(void *ctx, const keel__bus_event *ev)
{
    keel__rt_probation *pr = ctx;
    bool kick = false;
    if (!ev->package || !ev->version || !ev->version[0])
        return;
    pthread_mutex_lock(&pr->mu);
    pkg *p = find(pr, ev->package, true);
    if (!p)
        goto out;
    switch (ev->type) {
    case KEEL__BUS_OUTCOME:
        if (!strcmp(ev->version, p->version)) {
            keel__probation_add(&p->st, ev->ok, ev->degraded, ev->ns, ev->confidence, ev->at);
        } else if (!strcmp(ev->version, p->prev_version)) {
            /* a request that started before the switch */
            keel__probation_add(&p->prev, ev->ok, ev->degraded, ev->ns, ev->confidence, ev->at);
        } else { /* serving changed: an activation whose event comes next, or a change
                  * made offline (the CLI) before start-up */
            p->unannounced = p->version[0] != '\0'; /* not a package's first outcome */
            switch_version(p, ev->version, ev->at);
            keel__probation_add(&p->st, ev->ok, ev->degraded, ev->ns, ev->confidence, ev->at);
        }
        pr->dirty = true;
        if (p->w == W_WATCHING && !strcmp(p->version, p->watched))
            kick = p->st.requests == p->h.requests ||
                   (p->st.requests >= p->h.min_requests && p->st.requests % 16 == 0);
        break;
    case KEEL__BUS_ACTIVATE:
        if (!strcmp(ev->version, p->version) && !p->unannounced)
            break; /* the version serving already, activated again: nothing new */
        if (strcmp(ev->version, p->version))
            switch_version(p, ev->version, ev->at);
        p->unannounced = false;
        p->w = W_SETUP;
        keel__strlcpy(p->watched, ev->version, sizeof(p->watched));
        p->reason[0] = '\0';
        pr->dirty = true;
        kick = true;
        break;
    case KEEL__BUS_ROLLBACK:
        /* back to the predecessor: its statistics continue */
        if (p->w == W_WATCHING || p->w == W_SETUP) {
            p->w = W_NONE; /* a rollback by hand ends the probation */
            snprintf(p->reason, sizeof(p->reason), "ended: rolled back by hand");
        }
        if (!strcmp(ev->version, p->prev_version)) {
            keel__strlcpy(p->version, p->prev_version, sizeof(p->version));
            p->st = p->prev;
            p->prev_version[0] = '\0';
            memset(&p->prev, 0, sizeof(p->prev));
        } else if (strcmp(ev->version, p->version)) {
            switch_version(p, ev->version, ev->at);
        }
        pr->dirty = true;
        break;
    case KEEL__BUS_MARK_GOOD:
        if ((p->w == W_WATCHING || p->w == W_SETUP) && !strcmp(ev->version, p->watched)) {
            p->w = W_NONE; /* accepted by hand */
            snprintf(p->reason, sizeof(p->reason), "ended: marked known-good by hand");
            pr->dirty = true;
        }
        break;
    default:
        break;
    }
out:
    pthread_mutex_unlock(&pr->mu);
    if (kick)
        keel__jobs_kick(pr->rt->jobs, pr->job);
}

/* --- persistence --------------------------------------------------------------------------------
 */

static int save_locked(keel__rt_probation *pr, keel_error *err)
{
    keel_buf b;
    char dir[PATH_MAX];
    keel__buf_init(&b, FILE_MAX);
    int rc = keel__buf_appendf(&b, "{\"format\":1,\"type\":\"keel-probation\",\"packages\":[");
    for (size_t i = 0; !rc && i < pr->n; i++) {
        pkg *p = &pr->p[i];
        rc = keel__buf_appendf(&b, "%s{\"name\":\"%s\",\"version\":\"%s\",\"stats\":", i ? "," : "",
                               p->name, p->version);
        if (!rc)
            rc = keel__probation_stats_json(&p->st, &b);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"prev_version\":\"%s\",\"prev_stats\":", p->prev_version);
        if (!rc)
            rc = keel__probation_stats_json(&p->prev, &b);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"watched_stats\":");
        if (!rc)
            rc = keel__probation_stats_json(&p->wst, &b);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"reference_stats\":");
        if (!rc)
            rc = keel__probation_stats_json(&p->wprev, &b);
        if (!rc)
            rc = keel__buf_appendf(&b,
                                   ",\"state\":\"%s\",\"watched\":\"%s\",\"reference\":\"%s\","
                                   "\"reason\":",
                                   state_names[p->w], p->watched, p->reference);
        if (!rc)
            rc = keel__json_quote(&b, p->reason);
        if (!rc) /* the window, for status after a restart (re-read while watching) */
            rc = keel__buf_appendf(
                &b,
                ",\"window\":{\"requests\":%llu,\"seconds\":%llu,"
                "\"min_requests\":%llu},\"health_section\":%s",
                (unsigned long long)p->h.requests, (unsigned long long)p->h.seconds,
                (unsigned long long)p->h.min_requests, p->has_health ? "true" : "false");
        if (!rc)
            rc = keel__buf_append(&b, "}", 1);
    }
    if (!rc)
        rc = keel__buf_append(&b, "]}\n", 3);
    if (rc)
        rc = keel__err(err, rc, "probation state does not fit in memory");
    snprintf(dir, sizeof(dir), "%s/update", pr->rt->state_dir);
    if (!rc)
        rc = keel__fs_mkdir_p(dir, 0700, err);
    if (!rc)
        rc = keel__fs_write_atomic(pr->path, b.data, b.len, 0600, err);
    keel__buf_done(&b);
    if (!rc) {
        pr->dirty = false;
        pr->saved_at = keel__now_wall_s();
    }
    return rc;
}

static void save(keel__rt_probation *pr)
{
    keel_error e;
    pthread_mutex_lock(&pr->mu);
    int rc = save_locked(pr, &e);
    pthread_mutex_unlock(&pr->mu);
    if (rc)
        KEEL_LOG_W(MOD, "cannot save the probation state: %s", e.msg);
}

static int load(keel__rt_probation *pr, keel_error *err)
{
    char *data = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    const cJSON *list = NULL, *it;
    int rc;
    if (!keel__fs_exists(pr->path))
        return KEEL_OK;
    if ((rc = keel__fs_read(pr->path, FILE_MAX, &data, &len, err)) ||
        (rc = keel__json_parse(data, len, pr->path, &root, err)) ||
        (rc = keel__json_member(root, "packages", cJSON_Array, true, &list, pr->path, err)))
        goto out;
    cJSON_ArrayForEach(it, list)
    {
        const char *name = "", *ver = "", *pv = "", *state = "", *watched = "", *reason = "";
        const char *ref = "";
        keel__probation_stats st, prev, wst, wprev;
        if ((rc = keel__json_str(it, "name", true, KEEL_NAME_MAX - 1, &name, pr->path, err)) ||
            (rc = keel__json_str(it, "version", true, KEEL_VERSION_MAX - 1, &ver, pr->path, err)) ||
            (rc = keel__json_str(it, "prev_version", true, KEEL_VERSION_MAX - 1, &pv, pr->path,
                                 err)) ||
            (rc = keel__json_str(it, "state", true, 16, &state, pr->path, err)) ||
            (rc = keel__json_str(it, "watched", true, KEEL_VERSION_MAX - 1, &watched, pr->path,
                                 err)) ||
            (rc = keel__json_str(it, "reason", false, 511, &reason, pr->path, err)) ||
            (rc = keel__json_str(it, "reference", true, KEEL_VERSION_MAX - 1, &ref, pr->path,
                                 err)) ||
            (rc = keel__probation_stats_parse(cJSON_GetObjectItemCaseSensitive(it, "watched_stats"),
                                              &wst, err)) ||
            (rc = keel__probation_stats_parse(
                 cJSON_GetObjectItemCaseSensitive(it, "reference_stats"), &wprev, err)) ||
            (rc = keel__probation_stats_parse(cJSON_GetObjectItemCaseSensitive(it, "stats"), &st,
                                              err)) ||
            (rc = keel__probation_stats_parse(cJSON_GetObjectItemCaseSensitive(it, "prev_stats"),
                                              &prev, err)))
            goto out;
        pkg *p = find(pr, name, true);
        if (!p)
            break;
        keel__strlcpy(p->version, ver, sizeof(p->version));
        keel__strlcpy(p->prev_version, pv, sizeof(p->prev_version));
        keel__strlcpy(p->watched, watched, sizeof(p->watched));
        keel__strlcpy(p->reason, reason, sizeof(p->reason));
        keel__strlcpy(p->reference, ref, sizeof(p->reference));
        const cJSON *win = cJSON_GetObjectItemCaseSensitive(it, "window");
        uint64_t wr = 0, ws = 0, wm = 0;
        if (win && ((rc = keel__json_u64(win, "requests", true, &wr, pr->path, err)) ||
                    (rc = keel__json_u64(win, "seconds", true, &ws, pr->path, err)) ||
                    (rc = keel__json_u64(win, "min_requests", true, &wm, pr->path, err))))
            goto out;
        keel__health_defaults(&p->h, wr, ws);
        p->h.min_requests = wm;
        p->has_health = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "health_section"));
        p->st = st;
        p->prev = prev;
        p->wst = wst;
        p->wprev = wprev;
        for (size_t k = 0; k < KEEL_ARRAY_LEN(state_names); k++)
            if (!strcmp(state, state_names[k]))
                p->w = (watch_state)k;
        if (p->w == W_WATCHING) /* re-read its health rules; check it still serves */
            p->w = W_SETUP;
    }
out:
    cJSON_Delete(root);
    free(data);
    if (rc && err)
        keel__err_prefix(err, "probation state unreadable (remove it to start afresh)");
    return rc;
}

/* --- the job: set-up, decisions, actions ---------------------------------------------------------
 */

/* The health rules of name@version: its manifest's over the settings. */
static int health_of(keel__rt_probation *pr, const char *name, const char *version, keel__health *h,
                     bool *ret_has, keel_error *err)
{
    keel__runtime *rt = pr->rt;
    char *m = NULL;
    size_t len = 0;
    uint64_t req = keel__runtime_setting_u64(rt, "probation_requests");
    uint64_t secs = keel__runtime_setting_u64(rt, "probation_time");
    keel__health_defaults(h, req, secs);
    int rc = keel_store_version_manifest(rt->store, name, version, &m, &len, err);
    if (!rc)
        rc = keel__health_from_manifest(m, len, h, ret_has, err);
    free(m);
    if (!rc && *ret_has && !keel__health_applies(h)) {
        keel__health d;
        keel__health_defaults(&d, DEFAULT_WINDOW_REQUESTS, 0);
        h->requests = d.requests;
        if (h->min_requests > h->requests)
            h->min_requests = h->requests;
    }
    return rc;
}

static void publish_update(keel__rt_probation *pr, const char *name, const char *version,
                           const char *step, const char *reason)
{
    keel__bus_event ev = {.type = KEEL__BUS_UPDATE,
                          .package = name,
                          .version = version,
                          .detail = step,
                          .reason = reason,
                          .ok = strcmp(step, "rolled_back") != 0};
    keel__bus_publish(pr->rt->bus, &ev);
}

/* Sets up one package whose version was activated (mu not held). */
static void setup(keel__rt_probation *pr, const char *name, const char *version)
{
    keel__health h;
    bool has = false;
    keel_error e;
    keel_serving sv;
    char why[512] = "";
    int rc = health_of(pr, name, version, &h, &has, &e);
    bool serving = !keel_store_resolve(pr->rt->store, name, 0, &sv, &e) &&
                   sv.slot == KEEL_SLOT_ACTIVE && !strcmp(sv.version, version);
    if (rc)
        snprintf(why, sizeof(why), "not watched: %s", e.msg);
    else if (!serving)
        snprintf(why, sizeof(why), "not watched: %s is no longer the active version", version);
    pthread_mutex_lock(&pr->mu);
    pkg *p = find(pr, name, false);
    if (p && p->w == W_SETUP && !strcmp(p->watched, version)) {
        p->h = h;
        p->has_health = has;
        if (!rc && serving && keel__health_applies(&h)) {
            p->w = W_WATCHING;
            keel__strlcpy(p->reference, p->prev_version, sizeof(p->reference));
            KEEL_LOG_I(MOD,
                       "%s@%s on probation: %llu requests or %llu s (at least %llu), against %s",
                       name, version, (unsigned long long)h.requests, (unsigned long long)h.seconds,
                       (unsigned long long)h.min_requests,
                       p->prev_version[0] ? p->prev_version : "its health limits only");
        } else {
            p->w = W_NONE;
            keel__strlcpy(p->reason, why, sizeof(p->reason));
        }
        pr->dirty = true;
    }
    pthread_mutex_unlock(&pr->mu);
    if (rc)
        KEEL_LOG_W(MOD, "%s@%s: %s", name, version, why);
}

/* Acts on a decision (mu not held). */
static void act(keel__rt_probation *pr, const char *name, const char *version,
                keel__probation_decision d, const char *reason)
{
    keel_serving sv;
    keel_error e;
    char why[700];
    bool breach = d == KEEL__PROBATION_BREACH;
    int rc = keel__runtime_slot_action(pr->rt, breach ? KEEL__BUS_ROLLBACK : KEEL__BUS_MARK_GOOD,
                                       name, NULL, &sv, &e);
    if (rc)
        snprintf(why, sizeof(why), "%s; %s failed: %s", reason,
                 breach ? "the rollback" : "marking it known-good", e.msg);
    else
        snprintf(why, sizeof(why), "%s", reason);
    if (breach)
        KEEL_LOG_E(MOD, "%s@%s failed probation: %s%s%s", name, version, why,
                   rc ? "" : "; rolled back to ", rc ? "" : sv.version);
    else
        KEEL_LOG_I(MOD, "%s@%s passed probation: %s", name, version, why);
    if (pr->rt->verdicts &&
        keel__verdict_record(pr->rt->verdicts, name, version,
                             breach ? KEEL__VERDICT_ROLLED_BACK : KEEL__VERDICT_PROMOTED, why, &e))
        KEEL_LOG_E(MOD, "cannot record the verdict on %s@%s: %s", name, version, e.msg);
    pthread_mutex_lock(&pr->mu);
    pkg *p = find(pr, name, false);
    if (p && !strcmp(p->watched, version)) {
        p->w = breach ? W_BREACHED : W_PASSED;
        keel__strlcpy(p->reason, why, sizeof(p->reason));
    }
    pr->dirty = true;
    pthread_mutex_unlock(&pr->mu);
    if (!rc)
        publish_update(pr, name, version, breach ? "rolled_back" : "promoted", why);
}

static void job(void *ctx)
{
    keel__rt_probation *pr = ctx;
    int64_t now = keel__now_wall_s();
    /* one action at a time, mu not held while acting; each action moves
     * its package out of set-up or watching, so this ends */
    for (size_t round = 0; round < 2 * MAX_PACKAGES; round++) {
        char name[KEEL_NAME_MAX] = "", version[KEEL_VERSION_MAX] = "", why[512] = "";
        keel__probation_decision d = KEEL__PROBATION_CONTINUE;
        bool do_setup = false;
        pthread_mutex_lock(&pr->mu);
        for (size_t i = 0; i < pr->n && !name[0]; i++) {
            pkg *p = &pr->p[i];
            if (p->w == W_SETUP) {
                do_setup = true;
            } else if (p->w == W_WATCHING && !strcmp(p->version, p->watched)) {
                d = keel__probation_decide(&p->h, &p->st, p->prev_version[0] ? &p->prev : NULL,
                                           p->prev_version, now, why, sizeof(why));
                keel__strlcpy(p->reason, why, sizeof(p->reason));
                if (d == KEEL__PROBATION_CONTINUE)
                    continue;
                p->wst = p->st; /* what the decision saw, kept for status */
                p->wprev = p->prev;
                keel__strlcpy(p->reference, p->prev_version, sizeof(p->reference));
            } else {
                continue;
            }
            keel__strlcpy(name, p->name, sizeof(name));
            keel__strlcpy(version, p->watched, sizeof(version));
        }
        pthread_mutex_unlock(&pr->mu);
        if (!name[0])
            break;
        if (do_setup)
            setup(pr, name, version);
        else
            act(pr, name, version, d, why);
    }
    pthread_mutex_lock(&pr->mu);
    bool save_now = pr->dirty && now - pr->saved_at >= SAVE_EVERY_S;
    pthread_mutex_unlock(&pr->mu);
    if (save_now)
        save(pr);
}

/* --- status and metrics ------------------------------------------------------------------------
 */

static int figures_json(keel_buf *b, const keel__probation_stats *s)
{
    keel__probation_figures f;
    keel__probation_figures_of(s, &f);
    return keel__buf_appendf(b,
                             "{\"requests\":%llu,\"errors\":%llu,\"fallbacks\":%llu,"
                             "\"error_rate\":%.4f,\"fallback_rate\":%.4f,\"p95_ms\":%.3f,"
                             "\"mean_confidence\":%.4f}",
                             (unsigned long long)s->requests, (unsigned long long)s->errors,
                             (unsigned long long)s->fallbacks, f.error_rate, f.fallback_rate,
                             f.p95_ms, f.mean_confidence);
}

char *keel__rt_probation_status_json(keel__runtime *rt)
{
    keel__rt_probation *pr = rt->probation;
    keel_buf b;
    int64_t now = keel__now_wall_s();
    if (!pr)
        return NULL;
    keel__buf_init(&b, 0);
    int rc = keel__buf_append(&b, "{", 1);
    pthread_mutex_lock(&pr->mu);
    for (size_t i = 0; !rc && i < pr->n; i++) {
        pkg *p = &pr->p[i];
        bool on = p->w != W_NONE || p->reason[0];
        bool decided = p->w == W_PASSED || p->w == W_BREACHED;
        bool live = p->w == W_WATCHING && !strcmp(p->version, p->watched);
        /* metrics: the watched version's (live while watching, as decided
         * after); serving: the version serving now */
        const keel__probation_stats *ws = decided ? &p->wst : live ? &p->st : NULL;
        const keel__probation_stats *rs = decided ? &p->wprev : live ? &p->prev : NULL;
        static const keel__probation_stats none;
        rc = keel__buf_appendf(&b,
                               "%s\"%s\":{\"state\":\"%s\",\"version\":\"%s\",\"watched\":\"%s\","
                               "\"previous\":\"%s\",\"health_section\":%s,"
                               "\"window\":{\"requests\":%llu,\"seconds\":%llu,"
                               "\"min_requests\":%llu},\"elapsed_s\":%lld,\"requests\":%llu,"
                               "\"metrics\":",
                               i ? "," : "", p->name, state_names[p->w], p->version, p->watched,
                               live || decided ? p->reference : p->prev_version,
                               p->has_health ? "true" : "false",
                               (unsigned long long)(on ? p->h.requests : 0),
                               (unsigned long long)(on ? p->h.seconds : 0),
                               (unsigned long long)(on ? p->h.min_requests : 0),
                               (long long)(ws && ws->started ? now - ws->started : 0),
                               (unsigned long long)(ws ? ws->requests : 0));
        if (!rc)
            rc = figures_json(&b, ws ? ws : &none);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"previous_metrics\":");
        if (!rc)
            rc = figures_json(&b, rs ? rs : &none);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"serving_metrics\":");
        if (!rc)
            rc = figures_json(&b, &p->st);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"reason\":");
        if (!rc)
            rc = keel__json_quote(&b, p->reason);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"verdicts\":");
        if (!rc)
            rc = rt->verdicts ? keel__verdict_json(rt->verdicts, p->name, &b)
                              : keel__buf_append(&b, "[]", 2);
        if (!rc)
            rc = keel__buf_append(&b, "}", 1);
    }
    pthread_mutex_unlock(&pr->mu);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    if (rc) {
        keel__buf_done(&b);
        return NULL;
    }
    return keel__buf_steal(&b);
}

enum { F_ACTIVE, F_REQ, F_ERR, F_FB, F_P95, F_CONF, F_DECIDED };

static const keel__metric_desc families[] = {
    [F_ACTIVE] = {.name = "keel_probation_active",
                  .help = "Whether the package's active version is on probation.",
                  .type = KEEL_METRIC_GAUGE,
                  .nlabels = 1,
                  .labels = {"package"}},
    [F_REQ] = {.name = "keel_probation_requests",
               .help = "Requests counted for the version serving now (on probation or not).",
               .type = KEEL_METRIC_GAUGE,
               .nlabels = 1,
               .labels = {"package"}},
    [F_ERR] = {.name = "keel_probation_error_rate",
               .help = "Share of those requests no tier could answer.",
               .type = KEEL_METRIC_GAUGE,
               .nlabels = 1,
               .labels = {"package"}},
    [F_FB] = {.name = "keel_probation_fallback_rate",
              .help = "Share of answers from a fallback tier.",
              .type = KEEL_METRIC_GAUGE,
              .nlabels = 1,
              .labels = {"package"}},
    [F_P95] = {.name = "keel_probation_latency_p95_seconds",
               .help = "95th percentile of the answers' latency.",
               .type = KEEL_METRIC_GAUGE,
               .nlabels = 1,
               .labels = {"package"}},
    [F_CONF] = {.name = "keel_probation_mean_confidence",
                .help = "Mean confidence of the answers that carry one.",
                .type = KEEL_METRIC_GAUGE,
                .nlabels = 1,
                .labels = {"package"}},
    [F_DECIDED] = {.name = "keel_probation_last_decision",
                   .help = "The last probation decision: 1 for the outcome named (passed, "
                           "breached), 0 otherwise.",
                   .type = KEEL_METRIC_GAUGE,
                   .nlabels = 2,
                   .labels = {"package", "outcome"}},
};

static void collect(void *ctx)
{
    keel__rt_probation *pr = ctx;
    keel_error e;
    int rc = 0;
    pthread_mutex_lock(&pr->mu);
    for (size_t i = 0; !rc && i < pr->n; i++) {
        pkg *p = &pr->p[i];
        keel__probation_figures f;
        const char *v[] = {p->name};
        keel__probation_figures_of(&p->st, &f);
        const char *passed[] = {p->name, "passed"}, *breached[] = {p->name, "breached"};
        if (!(rc = keel__metrics_set(pr->fam[F_ACTIVE], v, p->w == W_WATCHING || p->w == W_SETUP,
                                     &e)) &&
            !(rc = keel__metrics_set(pr->fam[F_REQ], v, (double)p->st.requests, &e)) &&
            !(rc = keel__metrics_set(pr->fam[F_ERR], v, f.error_rate < 0 ? 0 : f.error_rate, &e)) &&
            !(rc = keel__metrics_set(pr->fam[F_FB], v, f.fallback_rate < 0 ? 0 : f.fallback_rate,
                                     &e)) &&
            !(rc = keel__metrics_set(pr->fam[F_P95], v, f.p95_ms < 0 ? 0 : f.p95_ms / 1e3, &e)) &&
            !(rc = keel__metrics_set(pr->fam[F_CONF], v,
                                     f.mean_confidence < 0 ? 0 : f.mean_confidence, &e)) &&
            !(rc = keel__metrics_set(pr->fam[F_DECIDED], passed, p->w == W_PASSED, &e)))
            rc = keel__metrics_set(pr->fam[F_DECIDED], breached, p->w == W_BREACHED, &e);
    }
    pthread_mutex_unlock(&pr->mu);
    if (rc)
        KEEL_LOG_D(MOD, "metrics incomplete: %s", e.msg);
}

/* --- verdicts for the update pipeline (update_job.c) --------------------------------------------
 */

void keel__rt_verdict_refused(keel__runtime *rt, const char *name, const char *version,
                              const char *why)
{
    keel_error e;
    if (rt->verdicts &&
        keel__verdict_record(rt->verdicts, name, version, KEEL__VERDICT_REFUSED, why, &e))
        KEEL_LOG_E(MOD, "cannot record that %s@%s is not to be retried: %s", name, version, e.msg);
}

bool keel__rt_verdict_blocked(keel__runtime *rt, const char *name, const char *version, char *why,
                              size_t n)
{
    char reason[KEEL__VERDICT_REASON_MAX];
    keel__verdict_kind k =
        rt->verdicts ? keel__verdict_lookup(rt->verdicts, name, version, reason, sizeof(reason))
                     : KEEL__VERDICT_NONE;
    if (n)
        why[0] = '\0';
    if (keel__verdict_retry(k))
        return false;
    snprintf(why, n, "%s@%s was %s on this device and is not retried: %s", name, version,
             k == KEEL__VERDICT_ROLLED_BACK ? "rolled back by probation" : "refused", reason);
    return true;
}

/* --- start / stop -------------------------------------------------------------------------------
 */

int keel__rt_probation_start(keel__runtime *rt, keel_error *err)
{
    keel__rt_probation *pr = calloc(1, sizeof(*pr));
    char vpath[PATH_MAX];
    int rc;
    if (!pr || !(pr->p = calloc(MAX_PACKAGES, sizeof(*pr->p)))) {
        free(pr);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    pr->rt = rt;
    pthread_mutex_init(&pr->mu, NULL);
    rt->probation = pr;
    keel__runtime_path(rt, KEEL_STATE_UPDATE_PROBATION, pr->path, sizeof(pr->path));
    keel__runtime_path(rt, KEEL_STATE_UPDATE_VERDICTS, vpath, sizeof(vpath));
    if ((rc = keel__verdict_load(vpath, &rt->verdicts, err)) || (rc = load(pr, err)))
        return rc;
    for (size_t f = 0; !rc && f < KEEL_ARRAY_LEN(families); f++)
        rc = keel__metrics_register(rt->metrics, &families[f], &pr->fam[f], err);
    if (!rc && !(rc = keel__metrics_collector_add(rt->metrics, collect, pr, err)))
        pr->collecting = true;
    if (rc)
        return rc;
    pr->sub = keel__bus_subscribe(
        rt->bus, KEEL__BUS_OUTCOME | KEEL__BUS_ACTIVATE | KEEL__BUS_ROLLBACK | KEEL__BUS_MARK_GOOD,
        on_event, pr);
    pr->job = keel__jobs_add(rt->jobs, "probation", 1, job, pr);
    if (!pr->sub || !pr->job)
        return keel__err(err, KEEL_ENOMEM, "cannot start probation (out of memory or jobs)");
    keel__jobs_kick(rt->jobs, pr->job); /* probations a restart interrupted */
    return KEEL_OK;
}

void keel__rt_probation_stop(keel__runtime *rt)
{
    keel__rt_probation *pr = rt->probation;
    if (!pr)
        return;
    keel__bus_unsubscribe(rt->bus, pr->sub);
    if (pr->job && rt->jobs)
        keel__jobs_remove(rt->jobs, pr->job);
    if (pr->collecting)
        keel__metrics_collector_remove(rt->metrics, collect, pr);
    if (pr->dirty)
        save(pr);
    keel__verdict_free(rt->verdicts);
    rt->verdicts = NULL;
    pthread_mutex_destroy(&pr->mu);
    free(pr->p);
    free(pr);
    rt->probation = NULL;
}
