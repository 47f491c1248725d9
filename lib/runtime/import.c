/*
 * import.c - USB / air-gap imports on the runtime (import.h): applies a
 * bundle's plan (lib/update/bundle.h) through the trust code and the
 * runtime's package actions, keeps the results of recent API imports, and
 * watches import_dir.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/json.h"
#include "keel/layout.h"
#include "keel/trust.h"
#include "runtime/import.h"
#include "runtime/rt.h"
#include "update/bundle.h"

#define MOD           "import"
#define KEEP          16 /* API imports remembered */
#define QUEUED_MAX    8
#define WATCH_MAX     64 /* entries of import_dir tracked */
#define WATCH_PERIOD  2  /* seconds between scans of import_dir */
#define RESULT_SUFFIX ".keel-import.json"

typedef enum { ST_FREE, ST_QUEUED, ST_RUNNING, ST_DONE } rec_state;

typedef struct rec {
    uint64_t id;
    rec_state state;
    char path[PATH_MAX];
    char *result;
} rec;

typedef struct watched {
    char name[256];
    uint64_t size;
    int64_t mtime_ns;
    unsigned stable; /* scans it was seen unchanged */
    bool done;       /* imported (or its result could not be written): not again */
} watched;

struct keel__rt_import {
    pthread_mutex_t mu;
    rec recs[KEEP];
    uint64_t next_id;
    int job, watch_job;
    watched w[WATCH_MAX]; /* the jobs thread only */
    size_t nw;
    char watch_dir[KEEL__CONF_PATH_MAX];
};

/* --- applying a plan ----------------------------------------------------------------- */

/* A revocation list or a root was installed: every installed version is
 * re-checked against it (revocation.c), what serves and readiness follow. */
static void trust_changed(keel__runtime *rt)
{
    keel__runtime_trust_changed(rt);
}

static void publish(keel__runtime *rt, const keel__bundle_item *it, const char *step,
                    const char *reason)
{
    keel__bus_event ev = {.type = KEEL__BUS_UPDATE,
                          .package = it->name[0] ? it->name : NULL,
                          .version = it->version[0] ? it->version : NULL,
                          .detail = step,
                          .reason = reason,
                          .ok = strcmp(step, "refused") && strcmp(step, "validation_failed")};
    keel__bus_publish(keel__runtime_bus(rt), &ev);
}

typedef struct outcome {
    const char *outcome; /* installed, already_installed, refused, applied, already, recorded */
    char reason[1024];
    const char *activation; /* activated, already_active, validation_failed, refused, NULL */
    char act_reason[1024];
} outcome;

/* A trust document (root.json or revoked.json): applied unless it is the
 * one in force already. Returns true when the trust dir changed. */
static bool apply_trust_doc(keel__runtime *rt, const char *tdir, const keel__bundle_item *it,
                            outcome *o)
{
    char *doc = NULL, *sig = NULL, *cur = NULL, cp[PATH_MAX];
    size_t dl = 0, sl = 0, cl = 0;
    keel_sigset sigs;
    keel_error e = {0};
    bool root = it->kind == KEEL__BUNDLE_ROOT;
    bool changed = false;
    snprintf(cp, sizeof(cp), "%s/%s", tdir, root ? "root.json" : "revoked.json");
    int rc = keel__fs_read(it->path, KEEL__BUNDLE_DOC_MAX, &doc, &dl, &e);
    if (!rc && keel__fs_read(cp, KEEL__BUNDLE_DOC_MAX, &cur, &cl, NULL) == KEEL_OK && cl == dl &&
        !memcmp(cur, doc, dl)) {
        o->outcome = "already";
        snprintf(o->reason, sizeof(o->reason), "%s is the one in force already",
                 root ? "this root" : "this revocation list");
        goto out;
    }
    if (!rc)
        rc = keel__fs_read(it->sig_path, KEEL__BUNDLE_DOC_MAX, &sig, &sl, &e);
    if (!rc && (rc = keel_sigset_parse(sig, sl, &sigs, &e)))
        keel__err_prefix(&e, "%s.sig", it->entry);
    if (!rc)
        rc = root ? keel_trust_rotate(tdir, doc, dl, &sigs, &e)
                  : keel_trust_revoke_install(tdir, doc, dl, &sigs, &e);
    if (rc) {
        o->outcome = "refused";
        snprintf(o->reason, sizeof(o->reason), "%s (%s)", e.msg, keel_errname(e.code));
        KEEL_LOG_W(MOD, "%s refused: %s", it->entry, e.msg);
        publish(rt, it, "refused", o->reason);
        goto out;
    }
    changed = true;
    o->outcome = "applied";
    snprintf(o->reason, sizeof(o->reason), "%s",
             root ? "new root accepted" : "revocation list installed");
    KEEL_LOG_I(MOD, "%s: %s into %s", it->entry, o->reason, tdir);
    publish(rt, it, root ? "root_rotated" : "revocation_installed", NULL);
    keel__bus_event te = {.type = KEEL__BUS_TRUST, .detail = tdir, .reason = o->reason, .ok = true};
    keel__bus_publish(keel__runtime_bus(rt), &te);
out:
    free(doc);
    free(sig);
    free(cur);
    return changed;
}

