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
 *
 * Sessions (KEEL__CAP_SESSIONS) carry what a stream needs from one frame to
 * the next, as the tier's manifest object declares it:
 *   "state":   [{"input": "state", "output": "stateN", "dtype": "float32",
 *                "shape": [2, 1, 128]}]   recurrent state: input fed from
 *              the previous run's output, zero at the start
 *   "context": {"input": "input", "samples": 64}   the last samples of the
 *              previous frame prepended to input along its last axis
 * A run without a session starts from zero state and zero context and
 * keeps nothing. State outputs never leave the backend.
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
#include "infer/ort.h"

#define MOD       "onnx"
#define MAX_STATE 8

typedef struct state_pair {
    char in[64], out[64];
    int dtype;
    size_t ndim;
    int64_t shape[KEEL_TENSOR_MAX_DIMS];
    size_t nbytes;
} state_pair;

typedef struct onnx {
    keel__ort_session *s;
    uint64_t memory;
    state_pair state[MAX_STATE];
    size_t nstate;
    char ctx_input[64]; /* "" without context */
    size_t ctx_samples;
    keel__tensor pub[KEEL__MAX_IO]; /* the inputs a caller gives (names borrowed from s) */
    size_t npub;
} onnx;

/* A stream's state: one buffer per state pair, and the context samples. */
typedef struct onnx_session {
    void *state[MAX_STATE];
    float *ctx;
} onnx_session;

/* "state": [{"input", "output", "dtype", "shape"}] from the tier object. */
static int parse_state(const cJSON *a, onnx *m, keel_error *err)
{
    const cJSON *it;
    if (a && !cJSON_IsArray(a))
        return keel__err(err, KEEL_EINVALID, "state: expected an array");
    cJSON_ArrayForEach(it, a)
    {
        char w[32];
        const char *in = NULL, *out = NULL, *dtype = NULL;
        const cJSON *shape = NULL, *d;
        snprintf(w, sizeof(w), "state[%zu]", m->nstate);
        if (m->nstate == MAX_STATE)
            return keel__err(err, KEEL_ETOOBIG, "state: more than %d pairs", MAX_STATE);
        state_pair *p = &m->state[m->nstate];
        int rc;
        if ((rc = keel__json_str(it, "input", true, 63, &in, w, err)) ||
            (rc = keel__json_str(it, "output", true, 63, &out, w, err)) ||
            (rc = keel__json_str(it, "dtype", true, 16, &dtype, w, err)) ||
            (rc = keel__json_member(it, "shape", cJSON_Array, true, &shape, w, err)))
            return rc;
        keel__strlcpy(p->in, in, sizeof(p->in));
        keel__strlcpy(p->out, out, sizeof(p->out));
        p->dtype = keel__dtype_parse(dtype);
        size_t n = keel__dtype_size(p->dtype);
        if (!n)
            return keel__err(err, KEEL_EINVALID, "%s.dtype: \"%s\" is not a numeric dtype", w,
                             dtype);
        cJSON_ArrayForEach(d, shape)
        {
            if (p->ndim == KEEL_TENSOR_MAX_DIMS || !cJSON_IsNumber(d) || d->valuedouble < 1 ||
                d->valuedouble > (1 << 20) || d->valuedouble != (double)(int64_t)d->valuedouble)
                return keel__err(err, KEEL_EINVALID, "%s.shape: needs up to %d fixed sizes", w,
                                 KEEL_TENSOR_MAX_DIMS);
            p->shape[p->ndim++] = (int64_t)d->valuedouble;
            n *= (size_t)d->valuedouble;
        }
        if (!n || n > (64u << 20))
            return keel__err(err, KEEL_EINVALID, "%s: state of %zu bytes is not supported", w, n);
        p->nbytes = n;
        m->nstate++;
    }
    return KEEL_OK;
}

/* "context": {"input", "samples"} from the tier object. */
static int parse_context(const cJSON *cx, onnx *m, keel_error *err)
{
    const char *in = NULL;
    uint64_t samples = 0;
    int rc;
    if (!cx)
        return KEEL_OK;
    if ((rc = keel__json_str(cx, "input", true, 63, &in, "context", err)) ||
        (rc = keel__json_u64(cx, "samples", true, &samples, "context", err)))
        return rc;
    if (!samples || samples > 65536)
        return keel__err(err, KEEL_EINVALID, "context.samples: 1..65536");
    keel__strlcpy(m->ctx_input, in, sizeof(m->ctx_input));
    m->ctx_samples = (size_t)samples;
    return KEEL_OK;
}

/* The inputs a caller gives: the model's, without state inputs; the
 * context input takes any length on its last axis. */
