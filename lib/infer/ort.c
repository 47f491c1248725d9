/*
 * ort.c - ONNX Runtime through dlopen and the OrtApi function table.
 *
 * OrtGetApiBase() is the one exported entry point; it hands out the OrtApi
 * table, an append-only array of function pointers. The slots below are the
 * positions of the entries keel uses in onnxruntime_c_api.h (struct OrtApi,
 * in declaration order, unchanged since ORT_API_VERSION 1). We ask for API
 * version KEEL_ORT_API_VERSION and refuse runtimes that do not offer it.
 */
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "infer/ort.h"

#define MOD                  "onnx"
#define KEEL_ORT_API_VERSION 16 /* ORT >= 1.16; every slot used exists since 1 */

enum ort_slot {
    S_GetErrorMessage = 2,
    S_CreateEnv = 3,
    S_CreateSession = 7,
    S_CreateSessionFromArray = 8,
    S_Run = 9,
    S_CreateSessionOptions = 10,
    S_SetOptimizedModelFilePath = 11,
    S_SetSessionGraphOptimizationLevel = 23,
    S_SetIntraOpNumThreads = 24,
    S_SessionGetInputCount = 30,
    S_SessionGetOutputCount = 31,
    S_SessionGetInputTypeInfo = 33,
    S_SessionGetOutputTypeInfo = 34,
    S_SessionGetInputName = 36,
    S_SessionGetOutputName = 37,
    S_CreateRunOptions = 39,
    S_RunOptionsSetTerminate = 46,
    S_RunOptionsUnsetTerminate = 47,
    S_CreateTensorAsOrtValue = 48,
    S_CreateTensorWithDataAsOrtValue = 49,
    S_GetTensorMutableData = 51,
    S_FillStringTensor = 52,
    S_GetStringTensorDataLength = 53,
    S_GetStringTensorContent = 54,
    S_CastTypeInfoToTensorInfo = 55,
    S_GetTensorElementType = 60,
    S_GetDimensionsCount = 61,
    S_GetDimensions = 62,
    S_GetTensorTypeAndShape = 65,
    S_GetValueType = 67,
    S_CreateCpuMemoryInfo = 69,
    S_AllocatorFree = 76,
    S_GetAllocatorWithDefaultOptions = 78,
    S_GetValue = 80,
    S_GetValueCount = 81,
    S_ReleaseEnv = 92,
    S_ReleaseStatus = 93,
    S_ReleaseMemoryInfo = 94,
    S_ReleaseSession = 95,
    S_ReleaseValue = 96,
    S_ReleaseRunOptions = 97,
    S_ReleaseTypeInfo = 98,
    S_ReleaseTensorTypeAndShapeInfo = 99,
    S_ReleaseSessionOptions = 100,
};

typedef void *status_t;       /* OrtStatus*; NULL is success */
typedef void (*ort_fn)(void); /* a slot of the OrtApi table, cast to its real type at use */
typedef struct ort_api_base {
    ort_fn const *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} ort_api_base;

static ort_fn const *api;
static void *lib, *env, *meminfo, *allocator;
static char version[32];
static char load_error[1024];
static bool not_found; /* no library loaded (else: loaded, unusable) */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *want_path;

#define FN(slot, type) ((type)api[slot])

static int status_err(status_t st, keel_error *err, const char *what)
{
    const char *msg = FN(S_GetErrorMessage, const char *(*)(status_t))(st);
    int rc =
        keel__err(err, KEEL_EINVALID, "%s: %s", what, msg ? msg : "unknown ONNX Runtime error");
    FN(S_ReleaseStatus, void (*)(status_t))(st);
    return rc;
}

/* --- finding the runtime ----------------------------------------------------------
 *
 * In order, the first that loads wins:
 *   1. the path the caller names (keel_engine_opts.onnxruntime_path), alone;
 *   2. $KEEL_ORT_LIB;
 *   3. next to the code running (libkeel.so or the statically linked
 *      program, found with dladdr) and next to /proc/self/exe: DIR,
 *      DIR/../lib, DIR/../LIBDIR (an installed bin/keel finds PREFIX/lib);
 *      then .deps/onnxruntime/lib in DIR or up to three folders above it
 *      (build/debug/keel finds the clone's .deps);
 *   4. the install prefix's LIBDIR, as configured at build time;
 *   5. the system's libonnxruntime.so.1 (ld.so's search path).
 * The working directory plays no part: keel and keeld find the same runtime
 * wherever they are started from. */

#define ORT_SONAME "libonnxruntime.so.1"
#ifndef KEEL_ORT_INSTALL_LIBDIR
#define KEEL_ORT_INSTALL_LIBDIR "/usr/local/lib"
#endif
#ifndef KEEL_ORT_LIBDIR_NAME
#define KEEL_ORT_LIBDIR_NAME "lib"
#endif

