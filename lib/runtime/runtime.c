/*
 * runtime.c - opening and closing the device's live state, readiness, and
 * the package actions (runtime.h). The order of open is the order of
 * dependence: the bus and the store first, then the queue (the shadow and
 * the engine produce into it), the uplink (reads the queue), the router,
 * the engine, and last the jobs that touch all of them. The metrics
 * registry comes before all of them (each registers its families there)
 * and goes after them. Close runs it backwards. docs/internals/runtime.md
 * draws the threads.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json.h"
#include "keel/layout.h"
#include "keel/trust.h"
#include "queue/options.h"
#include "store/options.h"
#include "runtime/peers.h"
#include "runtime/rt.h"

#define MOD "runtime"

/* --- parts ---------------------------------------------------------------------------- */

keel_store *keel__runtime_store(keel__runtime *rt)
{
    return rt->store;
}

keel__infer *keel__runtime_infer(keel__runtime *rt)
{
    return rt->infer;
}

keel__bus *keel__runtime_bus(keel__runtime *rt)
{
    return rt->bus;
}

const char *keel__runtime_token(keel__runtime *rt)
{
    return rt->token;
}

uint64_t keel__runtime_setting_u64(keel__runtime *rt, const char *name)
{
    pthread_mutex_lock(&rt->lock);
    uint64_t v = keel__conf_u64(rt->conf, name);
    pthread_mutex_unlock(&rt->lock);
    return v;
}

bool keel__runtime_setting_bool(keel__runtime *rt, const char *name)
{
    pthread_mutex_lock(&rt->lock);
    bool v = keel__conf_bool(rt->conf, name);
    pthread_mutex_unlock(&rt->lock);
    return v;
}

keel__conf *keel__runtime_conf(keel__runtime *rt)
{
    pthread_mutex_lock(&rt->lock);
    keel__conf *c = keel__conf_copy(rt->conf);
    pthread_mutex_unlock(&rt->lock);
    return c;
}

const char *keel__runtime_state_dir(keel__runtime *rt)
{
    return rt->state_dir;
}

const char *keel__runtime_device_id(keel__runtime *rt)
{
    return rt->device_id;
}

void keel__runtime_path(keel__runtime *rt, int f, char *buf, size_t n)
{
    (void)keel_state_path(rt->state_dir, (keel_state_file)f, buf, n);
}

/* The effective trust dir: trust_dir, or STATE_DIR/trust. */
void keel__rt_trust_dir(keel__runtime *rt, char *buf, size_t n)
{
    pthread_mutex_lock(&rt->lock); /* a reload may change trust_dir */
    const char *t = keel__conf_str(rt->conf, "trust_dir");
    if (t[0])
        keel__strlcpy(buf, t, n);
    else
        (void)keel_state_path(rt->state_dir, KEEL_STATE_TRUST, buf, n);
    pthread_mutex_unlock(&rt->lock);
}

int keel__runtime_every(keel__runtime *rt, const char *name, uint64_t period_s,
                        void (*fn)(void *ctx), void *ctx)
{
    return keel__jobs_add(rt->jobs, name, period_s, fn, ctx);
}

void keel__runtime_cancel(keel__runtime *rt, int id)
{
    keel__jobs_remove(rt->jobs, id);
}

/* --- readiness --------------------------------------------------------------------------- */