static void public_inputs(onnx *m)
{
    size_t n = keel__ort_ninputs(m->s);
    for (size_t i = 0; i < n && m->npub < KEEL__MAX_IO; i++) {
        const keel__tensor *d = keel__ort_input(m->s, i);
        bool internal = false;
        for (size_t k = 0; k < m->nstate; k++)
            internal |= !strcmp(m->state[k].in, d->name);
        if (internal)
            continue;
        m->pub[m->npub] = *d;
        if (m->ctx_samples && !strcmp(d->name, m->ctx_input) && d->ndim)
            m->pub[m->npub].shape[d->ndim - 1] = -1;
        m->npub++;
    }
}

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
    0x08, 0x07, 0x12, 0x04, 0x6b, 0x65, 0x65, 0x6c, 0x3a, 0x3c, 0x0a, 0x10, 0x0a, 0x01, 0x78, 0x12,
    0x01, 0x79, 0x22, 0x08, 0x49, 0x64, 0x65, 0x6e, 0x74, 0x69, 0x74, 0x79, 0x12, 0x06, 0x77, 0x61,
    0x72, 0x6d, 0x75, 0x70, 0x5a, 0x0f, 0x0a, 0x01, 0x78, 0x12, 0x0a, 0x0a, 0x08, 0x08, 0x01, 0x12,
    0x04, 0x0a, 0x02, 0x08, 0x01, 0x62, 0x0f, 0x0a, 0x01, 0x79, 0x12, 0x0a, 0x0a, 0x08, 0x08, 0x01,
    0x12, 0x04, 0x0a, 0x02, 0x08, 0x01, 0x42, 0x04, 0x0a, 0x00, 0x10, 0x0d};
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
    onnx spec = {0}; /* state and context, checked before anything loads */
    if ((rc = parse_state(cJSON_GetObjectItemCaseSensitive(ctx->tier, "state"), &spec, err)) ||
        (rc = parse_context(cJSON_GetObjectItemCaseSensitive(ctx->tier, "context"), &spec, err)))
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
    onnx *m = malloc(sizeof(*m));
    if (!m)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    *m = spec;
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
    public_inputs(m);
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

