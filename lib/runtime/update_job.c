/*
 * update_job.c - the update pipeline on the device (docs/internals/update.md):
 *
 *   check: timestamp -> index (signed, fresh) -> what each installed
 *          package's channel offers this device
 *   apply: download (fetch.h: peers, then origins; verified, resumable)
 *          -> stage (keel_store_install_dir) -> validate and activate
 *          (the store's validator runs the package's validation set)
 *          -> probation (probation.c watches the new version)
 *
 * Two threads of its own, so nothing slow runs on an HTTP worker or holds
 * the jobs thread: the update thread (checks and downloads, which may take
 * hours on a thin link) and the actions thread (activations and installs
 * handed over by the HTTP routes, keel__runtime_defer). Every step is an
 * event on the bus (KEEL__BUS_UPDATE, detail = the step), which the
 * reporter turns into queue messages.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "keel/layout.h"
#include "keel/pkg.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "runtime/rt.h"
#include "update/fetch.h"
#include "update/get.h"
#include "update/repo.h"

#define MOD "update"

#define META_MAX      (1u << 20)  /* timestamp.json, its .sig, index.sig */
#define INDEX_MAX     (64u << 20) /* index.json */
#define GET_TIMEOUT_S 30
#define MAX_REPOS     8
#define LINK_UP_GAP_S 60 /* a link that comes up checks again at most this often */

/* --- a worker thread with a FIFO of tasks ------------------------------------------------ */

typedef struct task {
    void (*fn)(void *ctx);
    void *ctx;
    struct task *next;
} task;

typedef struct worker {
    pthread_t thread;
    bool started;
} worker;

typedef struct pending_check {
    uint64_t seq;
    keel__update_done_fn done;
    void *ctx;
    struct pending_check *next;
} pending_check;

struct keel__rt_update {
    keel__runtime *rt;
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* the update thread's wake-up */
    pthread_cond_t acv; /* the actions thread's */
    bool stop;
    worker updater, actions;
    task *tasks, *tasks_tail; /* for the actions thread */
    /* checks asked for: requested > done means one is due */
    uint64_t requested, done;
    bool want_apply;
    pending_check *waiters;
    uint64_t next_due_ns;
    uint64_t last_mono_ns;
    char *last; /* JSON of the last check */
    char phase[256];
    atomic_bool cancel;
    int sub, sub_steps; /* link_up; every update step (for /metrics) */
    keel__metric_family *fam[3];
};

enum { F_CHECKS, F_STEPS, F_BYTES };

static const keel__metric_desc families[] = {
    [F_CHECKS] = {.name = "keel_update_checks_total",
                  .help = "Update checks, by result (ok, offline, refused, error).",
                  .type = KEEL_METRIC_COUNTER,
                  .nlabels = 1,
                  .labels = {"result"}},
    [F_STEPS] = {.name = "keel_update_steps_total",
                 .help = "Update pipeline steps: found, downloaded, refused, activated, ...",
                 .type = KEEL_METRIC_COUNTER,
                 .nlabels = 1,
                 .labels = {"step"}},
    [F_BYTES] = {.name = "keel_update_bytes_total",
                 .help = "Bytes of updates by source (origin, peer, local copy, patch, wasted).",
                 .type = KEEL_METRIC_COUNTER,
                 .nlabels = 1,
                 .labels = {"source"}},
};

static void count(keel__rt_update *u, int fam, const char *label, uint64_t n)
{
    keel__metric_series *s = NULL;
    keel_error e;
    const char *v[] = {label};
    if (!u->fam[fam] || keel__metrics_series(u->fam[fam], v, &s, &e))
        return;
    keel__metric_inc(s, n);
    keel__metric_series_unref(s);
}

static void set_phase(keel__rt_update *u, const char *fmt, ...) KEEL_PRINTF(2, 3);
static void set_phase(keel__rt_update *u, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&u->mu);
    va_start(ap, fmt);
    vsnprintf(u->phase, sizeof(u->phase), fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&u->mu);
}

/* One step, on the bus (and so in the queue through the reporter) and in /metrics. */
static void step(keel__rt_update *u, const char *what, const char *name, const char *version,
                 const char *reason)
{
    keel__bus_event ev = {.type = KEEL__BUS_UPDATE,
                          .package = name,
                          .version = version,
                          .detail = what,
                          .reason = reason && reason[0] ? reason : NULL,
                          .ok = strcmp(what, "refused") != 0};
    keel__bus_publish(u->rt->bus, &ev); /* counted in /metrics by on_update */
    if (reason && reason[0])
        KEEL_LOG_I(MOD, "%s %s%s%s: %s", what, name ? name : "", version ? "@" : "",
                   version ? version : "", reason);
    else
        KEEL_LOG_I(MOD, "%s %s%s%s", what, name ? name : "", version ? "@" : "",
                   version ? version : "");
}

