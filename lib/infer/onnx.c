/*
 * onnx.c - the onnx backend: ONNX Runtime sessions through ort.c.
 *
 * Tier options (manifest "options"):
 *   intra_op_threads      int, default 1 (edge devices share their cores)
 *   graph_optimization    "disable" | "basic" | "extended" | "all" (default)
 *   execution_providers   preference list, e.g. ["cuda", "cpu"]; CPU when
 *                         none of them is available
 *   optimized_cache       bool, default true: keep the optimized graph in
 *                         STATE_DIR/cache/onnx so the next start skips it
 */
#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "infer/backend.h"

#define MOD "onnx"

typedef struct onnx {
    keel__ort_session *s;
    uint64_t memory;
} onnx;

static int opt_level(const cJSON *opts, int *ret, keel_error *err)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"disable", 0}, {"basic", 1}, {"extended", 2}, {"all", 99}};
    const char *v = NULL;
    int rc = keel__json_str(opts, "graph_optimization", false, 16, &v, "options", err);
    if (rc || !v)
        return rc;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(levels); i++)
        if (!strcmp(v, levels[i].name)) {
            *ret = levels[i].level;
            return KEEL_OK;
        }
    return keel__err(err, KEEL_EINVALID,
                     "options.graph_optimization: \"%s\" is not disable, basic, extended or all",
                     v);
}

/* A 76-byte graph (y = Identity(x), opset 13) that keel made itself. The
 * first session in a process grows it by several MiB of runtime state
 * (thread pools, arenas, kernel registries) that no one model owns; loading
 * this once first keeps that out of every tier's memory budget. */
static const unsigned char warm_model[] = {
    0x08, 0x07, 0x12, 0x04, 0x6b, 0x65, 0x65, 0x6c, 0x3a, 0x3c, 0x0a, 0x10, 0x0a, 0x01, 0x78,
    0x12, 0x01, 0x79, 0x22, 0x08, 0x49, 0x64, 0x65, 0x6e, 0x74, 0x69, 0x74, 0x79, 0x12, 0x06,
    0x77, 0x61, 0x72, 0x6d, 0x75, 0x70, 0x5a, 0x0f, 0x0a, 0x01, 0x78, 0x12, 0x0a, 0x0a, 0x08,
    0x08, 0x01, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x01, 0x62, 0x0f, 0x0a, 0x01, 0x79, 0x12, 0x0a,
    0x0a, 0x08, 0x08, 0x01, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x01, 0x42, 0x04, 0x0a, 0x00, 0x10,
    0x0d};
static keel__ort_session *warm_session;
static pthread_once_t warm_once = PTHREAD_ONCE_INIT;
/* Loads are measured one at a time so concurrent loads do not blur budgets. */
static pthread_mutex_t measure_mu = PTHREAD_MUTEX_INITIALIZER;

static void warm_up(void)
{
    keel__ort_opts o = {.intra_threads = 1, .opt_level = 99};
    if (keel__ort_session_from_memory(warm_model, sizeof(warm_model), &o, &warm_session, NULL))
        warm_session = NULL; /* only the budgets get less precise */
}

static int onnx_load(const keel__tier_ctx *ctx, void **ret, keel_error *err)
{
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(ctx->tier, "options");
    keel__ort_opts o = {.intra_threads = 1, .opt_level = 99};
    const char *eps[8];
    uint64_t threads = 1;
    int rc;
    if (opts && !cJSON_IsObject(opts))
        return keel__err(err, KEEL_EINVALID, "options: expected an object");
    if ((rc = keel__json_u64(opts, "intra_op_threads", false, &threads, "options", err)) ||
        (rc = opt_level(opts, &o.opt_level, err)))
        return rc;
    if (threads > 256)
        return keel__err(err, KEEL_EINVALID, "options.intra_op_threads: %llu is over 256",
                         (unsigned long long)threads);
    o.intra_threads = (int)threads;
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(opts, "execution_providers"), *it;
    cJSON_ArrayForEach(it, ep)
    {
        if (!cJSON_IsString(it) || o.nproviders == KEEL_ARRAY_LEN(eps))
            return keel__err(err, KEEL_EINVALID,
                             "options.execution_providers: expected up to 8 names");
        eps[o.nproviders++] = it->valuestring;
    }
    o.providers = eps;

    /* The optimized graph is cached by model hash, level and runtime
     * version: a different model or runtime never picks up a stale file. */
    char cache[PATH_MAX] = "", tmp[PATH_MAX + 16] = "";
    const cJSON *use_cache = cJSON_GetObjectItemCaseSensitive(opts, "optimized_cache");
    bool cached = false;
    if ((rc = keel__ort_load(NULL, err)))
        return rc;
    if (ctx->cache_dir && ctx->model_hex && !cJSON_IsFalse(use_cache) && !o.nproviders &&
        !keel__snprintf(cache, sizeof(cache), "%s/%s-o%d-ort%s.onnx", ctx->cache_dir,
                        ctx->model_hex, o.opt_level, keel__ort_version())) {
        cached = access(cache, R_OK) == 0;
        if (!cached && !keel__fs_mkdir_p(ctx->cache_dir, 0700, NULL)) {
            snprintf(tmp, sizeof(tmp), "%s.%d.tmp", cache, (int)getpid());
            o.optimized_model_path = tmp;
        }
    }
    onnx *m = calloc(1, sizeof(*m));
    if (!m)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_once(&warm_once, warm_up);
    pthread_mutex_lock(&measure_mu);
    uint64_t before = keel__rss_bytes();
    if (cached) {
        keel__ort_opts co = o;
        co.opt_level = 0; /* already optimized */
        rc = keel__ort_session_new(cache, &co, &m->s, err);
        if (rc) { /* a damaged cache file is only a slower start */
            KEEL_LOG_W(MOD, "optimized cache %s unusable (%s); rebuilding", cache, err->msg);
            if (unlink(cache)) { /* best effort */
            }
            cached = false;
        }
    }
    if (!cached)
        rc = keel__ort_session_new(ctx->model_path, &o, &m->s, err);
    if (tmp[0]) {
        if (!rc && rename(tmp, cache) == 0)
            KEEL_LOG_D(MOD, "cached optimized graph %s", cache);
        else if (unlink(tmp)) { /* ORT may not have written it */
        }
    }
    uint64_t after = keel__rss_bytes();
    pthread_mutex_unlock(&measure_mu);
    if (rc) {
        free(m);
        return rc;
    }
    m->memory = after > before ? after - before : 0;
    *ret = m;
    return KEEL_OK;
}