static void install_pkg(keel__runtime *rt, const keel__bundle_item *it, outcome *o)
{
    keel_install_result r;
    keel_error e = {0};
    if (keel__runtime_install(rt, it->path, 0, &r, &e)) {
        o->outcome = "refused";
        snprintf(o->reason, sizeof(o->reason), "%s (%s)", e.msg, keel_errname(e.code));
        publish(rt, it, "refused", o->reason);
        return;
    }
    o->outcome = r.already ? "already_installed" : "installed";
    publish(rt, it, r.already ? "already_installed" : "imported", NULL);
}

/* The active version of name ("" when none), from the store's listing. */
static void active_version(keel__runtime *rt, const char *name, char *out, size_t n)
{
    char *json = NULL;
    cJSON *j = NULL;
    const cJSON *p;
    keel_error e;
    out[0] = '\0';
    if (keel_store_list_json(keel__runtime_store(rt), &json, &e) ||
        keel__json_parse(json, strlen(json), "packages", &j, &e)) {
        free(json);
        return;
    }
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(j, "packages"))
    {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(p, "name"), *s;
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(p, "version");
        if (!cJSON_IsString(nm) || strcmp(nm->valuestring, name) || !cJSON_IsString(ver))
            continue;
        cJSON_ArrayForEach(
            s, cJSON_GetObjectItemCaseSensitive(p, "slots")) if (cJSON_IsString(s) &&
                                                                 !strcmp(s->valuestring, "active"))
            keel__strlcpy(out, ver->valuestring, n);
    }
    cJSON_Delete(j);
    free(json);
}

static void activate_pkg(keel__runtime *rt, const keel__bundle_item *it, outcome *o)
{
    char cur[KEEL_VERSION_MAX];
    keel_serving sv;
    keel_error e = {0};
    active_version(rt, it->name, cur, sizeof(cur));
    if (cur[0] && !strcmp(cur, it->version)) {
        o->activation = "already_active";
        return;
    }
    if (cur[0] && keel_semver_cmp(it->version, cur) < 0) {
        o->activation = "not_newer";
        snprintf(o->act_reason, sizeof(o->act_reason), "%s %s is active, newer than %s", it->name,
                 cur, it->version);
        return;
    }
    if (keel__runtime_slot_action(rt, KEEL__BUS_ACTIVATE, it->name, it->version, &sv, &e)) {
        bool val = strstr(e.msg, "failed validation") != NULL;
        o->activation = val ? "validation_failed" : "refused";
        snprintf(o->act_reason, sizeof(o->act_reason), "%s (%s)", e.msg, keel_errname(e.code));
        publish(rt, it, val ? "validation_failed" : "refused", o->act_reason);
        return;
    }
    o->activation = "activated";
    publish(rt, it, "activated", NULL);
}