typedef struct ort_search {
    void *h;
    char looked[640];      /* every place looked at, for the error message */
    char load_failed[256]; /* the first file that exists but did not load, and why */
} ort_search;

static void note(char *list, size_t size, const char *what)
{
    size_t n = strlen(list);
    if (n + strlen(what) + 8 < size)
        snprintf(list + n, size - n, "%s%s", n ? ", " : "", what);
    else if (n + 5 < size && strcmp(list + n - 3, "..."))
        snprintf(list + n, size - n, ", ...");
}

/* named: a path someone asked for, tried even when absent; the guessed ones
 * are opened only when present. */
static void try_path(ort_search *s, const char *path, bool named)
{
    if (s->h || !path || !*path)
        return;
    note(s->looked, sizeof(s->looked), path);
    if (!named && path[0] == '/' && access(path, F_OK) != 0)
        return;
    s->h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    const char *e = s->h ? NULL : dlerror();
    if (e && !s->load_failed[0] && (named || path[0] == '/'))
        keel__strlcpy(s->load_failed, e, sizeof(s->load_failed));
}

/* Candidates around the folder DIR holds a binary or libkeel.so in. */
static void try_around(ort_search *s, const char *dir)
{
    char p[PATH_MAX], up[PATH_MAX];
    snprintf(p, sizeof(p), "%s/" ORT_SONAME, dir);
    try_path(s, p, false);
    snprintf(p, sizeof(p), "%s/../lib/" ORT_SONAME, dir);
    try_path(s, p, false);
    if (strcmp(KEEL_ORT_LIBDIR_NAME, "lib")) {
        snprintf(p, sizeof(p), "%s/../" KEEL_ORT_LIBDIR_NAME "/" ORT_SONAME, dir);
        try_path(s, p, false);
    }
    keel__strlcpy(up, dir, sizeof(up));
    for (int i = 0; i < 4 && !s->h; i++) {
        snprintf(p, sizeof(p), "%s/.deps/onnxruntime/lib/" ORT_SONAME, up);
        try_path(s, p, false);
        char *slash = strrchr(up, '/');
        if (!slash || slash == up)
            break;
        *slash = 0;
    }
}

static void dir_of(const char *path, char *out, size_t n)
{
    keel__strlcpy(out, path, n);
    char *slash = strrchr(out, '/');
    if (slash && slash != out)
        *slash = 0;
    else if (slash)
        out[1] = 0;
    else
        keel__strlcpy(out, ".", n);
}

static void *find_runtime(const char *want, char *ret_error, size_t n)
{
    ort_search s = {0};
    char dir[PATH_MAX], exe[PATH_MAX];
    if (want && *want) {
        try_path(&s, want, true);
        if (!s.h)
            snprintf(ret_error, n, "cannot load ONNX Runtime from %s (%s)", want, s.load_failed);
        return s.h;
    }
    const char *env_path = getenv("KEEL_ORT_LIB");
    if (env_path && *env_path) {
        try_path(&s, env_path, true);
        if (!s.h)
            KEEL_LOG_W(MOD, "KEEL_ORT_LIB=%s does not load (%s); looking elsewhere", env_path,
                       s.load_failed);
    }
    Dl_info info;
    dir[0] = 0;
    if (!s.h && dladdr((void *)find_runtime, &info) && info.dli_fname && info.dli_fname[0] == '/') {
        char real[PATH_MAX];
        dir_of(realpath(info.dli_fname, real) ? real : info.dli_fname, dir, sizeof(dir));
        try_around(&s, dir);
    }
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (!s.h && len > 0) { /* a program linking libkeel.so lives elsewhere */
        char exe_dir[PATH_MAX];
        exe[len] = 0;
        dir_of(exe, exe_dir, sizeof(exe_dir));
        if (strcmp(exe_dir, dir))
            try_around(&s, exe_dir);
    }
    try_path(&s, KEEL_ORT_INSTALL_LIBDIR "/" ORT_SONAME, false);
    if (!s.h) { /* ld.so's own search path */
        note(s.looked, sizeof(s.looked), ORT_SONAME " (the system's library path)");
        s.h = dlopen(ORT_SONAME, RTLD_NOW | RTLD_LOCAL);
    }
    if (!s.h)
        snprintf(ret_error, n,
                 "ONNX Runtime not found; looked at %s%s%s. Install libonnxruntime.so.1 beside "
                 "libkeel (PREFIX/lib, as `make install` does), run `make setup` in the source "
                 "tree, or set KEEL_ORT_LIB to its path",
                 s.looked, s.load_failed[0] ? "; failed to load: " : "", s.load_failed);
    return s.h;
}