void keel__runtime_refresh(keel__runtime *rt, unsigned flags)
{
    bool ready = false;
    char why[sizeof(rt->why)];
    keel_error e;
    if (keel_store_resolve_all(rt->store, flags, &ready, why, sizeof(why), &e)) {
        ready = false;
        snprintf(why, sizeof(why), "cannot read the store: %s", e.msg);
    }
    if (rt->infer) {
        char iwhy[1024];
        if (keel__infer_refresh(rt->infer, &e))
            KEEL_LOG_E(MOD, "loading models: %s", e.msg);
        if (!keel__infer_ready(rt->infer, iwhy, sizeof(iwhy))) {
            size_t o = strlen(why);
            ready = false;
            snprintf(why + o, sizeof(why) - o, "%s%s", o ? "; " : "", iwhy);
        }
    }
    pthread_mutex_lock(&rt->lock);
    bool changed = ready != rt->ready || strcmp(why, rt->why) != 0;
    if (changed) {
        if (ready && !why[0])
            KEEL_LOG_I(MOD, "ready");
        else
            KEEL_LOG_W(MOD, "%s: %s", ready ? "ready, degraded" : "not ready", why);
    }
    rt->ready = ready;
    keel__strlcpy(rt->why, why, sizeof(rt->why));
    pthread_mutex_unlock(&rt->lock);
    if (changed) {
        keel__bus_event ev = {.type = KEEL__BUS_READY, .ok = ready, .reason = why};
        keel__bus_publish(rt->bus, &ev);
    }
}

bool keel__runtime_ready(keel__runtime *rt)
{
    pthread_mutex_lock(&rt->lock);
    bool r = rt->ready;
    pthread_mutex_unlock(&rt->lock);
    return r;
}

char *keel__runtime_readiness_json(keel__runtime *rt, bool *ret_ready)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    pthread_mutex_lock(&rt->lock);
    bool ready = rt->ready;
    int rc = keel__buf_appendf(&b, "{\"ready\":%s,\"reason\":", ready ? "true" : "false");
    if (!rc)
        rc = keel__json_quote(&b, rt->why);
    pthread_mutex_unlock(&rt->lock);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    if (rc) {
        keel__buf_done(&b);
        return NULL;
    }
    *ret_ready = ready;
    return keel__buf_steal(&b);
}

char *keel__runtime_status_json(keel__runtime *rt, keel_error *err)
{
    char *store = NULL, *ready = NULL, *inf = NULL, *up = NULL, *ro = NULL, *jobs = NULL;
    char *peers = keel__runtime_peers_json(rt);
    char *prob = NULL;
    bool r;
    keel_buf b;
    keel__buf_init(&b, 0);
    if (keel_store_status_json(rt->store, &store, err))
        return NULL;
    ready = keel__runtime_readiness_json(rt, &r);
    int rc = !ready;
    if (!rc)
        rc = keel__buf_appendf(
            &b, "{\"keel_version\":\"%s\",\"uptime_s\":%llu,\"state_dir\":", keel_version(),
            (unsigned long long)((keel__now_mono_ns() - rt->started_ns) / 1000000000ull));
    if (!rc)
        rc = keel__json_quote(&b, rt->state_dir);
    inf = rt->infer ? keel__infer_status_json(rt->infer) : NULL;
    up = rt->uplink ? keel__uplink_status_json(rt->uplink) : NULL;
    ro = rt->router ? keel__router_status_json(rt->router) : NULL;
    jobs = keel__jobs_status_json(rt->jobs);
    char *upd = rt->update ? keel__runtime_update_json(rt) : NULL;
    if (upd && upd[0] && upd[strlen(upd) - 1] == '\n')
        upd[strlen(upd) - 1] = '\0';
    prob = keel__rt_probation_status_json(rt);
    keel_queue_stats rs;
    keel_error rse;
    long long pending =
        rt->reprocess && !keel_queue_stats_get(rt->reprocess, &rs, &rse) ? (long long)rs.depth : 0;
    if (!rc)
        rc = keel__buf_appendf(
            &b,
            ",\"readiness\":%s,\"store\":%s,\"inference\":%s,\"uplink\":%s,"
            "\"upstream\":%s,\"reprocess_pending\":%lld,\"jobs\":%s,"
            "\"peers\":%s,\"updates\":%s,\"probation\":%s,"
            "\"bus\":{\"published\":%llu,\"subscribers\":%zu}}\n",
            ready, store, inf ? inf : "{}", up ? up : "null", ro ? ro : "null", pending,
            jobs ? jobs : "{}", peers ? peers : "[]", upd ? upd : "null", prob ? prob : "{}",
            (unsigned long long)keel__bus_published(rt->bus), keel__bus_subscribers(rt->bus));
    free(inf);
    free(up);
    free(ro);
    free(jobs);
    free(peers);
    free(upd);
    free(prob);
    free(store);
    free(ready);
    if (rc) {
        keel__buf_done(&b);
        keel__err(err, KEEL_ENOMEM, "out of memory");
        return NULL;
    }
    return keel__buf_steal(&b);
}

