/*
 * api.c - the public inference API (include/keel/infer.h): a thin wrapper
 * over the engine (engine.c) and the tier chain (tier.c). Public tensors
 * are converted field by field, never cast, so the internal type may
 * change without breaking the ABI.
 */
#include <stdlib.h>
#include <string.h>

#include "infer/infer.h"
#include "infer/ort.h"
#include "keel/infer.h"

struct keel_engine {
    keel_store *store; /* borrowed */
    keel__infer *e;
};

/* Resolves what serves each package (active, else previous, else
 * known-good, each verified), then loads what changed. */
static int engine_refresh(keel_engine *eng, keel_error *err)
{
    bool ready = false;
    char why[256];
    int rc = keel_store_resolve_all(eng->store, 0, &ready, why, sizeof(why), err);
    return rc ? rc : keel__infer_refresh(eng->e, err);
}

struct keel_model {
    keel__model *m; /* referenced */
    keel_tensor in[KEEL__MAX_IO];
    size_t nin;
};

struct keel_result {
    keel__model *m; /* referenced: output names point into it */
    keel__infer_resp resp;
    keel_tensor out[KEEL__MAX_OUT];
};

_Static_assert(KEEL_TENSOR_DIMS == KEEL_TENSOR_MAX_DIMS, "public and internal rank differ");
_Static_assert((int)KEEL_DTYPE_FLOAT32 == (int)KEEL_DT_FLOAT32 &&
                   (int)KEEL_DTYPE_STRING == (int)KEEL_DT_STRING &&
                   (int)KEEL_DTYPE_BFLOAT16 == (int)KEEL_DT_BFLOAT16 &&
                   (int)KEEL_DTYPE_JSON == (int)KEEL_DT_JSON,
               "public dtype codes are ONNX's, as the internal ones");

static keel_tensor to_public(const keel__tensor *t)
{
    keel_tensor p = {.name = t->name,
                     .dtype = (keel_dtype)t->dtype,
                     .ndim = t->ndim,
                     .data = t->data,
                     .nbytes = t->nbytes};
    memcpy(p.shape, t->shape, sizeof(p.shape));
    return p;
}

const char *keel_dtype_name(keel_dtype dt)
{
    return keel__dtype_name((int)dt);
}

int keel_engine_open(keel_store *store, const keel_engine_opts *opts, keel_engine **ret,
                     keel_error *err)
{
    keel__infer_opts o = {0};
    keel_engine *eng = NULL;
    int rc;
    if (!store)
        return keel__err(err, KEEL_EINVALID, "keel_engine_open: no store (open one first)");
    if (opts) {
        o.cache_dir = opts->cache_dir;
        o.max_sessions = opts->max_sessions;
        o.session_idle_s = opts->session_idle_s;
        /* loaded now so a wrong path is the caller's error, not a tier's */
        if (opts->onnxruntime_path && (rc = keel__ort_load(opts->onnxruntime_path, err)))
            return rc;
    }
    if (!(eng = calloc(1, sizeof(*eng))))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    eng->store = store;
    if ((rc = keel__infer_new(store, &o, &eng->e, err)) || (rc = engine_refresh(eng, err)))
        goto out;
    *ret = eng;
out:
    if (rc)
        keel_engine_close(eng);
    return rc;
}

int keel_engine_refresh(keel_engine *eng, keel_error *err)
{
    return engine_refresh(eng, err);
}

void keel_engine_close(keel_engine *eng)
{
    if (!eng)
        return;
    keel__infer_free(eng->e);
    free(eng);
}