/* One ONNX Runtime run under the deadline. */
static int run_deadline(onnx *m, const keel__tensor *in, size_t nin, keel__tensor *out,
                        size_t *nout, uint64_t deadline_ns, keel_error *err)
{
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

/* Keeps the new state and context in sess and drops the state outputs
 * from out (they are internal). Every output was checked finite. */
static int keep_state(onnx *m, onnx_session *ss, const keel__tensor *in, size_t nin,
                      keel__tensor *out, size_t *nout, keel_error *err)
{
    for (size_t k = 0; ss && k < m->nstate; k++)
        for (size_t i = 0; i < *nout; i++)
            if (!strcmp(out[i].name, m->state[k].out) && out[i].nbytes != m->state[k].nbytes)
                return keel__err(err, KEEL_ECORRUPT,
                                 "state output \"%s\" has %zu bytes, expected %zu", out[i].name,
                                 out[i].nbytes, m->state[k].nbytes);
    size_t w = 0;
    for (size_t i = 0; i < *nout; i++) {
        size_t k = 0;
        while (k < m->nstate && strcmp(out[i].name, m->state[k].out))
            k++;
        if (k == m->nstate) { /* not state: the caller's */
            out[w++] = out[i];
            continue;
        }
        if (ss) {
            free(ss->state[k]);
            ss->state[k] = out[i].data;
            out[i].data = NULL;
        }
        keel__tensor_done(&out[i]);
    }
    *nout = w;
    if (ss && m->ctx_samples)
        for (size_t i = 0; i < nin; i++)
            if (!strcmp(in[i].name, m->ctx_input)) {
                size_t per = in[i].nbytes / sizeof(float), c = m->ctx_samples;
                if (per >= c)
                    memcpy(ss->ctx, (const float *)in[i].data + per - c, c * sizeof(float));
            }
    return KEEL_OK;
}

/* Adds the session's context and state (or zeros without one) to the
 * inputs, runs, and keeps what the next frame needs. */
static int onnx_run(void *inst, void *sess, const keel__tensor *in, size_t nin, keel__tensor *out,
                    size_t *nout, char **result_json, uint64_t deadline_ns, keel_error *err)
{
    onnx *m = inst;
    onnx_session *ss = sess;
    keel__tensor all[KEEL__MAX_IO * 2];
    void *tmp[KEEL__MAX_IO + MAX_STATE] = {0};
    size_t n = 0, ntmp = 0, nres = 0;
    int rc = KEEL_OK;
    if (nin + m->nstate > KEEL_ARRAY_LEN(all))
        return keel__err(err, KEEL_ETOOBIG, "too many inputs");
    for (size_t i = 0; i < nin; i++) {
        all[n] = in[i];
        if (m->ctx_samples && !strcmp(in[i].name, m->ctx_input)) {
            /* prepend the stream's last samples along the last axis (batch 1) */
            const keel__tensor *x = &in[i];
            size_t per = x->nbytes / sizeof(float), c = m->ctx_samples;
            if (x->dtype != KEEL_DT_FLOAT32 || x->ndim < 1 || (x->ndim >= 2 && x->shape[0] != 1)) {
                rc = keel__err(err, KEEL_EINVALID,
                               "input \"%s\": context needs float32 with batch 1", x->name);
                goto out;
            }
            float *buf = malloc((per + c) * sizeof(float));
            if (!buf) {
                rc = keel__err(err, KEEL_ENOMEM, "out of memory");
                goto out;
            }
            tmp[ntmp++] = buf;
            if (ss)
                memcpy(buf, ss->ctx, c * sizeof(float));
            else
                memset(buf, 0, c * sizeof(float));
            memcpy(buf + c, x->data, per * sizeof(float));
            all[n].data = buf;
            all[n].nbytes = (per + c) * sizeof(float);
            all[n].shape[all[n].ndim - 1] += (int64_t)c;
        }
        n++;
    }
    for (size_t k = 0; k < m->nstate; k++) {
        const state_pair *p = &m->state[k];
        all[n] =
            (keel__tensor){.name = p->in, .dtype = p->dtype, .ndim = p->ndim, .nbytes = p->nbytes};
        memcpy(all[n].shape, p->shape, sizeof(p->shape));
        if (ss) {
            all[n].data = ss->state[k];
        } else {
            if (!(tmp[ntmp] = calloc(1, p->nbytes))) {
                rc = keel__err(err, KEEL_ENOMEM, "out of memory");
                goto out;
            }
            all[n].data = tmp[ntmp++];
        }
        n++;
    }
    if ((rc = run_deadline(m, all, n, out, &nres, deadline_ns, err)))
        goto out;
    for (size_t i = 0; i < nres && !rc; i++)
        if (keel__tensor_nonfinite(&out[i]))
            rc = keel__err(err, KEEL_ECORRUPT, "output \"%s\" holds NaN or Inf", out[i].name);
    if (!rc)
        rc = keep_state(m, ss, in, nin, out, &nres, err);
    if (rc) {
        for (size_t i = 0; i < nres; i++)
            keel__tensor_done(&out[i]);
        goto out;
    }
    *nout = nres;
out:
    for (size_t i = 0; i < ntmp; i++)
        free(tmp[i]);
    return rc;
}

static void onnx_session_free(void *inst, void *sess)
{
    onnx *m = inst;
    onnx_session *ss = sess;
    if (!ss)
        return;
    for (size_t k = 0; k < m->nstate; k++)
        free(ss->state[k]);
    free(ss->ctx);
    free(ss);
}

static void onnx_session_reset(void *inst, void *sess)
{
    onnx *m = inst;
    onnx_session *ss = sess;
    for (size_t k = 0; k < m->nstate; k++)
        memset(ss->state[k], 0, m->state[k].nbytes);
    if (ss->ctx)
        memset(ss->ctx, 0, m->ctx_samples * sizeof(float));
}

static int onnx_session_new(void *inst, void **ret, keel_error *err)
{
    onnx *m = inst;
    onnx_session *ss = calloc(1, sizeof(*ss));
    bool ok = ss != NULL;
    for (size_t k = 0; ok && k < m->nstate; k++)
        ok = (ss->state[k] = calloc(1, m->state[k].nbytes)) != NULL;
    if (ok && m->ctx_samples)
        ok = (ss->ctx = calloc(m->ctx_samples, sizeof(float))) != NULL;
    if (!ok) {
        onnx_session_free(m, ss);
        return keel__err(err, KEEL_ENOMEM, "out of memory for a session's state");
    }
    *ret = ss;
    return KEEL_OK;
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
    return ((onnx *)inst)->npub;
}

static const keel__tensor *onnx_input(void *inst, size_t i)
{
    onnx *m = inst;
    return i < m->npub ? &m->pub[i] : NULL;
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
    .caps = KEEL__CAP_RUN | KEEL__CAP_SESSIONS,
    .load = onnx_load,
    .unload = onnx_unload,
    .run = onnx_run,
    .session_new = onnx_session_new,
    .session_free = onnx_session_free,
    .session_reset = onnx_session_reset,
    .ninputs = onnx_ninputs,
    .input = onnx_input,
    .memory = onnx_memory,
    .device = onnx_device,
};