/* --- state: what this device accepted from repositories (STATE_DIR/update/) --------------- */

static void upath(keel__runtime *rt, const char *leaf, char *buf, size_t n)
{
    char dir[PATH_MAX];
    keel__runtime_path(rt, KEEL_STATE_UPDATE_DIR, dir, sizeof(dir));
    if (keel__snprintf(buf, n, "%s/%s", dir, leaf))
        buf[0] = '\0';
}

static void load_state(keel__runtime *rt, keel__repo_state *st)
{
    char p[PATH_MAX], *data = NULL;
    size_t len;
    cJSON *j = NULL;
    uint64_t v;
    const char *h = NULL;
    memset(st, 0, sizeof(*st));
    upath(rt, "state.json", p, sizeof(p));
    if (keel__fs_read(p, 64 * 1024, &data, &len, NULL))
        return; /* none yet: nothing accepted */
    keel_error e;
    if (keel__json_parse(data, len, p, &j, &e)) {
        KEEL_LOG_W(MOD, "%s; starting from no accepted metadata", e.msg);
    } else {
        if (!keel__json_u64(j, "timestamp_version", false, &v, p, &e))
            st->timestamp_version = v;
        if (!keel__json_u64(j, "index_version", false, &v, p, &e))
            st->index_version = v;
        if (!keel__json_str(j, "index_sha256", false, 64, &h, p, &e) && h)
            keel__strlcpy(st->index_sha256, h, sizeof(st->index_sha256));
    }
    cJSON_Delete(j);
    free(data);
}

static int save_state(keel__runtime *rt, const keel__repo_state *st, keel_error *err)
{
    char p[PATH_MAX], doc[256];
    upath(rt, "state.json", p, sizeof(p));
    int n =
        snprintf(doc, sizeof(doc),
                 "{\"timestamp_version\":%llu,\"index_version\":%llu,\"index_sha256\":\"%s\"}\n",
                 (unsigned long long)st->timestamp_version, (unsigned long long)st->index_version,
                 st->index_sha256);
    return keel__fs_write_atomic(p, doc, (size_t)n, 0600, err);
}

/* --- one check ------------------------------------------------------------------------- */

typedef struct check {
    keel__rt_update *u;
    keel__runtime *rt;
    bool apply;
    char repos[MAX_REPOS][KEEL__CONF_PATH_MAX];
    const char *repo_ptrs[MAX_REPOS];
    size_t nrepos;
    char channel[KEEL__CONF_STR_MAX];
    uint64_t bandwidth;
    keel_trust *trust;
    keel__repo_index *ix;
    const char *used_repo;
    keel__repo_timestamp ts;
    cJSON *out, *pkgs;
} check;

static size_t split_repos(const char *s, check *c)
{
    size_t n = 0;
    while (*s && n < MAX_REPOS) {
        s += strspn(s, " ,");
        size_t l = strcspn(s, ",");
        while (l && s[l - 1] == ' ')
            l--;
        while (l && s[l - 1] == '/') /* base URLs: no trailing slash */
            l--;
        if (l && l < sizeof(c->repos[0])) {
            memcpy(c->repos[n], s, l);
            c->repos[n][l] = '\0';
            c->repo_ptrs[n] = c->repos[n];
            n++;
        }
        s += l;
        s += strcspn(s, ",");
    }
    return n;
}

static int get_doc(const char *base, const char *leaf, size_t max, keel_buf *b, keel_error *err)
{
    char url[KEEL__CONF_PATH_MAX + 64];
    if (keel__snprintf(url, sizeof(url), "%s/%s", base, leaf))
        return keel__err(err, KEEL_ETOOBIG, "repository URL too long: %s", base);
    keel__buf_init(b, max + 1);
    return keel__update_get(url, max, GET_TIMEOUT_S, b, err);
}