int keel_engine_model(keel_engine *eng, const char *name, keel_model **ret, keel_error *err)
{
    keel__model *m = name ? keel__infer_get(eng->e, name) : NULL;
    if (!m) {
        char why[512];
        bool ready = keel__infer_ready(eng->e, why, sizeof(why));
        return keel__err(err, KEEL_ENOTFOUND,
                         "no inference package \"%s\" is served (install and activate it with "
                         "`keel install --activate`)%s%s",
                         name ? name : "", ready ? "" : "; ", ready ? "" : why);
    }
    keel_model *pm = calloc(1, sizeof(*pm));
    if (!pm) {
        keel__model_unref(m);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    pm->m = m;
    for (const keel__tensor *t; pm->nin < KEEL__MAX_IO && (t = keel__model_input(m, pm->nin));)
        pm->in[pm->nin++] = to_public(t);
    *ret = pm;
    return KEEL_OK;
}

void keel_model_unref(keel_model *m)
{
    if (!m)
        return;
    keel__model_unref(m->m);
    free(m);
}

const char *keel_model_name(const keel_model *m)
{
    return keel__model_name(m->m);
}

const char *keel_model_version(const keel_model *m)
{
    return keel__model_version(m->m);
}

const keel_tensor *keel_model_inputs(const keel_model *m, size_t *ret_n)
{
    *ret_n = m->nin;
    return m->in;
}

int keel_model_run_opts(keel_model *m, const keel_tensor *inputs, size_t n, const keel_run_opts *o,
                        keel_result **ret, keel_error *err)
{
    keel__tensor in[KEEL__MAX_IO];
    keel_result *r = NULL;
    int rc;
    if (n > KEEL__MAX_IO)
        return keel__err(err, KEEL_ETOOBIG, "%zu inputs; a model takes at most %d", n,
                         KEEL__MAX_IO);
    if (n && !inputs)
        return keel__err(err, KEEL_EINVALID, "%zu inputs announced, none given", n);
    for (size_t i = 0; i < n; i++) {
        if (!inputs[i].name)
            return keel__err(err, KEEL_EINVALID, "input %zu has no name", i);
        if (inputs[i].ndim > KEEL_TENSOR_DIMS)
            return keel__err(err, KEEL_EINVALID, "input \"%s\": rank %zu, at most %d",
                             inputs[i].name, inputs[i].ndim, KEEL_TENSOR_DIMS);
        in[i] = (keel__tensor){.name = inputs[i].name,
                               .dtype = (int)inputs[i].dtype,
                               .ndim = inputs[i].ndim,
                               .data = (void *)(uintptr_t)inputs[i].data, /* only read */
                               .nbytes = inputs[i].nbytes};
        memcpy(in[i].shape, inputs[i].shape, sizeof(in[i].shape));
    }
    if (!(r = calloc(1, sizeof(*r))))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    keel__infer_req req = {
        .inputs = in, .ninputs = n, .tier = o ? o->tier : NULL, .session = o ? o->session : NULL};
    if ((rc = keel__model_run(m->m, &req, &r->resp, err))) {
        free(r);
        return rc;
    }
    r->m = keel__infer_model_ref(m->m);
    for (size_t i = 0; i < r->resp.noutputs; i++)
        r->out[i] = to_public(&r->resp.outputs[i]);
    *ret = r;
    return KEEL_OK;
}

int keel_model_run(keel_model *m, const keel_tensor *inputs, size_t n, keel_result **ret,
                   keel_error *err)
{
    return keel_model_run_opts(m, inputs, n, NULL, ret, err);
}

size_t keel_result_noutputs(const keel_result *r)
{
    return r->resp.noutputs;
}

const keel_tensor *keel_result_output(const keel_result *r, size_t i)
{
    return i < r->resp.noutputs ? &r->out[i] : NULL;
}

const char *keel_result_rows(const keel_result *r)
{
    return r->resp.result;
}

const char *keel_result_tier(const keel_result *r)
{
    return r->resp.tier;
}

const char *keel_result_backend(const keel_result *r)
{
    return r->resp.backend;
}

bool keel_result_degraded(const keel_result *r)
{
    return r->resp.degraded;
}

const char *keel_result_reason(const keel_result *r)
{
    return r->resp.reason;
}

void keel_result_free(keel_result *r)
{
    if (!r)
        return;
    keel__infer_resp_done(&r->resp);
    keel__model_unref(r->m);
    free(r);
}