static void load(void)
{
    void *h = find_runtime(want_path, load_error, sizeof(load_error));
    if (!h) {
        not_found = true;
        return;
    }
    const ort_api_base *(*get_base)(void) =
        (const ort_api_base *(*)(void))dlsym(h, "OrtGetApiBase");
    const ort_api_base *base = get_base ? get_base() : NULL;
    if (!base) {
        snprintf(load_error, sizeof(load_error), "the ONNX Runtime library has no OrtGetApiBase");
        return;
    }
    lib = h;
    keel__strlcpy(version, base->GetVersionString(), sizeof(version));
    api = base->GetApi(KEEL_ORT_API_VERSION);
    if (!api) {
        snprintf(load_error, sizeof(load_error),
                 "ONNX Runtime %s does not offer C API version %d (keel needs ONNX Runtime >= "
                 "1.16)",
                 version, KEEL_ORT_API_VERSION);
        return;
    }
    status_t st = FN(S_CreateEnv, status_t(*)(int, const char *, void **))(4 /* FATAL: keel reports
                                                                               errors itself */
                                                                           ,
                                                                           "keel", &env);
    if (!st)
        st = FN(S_CreateCpuMemoryInfo, status_t(*)(int, int, void **))(1 /* arena */,
                                                                       0 /* default */, &meminfo);
    if (!st)
        st = FN(S_GetAllocatorWithDefaultOptions, status_t(*)(void **))(&allocator);
    if (st) {
        keel_error e;
        status_err(st, &e, "ONNX Runtime start-up");
        keel__strlcpy(load_error, e.msg, sizeof(load_error));
        api = NULL;
        return;
    }
    Dl_info info;
    KEEL_LOG_I(MOD, "ONNX Runtime %s loaded from %s", version,
               dladdr((void *)get_base, &info) && info.dli_fname ? info.dli_fname : "?");
}

/* Said once per process: every ONNX tier then fails to load with this. */
static void load_once(void)
{
    load();
    if (!api)
        KEEL_LOG_E(MOD, "%s; tiers on the onnx backend are unavailable", load_error);
}

int keel__ort_load(const char *lib_path, keel_error *err)
{
    want_path = lib_path;
    pthread_once(&once, load_once);
    if (!api && not_found) /* where keel looked is in the log, once; this goes in every answer */
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "ONNX Runtime (" ORT_SONAME ") not found: set KEEL_ORT_LIB to its path "
                         "(the log says where keel looked)");
    if (!api)
        return keel__err(err, KEEL_EUNSUPPORTED, "%s", load_error);
    return KEEL_OK;
}

const char *keel__ort_version(void)
{
    return api ? version : NULL;
}

/* --- sessions ------------------------------------------------------------------ */

struct keel__ort_session {
    void *session;
    size_t nin, nout;
    keel__tensor *in, *out;       /* descriptions; names malloc'd */
    char **in_names, **out_names; /* owned; the descriptions' names point here */
    char provider[32];            /* the execution provider that took the session */
};

/* Appends an execution provider by name. The runtime exports plain
 * functions for CUDA and TensorRT; they fail (and we stay on CPU) when the
 * provider's own library is not installed. "cpu" always works and ends the
 * preference list. */
static bool add_provider(void *so, const char *name)
{
    static const struct {
        const char *name, *sym;
    } eps[] = {{"cuda", "OrtSessionOptionsAppendExecutionProvider_CUDA"},
               {"tensorrt", "OrtSessionOptionsAppendExecutionProvider_Tensorrt"}};
    if (!strcmp(name, "cpu"))
        return true;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(eps); i++) {
        if (strcmp(name, eps[i].name))
            continue;
        status_t (*fn)(void *, int) = (status_t(*)(void *, int))dlsym(lib, eps[i].sym);
        status_t st = fn ? fn(so, 0) : (status_t)1;
        if (!st)
            return true;
        if (fn) {
            KEEL_LOG_W(MOD, "execution provider %s unavailable (%s); trying the next", name,
                       FN(S_GetErrorMessage, const char *(*)(status_t))(st));
            FN(S_ReleaseStatus, void (*)(status_t))(st);
        }
        return false;
    }
    KEEL_LOG_W(MOD, "unknown execution provider \"%s\"; trying the next", name);
    return false;
}

const char *keel__ort_provider(const keel__ort_session *s)
{
    return s->provider;
}

/* Reads dtype and shape from an OrtTensorTypeAndShapeInfo. */
static int read_info(const void *info, keel__tensor *t, keel_error *err)
{
    int dtype = 0;
    size_t nd = 0;
    status_t st = FN(S_GetTensorElementType, status_t(*)(const void *, int *))(info, &dtype);
    if (!st)
        st = FN(S_GetDimensionsCount, status_t(*)(const void *, size_t *))(info, &nd);
    if (st)
        return status_err(st, err, "reading a tensor type");
    if (nd > KEEL_TENSOR_MAX_DIMS)
        return keel__err(err, KEEL_EUNSUPPORTED, "tensor has %zu dimensions, more than %d", nd,
                         KEEL_TENSOR_MAX_DIMS);
    if ((st =
             FN(S_GetDimensions, status_t(*)(const void *, int64_t *, size_t))(info, t->shape, nd)))
        return status_err(st, err, "reading a tensor shape");
    t->dtype = dtype;
    t->ndim = nd;
    return KEEL_OK;
}