/* --- metrics: the runtime's own families ------------------------------------------------- */

keel__metrics *keel__runtime_metrics_registry(keel__runtime *rt)
{
    return rt->metrics;
}

enum { F_UP, F_READY, F_QDEPTH, F_QBYTES, F_QEVICTED, F_QREFUSED };

static const keel__metric_desc families[] = {
    [F_UP] = {.name = "keel_up", .help = "keeld is running.", .type = KEEL_METRIC_GAUGE},
    [F_READY] = {.name = "keel_ready",
                 .help = "Whether keeld is ready to serve.",
                 .type = KEEL_METRIC_GAUGE},
    [F_QDEPTH] = {.name = "keel_queue_depth",
                  .help = "Messages waiting, by priority class.",
                  .type = KEEL_METRIC_GAUGE,
                  .nlabels = 1,
                  .labels = {"class"}},
    [F_QBYTES] = {.name = "keel_queue_bytes",
                  .help = "Bytes waiting, by priority class.",
                  .type = KEEL_METRIC_GAUGE,
                  .nlabels = 1,
                  .labels = {"class"}},
    [F_QEVICTED] = {.name = "keel_queue_evicted_total",
                    .help = "Messages evicted to make room.",
                    .type = KEEL_METRIC_COUNTER,
                    .nlabels = 1,
                    .labels = {"class"}},
    [F_QREFUSED] = {.name = "keel_queue_refused_total",
                    .help = "Enqueues refused (backpressure).",
                    .type = KEEL_METRIC_COUNTER,
                    .nlabels = 1,
                    .labels = {"class"}},
};

/* Readiness and the queue's statistics, copied in at scrape time. */
static void collect(void *ctx)
{
    keel__runtime *rt = ctx;
    keel_queue_stats st;
    keel_error e;
    int rc = keel__metrics_set(rt->fam[F_READY], NULL, keel__runtime_ready(rt) ? 1 : 0, &e);
    if (!rc && (rc = keel_queue_stats_get(rt->queue, &st, &e)))
        return; /* the queue's families keep their last values */
    for (int k = 0; !rc && k < KEEL_PRIO_COUNT; k++) {
        const keel_queue_class_stats *cs = &st.cls[k];
        const char *v[] = {keel_prio_name((keel_prio)k)};
        if (!(rc = keel__metrics_set(rt->fam[F_QDEPTH], v, (double)cs->depth, &e)) &&
            !(rc = keel__metrics_set(rt->fam[F_QBYTES], v, (double)cs->bytes, &e)) &&
            !(rc = keel__metrics_set(rt->fam[F_QEVICTED], v, (double)cs->evicted, &e)))
            rc = keel__metrics_set(rt->fam[F_QREFUSED], v, (double)cs->refused, &e);
    }
    if (rc)
        KEEL_LOG_D(MOD, "metrics incomplete: %s", e.msg);
}

/* The registry, the runtime's families (first in the exposition) and its collector. */
static int metrics_open(keel__runtime *rt, keel_error *err)
{
    int rc = keel__metrics_new(&rt->metrics, err);
    for (size_t f = 0; !rc && f < KEEL_ARRAY_LEN(families); f++)
        rc = keel__metrics_register(rt->metrics, &families[f], &rt->fam[f], err);
    if (!rc)
        rc = keel__metrics_set(rt->fam[F_UP], NULL, 1, err);
    return rc;
}

/* --- package actions --------------------------------------------------------------------- */

