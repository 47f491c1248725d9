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
 *                         (only when it keeps the model's inputs and
 *                         outputs; see "the optimized-graph cache" below)
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
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
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
    keel__tensor pub_out[KEEL__MAX_IO]; /* the outputs a caller gets (names borrowed from s) */
    size_t npub_out;
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

/* The outputs a caller gets: the model's, without state outputs; a
 * sequence or map output is rendered as JSON. */
static void public_outputs(onnx *m)
{
    size_t n = keel__ort_noutputs(m->s);
    for (size_t i = 0; i < n && m->npub_out < KEEL__MAX_IO; i++) {
        const keel__tensor *d = keel__ort_output(m->s, i);
        bool internal = false;
        for (size_t k = 0; k < m->nstate; k++)
            internal |= !strcmp(m->state[k].out, d->name);
        if (internal)
            continue;
        m->pub_out[m->npub_out] = *d;
        if (!d->dtype) /* ort.c describes non-tensors with dtype 0 */
            m->pub_out[m->npub_out].dtype = KEEL_DT_JSON;
        m->npub_out++;
    }
}

/* --- the optimized-graph cache ------------------------------------------------------
 *
 * Optimizing a graph can take longer than running it many times, so the
 * graph ONNX Runtime saves after optimizing is kept, per model hash,
 * optimization level and runtime version (KEY), in the cache directory:
 *   KEY.onnx     the optimized graph
 *   KEY.sig      the original graph's inputs and outputs (names, dtypes,
 *                shapes), written beside it from the original's session
 *   KEY.nocache  why the optimized graph cannot stand in for the original
 * A saved graph must expose exactly the original's inputs and outputs. Some
 * do not: for graphs whose weights are also graph inputs (the model zoo's
 * older graphs), ONNX Runtime folds shape computations into new required
 * inputs ("...__SHAPE"), and serving from such a file would refuse every
 * request. So every load from the cache compares the graph's inputs and
 * outputs with KEY.sig. A graph that differs is deleted and leaves
 * KEY.nocache behind, logged once: that model is then optimized in memory
 * at each load, without saving. A graph without its record (from an older
 * keel) or that does not load is deleted and saved again.
 *
 * The check costs nothing on the way in: a graph is checked when it is
 * next used, not loaded twice when saved (a second session, freed after
 * the load is measured, would also make the next load's memory look
 * smaller than it is). */

#define SIG_MAGIC "keel onnx cache signature 1\n"

/* The session's inputs and outputs as text, in order: one line each with
 * the dtype, the shape (-1 dynamic) and the name (length-prefixed). */