/* The index named by the timestamp: the cached copy when it is the same, else fetched. */
static int load_index(check *c, const char *base, const keel__repo_state *st, keel_error *err)
{
    keel_buf doc = {0}, sig = {0};
    char cp[PATH_MAX], sp[PATH_MAX];
    int rc;
    bool cached = false;
    upath(c->rt, "index.json", cp, sizeof(cp));
    upath(c->rt, "index.sig", sp, sizeof(sp));
    if (st->index_sha256[0] && !strcmp(st->index_sha256, c->ts.index_sha256)) {
        char *d = NULL, *s = NULL;
        size_t dl, sl;
        if (!keel__fs_read(cp, INDEX_MAX, &d, &dl, NULL) &&
            !keel__fs_read(sp, META_MAX, &s, &sl, NULL)) {
            rc = keel__repo_index_parse(c->trust, d, dl, s, sl, &c->ts, st, 0, &c->ix, err);
            cached = rc == 0;
        }
        free(d);
        free(s);
    }
    if (cached)
        return KEEL_OK;
    size_t max =
        c->ts.index_size && c->ts.index_size < INDEX_MAX ? (size_t)c->ts.index_size : INDEX_MAX;
    if ((rc = get_doc(base, "index.json", max, &doc, err)) ||
        (rc = get_doc(base, "index.sig", META_MAX, &sig, err)))
        goto out;
    rc = keel__repo_index_parse(c->trust, doc.data, doc.len, sig.data, sig.len, &c->ts, st,
                                keel__now_wall_s(), &c->ix, err);
    if (!rc) { /* keep it: the next check with the same timestamp needs no fetch */
        keel_error we;
        if (keel__fs_write_atomic(cp, doc.data, doc.len, 0600, &we) ||
            keel__fs_write_atomic(sp, sig.data, sig.len, 0600, &we))
            KEEL_LOG_W(MOD, "cannot cache the index: %s", we.msg);
    }
out:
    keel__buf_done(&doc);
    keel__buf_done(&sig);
    return rc;
}

/* Fresh, signed metadata from the first repository that has it. */
static int fetch_metadata(check *c, keel_error *err)
{
    keel__repo_state st;
    load_state(c->rt, &st);
    int rc = keel__err(err, KEEL_ENOCONN, "no repository answered");
    char errs[2048] = "";
    for (size_t i = 0; i < c->nrepos; i++) {
        const char *base = c->repos[i];
        keel_buf ts = {0}, sig = {0};
        keel_error e = {0};
        set_phase(c->u, "checking %s", base);
        rc = get_doc(base, "timestamp.json", META_MAX, &ts, &e);
        if (!rc)
            rc = get_doc(base, "timestamp.sig", META_MAX, &sig, &e);
        if (!rc)
            rc = keel__repo_check_timestamp(c->trust, ts.data, ts.len, sig.data, sig.len, &st,
                                            keel__now_wall_s(), &c->ts, &e);
        keel__buf_done(&ts);
        keel__buf_done(&sig);
        if (!rc)
            rc = load_index(c, base, &st, &e);
        if (!rc) {
            keel__repo_state ns = {.timestamp_version = c->ts.version,
                                   .index_version = keel__repo_index_version(c->ix)};
            keel__strlcpy(ns.index_sha256, c->ts.index_sha256, sizeof(ns.index_sha256));
            if ((rc = save_state(c->rt, &ns, &e))) {
                keel__repo_index_free(c->ix);
                c->ix = NULL;
            }
        }
        if (!rc) {
            c->used_repo = base;
            return KEEL_OK;
        }
        if (e.code != KEEL_ENOCONN) /* a mirror that answers with bad metadata: say so */
            step(c->u, "refused", NULL, NULL, e.msg);
        size_t o = strlen(errs);
        snprintf(errs + o, sizeof(errs) - o, "%s%s", o ? "; " : "", e.msg);
        if (err) {
            err->code = e.code;
            snprintf(err->msg, sizeof(err->msg), "%s", errs);
        }
    }
    return rc;
}

/* The installed packages: name, active and known-good versions. */
typedef struct installed {
    char name[KEEL_NAME_MAX], active[KEEL_VERSION_MAX], known_good[KEEL_VERSION_MAX];
} installed;