static void publish_pkg(keel__runtime *rt, unsigned type, const char *name, const char *version,
                        const char *detail)
{
    keel__bus_event ev = {.type = type, .package = name, .version = version, .detail = detail};
    keel__bus_publish(rt->bus, &ev);
}

/* The trust dir in force, loaded for one package decision. A trust dir that
 * does not load is the device's problem, not the package's: NOTREADY. */
static int load_trust(keel__runtime *rt, keel_trust **ret, keel_error *err)
{
    char tdir[PATH_MAX];
    keel__rt_trust_dir(rt, tdir, sizeof(tdir));
    int rc = keel_trust_load(tdir, ret, err);
    if (rc) {
        keel__err_prefix(err, "cannot check any package: the trust dir is broken");
        if (err)
            err->code = KEEL_ENOTREADY;
        rc = KEEL_ENOTREADY;
    }
    return rc;
}

static int installed(keel__runtime *rt, int rc, const keel_install_result *ret, keel_error *err)
{
    if (rc) {
        KEEL_LOG_W(MOD, "install refused: %s", err ? err->msg : "");
        return rc;
    }
    keel__runtime_refresh(rt, 0);
    if (!ret->already)
        publish_pkg(rt, KEEL__BUS_INSTALL, ret->name, ret->version, ret->digest);
    if (ret->activated)
        publish_pkg(rt, KEEL__BUS_ACTIVATE, ret->name, ret->version, ret->digest);
    return KEEL_OK;
}

int keel__runtime_install(keel__runtime *rt, const char *path, unsigned flags,
                          keel_install_result *ret, keel_error *err)
{
    keel_trust *t = NULL;
    int rc = load_trust(rt, &t, err);
    if (!rc)
        rc = keel_store_install(rt->store, path, t, flags, ret, err);
    keel_trust_free(t);
    return installed(rt, rc, ret, err);
}

int keel__runtime_install_dir(keel__runtime *rt, const char *dir, unsigned flags,
                              keel_install_result *ret, keel_error *err)
{
    keel_trust *t = NULL;
    int rc = load_trust(rt, &t, err);
    if (!rc)
        rc = keel_store_install_dir(rt->store, dir, t, flags, ret, err);
    keel_trust_free(t);
    return installed(rt, rc, ret, err);
}

int keel__runtime_slot_action(keel__runtime *rt, unsigned type, const char *name,
                              const char *version, keel_serving *ret, keel_error *err)
{
    int rc;
    keel__rt_trust_poll(rt); /* a trust change not yet seen counts for this action */
    switch (type) {
    case KEEL__BUS_ACTIVATE:
        rc = keel_store_activate(rt->store, name, version, err);
        break;
    case KEEL__BUS_ROLLBACK:
        rc = keel_store_rollback(rt->store, name, err);
        break;
    case KEEL__BUS_MARK_GOOD:
        rc = keel_store_mark_good(rt->store, name, err);
        break;
    default:
        return keel__err(err, KEEL_EINVALID, "unknown package action %u", type);
    }
    if (rc) {
        KEEL_LOG_W(MOD, "%s refused: %s", name, err ? err->msg : "");
        return rc;
    }
    keel__runtime_refresh(rt, 0);
    if ((rc = keel_store_resolve(rt->store, name, 0, ret, err)))
        return rc;
    publish_pkg(rt, type, ret->name, ret->version, keel_slot_name(ret->slot));
    return KEEL_OK;
}

int keel__runtime_gc(keel__runtime *rt, uint64_t *ret_freed, keel_error *err)
{
    int rc = keel_store_gc(rt->store, ret_freed, err);
    if (!rc)
        publish_pkg(rt, KEEL__BUS_GC, NULL, NULL, NULL);
    return rc;
}