static int add_item_json(keel_buf *b, bool first, const keel__bundle_item *it, const outcome *o)
{
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return KEEL_ENOMEM;
    cJSON_AddStringToObject(j, "entry", it->entry);
    cJSON_AddStringToObject(j, "kind", keel__bundle_kind_name(it->kind));
    if (it->name[0]) {
        cJSON_AddStringToObject(j, "name", it->name);
        cJSON_AddStringToObject(j, "version", it->version);
        cJSON_AddStringToObject(j, "digest", it->digest);
    }
    cJSON_AddStringToObject(j, "outcome", o->outcome);
    if (o->reason[0])
        cJSON_AddStringToObject(j, "reason", o->reason);
    if (o->activation)
        cJSON_AddStringToObject(j, "activation", o->activation);
    if (o->act_reason[0])
        cJSON_AddStringToObject(j, "activation_reason", o->act_reason);
    char *s = keel__json_print(j);
    cJSON_Delete(j);
    int rc = s ? keel__buf_appendf(b, "%s%s", first ? "" : ",", s) : KEEL_ENOMEM;
    free(s);
    return rc;
}

int keel__runtime_import(keel__runtime *rt, const char *path, char **ret_json, keel_error *err)
{
    keel__bundle *bn = NULL;
    keel_error e = {0};
    keel_buf b;
    char tdir[PATH_MAX];
    bool ok = true, trust = false;
    int rc;
    keel__buf_init(&b, 0);
    rc = keel__buf_append(&b, "{\"path\":", 8);
    if (!rc)
        rc = keel__json_quote(&b, path);
    KEEL_LOG_I(MOD, "importing %s", path);
    if (keel__bundle_scan(path, keel__runtime_setting_u64(rt, "max_package"), &bn, &e)) {
        KEEL_LOG_W(MOD, "%s: %s", path, e.msg);
        keel__bus_event ev = {.type = KEEL__BUS_UPDATE, .detail = "refused", .reason = e.msg};
        keel__bus_publish(keel__runtime_bus(rt), &ev);
        if (!rc)
            rc = keel__buf_appendf(
                &b, ",\"ok\":false,\"error\":{\"code\":\"%s\",\"message\":", keel_errname(e.code));
        if (!rc)
            rc = keel__json_quote(&b, e.msg);
        if (!rc)
            rc = keel__buf_append(&b, "},\"items\":[]}", 13);
        goto out;
    }
    keel__rt_trust_dir(rt, tdir, sizeof(tdir));
    outcome *os = calloc(bn->n ? bn->n : 1, sizeof(*os));
    if (!os) {
        rc = KEEL_ENOMEM;
        goto out;
    }
    /* 1. trust: root rotation, then revocation (the plan's order) */
    for (size_t i = 0; i < bn->n; i++) {
        const keel__bundle_item *it = &bn->items[i];
        if (it->kind != KEEL__BUNDLE_ROOT && it->kind != KEEL__BUNDLE_REVOKED)
            continue;
        if (it->refused) {
            os[i].outcome = "refused";
            snprintf(os[i].reason, sizeof(os[i].reason), "%s", it->why);
            publish(rt, it, "refused", it->why);
            continue;
        }
        trust |= apply_trust_doc(rt, tdir, it, &os[i]);
    }
    if (trust) /* every installed version is re-checked against the new trust */
        trust_changed(rt);
    /* 2. packages, by name and version */
    for (size_t i = 0; i < bn->n; i++) {
        const keel__bundle_item *it = &bn->items[i];
        if (it->kind == KEEL__BUNDLE_PACKAGE) {
            if (it->refused) {
                os[i].outcome = "refused";
                snprintf(os[i].reason, sizeof(os[i].reason), "%s", it->why);
                publish(rt, it, "refused", it->why);
            } else {
                install_pkg(rt, it, &os[i]);
            }
        } else if (it->kind == KEEL__BUNDLE_REPO) {
            os[i].outcome = it->refused ? "refused" : "recorded";
            snprintf(os[i].reason, sizeof(os[i].reason), "%s",
                     it->refused ? it->why : "repository metadata is not applied from bundles yet");
        }
    }
    /* 3. the newest installed version of each name goes live (validation set) */
    for (size_t i = 0; i < bn->n; i++) {
        const keel__bundle_item *it = &bn->items[i];
        if (it->kind != KEEL__BUNDLE_PACKAGE || !os[i].outcome || !strcmp(os[i].outcome, "refused"))
            continue;
        bool newest = true; /* no later item of the name installed */
        for (size_t k = i + 1; k < bn->n; k++)
            if (bn->items[k].kind == KEEL__BUNDLE_PACKAGE && !strcmp(bn->items[k].name, it->name) &&
                os[k].outcome && strcmp(os[k].outcome, "refused"))
                newest = false;
        if (newest)
            activate_pkg(rt, it, &os[i]);
    }
    for (size_t i = 0; i < bn->n; i++)
        ok &= strcmp(os[i].outcome ? os[i].outcome : "refused", "refused") &&
              (!os[i].activation || (strcmp(os[i].activation, "validation_failed") &&
                                     strcmp(os[i].activation, "refused")));
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"ok\":%s,\"trust_changed\":%s,\"ignored\":%zu,\"items\":[",
                               ok ? "true" : "false", trust ? "true" : "false", bn->ignored);
    for (size_t i = 0; !rc && i < bn->n; i++)
        rc = add_item_json(&b, i == 0, &bn->items[i], &os[i]);
    if (!rc)
        rc = keel__buf_append(&b, "]}", 2);
    free(os);
    KEEL_LOG_I(MOD, "imported %s: %s", path, ok ? "every item applied" : "some items refused");