static int describe(keel__ort_session *s, bool input, size_t i, keel__tensor *t, keel_error *err)
{
    char **owned = input ? &s->in_names[i] : &s->out_names[i];
    char *name = NULL;
    void *ti = NULL;
    const void *tensor_info = NULL;
    status_t st = FN(input ? S_SessionGetInputName : S_SessionGetOutputName,
                     status_t(*)(void *, size_t, void *, char **))(s->session, i, allocator, &name);
    if (st)
        return status_err(st, err, "reading an input/output name");
    *owned = strdup(name);
    t->name = *owned;
    FN(S_AllocatorFree, status_t(*)(void *, void *))(allocator, name);
    if (!*owned)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    st = FN(input ? S_SessionGetInputTypeInfo : S_SessionGetOutputTypeInfo,
            status_t(*)(void *, size_t, void **))(s->session, i, &ti);
    if (st)
        return status_err(st, err, "reading an input/output type");
    st = FN(S_CastTypeInfoToTensorInfo, status_t(*)(const void *, const void **))(ti, &tensor_info);
    int rc = KEEL_OK;
    if (st)
        rc = status_err(st, err, "reading an input/output type");
    else if (tensor_info)
        rc = read_info(tensor_info, t, err);
    else
        t->dtype = 0; /* not a tensor (sequence, map) */
    FN(S_ReleaseTypeInfo, void (*)(void *))(ti);
    return rc;
}

void keel__ort_session_free(keel__ort_session *s)
{
    if (!s)
        return;
    for (size_t i = 0; s->in_names && i < s->nin; i++)
        free(s->in_names[i]);
    for (size_t i = 0; s->out_names && i < s->nout; i++)
        free(s->out_names[i]);
    free(s->in);
    free(s->out);
    free(s->in_names);
    free(s->out_names);
    if (s->session)
        FN(S_ReleaseSession, void (*)(void *))(s->session);
    free(s);
}

static int session_new(const char *model_path, const void *data, size_t len,
                       const keel__ort_opts *opts, keel__ort_session **ret, keel_error *err);

int keel__ort_session_new(const char *model_path, const keel__ort_opts *opts,
                          keel__ort_session **ret, keel_error *err)
{
    return session_new(model_path, NULL, 0, opts, ret, err);
}

int keel__ort_session_from_memory(const void *data, size_t len, const keel__ort_opts *opts,
                                  keel__ort_session **ret, keel_error *err)
{
    return session_new(NULL, data, len, opts, ret, err);
}

static int session_new(const char *model_path, const void *data, size_t len,
                       const keel__ort_opts *opts, keel__ort_session **ret, keel_error *err)
{
    void *so = NULL;
    keel__ort_session *s = NULL;
    status_t st;
    int rc = keel__ort_load(NULL, err);
    if (rc)
        return rc;
    if ((st = FN(S_CreateSessionOptions, status_t(*)(void **))(&so)))
        return status_err(st, err, "creating session options");
    int level = opts ? opts->opt_level : 99;
    if (!(st = FN(S_SetSessionGraphOptimizationLevel, status_t(*)(void *, int))(so, level)) &&
        opts && opts->intra_threads > 0)
        st = FN(S_SetIntraOpNumThreads, status_t(*)(void *, int))(so, opts->intra_threads);
    if (!st && opts && opts->optimized_model_path)
        st = FN(S_SetOptimizedModelFilePath,
                status_t(*)(void *, const char *))(so, opts->optimized_model_path);
    if (st) {
        rc = status_err(st, err, "setting session options");
        goto out;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    keel__strlcpy(s->provider, "cpu", sizeof(s->provider));
    for (size_t i = 0; opts && i < opts->nproviders; i++)
        if (add_provider(so, opts->providers[i])) {
            keel__strlcpy(s->provider, opts->providers[i], sizeof(s->provider));
            break;
        }
    if (model_path)
        st = FN(S_CreateSession, status_t(*)(void *, const char *, void *, void **))(
            env, model_path, so, &s->session);
    else
        st = FN(S_CreateSessionFromArray, status_t(*)(void *, const void *, size_t, void *,
                                                      void **))(env, data, len, so, &s->session);
    if (st) {
        char what[128];
        const char *base = model_path ? strrchr(model_path, '/') : NULL;
        snprintf(what, sizeof(what), "cannot load %s",
                 model_path ? (base ? base + 1 : model_path) : "the model");
        rc = status_err(st, err, what);
        /* drop ONNX Runtime's "Load model from PATH failed:": the blob path
         * says nothing to the reader and crowds out the reason */
        char *p = err ? strstr(err->msg, "Load model from ") : NULL,
             *q = p ? strstr(p, " failed:") : NULL;
        if (q) {
            q += 8;
            q += *q == ' ';
            memmove(p, q, strlen(q) + 1);
        }
        rc = KEEL_ECORRUPT;
        if (err)
            err->code = rc;
        goto out;
    }
    if ((st = FN(S_SessionGetInputCount, status_t(*)(void *, size_t *))(s->session, &s->nin)) ||
        (st = FN(S_SessionGetOutputCount, status_t(*)(void *, size_t *))(s->session, &s->nout))) {
        rc = status_err(st, err, "counting inputs/outputs");
        goto out;
    }
    s->in = calloc(s->nin + 1, sizeof(*s->in));
    s->out = calloc(s->nout + 1, sizeof(*s->out));
    s->in_names = calloc(s->nin + 1, sizeof(char *));
    s->out_names = calloc(s->nout + 1, sizeof(char *));
    if (!s->in || !s->out || !s->in_names || !s->out_names) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; !rc && i < s->nin; i++)
        rc = describe(s, true, i, &s->in[i], err);
    for (size_t i = 0; !rc && i < s->nout; i++)
        rc = describe(s, false, i, &s->out[i], err);
    if (rc)
        goto out;
    *ret = s;
    s = NULL;
out:
    keel__ort_session_free(s);
    if (so)
        FN(S_ReleaseSessionOptions, void (*)(void *))(so);
    return rc;
}