typedef struct stopper {
    keel__ort_runctl *ctl;
} stopper;

static void stop_run(void *arg)
{
    keel__ort_runctl_terminate(((stopper *)arg)->ctl);
}

/* One run control per thread, reused: creating run options per request
 * costs more than the tiny models' run. Freed when the thread ends. */
static pthread_key_t ctl_key;
static pthread_once_t ctl_once = PTHREAD_ONCE_INIT;

static void ctl_free(void *p)
{
    keel__ort_runctl_free(p);
}

static void ctl_key_make(void)
{
    if (pthread_key_create(&ctl_key, ctl_free)) { /* without a key every run makes its own */
    }
}

static keel__ort_runctl *thread_ctl(keel_error *err, bool *owned)
{
    keel__ort_runctl *c = NULL;
    pthread_once(&ctl_once, ctl_key_make);
    *owned = false;
    if ((c = pthread_getspecific(ctl_key))) {
        keel__ort_runctl_reset(c);
        return c;
    }
    if (keel__ort_runctl_new(&c, err))
        return NULL;
    if (pthread_setspecific(ctl_key, c))
        *owned = true;
    return c;
}

static int onnx_run(void *inst, const keel__tensor *in, size_t nin, keel__tensor *out,
                    size_t *nout, char **result_json, uint64_t deadline_ns, keel_error *err)
{
    onnx *m = inst;
    size_t n = keel__ort_noutputs(m->s);
    if (n > KEEL__MAX_IO)
        return keel__err(err, KEEL_EUNSUPPORTED, "model has %zu outputs, more than %d", n,
                         KEEL__MAX_IO);
    if (!deadline_ns) {
        int rc = keel__ort_run(m->s, in, nin, out, err);
        if (!rc)
            *nout = n;
        return rc;
    }
    if (keel__now_mono_ns() >= deadline_ns)
        return keel__err(err, KEEL_ETIMEOUT, "deadline passed before the run started");
    bool owned = false;
    stopper st = {thread_ctl(err, &owned)};
    if (!st.ctl)
        return err ? err->code : KEEL_ENOMEM;
    uint64_t h = keel__watchdog_arm(deadline_ns, stop_run, &st);
    int rc = keel__ort_run_ctl(m->s, in, nin, out, st.ctl, err);
    keel__watchdog_disarm(h);
    if (owned)
        keel__ort_runctl_free(st.ctl);
    if (rc && keel__now_mono_ns() >= deadline_ns)
        rc = keel__err(err, KEEL_ETIMEOUT, "stopped at its deadline");
    if (!rc)
        *nout = n;
    return rc;
}

static void onnx_unload(void *inst)
{
    onnx *m = inst;
    if (!m)
        return;
    keel__ort_session_free(m->s);
    free(m);
}

static size_t onnx_ninputs(void *inst)
{
    return keel__ort_ninputs(((onnx *)inst)->s);
}

static const keel__tensor *onnx_input(void *inst, size_t i)
{
    return keel__ort_input(((onnx *)inst)->s, i);
}

static uint64_t onnx_memory(void *inst)
{
    return ((onnx *)inst)->memory;
}

static const char *onnx_device(void *inst)
{
    return keel__ort_provider(((onnx *)inst)->s);
}

const keel__backend keel__backend_onnx = {
    .name = "onnx",
    .load = onnx_load,
    .run = onnx_run,
    .unload = onnx_unload,
    .ninputs = onnx_ninputs,
    .input = onnx_input,
    .memory = onnx_memory,
    .device = onnx_device,
};

const keel__backend *keel__backend_find(const char *name)
{
    static const keel__backend *const all[] = {&keel__backend_onnx, &keel__backend_rules};
    for (size_t i = 0; name && i < KEEL_ARRAY_LEN(all); i++)
        if (!strcmp(all[i]->name, name))
            return all[i];
    return NULL;
}