static int signature(const keel__ort_session *s, keel_buf *b)
{
    int rc = keel__buf_append(b, SIG_MAGIC, strlen(SIG_MAGIC));
    for (int out = 0; out < 2; out++) {
        size_t n = out ? keel__ort_noutputs(s) : keel__ort_ninputs(s);
        for (size_t i = 0; !rc && i < n; i++) {
            const keel__tensor *t = out ? keel__ort_output(s, i) : keel__ort_input(s, i);
            rc = keel__buf_appendf(b, "%s %d [", out ? "out" : "in", t->dtype);
            for (size_t d = 0; !rc && d < t->ndim; d++)
                rc = keel__buf_appendf(b, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            if (!rc)
                rc = keel__buf_appendf(b, "] %zu:%s\n", strlen(t->name), t->name);
        }
    }
    return rc;
}

/* Whether text (len bytes) holds the line p[0..n) (without its newline). */
static bool has_line(const char *text, size_t len, const char *p, size_t n)
{
    for (const char *l = text, *end = text + len; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        size_t ln = nl ? (size_t)(nl - l) : (size_t)(end - l);
        if (ln == n && !memcmp(l, p, n))
            return true;
        l += ln + 1;
    }
    return false;
}

/* "the input \"x\"" from a signature line ("in 1 [1,4] 1:x"). */
static void line_what(const char *p, size_t n, char *buf, size_t size)
{
    const char *name = memchr(p, ':', n);
    name = name ? name + 1 : p + n;
    snprintf(buf, size, "the %s \"%.*s\"", p[0] == 'o' ? "output" : "input", (int)(p + n - name),
             name);
}

/* Whether text holds a line for the same input or output as p[0..n)
 * (the same kind and name, whatever its dtype and shape). */
static bool has_name(const char *text, size_t len, const char *p, size_t n)
{
    const char *pn = memchr(p, ']', n);
    if (!pn)
        return false;
    for (const char *l = text, *end = text + len; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        size_t ln = nl ? (size_t)(nl - l) : (size_t)(end - l);
        const char *q = memchr(l, ']', ln);
        if (q && l[0] == p[0] && (size_t)(l + ln - q) == (size_t)(p + n - pn) &&
            !memcmp(q, pn, (size_t)(p + n - pn)))
            return true;
        l += ln + 1;
    }
    return false;
}

/* How the signature have differs from want (both SIG_MAGIC texts). */
static void sig_diff(const char *want, size_t wlen, const char *have, size_t hlen, char *why,
                     size_t size)
{
    char what[160];
    for (int pass = 0; pass < 2; pass++) {
        const char *a = pass ? want : have, *b = pass ? have : want;
        size_t alen = pass ? wlen : hlen, blen = pass ? hlen : wlen;
        for (const char *l = a, *end = a + alen; l < end;) {
            const char *nl = memchr(l, '\n', (size_t)(end - l));
            size_t n = nl ? (size_t)(nl - l) : (size_t)(end - l);
            if (n && !has_line(b, blen, l, n)) {
                line_what(l, n, what, sizeof(what));
                snprintf(why, size, "%s %s",
                         pass                      ? "drops"
                         : has_name(b, blen, l, n) ? "changes"
                                                   : "adds",
                         what);
                return;
            }
            l += n + 1;
        }
    }
    snprintf(why, size, "lists its inputs or outputs in another order");
}

typedef struct cache_files {
    char graph[PATH_MAX], sig[PATH_MAX], off[PATH_MAX];
    char tmp[PATH_MAX]; /* where ORT saves a new graph ("" when none is saved) */
} cache_files;

enum { CACHE_MATCH, CACHE_STALE, CACHE_DIFFERS };

/* Compares the cached graph's session s with KEY.sig: CACHE_STALE when
 * there is no readable record, CACHE_DIFFERS (why says how) when the
 * graph's inputs or outputs are not the recorded ones. */
static int cache_check(const cache_files *c, const keel__ort_session *s, char *why, size_t n)
{
    char *want = NULL;
    size_t len = 0;
    keel_buf have;
    keel__buf_init(&have, 1u << 20);
    int r = CACHE_STALE;
    if (!keel__fs_read(c->sig, 1u << 20, &want, &len, NULL) && len >= strlen(SIG_MAGIC) &&
        !memcmp(want, SIG_MAGIC, strlen(SIG_MAGIC)) && !signature(s, &have)) {
        r = have.len == len && !memcmp(have.data, want, len) ? CACHE_MATCH : CACHE_DIFFERS;
        if (r == CACHE_DIFFERS)
            sig_diff(want, len, have.data, have.len, why, n);
    }
    free(want);
    keel__buf_done(&have);
    return r;
}

/* Keeps the graph ORT just saved to c->tmp, with orig's (the original
 * graph's session) inputs and outputs as its record. Best effort: a graph
 * not kept only makes the next start slower. */
static void cache_keep(const cache_files *c, const keel__ort_session *orig)
{
    keel_buf sig;
    keel_error e = {0};
    keel__buf_init(&sig, 1u << 20);
    if (signature(orig, &sig) || keel__fs_write_atomic(c->sig, sig.data, sig.len, 0600, &e) ||
        keel__fs_rename(c->tmp, c->graph))
        KEEL_LOG_D(MOD, "optimized graph %s not cached: %s", c->graph,
                   e.msg[0] ? e.msg : strerror(errno));
    else
        KEEL_LOG_D(MOD, "cached optimized graph %s", c->graph);
    keel__buf_done(&sig);
    if (unlink(c->tmp)) { /* gone when kept */
    }
}

/* Deletes a cached graph and its record; with off, records why the graph
 * cannot be cached (KEY.nocache) and says so, once. */
static void cache_drop(const cache_files *c, const char *why, const char *off, const char *model)
{
    char msg[512];
    if (unlink(c->graph)) { /* best effort */
    }
    if (unlink(c->sig)) {
    }
    if (!off) {
        KEEL_LOG_W(MOD, "optimized graph %s not used (%s); optimizing again", c->graph, why);
        return;
    }
    snprintf(msg, sizeof(msg),
             "the graph ONNX Runtime %s saves after optimizing %s %s; it is not cached, and "
             "this model is optimized in memory at each load\n",
             keel__ort_version(), model, why);
    if (keel__fs_write_atomic(off, msg, strlen(msg), 0600, NULL)) { /* best effort */
    }
    KEEL_LOG_W(MOD, "%.*s", (int)strlen(msg) - 1, msg);
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
    const cJSON *use_cache = cJSON_GetObjectItemCaseSensitive(opts, "optimized_cache");
    static atomic_uint tmp_seq;
    cache_files *c = NULL;
    bool cached = false;
    if ((rc = keel__ort_load(NULL, err)))
        return rc;
    if (ctx->cache_dir && ctx->model_hex && !cJSON_IsFalse(use_cache) && !o.nproviders) {
        const char *dir = ctx->cache_dir, *hex = ctx->model_hex, *v = keel__ort_version();
        if (!(c = calloc(1, sizeof(*c))))
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        if (keel__snprintf(c->graph, sizeof(c->graph), "%s/%s-o%d-ort%s.onnx", dir, hex,
                           o.opt_level, v) ||
            keel__snprintf(c->sig, sizeof(c->sig), "%s/%s-o%d-ort%s.sig", dir, hex, o.opt_level,
                           v) ||
            keel__snprintf(c->off, sizeof(c->off), "%s/%s-o%d-ort%s.nocache", dir, hex, o.opt_level,
                           v) ||
            keel__fs_exists(c->off)) { /* known not to keep the model's inputs and outputs */
            free(c);
            c = NULL;
        }
    }
    if (c)
        cached = access(c->graph, R_OK) == 0;
    onnx *m = malloc(sizeof(*m));
    if (!m) {
        free(c);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    *m = spec;
    pthread_once(&warm_once, warm_up);
    pthread_mutex_lock(&measure_mu);
    uint64_t before = keel__rss_bytes();
    if (cached) {
        keel__ort_opts co = o;
        char why[256] = "";
        co.opt_level = 0; /* already optimized */
        rc = keel__ort_session_new(c->graph, &co, &m->s, err);
        int r = rc ? CACHE_STALE : cache_check(c, m->s, why, sizeof(why));
        if (rc) { /* a damaged cache file is only a slower start */
            cache_drop(c, err->msg, NULL, NULL);
        } else if (r != CACHE_MATCH) {
            keel__ort_session_free(m->s);
            m->s = NULL;
            if (r == CACHE_STALE)
                cache_drop(c, "no record of the model's inputs and outputs", NULL, NULL);
            else
                cache_drop(c, why, c->off, ctx->label ? ctx->label : "a model");
        }
        cached = m->s != NULL;
    }
    if (!cached && c && !keel__fs_exists(c->off) && !keel__fs_mkdir_p(ctx->cache_dir, 0700, NULL)) {
        snprintf(c->tmp, sizeof(c->tmp), "%s.%d.%u.tmp", c->graph, (int)getpid(),
                 atomic_fetch_add(&tmp_seq, 1));
        o.optimized_model_path = c->tmp;
    }
    if (!cached)
        rc = keel__ort_session_new(ctx->model_path, &o, &m->s, err);
    uint64_t after = keel__rss_bytes();
    if (c && c->tmp[0]) {
        if (!rc)
            cache_keep(c, m->s);
        else if (unlink(c->tmp)) { /* ORT may not have written it */
        }
    }
    pthread_mutex_unlock(&measure_mu);
    free(c);
    if (rc) {
        free(m);
        return rc;
    }
    m->memory = after > before ? after - before : 0;
    public_inputs(m);
    public_outputs(m);
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

static size_t onnx_noutputs(void *inst)
{
    return ((onnx *)inst)->npub_out;
}

static const keel__tensor *onnx_output(void *inst, size_t i)
{
    onnx *m = inst;
    return i < m->npub_out ? &m->pub_out[i] : NULL;
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
    .noutputs = onnx_noutputs,
    .output = onnx_output,
    .memory = onnx_memory,
    .device = onnx_device,
};