int keel__runtime_upload_file(keel__runtime *rt, char *path, size_t n, int *ret_fd, keel_error *err)
{
    char dir[PATH_MAX];
    keel__runtime_path(rt, KEEL_STATE_STAGING, dir, sizeof(dir));
    if (keel__snprintf(path, n, "%s/upload-XXXXXX", dir))
        return keel__err(err, KEEL_ETOOBIG, "state dir path too long: %s", dir);
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        path[0] = '\0';
        return keel__err_errno(err, keel__err_from_errno(e), e,
                               "cannot create an upload file in %s", dir);
    }
    *ret_fd = fd;
    return KEEL_OK;
}

/* --- events -------------------------------------------------------------------------------- */

typedef struct submit_ctx {
    keel__runtime *rt;
    keel_queue_done_fn done;
    void *ctx;
    bool critical;
} submit_ctx;

static void submitted(void *arg, int rc, uint64_t id, const keel_error *err)
{
    submit_ctx *s = arg;
    if (!rc)
        keel__rt_wake(s->rt, s->critical);
    else if (rc == KEEL_ENOSPACE)
        KEEL_LOG_W(MOD, "event refused: %s", err->msg);
    s->done(s->ctx, rc, id, err);
    free(s);
}

int keel__runtime_submit(keel__runtime *rt, const keel_msg_in *m, keel_queue_done_fn done,
                         void *ctx, keel_error *err)
{
    submit_ctx *s = malloc(sizeof(*s));
    if (!s)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    *s =
        (submit_ctx){.rt = rt, .done = done, .ctx = ctx, .critical = m->prio == KEEL_PRIO_CRITICAL};
    int rc = keel_queue_enqueue_async(rt->queue, m, submitted, s, err);
    if (rc) {
        if (rc == KEEL_ENOSPACE)
            KEEL_LOG_W(MOD, "event refused: %s", err ? err->msg : "");
        free(s);
    }
    return rc;
}

int keel__runtime_queue_json(keel__runtime *rt, char **ret, keel_error *err)
{
    keel_queue_stats st;
    keel__rt_expire_maybe(rt);
    int rc = keel_queue_stats_get(rt->queue, &st, err);
    return rc ? rc : keel_queue_stats_json(&st, ret, err);
}

/* --- the shadow ----------------------------------------------------------------------------- */

char *keel__runtime_shadow_json(keel__runtime *rt)
{
    return keel__shadow_json(rt->shadow);
}

int keel__runtime_shadow_set(keel__runtime *rt, const char *body, size_t len, keel_error *err)
{
    cJSON *j = NULL;
    const cJSON *set = NULL, *it;
    int rc = keel__json_parse(body ? body : "", len, "shadow change ({\"set\": {\"key\": value}})",
                              &j, err);
    if (!rc)
        rc = keel__json_member(j, "set", cJSON_Object, true, &set, "shadow change", err);
    cJSON_ArrayForEach(it, set)
    {
        char *v = keel__json_print(it);
        if (!rc)
            rc = v ? keel__shadow_set_local(rt->shadow, it->string, v, err)
                   : keel__err(err, KEEL_ENOMEM, "out of memory");
        free(v);
        if (!rc) {
            keel__bus_event ev = {.type = KEEL__BUS_SHADOW, .detail = it->string, .ok = true};
            keel__bus_publish(rt->bus, &ev);
        }
    }
    cJSON_Delete(j);
    if (rc)
        return rc;
    keel__rt_apply_shadow(rt);
    keel__rt_report_shadow(rt);
    return KEEL_OK;
}

/* --- jobs ------------------------------------------------------------------------------------ */

static void job_verify(void *ctx)
{
    KEEL_LOG_I(MOD, "background re-check: re-hashing every installed file");
    keel__runtime_refresh(ctx, KEEL_VERIFY_DEEP);
}

static void job_expire(void *ctx)
{
    keel__rt_expire_maybe(ctx);
}

/* --- engine events onto the bus --------------------------------------------------------------- */