static int list_installed(keel_store *s, installed **ret, size_t *ret_n, keel_error *err)
{
    char *json = NULL;
    cJSON *j = NULL;
    int rc = keel_store_list_json(s, &json, err);
    if (!rc)
        rc = keel__json_parse(json, strlen(json), "package list", &j, err);
    free(json);
    *ret = NULL;
    *ret_n = 0;
    if (rc)
        return rc;
    const cJSON *p, *pkgs = cJSON_GetObjectItemCaseSensitive(j, "packages");
    size_t cap = (size_t)cJSON_GetArraySize(pkgs);
    installed *v = calloc(cap ? cap : 1, sizeof(*v));
    if (!v) {
        cJSON_Delete(j);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    size_t n = 0;
    cJSON_ArrayForEach(p, pkgs)
    {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(p, "name");
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(p, "version");
        const cJSON *sl, *slots = cJSON_GetObjectItemCaseSensitive(p, "slots");
        if (!cJSON_IsString(nm) || !cJSON_IsString(ver))
            continue;
        size_t k = 0;
        while (k < n && strcmp(v[k].name, nm->valuestring))
            k++;
        if (k == n)
            keel__strlcpy(v[n++].name, nm->valuestring, sizeof(v[0].name));
        cJSON_ArrayForEach(sl, slots)
        {
            if (!cJSON_IsString(sl))
                continue;
            if (!strcmp(sl->valuestring, "active"))
                keel__strlcpy(v[k].active, ver->valuestring, sizeof(v[k].active));
            else if (!strcmp(sl->valuestring, "known_good"))
                keel__strlcpy(v[k].known_good, ver->valuestring, sizeof(v[k].known_good));
        }
    }
    cJSON_Delete(j);
    *ret = v;
    *ret_n = n;
    return KEEL_OK;
}

/* update_packages: names to follow that are not installed yet. */
static int add_followed(keel__runtime *rt, installed **v, size_t *n, keel_error *err)
{
    char list[KEEL__CONF_PATH_MAX];
    pthread_mutex_lock(&rt->lock);
    keel__strlcpy(list, keel__conf_str(rt->conf, "update_packages"), sizeof(list));
    pthread_mutex_unlock(&rt->lock);
    for (char *s = list, *tok; (tok = strtok_r(s, ", ", &s));) {
        size_t k = 0;
        while (k < *n && strcmp((*v)[k].name, tok))
            k++;
        if (k < *n || strlen(tok) >= KEEL_NAME_MAX)
            continue;
        installed *nv = realloc(*v, (*n + 1) * sizeof(**v));
        if (!nv)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        *v = nv;
        memset(&nv[*n], 0, sizeof(nv[0]));
        keel__strlcpy(nv[(*n)++].name, tok, KEEL_NAME_MAX);
    }
    return KEEL_OK;
}

static bool is_installed(keel_store *s, const char *name, const char *version, const char *digest)
{
    char *m = NULL;
    size_t len;
    keel_error e;
    if (keel_store_version_manifest(s, name, version, &m, &len, &e))
        return false;
    uint8_t h[KEEL_SHA256_LEN];
    char hex[72];
    keel_sha256_buf(m, len, h);
    free(m);
    memcpy(hex, "sha256:", 7);
    keel_hex_encode(h, sizeof(h), hex + 7);
    return !strcmp(hex, digest);
}

/* A refusal is about the bytes or the policy; anything else (the link, the
 * disk) may go away by itself and the next check resumes. */
static bool is_refusal(int code)
{
    return code == KEEL_ECORRUPT || code == KEEL_EBADSIG || code == KEEL_EUNTRUSTED ||
           code == KEEL_EINVALID || code == KEEL_ETOOBIG || code == KEEL_EDOWNGRADE ||
           code == KEEL_ECONFLICT || code == KEEL_EUNSUPPORTED;
}

static void add_stats(cJSON *o, const keel__fetch_stats *fs)
{
    cJSON *b = cJSON_AddObjectToObject(o, "bytes");
    cJSON_AddNumberToObject(b, "needed", (double)fs->needed);
    cJSON_AddNumberToObject(b, "origin", (double)fs->from_origin);
    cJSON_AddNumberToObject(b, "peers", (double)fs->from_peers);
    cJSON_AddNumberToObject(b, "local", (double)fs->from_local);
    cJSON_AddNumberToObject(b, "patches", (double)fs->from_patches);
    cJSON_AddNumberToObject(b, "wasted", (double)fs->wasted);
    cJSON_AddNumberToObject(o, "resumes", fs->resumes);
    cJSON_AddNumberToObject(o, "bad_chunks", fs->bad_chunks);
    cJSON_AddNumberToObject(o, "patch_failures", fs->patch_failures);
}

/* Download, stage, validate and activate one offered version. Fills o. */
static void apply_offer(check *c, const keel__repo_offer *of, cJSON *o)
{
    keel__runtime *rt = c->rt;
    keel_error e = {0};
    char dir[PATH_MAX], leaf[128];
    keel__fetch_stats fs = {0};
    int rc = 0;
    if (!is_installed(rt->store, of->name, of->version, of->digest)) {
        snprintf(leaf, sizeof(leaf), "downloads/%s",
                 strncmp(of->digest, "sha256:", 7) ? of->digest : of->digest + 7);
        upath(rt, leaf, dir, sizeof(dir));
        keel__fetch_opts fo = {.work_dir = dir,
                               .origins = c->repo_ptrs,
                               .norigins = c->nrepos,
                               .patches = of->patches,
                               .npatches = of->npatches,
                               .store = rt->store,
                               .max_bytes_per_s = c->bandwidth,
                               .timeout_s = GET_TIMEOUT_S,
                               .cancel = &c->u->cancel};
        keel__rt_peers_for_fetch(rt, &fo);
        set_phase(c->u, "downloading %s@%s", of->name, of->version);
        rc = keel__fetch_package(&fo, of->name, of->version, of->digest, &fs, &e);
        keel__rt_peers_done(rt, &fo);
        add_stats(o, &fs);
        count(c->u, F_BYTES, "origin", fs.from_origin);
        count(c->u, F_BYTES, "peer", fs.from_peers);
        count(c->u, F_BYTES, "local", fs.from_local);
        count(c->u, F_BYTES, "patch", fs.from_patches);
        count(c->u, F_BYTES, "wasted", fs.wasted);
        if (rc) {
            /* bytes that do not match their signed hashes are refused; the
             * verified ones stay for the next check only when the failure
             * may pass (a mirror repaired, a link back) */
            bool refused = is_refusal(e.code), bad = refused || fs.bad_chunks > 0;
            cJSON_AddStringToObject(o, "step", bad ? "refused" : "interrupted");
            cJSON_AddStringToObject(o, "reason", e.msg);
            step(c->u, bad ? "refused" : "interrupted", of->name, of->version, e.msg);
            keel_error re;
            if (refused && keel__fs_rm_rf(dir, &re))
                KEEL_LOG_W(MOD, "%s", re.msg);
            return;
        }
        set_phase(c->u, "staging %s@%s", of->name, of->version);
        keel_install_result r;
        rc = keel__runtime_install_dir(rt, dir, 0, &r, &e);
        keel_error re;
        if (keel__fs_rm_rf(dir, &re))
            KEEL_LOG_W(MOD, "%s", re.msg);
        if (rc) {
            cJSON_AddStringToObject(o, "step", "refused");
            cJSON_AddStringToObject(o, "reason", e.msg);
            step(c->u, "refused", of->name, of->version, e.msg);
            return;
        }
        step(c->u, "downloaded", of->name, of->version, NULL);
    }
    set_phase(c->u, "validating %s@%s", of->name, of->version);
    keel_serving sv;
    rc = keel__runtime_slot_action(rt, KEEL__BUS_ACTIVATE, of->name, of->version, &sv, &e);
    if (rc) {
        char why[KEEL_ERROR_MSG_MAX + 64];
        snprintf(why, sizeof(why), "not activated, stays staged: %s", e.msg);
        cJSON_AddStringToObject(o, "step", "refused");
        cJSON_AddStringToObject(o, "reason", why);
        keel__rt_verdict_refused(rt, of->name, of->version, why);
        step(c->u, "refused", of->name, of->version, why);
        return;
    }
    cJSON_AddStringToObject(o, "step", "activated");
    step(c->u, "activated", of->name, of->version, NULL);
}

static void check_package(check *c, const installed *in)
{
    keel__runtime *rt = c->rt;
    keel__repo_offer of;
    keel_error e = {0};
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return;
    cJSON_AddItemToArray(c->pkgs, o);
    cJSON_AddStringToObject(o, "name", in->name);
    cJSON_AddStringToObject(o, "current", in->active);
    memset(&of, 0, sizeof(of));
    int rc = keel__repo_offer_for(c->ix, in->name, c->channel, rt->device_id,
                                  in->active[0] ? in->active : NULL, &of, &e);
    if (of.current_pulled && in->active[0]) {
        char why[256];
        snprintf(why, sizeof(why), "%s@%s was pulled from the repository", in->name, in->active);
        keel_serving sv;
        keel_error ae;
        if (in->known_good[0] && strcmp(in->known_good, in->active) &&
            !keel__runtime_slot_action(rt, KEEL__BUS_ACTIVATE, in->name, in->known_good, &sv,
                                       &ae)) {
            cJSON_AddStringToObject(o, "step", "rolled_back");
            cJSON_AddStringToObject(o, "reason", why);
            keel__rt_verdict_refused(rt, in->name, in->active, why);
            step(c->u, "rolled_back", in->name, in->known_good, why);
            return;
        }
        step(c->u, "refused", in->name, in->active,
             in->known_good[0] ? "pulled, and going back to the known-good version failed"
                               : "pulled, and this device has no known-good version to go back to");
    }
    if (rc) {
        cJSON_AddStringToObject(o, "step", "none");
        cJSON_AddStringToObject(o, "reason", e.msg);
        return;
    }
    cJSON_AddStringToObject(o, "offered", of.version);
    int cmp = in->active[0] ? keel_semver_cmp(of.version, in->active) : 1;
    if (cmp < 0) {
        char why[256];
        snprintf(why, sizeof(why),
                 "the channel offers %s, below the active %s: refusing a downgrade (the "
                 "publisher pulls a version with `keel rollout --pull`)",
                 of.version, in->active);
        cJSON_AddStringToObject(o, "step", "refused");
        cJSON_AddStringToObject(o, "reason", why);
        step(c->u, "refused", of.name, of.version, why);
        return;
    }
    if (cmp == 0) {
        cJSON_AddStringToObject(o, "step", "up_to_date");
        return;
    }
    char why[1024];
    if (keel__rt_verdict_blocked(rt, of.name, of.version, why, sizeof(why))) {
        cJSON_AddStringToObject(o, "step", "skipped");
        cJSON_AddStringToObject(o, "reason", why);
        return;
    }
    step(c->u, "found", of.name, of.version, NULL);
    if (!c->apply) {
        cJSON_AddStringToObject(o, "step", "found");
        return;
    }
    apply_offer(c, &of, o);
}

static char *run_check(keel__rt_update *u, uint64_t seq, bool apply)
{
    keel__runtime *rt = u->rt;
    check c = {.u = u, .rt = rt, .apply = apply};
    keel_error e = {0};
    char tdir[PATH_MAX];
    const char *result = "ok";
    c.out = cJSON_CreateObject();
    if (!c.out)
        return NULL;
    cJSON_AddNumberToObject(c.out, "seq", (double)seq);
    char when[32];
    keel__format_rfc3339(keel__now_wall_s(), when, sizeof(when));
    cJSON_AddStringToObject(c.out, "at", when);
    cJSON_AddBoolToObject(c.out, "apply", apply);
    pthread_mutex_lock(&rt->lock);
    c.nrepos = split_repos(keel__conf_str(rt->conf, "update_repos"), &c);
    keel__strlcpy(c.channel, keel__conf_str(rt->conf, "update_channel"), sizeof(c.channel));
    c.bandwidth = keel__conf_u64(rt->conf, "uplink_bandwidth");
    pthread_mutex_unlock(&rt->lock);
    cJSON_AddStringToObject(c.out, "channel", c.channel);
    keel__rt_trust_dir(rt, tdir, sizeof(tdir));
    int rc = 0;
    if (!c.nrepos) {
        rc = keel__err(&e, KEEL_ENOTFOUND,
                       "no repository configured: set update_repos in keeld.conf (docs/update.md)");
        result = "error";
    } else if ((rc = keel_trust_load(tdir, &c.trust, &e))) {
        keel__err_prefix(&e, "cannot check any update: the trust dir is broken");
        result = "error";
    } else if ((rc = fetch_metadata(&c, &e))) {
        result = e.code == KEEL_ENOCONN ? "offline" : "refused";
    }
    if (rc) {
        cJSON_AddBoolToObject(c.out, "ok", false);
        cJSON_AddStringToObject(c.out, "error", e.msg);
    } else {
        cJSON_AddBoolToObject(c.out, "ok", true);
        cJSON_AddStringToObject(c.out, "repo", c.used_repo);
        cJSON_AddNumberToObject(c.out, "timestamp_version", (double)c.ts.version);
        cJSON_AddNumberToObject(c.out, "index_version", (double)keel__repo_index_version(c.ix));
        c.pkgs = cJSON_AddArrayToObject(c.out, "packages");
        installed *in = NULL;
        size_t n = 0;
        if (list_installed(rt->store, &in, &n, &e) || add_followed(rt, &in, &n, &e)) {
            cJSON_AddStringToObject(c.out, "error", e.msg);
            result = "error";
        }
        for (size_t i = 0; i < n && !atomic_load(&u->cancel); i++)
            check_package(&c, &in[i]);
        free(in);
    }
    count(u, F_CHECKS, result, 1);
    keel__repo_index_free(c.ix);
    keel_trust_free(c.trust);
    char *json = cJSON_PrintUnformatted(c.out);
    cJSON_Delete(c.out);
    return json;
}

/* --- the update thread ------------------------------------------------------------------- */

static bool window_open(keel__runtime *rt)
{
    keel__sync_window w;
    keel_error e;
    pthread_mutex_lock(&rt->lock);
    int rc = keel__sync_window_parse(keel__conf_str(rt->conf, "sync_window"), &w, &e);
    pthread_mutex_unlock(&rt->lock);
    return rc || keel__sync_window_in_range(&w, keel__now_wall_s());
}

static void *updater_main(void *arg)
{
    keel__rt_update *u = arg;
    keel__runtime *rt = u->rt;
    pthread_mutex_lock(&u->mu);
    while (!u->stop) {
        uint64_t now = keel__now_mono_ns();
        if (u->requested > u->done) {
            uint64_t seq = u->requested;
            bool apply = u->want_apply;
            u->want_apply = false;
            pthread_mutex_unlock(&u->mu);
            char *json = run_check(u, seq, apply);
            pthread_mutex_lock(&u->mu);
            free(u->last);
            u->last = json;
            u->last_mono_ns = keel__now_mono_ns();
            u->done = seq;
            snprintf(u->phase, sizeof(u->phase), "idle");
            pending_check *ready = NULL, **pp = &u->waiters;
            while (*pp) { /* every waiter up to seq: this check answers them */
                pending_check *w = *pp;
                if (w->seq <= seq) {
                    *pp = w->next;
                    w->next = ready;
                    ready = w;
                } else {
                    pp = &w->next;
                }
            }
            char *copy = json ? strdup(json) : NULL;
            pthread_mutex_unlock(&u->mu);
            while (ready) {
                pending_check *w = ready;
                ready = w->next;
                w->done(w->ctx, copy ? copy : "{\"ok\":false,\"error\":\"out of memory\"}");
                free(w);
            }
            free(copy);
            pthread_mutex_lock(&u->mu);
            continue;
        }
        pthread_mutex_unlock(&u->mu);
        uint64_t interval = keel__runtime_setting_u64(rt, "update_interval");
        bool apply = keel__runtime_setting_bool(rt, "update_apply");
        char repos[8];
        pthread_mutex_lock(&rt->lock);
        keel__strlcpy(repos, keel__conf_str(rt->conf, "update_repos"), sizeof(repos));
        pthread_mutex_unlock(&rt->lock);
        bool due = interval && repos[0] && now >= u->next_due_ns && window_open(rt);
        pthread_mutex_lock(&u->mu);
        if (due && !u->stop) {
            u->requested++;
            u->want_apply = apply;
            u->next_due_ns = now + interval * 1000000000ull;
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1; /* settings and the window change: look again each second */
        pthread_cond_timedwait(&u->cv, &u->mu, &ts);
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

static void *actions_main(void *arg)
{
    keel__rt_update *u = arg;
    pthread_mutex_lock(&u->mu);
    for (;;) {
        task *t = u->tasks;
        if (!t) {
            if (u->stop)
                break;
            pthread_cond_wait(&u->acv, &u->mu);
            continue;
        }
        u->tasks = t->next;
        if (!u->tasks)
            u->tasks_tail = NULL;
        pthread_mutex_unlock(&u->mu);
        t->fn(t->ctx);
        free(t);
        pthread_mutex_lock(&u->mu);
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

/* Every update step, whoever took it (this pipeline, probation, import). */
static void on_update(void *ctx, const keel__bus_event *ev)
{
    if (ev->detail)
        count(ctx, F_STEPS, ev->detail, 1);
}

static void on_link(void *ctx, const keel__bus_event *ev)
{
    keel__rt_update *u = ctx;
    (void)ev;
    bool apply = keel__runtime_setting_bool(u->rt, "update_apply");
    pthread_mutex_lock(&u->mu);
    uint64_t now = keel__now_mono_ns();
    if (u->requested == u->done && u->next_due_ns &&
        (!u->last_mono_ns || now - u->last_mono_ns > LINK_UP_GAP_S * 1000000000ull)) {
        u->requested++; /* a link came up: a chance to check now */
        u->want_apply |= apply;
        pthread_cond_signal(&u->cv);
    }
    pthread_mutex_unlock(&u->mu);
}

/* --- the runtime's face ------------------------------------------------------------------- */

uint64_t keel__runtime_update_check(keel__runtime *rt, bool apply, keel__update_done_fn done,
                                    void *ctx)
{
    keel__rt_update *u = rt->update;
    pending_check *w = done ? calloc(1, sizeof(*w)) : NULL;
    pthread_mutex_lock(&u->mu);
    /* a check asked for while one runs is a new one: it must see what changed since */
    uint64_t seq = u->requested > u->done ? u->requested : u->requested + 1;
    u->requested = seq;
    u->want_apply |= apply;
    if (w) {
        w->seq = seq;
        w->done = done;
        w->ctx = ctx;
        w->next = u->waiters;
        u->waiters = w;
    }
    pthread_cond_signal(&u->cv);
    pthread_mutex_unlock(&u->mu);
    if (done && !w)
        done(ctx, "{\"ok\":false,\"error\":\"out of memory\"}");
    return seq;
}

char *keel__runtime_update_json(keel__runtime *rt)
{
    keel__rt_update *u = rt->update;
    keel_buf b;
    keel__buf_init(&b, 0);
    pthread_mutex_lock(&rt->lock);
    int rc = keel__buf_appendf(&b, "{\"repos\":");
    if (!rc)
        rc = keel__json_quote(&b, keel__conf_str(rt->conf, "update_repos"));
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"channel\":");
    if (!rc)
        rc = keel__json_quote(&b, keel__conf_str(rt->conf, "update_channel"));
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"interval_s\":%llu,\"apply\":%s",
                               (unsigned long long)keel__conf_u64(rt->conf, "update_interval"),
                               keel__conf_bool(rt->conf, "update_apply") ? "true" : "false");
    pthread_mutex_unlock(&rt->lock);
    pthread_mutex_lock(&u->mu);
    uint64_t now = keel__now_mono_ns();
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"device_id\":");
    if (!rc)
        rc = keel__json_quote(&b, rt->device_id);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"phase\":");
    if (!rc)
        rc = keel__json_quote(&b, u->phase);
    if (!rc)
        rc = keel__buf_appendf(
            &b, ",\"requested\":%llu,\"done\":%llu,\"next_check_in_s\":%lld,\"last\":%s}\n",
            (unsigned long long)u->requested, (unsigned long long)u->done,
            u->next_due_ns > now ? (long long)((u->next_due_ns - now) / 1000000000ull) : 0ll,
            u->last ? u->last : "null");
    pthread_mutex_unlock(&u->mu);
    if (rc) {
        keel__buf_done(&b);
        return NULL;
    }
    return keel__buf_steal(&b);
}

int keel__runtime_defer(keel__runtime *rt, void (*fn)(void *ctx), void *ctx, keel_error *err)
{
    keel__rt_update *u = rt->update;
    task *t = calloc(1, sizeof(*t));
    if (!t)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    t->fn = fn;
    t->ctx = ctx;
    pthread_mutex_lock(&u->mu);
    if (u->stop) {
        pthread_mutex_unlock(&u->mu);
        free(t);
        return keel__err(err, KEEL_ENOTREADY, "keeld is stopping");
    }
    if (u->tasks_tail)
        u->tasks_tail->next = t;
    else
        u->tasks = t;
    u->tasks_tail = t;
    pthread_cond_signal(&u->acv);
    pthread_mutex_unlock(&u->mu);
    return KEEL_OK;
}

int keel__rt_update_start(keel__runtime *rt, keel_error *err)
{
    keel__rt_update *u = calloc(1, sizeof(*u));
    char dir[PATH_MAX];
    if (!u)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    u->rt = rt;
    rt->update = u;
    pthread_mutex_init(&u->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&u->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&u->acv, NULL);
    snprintf(u->phase, sizeof(u->phase), "idle");
    /* the first automatic check comes one interval after start (or at the first link up) */
    u->next_due_ns =
        keel__now_mono_ns() + keel__runtime_setting_u64(rt, "update_interval") * 1000000000ull;
    keel__runtime_path(rt, KEEL_STATE_UPDATE_DIR, dir, sizeof(dir));
    int rc = keel__fs_mkdir_p(dir, 0700, err);
    for (size_t f = 0; !rc && f < KEEL_ARRAY_LEN(families); f++)
        rc = keel__metrics_register(rt->metrics, &families[f], &u->fam[f], err);
    if (rc)
        return rc;
    if (!(u->sub = keel__bus_subscribe(rt->bus, KEEL__BUS_LINK_UP, on_link, u)) ||
        !(u->sub_steps = keel__bus_subscribe(rt->bus, KEEL__BUS_UPDATE, on_update, u)))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    if (pthread_create(&u->actions.thread, NULL, actions_main, u))
        return keel__err(err, KEEL_EIO, "cannot start the actions thread");
    u->actions.started = true;
    if (pthread_create(&u->updater.thread, NULL, updater_main, u))
        return keel__err(err, KEEL_EIO, "cannot start the update thread");
    u->updater.started = true;
    return KEEL_OK;
}

void keel__rt_update_stop(keel__runtime *rt)
{
    keel__rt_update *u = rt->update;
    if (!u)
        return;
    if (u->sub)
        keel__bus_unsubscribe(rt->bus, u->sub);
    if (u->sub_steps)
        keel__bus_unsubscribe(rt->bus, u->sub_steps);
    pthread_mutex_lock(&u->mu);
    u->stop = true;
    atomic_store(&u->cancel, true); /* a download stops at its next callback */
    pthread_cond_broadcast(&u->cv);
    pthread_cond_broadcast(&u->acv);
    pthread_mutex_unlock(&u->mu);
    if (u->updater.started)
        pthread_join(u->updater.thread, NULL);
    if (u->actions.started) /* runs what was handed over, then ends */
        pthread_join(u->actions.thread, NULL);
    pending_check *w = u->waiters;
    while (w) {
        pending_check *next = w->next;
        w->done(w->ctx, "{\"ok\":false,\"error\":\"keeld is stopping\"}");
        free(w);
        w = next;
    }
    free(u->last);
    pthread_cond_destroy(&u->cv);
    pthread_cond_destroy(&u->acv);
    pthread_mutex_destroy(&u->mu);
    free(u);
    rt->update = NULL;
}