size_t keel__ort_ninputs(const keel__ort_session *s)
{
    return s->nin;
}
size_t keel__ort_noutputs(const keel__ort_session *s)
{
    return s->nout;
}
const keel__tensor *keel__ort_input(const keel__ort_session *s, size_t i)
{
    return i < s->nin ? &s->in[i] : NULL;
}
const keel__tensor *keel__ort_output(const keel__ort_session *s, size_t i)
{
    return i < s->nout ? &s->out[i] : NULL;
}

/* --- run ----------------------------------------------------------------------- */

enum { ONNX_TYPE_TENSOR = 1, ONNX_TYPE_SEQUENCE = 2, ONNX_TYPE_MAP = 3 };

/* Appends tensor element i as a JSON number (or a quoted object key). */
static int json_elem(keel_buf *b, int dtype, const void *data, size_t i, bool as_key)
{
    const char *q = as_key ? "\"" : "";
    double v;
    switch (dtype) {
    case KEEL_DT_FLOAT32:
    case KEEL_DT_FLOAT64:
        v = dtype == KEEL_DT_FLOAT32 ? ((const float *)data)[i] : ((const double *)data)[i];
        if (v != v || v - v != 0) /* NaN or infinite: JSON has no such number */
            return keel__buf_appendf(b, "%snull%s", q, q);
        return keel__buf_appendf(b, "%s%.9g%s", q, v, q);
    case KEEL_DT_INT64:
        return keel__buf_appendf(b, "%s%lld%s", q, (long long)((const int64_t *)data)[i], q);
    case KEEL_DT_INT32:
        return keel__buf_appendf(b, "%s%d%s", q, ((const int32_t *)data)[i], q);
    case KEEL_DT_INT16:
        return keel__buf_appendf(b, "%s%d%s", q, ((const int16_t *)data)[i], q);
    case KEEL_DT_INT8:
        return keel__buf_appendf(b, "%s%d%s", q, ((const int8_t *)data)[i], q);
    case KEEL_DT_UINT64:
        return keel__buf_appendf(b, "%s%llu%s", q, (unsigned long long)((const uint64_t *)data)[i],
                                 q);
    case KEEL_DT_UINT32:
        return keel__buf_appendf(b, "%s%u%s", q, ((const uint32_t *)data)[i], q);
    case KEEL_DT_UINT16:
        return keel__buf_appendf(b, "%s%u%s", q, ((const uint16_t *)data)[i], q);
    case KEEL_DT_UINT8:
    case KEEL_DT_BOOL:
        return keel__buf_appendf(b, "%s%u%s", q, ((const uint8_t *)data)[i], q);
    case KEEL_DT_STRING: { /* data: n NUL-terminated strings back to back */
        const char *p = data;
        for (size_t k = 0; k < i; k++)
            p += strlen(p) + 1;
        return keel__json_quote(b, p);
    }
    default:
        return KEEL_EUNSUPPORTED;
    }
}