out:
    keel__bundle_free(bn);
    if (rc) {
        keel__buf_done(&b);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    *ret_json = keel__buf_steal(&b);
    return KEEL_OK;
}

/* --- API imports: queued for the jobs thread ------------------------------------------------- */

static void job_import(void *ctx)
{
    keel__runtime *rt = ctx;
    struct keel__rt_import *im = rt->imp;
    for (;;) {
        rec *r = NULL;
        char path[PATH_MAX];
        uint64_t id;
        pthread_mutex_lock(&im->mu);
        for (size_t i = 0; i < KEEP; i++)
            if (im->recs[i].state == ST_QUEUED && (!r || im->recs[i].id < r->id))
                r = &im->recs[i];
        if (r) {
            r->state = ST_RUNNING;
            keel__strlcpy(path, r->path, sizeof(path));
            id = r->id;
        }
        pthread_mutex_unlock(&im->mu);
        if (!r)
            return;
        char *json = NULL;
        keel_error e;
        if (keel__runtime_import(rt, path, &json, &e))
            json = NULL;
        pthread_mutex_lock(&im->mu);
        for (size_t i = 0; i < KEEP; i++)
            if (im->recs[i].id == id) {
                im->recs[i].state = ST_DONE;
                im->recs[i].result = json;
                json = NULL;
            }
        pthread_mutex_unlock(&im->mu);
        free(json);
    }
}

int keel__runtime_import_submit(keel__runtime *rt, const char *path, uint64_t *ret_id,
                                keel_error *err)
{
    struct keel__rt_import *im = rt->imp;
    if (!path || path[0] != '/')
        return keel__err(err, KEEL_EINVALID,
                         "the path to import must be absolute (keeld does not share your working "
                         "directory): %s",
                         path ? path : "(none)");
    if (strlen(path) >= PATH_MAX)
        return keel__err(err, KEEL_ETOOBIG, "path too long");
    pthread_mutex_lock(&im->mu);
    size_t queued = 0;
    rec *slot = NULL;
    for (size_t i = 0; i < KEEP; i++) {
        rec *r = &im->recs[i];
        queued += r->state == ST_QUEUED || r->state == ST_RUNNING;
        /* a free slot, else the oldest finished one */
        if (r->state == ST_FREE && (!slot || slot->state != ST_FREE))
            slot = r;
        else if (r->state == ST_DONE && (!slot || (slot->state == ST_DONE && r->id < slot->id)))
            slot = r;
    }
    if (queued >= QUEUED_MAX || !slot) {
        pthread_mutex_unlock(&im->mu);
        return keel__err(err, KEEL_EBUSY, "%zu imports are waiting already; try again later",
                         queued);
    }
    free(slot->result);
    memset(slot, 0, sizeof(*slot));
    slot->id = ++im->next_id;
    slot->state = ST_QUEUED;
    keel__strlcpy(slot->path, path, sizeof(slot->path));
    *ret_id = slot->id;
    pthread_mutex_unlock(&im->mu);
    keel__jobs_kick(rt->jobs, im->job);
    return KEEL_OK;
}