static void on_infer_event(void *ctx, const keel__infer_event *ie)
{
    keel__runtime *rt = ctx;
    keel__bus_event ev = {.package = ie->model,
                          .version = ie->version,
                          .tier = ie->tier,
                          .from_tier = ie->from_tier,
                          .reason = ie->reason,
                          .result = ie->result,
                          .confidence = ie->confidence,
                          .degraded = ie->degraded,
                          .ns = ie->ns};
    switch (ie->type) {
    case KEEL__EV_TRANSITION: /* logged here, once; the engine only counts it */
        if (ie->degraded)
            KEEL_LOG_W(MOD, "%s@%s now served by tier %s (was %s): %s", ie->model, ie->version,
                       ie->tier, ie->from_tier, ie->reason && ie->reason[0] ? ie->reason : "?");
        else
            KEEL_LOG_I(MOD, "%s@%s served by tier %s again (was %s)", ie->model, ie->version,
                       ie->tier, ie->from_tier);
        ev.type = KEEL__BUS_TIER;
        break;
    case KEEL__EV_ALL_FAILED:
        ev.type = KEEL__BUS_ALL_FAILED;
        break;
    case KEEL__EV_OUTCOME: /* probation's input (probation.c); nothing allocated */
        ev.type = KEEL__BUS_OUTCOME;
        ev.ok = ie->ok;
        break;
    case KEEL__EV_ESCALATION_FAILED: /* kept for re-processing (reprocess.c) */
        ev.type = KEEL__BUS_ESCALATION;
        ev.data = ie->raw;
        ev.len = ie->raw_len;
        ev.json_len = ie->raw_json_len ? ie->raw_json_len : ie->raw_len;
        break;
    default:
        ev.type = KEEL__BUS_INFER;
        ev.ok = true;
        break;
    }
    keel__bus_publish(rt->bus, &ev);
}

/* --- open / close ------------------------------------------------------------------------------
 */

/* Reads STATE_DIR/token, creating it (0600, 32 random bytes as hex) when absent. */
static int load_token(const char *path, char out[65], keel_error *err)
{
    char *data = NULL;
    size_t len;
    if (keel__fs_read(path, 256, &data, &len, NULL) == KEEL_OK) {
        while (len && (data[len - 1] == '\n' || data[len - 1] == ' '))
            len--;
        uint8_t raw[32];
        bool ok = len == 64 && keel_hex_decode(data, 64, raw, sizeof(raw)) == KEEL_OK;
        if (ok)
            memcpy(out, data, 64);
        out[64] = '\0';
        free(data);
        struct stat st; /* an older keel, or a hand-written token: owner only */
        if (ok && stat(path, &st) == 0 && (st.st_mode & 077) && chmod(path, 0600) != 0)
            return keel__err_errno(err, keel__err_from_errno(errno), errno,
                                   "the API token %s is readable by other users and cannot be "
                                   "made private (chmod 600 it)",
                                   path);
        if (ok)
            return KEEL_OK;
        KEEL_LOG_W(MOD, "%s is not 64 hex digits; writing a new token", path);
    }
    uint8_t raw[32];
    int rc = keel__random_bytes(raw, sizeof(raw), err);
    if (rc)
        return rc;
    keel_hex_encode(raw, sizeof(raw), out);
    char line[66];
    snprintf(line, sizeof(line), "%s\n", out);
    if ((rc = keel__fs_write_atomic(path, line, 65, 0600, err)))
        return rc;
    KEEL_LOG_I(MOD, "wrote a new API token to %s (readable by this user only)", path);
    return KEEL_OK;
}

/* Uploads a killed keeld left in staging/. */
static void clean_uploads(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, "upload-", 7)) {
            char p[PATH_MAX];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
}