static size_t elem_count(const keel__tensor *t)
{
    size_t n = 1;
    for (size_t i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

/* The n strings of a string tensor value as one malloc'd block of
 * NUL-terminated strings back to back (the keel__tensor string layout). */
static int read_strings(void *v, size_t n, char **ret, size_t *ret_len, keel_error *err)
{
    size_t len = 0;
    status_t st = FN(S_GetStringTensorDataLength, status_t(*)(const void *, size_t *))(v, &len);
    if (st)
        return status_err(st, err, "reading a string tensor");
    if (len > (256u << 20))
        return keel__err(err, KEEL_ETOOBIG, "string output of %zu bytes is over 256 MiB", len);
    char *raw = malloc(len + 1), *out = malloc(len + n + 1);
    size_t *offs = calloc(n + 1, sizeof(size_t));
    int rc = KEEL_OK;
    if (!raw || !out || !offs) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory for a string output");
        goto done;
    }
    if ((st = FN(S_GetStringTensorContent, status_t(*)(const void *, void *, size_t, size_t *,
                                                       size_t))(v, raw, len, offs, n))) {
        rc = status_err(st, err, "reading a string tensor");
        goto done;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t a = offs[i], b = i + 1 < n ? offs[i + 1] : len;
        if (a > b || b > len) {
            rc = keel__err(err, KEEL_ECORRUPT, "string tensor offsets out of order");
            goto done;
        }
        memcpy(out + o, raw + a, b - a);
        o += b - a;
        out[o++] = 0;
    }
    *ret = out;
    *ret_len = o;
    out = NULL;
done:
    free(raw);
    free(out);
    free(offs);
    return rc;
}

/* A tensor held by a value: its description and data. Numeric data is
 * borrowed from v; string data is copied (*ret_owned, caller frees). */
static int tensor_view(void *v, keel__tensor *t, void **ret_data, char **ret_owned, keel_error *err)
{
    void *info = NULL;
    *ret_owned = NULL;
    status_t st = FN(S_GetTensorTypeAndShape, status_t(*)(const void *, void **))(v, &info);
    if (st)
        return status_err(st, err, "reading an output shape");
    int rc = read_info(info, t, err);
    FN(S_ReleaseTensorTypeAndShapeInfo, void (*)(void *))(info);
    if (!rc && t->dtype == KEEL_DT_STRING) {
        size_t len = 0;
        if (!(rc = read_strings(v, elem_count(t), ret_owned, &len, err)))
            *ret_data = *ret_owned;
    } else if (!rc && (st = FN(S_GetTensorMutableData, status_t(*)(void *, void **))(v, ret_data)))
        rc = status_err(st, err, "reading output data");
    return rc;
}

/* Renders a non-tensor value (a sequence, a map, or a tensor inside them) as
 * JSON: sequences as arrays, maps as objects, tensors as flat arrays. This is
 * how scikit-learn's ZipMap output (a sequence of maps) reaches callers. */
static int value_json(void *v, keel_buf *b, unsigned depth, keel_error *err)
{
    int type = 0, rc = KEEL_OK;
    size_t count = 0;
    status_t st = FN(S_GetValueType, status_t(*)(const void *, int *))(v, &type);
    if (st)
        return status_err(st, err, "reading an output value");
    if (depth > 8)
        return keel__err(err, KEEL_EUNSUPPORTED, "output nests deeper than 8 levels");
    if (type == ONNX_TYPE_TENSOR) {
        keel__tensor t = {.name = "element"};
        void *data = NULL;
        char *owned = NULL;
        if ((rc = tensor_view(v, &t, &data, &owned, err)))
            return rc;
        size_t n = elem_count(&t);
        rc = keel__buf_append(b, "[", 1);
        for (size_t i = 0; !rc && i < n; i++) {
            rc = i ? keel__buf_append(b, ",", 1) : 0;
            if (!rc)
                rc = json_elem(b, t.dtype, data, i, false);
        }
        free(owned);
        if (rc)
            return keel__err(err, rc, "cannot render a %s tensor as JSON",
                             keel__dtype_name(t.dtype));
        return keel__buf_append(b, "]", 1);
    }
    if (type != ONNX_TYPE_SEQUENCE && type != ONNX_TYPE_MAP)
        return keel__err(err, KEEL_EUNSUPPORTED, "output of ONNX type %d is not supported", type);
    if ((st = FN(S_GetValueCount, status_t(*)(const void *, size_t *))(v, &count)))
        return status_err(st, err, "reading an output's length");
    if (type == ONNX_TYPE_SEQUENCE) {
        rc = keel__buf_append(b, "[", 1);
        for (size_t i = 0; !rc && i < count; i++) {
            void *e = NULL;
            if ((st = FN(S_GetValue, status_t(*)(const void *, int, void *, void **))(
                     v, (int)i, allocator, &e)))
                return status_err(st, err, "reading a sequence element");
            rc = i ? keel__buf_append(b, ",", 1) : 0;
            if (!rc)
                rc = value_json(e, b, depth + 1, err);
            FN(S_ReleaseValue, void (*)(void *))(e);
        }
        return rc ? rc : keel__buf_append(b, "]", 1);
    }
    /* a map: value 0 is the keys tensor, value 1 the values tensor */
    void *kv[2] = {NULL, NULL}, *kd[2] = {NULL, NULL};
    char *owned[2] = {NULL, NULL};
    keel__tensor kt[2] = {{.name = "keys"}, {.name = "values"}};
    for (int i = 0; !rc && i < 2; i++) {
        if ((st = FN(S_GetValue, status_t(*)(const void *, int, void *, void **))(v, i, allocator,
                                                                                  &kv[i])))
            rc = status_err(st, err, "reading a map");
        else
            rc = tensor_view(kv[i], &kt[i], &kd[i], &owned[i], err);
    }
    size_t n = rc ? 0 : elem_count(&kt[0]);
    if (!rc && elem_count(&kt[1]) != n)
        rc = keel__err(err, KEEL_ECORRUPT, "map output has %zu keys but %zu values", n,
                       elem_count(&kt[1]));
    if (!rc)
        rc = keel__buf_append(b, "{", 1);
    for (size_t i = 0; !rc && i < n; i++) {
        rc = i ? keel__buf_append(b, ",", 1) : 0;
        if (!rc)
            rc = json_elem(b, kt[0].dtype, kd[0], i, true);
        if (!rc)
            rc = keel__buf_append(b, ":", 1);
        if (!rc)
            rc = json_elem(b, kt[1].dtype, kd[1], i, false);
        if (rc)
            rc = keel__err(err, rc, "cannot render a map of %s to %s as JSON",
                           keel__dtype_name(kt[0].dtype), keel__dtype_name(kt[1].dtype));
    }
    if (!rc)
        rc = keel__buf_append(b, "}", 1);
    for (int i = 0; i < 2; i++) {
        if (kv[i])
            FN(S_ReleaseValue, void (*)(void *))(kv[i]);
        free(owned[i]);
    }
    return rc;
}

static int take_output(void *v, keel__tensor *t, keel_error *err)
{
    int type = 0;
    void *info = NULL, *data = NULL;
    status_t st = FN(S_GetValueType, status_t(*)(const void *, int *))(v, &type);
    if (st)
        return status_err(st, err, "reading an output");
    if (type != ONNX_TYPE_TENSOR) {
        keel_buf b;
        keel__buf_init(&b, 64u << 20);
        int rc = value_json(v, &b, 0, err);
        if (rc) {
            keel__buf_done(&b);
            return rc;
        }
        t->dtype = KEEL_DT_JSON;
        t->ndim = 0;
        t->nbytes = b.len;
        t->data = keel__buf_steal(&b);
        return t->data ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    if ((st = FN(S_GetTensorTypeAndShape, status_t(*)(const void *, void **))(v, &info)))
        return status_err(st, err, "reading an output shape");
    int rc = read_info(info, t, err);
    FN(S_ReleaseTensorTypeAndShapeInfo, void (*)(void *))(info);
    if (rc)
        return rc;
    size_t es = keel__dtype_size(t->dtype), n = elem_count(t);
    if (t->dtype == KEEL_DT_STRING) {
        char *strs = NULL;
        size_t len = 0;
        if ((rc = read_strings(v, n, &strs, &len, err)))
            return rc;
        t->data = strs;
        t->nbytes = len;
        return KEEL_OK;
    }
    if (!es)
        return keel__err(err, KEEL_EUNSUPPORTED, "output \"%s\" has dtype %s, not supported",
                         t->name, keel__dtype_name(t->dtype));
    if ((st = FN(S_GetTensorMutableData, status_t(*)(void *, void **))(v, &data)))
        return status_err(st, err, "reading output data");
    t->nbytes = n * es;
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->data)
        return keel__err(err, KEEL_ENOMEM, "out of memory for output \"%s\"", t->name);
    if (t->nbytes)
        memcpy(t->data, data, t->nbytes);
    return KEEL_OK;
}

/* --- run control ----------------------------------------------------------------- */

struct keel__ort_runctl {
    void *ro; /* OrtRunOptions */
};

int keel__ort_runctl_new(keel__ort_runctl **ret, keel_error *err)
{
    int rc = keel__ort_load(NULL, err);
    if (rc)
        return rc;
    keel__ort_runctl *c = calloc(1, sizeof(*c));
    if (!c)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    status_t st = FN(S_CreateRunOptions, status_t(*)(void **))(&c->ro);
    if (st) {
        free(c);
        return status_err(st, err, "creating run options");
    }
    *ret = c;
    return KEEL_OK;
}

void keel__ort_runctl_free(keel__ort_runctl *c)
{
    if (!c)
        return;
    FN(S_ReleaseRunOptions, void (*)(void *))(c->ro);
    free(c);
}

/* ONNX Runtime checks the flag between kernels: a Run in flight returns an
 * error soon after. Safe from any thread. */
void keel__ort_runctl_terminate(keel__ort_runctl *c)
{
    status_t st = FN(S_RunOptionsSetTerminate, status_t(*)(void *))(c->ro);
    if (st)
        FN(S_ReleaseStatus, void (*)(status_t))(st);
}

void keel__ort_runctl_reset(keel__ort_runctl *c)
{
    status_t st = FN(S_RunOptionsUnsetTerminate, status_t(*)(void *))(c->ro);
    if (st)
        FN(S_ReleaseStatus, void (*)(status_t))(st);
}

/* One input as an OrtValue. Numeric data is used in place; strings are
 * copied into a runtime-owned string tensor. */
static int make_input(const keel__tensor *t, void **ret, keel_error *err)
{
    size_t es = keel__dtype_size(t->dtype), n = elem_count(t);
    status_t st;
    if (t->dtype == KEEL_DT_STRING) {
        const char **ptrs = calloc(n + 1, sizeof(char *));
        if (!ptrs)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        const char *p = t->data, *end = p + t->nbytes;
        for (size_t i = 0; i < n; i++) {
            const char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
            if (!z) {
                free(ptrs);
                return keel__err(err, KEEL_EINVALID, "input \"%s\": %zu strings expected", t->name,
                                 n);
            }
            ptrs[i] = p;
            p = z + 1;
        }
        st = FN(S_CreateTensorAsOrtValue,
                status_t(*)(void *, const int64_t *, size_t, int, void **))(allocator, t->shape,
                                                                            t->ndim, t->dtype, ret);
        if (!st)
            st = FN(S_FillStringTensor, status_t(*)(void *, const char *const *, size_t))(*ret,
                                                                                          ptrs, n);
        free(ptrs);
        return st ? status_err(st, err, t->name) : KEEL_OK;
    }
    if (!es)
        return keel__err(err, KEEL_EUNSUPPORTED, "input \"%s\": dtype %s is not supported", t->name,
                         keel__dtype_name(t->dtype));
    if (n * es != t->nbytes)
        return keel__err(err, KEEL_EINVALID,
                         "input \"%s\": %zu bytes of data for a shape of %zu %s elements", t->name,
                         t->nbytes, n, keel__dtype_name(t->dtype));
    st = FN(S_CreateTensorWithDataAsOrtValue,
            status_t(*)(const void *, void *, size_t, const int64_t *, size_t, int, void **))(
        meminfo, t->data, t->nbytes, t->shape, t->ndim, t->dtype, ret);
    return st ? status_err(st, err, t->name) : KEEL_OK;
}

int keel__ort_run(keel__ort_session *s, const keel__tensor *inputs, size_t ninputs,
                  keel__tensor *outputs, keel_error *err)
{
    return keel__ort_run_ctl(s, inputs, ninputs, outputs, NULL, err);
}

int keel__ort_run_ctl(keel__ort_session *s, const keel__tensor *inputs, size_t ninputs,
                      keel__tensor *outputs, keel__ort_runctl *ctl, keel_error *err)
{
    void *in_vals[32] = {0}, *out_vals[32] = {0};
    const char *in_names[32];
    int rc = KEEL_OK;
    status_t st;
    if (ninputs > 32 || s->nout > 32)
        return keel__err(err, KEEL_ETOOBIG, "more than 32 inputs or outputs");
    for (size_t i = 0; i < ninputs; i++) {
        in_names[i] = inputs[i].name;
        if ((rc = make_input(&inputs[i], &in_vals[i], err)))
            goto out;
    }
    if ((st = FN(S_Run, status_t(*)(void *, const void *, const char *const *, const void *const *,
                                    size_t, const char *const *, size_t, void **))(
             s->session, ctl ? ctl->ro : NULL, in_names, (const void *const *)in_vals, ninputs,
             (const char *const *)s->out_names, s->nout, out_vals))) {
        rc = status_err(st, err, "run");
        goto out;
    }
    for (size_t i = 0; i < s->nout; i++) {
        memset(&outputs[i], 0, sizeof(outputs[i]));
        outputs[i].name = s->out[i].name;
        if ((rc = take_output(out_vals[i], &outputs[i], err))) {
            for (size_t j = 0; j <= i; j++)
                keel__tensor_done(&outputs[j]);
            goto out;
        }
    }
out:
    for (size_t i = 0; i < 32; i++) {
        if (in_vals[i])
            FN(S_ReleaseValue, void (*)(void *))(in_vals[i]);
        if (out_vals[i])
            FN(S_ReleaseValue, void (*)(void *))(out_vals[i]);
    }
    return rc;
}