int keel__runtime_import_result(keel__runtime *rt, uint64_t id, char **ret_json, keel_error *err)
{
    struct keel__rt_import *im = rt->imp;
    static const char *const names[] = {"free", "queued", "running", "done"};
    keel_buf b;
    int rc = KEEL_ENOTFOUND;
    keel__buf_init(&b, 0);
    pthread_mutex_lock(&im->mu);
    for (size_t i = 0; i < KEEP; i++) {
        rec *r = &im->recs[i];
        if (r->state == ST_FREE || r->id != id)
            continue;
        rc = keel__buf_appendf(
            &b, "{\"id\":%llu,\"state\":\"%s\",\"path\":", (unsigned long long)id, names[r->state]);
        if (!rc)
            rc = keel__json_quote(&b, r->path);
        if (!rc && r->state == ST_DONE)
            rc = keel__buf_appendf(&b, ",\"result\":%s",
                                   r->result ? r->result : "{\"ok\":false,\"items\":[]}");
        if (!rc)
            rc = keel__buf_append(&b, "}\n", 2);
    }
    pthread_mutex_unlock(&im->mu);
    if (rc == KEEL_ENOTFOUND) {
        keel__buf_done(&b);
        return keel__err(err, KEEL_ENOTFOUND,
                         "no import %llu (ids come from POST /api/import; the last %d are kept)",
                         (unsigned long long)id, KEEP);
    }
    if (rc) {
        keel__buf_done(&b);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    *ret_json = keel__buf_steal(&b);
    return KEEL_OK;
}

/* --- the watched directory ------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !memcmp(s + a - b, suffix, b);
}

static int64_t mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* Size and latest mtime of what a folder holds (its files, and repo/'s). */
static void dir_sig(const char *dir, int depth, uint64_t *size, int64_t *mt)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    if (!d)
        return;
    while ((de = readdir(d)) && n++ < KEEL__BUNDLE_MAX_ENTRIES) {
        char p[PATH_MAX];
        struct stat st;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            keel__snprintf(p, sizeof(p), "%s/%s", dir, de->d_name) || lstat(p, &st) != 0)
            continue;
        *size += (uint64_t)st.st_size;
        if (mtime_ns(&st) > *mt)
            *mt = mtime_ns(&st);
        if (S_ISDIR(st.st_mode) && depth == 0)
            dir_sig(p, 1, size, mt);
    }
    closedir(d);
}

static watched *watch_find(struct keel__rt_import *im, const char *name)
{
    for (size_t i = 0; i < im->nw; i++)
        if (!strcmp(im->w[i].name, name))
            return &im->w[i];
    if (im->nw == WATCH_MAX)
        return NULL;
    watched *w = &im->w[im->nw++];
    memset(w, 0, sizeof(*w));
    keel__strlcpy(w->name, name, sizeof(w->name));
    w->mtime_ns = -1;
    return w;
}