int keel__runtime_open(const keel__conf *conf, keel__runtime **ret, keel_error *err)
{
    keel__runtime *rt = calloc(1, sizeof(*rt));
    char path[PATH_MAX], staging[PATH_MAX];
    keel_limits lim;
    keel_queue_opts qo;
    int rc;
    if (!rt || !(rt->conf = keel__conf_copy(conf))) {
        free(rt);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&rt->lock, NULL);
    pthread_mutex_init(&rt->fold_mu, NULL);
    rt->started_ns = keel__now_mono_ns();
    const char *sd = keel__conf_str(conf, "state_dir");
    if (keel__snprintf(rt->state_dir, sizeof(rt->state_dir), "%s", sd) ||
        keel__snprintf(staging, sizeof(staging), "%s/staging", sd)) {
        rc = keel__err(err, KEEL_ETOOBIG, "state_dir is too long: %s", sd);
        goto fail;
    }
    const char *dev = keel__conf_str(conf, "device_id"); /* default: the host name */
    if (dev[0])
        keel__strlcpy(rt->device_id, dev, sizeof(rt->device_id));
    else if (gethostname(rt->device_id, sizeof(rt->device_id) - 1) || !rt->device_id[0])
        keel__strlcpy(rt->device_id, "keel", sizeof(rt->device_id));
    if ((rc = metrics_open(rt, err))) /* before every module that registers families */
        goto fail;
    if (!(rt->bus = keel__bus_new())) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto fail;
    }
    keel__store_limits_from(conf, &lim);
    if ((rc = keel__fs_mkdir_p(sd, 0700, err)) || (rc = keel__fs_mkdir_p(staging, 0700, err)) ||
        (rc = keel_store_open(sd, &lim, &rt->store, err)))
        goto fail;
    keel__runtime_path(rt, KEEL_STATE_TOKEN, path, sizeof(path));
    if ((rc = load_token(path, rt->token, err)))
        goto fail;
    clean_uploads(staging);
    keel__runtime_path(rt, KEEL_STATE_SHADOW, path, sizeof(path));
    if ((rc = keel__shadow_open(path, &rt->shadow, err)))
        goto fail;
    keel__queue_opts_from(conf, &qo);
    keel__runtime_path(rt, KEEL_STATE_QUEUE_DB, path, sizeof(path));
    if ((rc = keel__fs_private_db(path, err)) ||
        (rc = keel_queue_open(path, &qo, &rt->queue, err)) ||
        (rc = keel__metrics_collector_add(rt->metrics, collect, rt, err)))
        goto fail;
    keel_queue_stats qs;
    keel_error qe;
    if (!keel_queue_stats_get(rt->queue, &qs, &qe)) /* report evictions from now on */
        for (int p = 0; p < KEEL_PRIO_COUNT; p++)
            rt->evict_reported[p] = qs.cls[p].evicted;
    rt->sub_reporter = keel__bus_subscribe(rt->bus,
                                           KEEL__BUS_INFER | KEEL__BUS_TIER | KEEL__BUS_ALL_FAILED |
                                               KEEL__BUS_UPDATE | KEEL__BUS_REVOKED,
                                           keel__rt_reporter, rt);
    if (!rt->sub_reporter) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto fail;
    }
    if (!(rt->jobs = keel__jobs_start())) {
        rc = keel__err(err, KEEL_EIO, "cannot start the background jobs thread");
        goto fail;
    }
    if ((rc = keel__rt_link_start(rt, err)) || (rc = keel__rt_reprocess_start(rt, err)) ||
        (rc = keel__rt_probation_start(rt, err)))
        goto fail;
    char cache[PATH_MAX];
    keel__runtime_path(rt, KEEL_STATE_CACHE_ONNX, cache, sizeof(cache));
    keel__infer_opts io = {.event = on_infer_event,
                           .event_ctx = rt,
                           .upstream = rt->router,
                           .cache_dir = cache,
                           .max_sessions = (size_t)keel__conf_u64(conf, "max_sessions"),
                           .session_idle_s = keel__conf_u64(conf, "session_idle"),
                           .metrics = rt->metrics};
    if ((rc = keel__infer_new(rt->store, &io, &rt->infer, err)))
        goto fail;
    keel_store_set_validator(rt->store, keel__infer_validator, rt->infer);
    if ((rc = keel__rt_revocation_start(rt, err))) /* what is revoked does not serve */
        goto fail;
    keel__runtime_refresh(rt, 0);
    if ((rc = keel__rt_peers_start(rt, err)) || /* before updates: they ask for peers */
        (rc = keel__rt_update_start(rt, err)))
        goto fail;
    rt->job_verify = keel__jobs_add(rt->jobs, "reverify", keel__conf_u64(conf, "verify_interval"),
                                    job_verify, rt);
    rt->job_expire = keel__jobs_add(rt->jobs, "expire", 10, job_expire, rt);
    if ((rc = keel__rt_import_start(rt, err)))
        goto fail;
    *ret = rt;
    return KEEL_OK;