static void watch_one(keel__runtime *rt, struct keel__rt_import *im, const char *dir,
                      const char *name)
{
    char p[PATH_MAX], rp[PATH_MAX];
    struct stat st;
    if (keel__snprintf(p, sizeof(p), "%s/%s", dir, name) ||
        keel__snprintf(rp, sizeof(rp), "%s%s", p, RESULT_SUFFIX) || lstat(p, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode) && !(S_ISREG(st.st_mode) && ends_with(name, ".keel")))
        return;
    if (keel__fs_exists(rp)) /* imported before (this run or an earlier one) */
        return;
    watched *w = watch_find(im, name);
    if (!w || w->done)
        return;
    uint64_t size = (uint64_t)st.st_size;
    int64_t mt = mtime_ns(&st);
    if (S_ISDIR(st.st_mode))
        dir_sig(p, 0, &size, &mt);
    if (size != w->size || mt != w->mtime_ns) { /* new or still being copied */
        w->size = size;
        w->mtime_ns = mt;
        w->stable = 0;
        return;
    }
    w->stable++; /* unchanged since the last scan: complete */
    w->done = true;
    char *json = NULL;
    keel_error e;
    if (keel__runtime_import(rt, p, &json, &e)) {
        KEEL_LOG_E(MOD, "%s: %s", p, e.msg);
        return;
    }
    size_t len = strlen(json);
    if (keel__fs_write_atomic(rp, json, len, 0644, &e))
        KEEL_LOG_E(MOD,
                   "cannot write the outcome of importing %s: %s (it will not be imported again "
                   "until keeld restarts)",
                   p, e.msg);
    else
        KEEL_LOG_I(MOD, "outcome of %s written to %s", p, rp);
    free(json);
}

static void job_watch(void *ctx)
{
    keel__runtime *rt = ctx;
    struct keel__rt_import *im = rt->imp;
    keel__conf *c = keel__runtime_conf(rt);
    char dir[KEEL__CONF_PATH_MAX];
    keel__strlcpy(dir, c ? keel__conf_str(c, "import_dir") : "", sizeof(dir));
    keel__conf_free(c);
    if (strcmp(dir, im->watch_dir)) { /* set or changed by a reload: start afresh */
        keel__strlcpy(im->watch_dir, dir, sizeof(im->watch_dir));
        im->nw = 0;
        if (dir[0])
            KEEL_LOG_I(MOD, "watching %s for bundles to import", dir);
    }
    if (!dir[0])
        return;
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    if (!d) {
        KEEL_LOG_D(MOD, "cannot read import_dir %s: %s", dir, strerror(errno));
        return;
    }
    char names[WATCH_MAX][256];
    while ((de = readdir(d)) && n < WATCH_MAX) {
        if (de->d_name[0] == '.' || ends_with(de->d_name, RESULT_SUFFIX) ||
            ends_with(de->d_name, ".tmp") || strlen(de->d_name) >= sizeof(names[0]))
            continue;
        keel__strlcpy(names[n++], de->d_name, sizeof(names[0]));
    }
    closedir(d);
    /* forget entries that went away (a stick pulled out, a result removed) */
    for (size_t i = 0; i < im->nw;) {
        bool there = false;
        for (size_t k = 0; k < n; k++)
            there |= !strcmp(names[k], im->w[i].name);
        if (there)
            i++;
        else
            im->w[i] = im->w[--im->nw];
    }
    for (size_t k = 0; k < n; k++)
        watch_one(rt, im, dir, names[k]);
}

/* --- open / close --------------------------------------------------------------------------------
 */

int keel__rt_import_start(keel__runtime *rt, keel_error *err)
{
    struct keel__rt_import *im = calloc(1, sizeof(*im));
    if (!im)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_mutex_init(&im->mu, NULL);
    rt->imp = im;
    im->job = keel__jobs_add(rt->jobs, "import", 0, job_import, rt);
    im->watch_job = keel__jobs_add(rt->jobs, "import-watch", WATCH_PERIOD, job_watch, rt);
    if (!im->job || !im->watch_job)
        return keel__err(err, KEEL_ENOMEM, "the jobs table is full (import)");
    return KEEL_OK;
}

void keel__rt_import_stop(keel__runtime *rt)
{
    struct keel__rt_import *im = rt->imp;
    if (!im)
        return;
    keel__jobs_remove(rt->jobs, im->job); /* waits for a run in progress */
    keel__jobs_remove(rt->jobs, im->watch_job);
    for (size_t i = 0; i < KEEP; i++)
        free(im->recs[i].result);
    pthread_mutex_destroy(&im->mu);
    free(im);
    rt->imp = NULL;
}