fail:
    keel__runtime_close(rt);
    return rc;
}

void keel__runtime_close(keel__runtime *rt)
{
    if (!rt)
        return;
    keel__rt_update_stop(rt);  /* first: downloads and activations touch everything below */
    keel__jobs_stop(rt->jobs); /* jobs too */
    rt->jobs = NULL;
    keel__rt_import_stop(rt);
    keel__rt_peers_stop(rt);
    keel__rt_revocation_stop(rt);
    if (rt->infer)
        keel_store_set_validator(rt->store, NULL, NULL);
    keel__infer_free(rt->infer); /* produces into the queue through the bus */
    keel__rt_probation_stop(rt); /* after the engine: it counts its outcomes */
    keel__rt_reprocess_stop(rt);
    keel__rt_link_stop(rt); /* before the queue: the uplink reads from it */
    keel__bus_unsubscribe(rt->bus, rt->sub_reporter);
    if (rt->metrics) /* it reads the queue */
        keel__metrics_collector_remove(rt->metrics, collect, rt);
    keel_queue_close(rt->queue);
    keel__shadow_close(rt->shadow); /* after the uplink: it applies desired documents */
    keel_store_close(rt->store);
    keel__bus_free(rt->bus);
    keel__metrics_free(rt->metrics); /* last: every module above registered in it */
    pthread_mutex_destroy(&rt->fold_mu);
    pthread_mutex_destroy(&rt->lock);
    keel__conf_free(rt->conf);
    free(rt);
}

void keel__runtime_reload(keel__runtime *rt, const keel__conf *next)
{
    const keel__option *changed[64];
    keel__conf *nc = keel__conf_copy(next);
    if (!nc) {
        KEEL_LOG_E(MOD, "reload: out of memory; keeping the old config");
        return;
    }
    pthread_mutex_lock(&rt->lock);
    size_t n = keel__conf_changes(rt->conf, nc, changed, KEEL_ARRAY_LEN(changed));
    bool verify = false;
    for (size_t i = 0; i < n && i < KEEL_ARRAY_LEN(changed); i++) {
        if (!changed[i]->reloadable)
            KEEL_LOG_W(MOD, "%s changes only on restart; keeping the value in force",
                       changed[i]->name);
        verify |= !strcmp(changed[i]->name, "verify_interval");
    }
    keel__conf_keep_fixed(nc, rt->conf); /* what needs a restart stays as it is */
    keel__conf *old = rt->conf;
    rt->conf = nc;
    keel_limits lim;
    keel__store_limits_from(nc, &lim);
    uint64_t interval = keel__conf_u64(nc, "verify_interval");
    keel_log_level level = (keel_log_level)keel__conf_u64(nc, "log_level");
    pthread_mutex_unlock(&rt->lock);
    keel__conf_free(old);
    keel_store_set_limits(rt->store, &lim);
    keel_log_set_level(level);
    if (verify) /* a new interval counts from the reload */
        keel__jobs_set_period(rt->jobs, rt->job_verify, interval);
    keel__bus_event ev = {.type = KEEL__BUS_CONFIG, .ok = true};
    keel__bus_publish(rt->bus, &ev);
    keel__runtime_trust_changed(rt); /* re-read the trust dir (TRUST event), refresh */
}
