/*
 * infer.h - inference through libkeel alone: open an engine on a store,
 * take a served package by name, run tensors through its tiers, read the
 * answer.
 *
 * Owns: the public tensor type and the engine/model/result handles. The
 * engine serves what the store (keel_store_open) marks active, with the
 * package's whole policy: contract checks, preprocessing, the tier chain
 * under deadlines and breakers (a degraded answer is still an answer, and
 * says so), postprocessing into result rows. It does not own the store,
 * does no networking (no upstream routing here) and has no HTTP.
 *
 * ONNX Runtime is loaded at the first ONNX tier: opts->onnxruntime_path,
 * else $KEEL_ORT_LIB, else libonnxruntime.so.1 beside libkeel or the
 * program (DIR, DIR/../lib: where `make install` puts it; a build tree's
 * .deps/onnxruntime/lib), else the install prefix's lib folder, else the
 * system's. The working directory plays no part.
 *
 * Thread safety: an engine and its models may be used from several threads
 * at once; keel_engine_refresh may run while requests do (they finish on
 * the version they started with). A result belongs to one thread at a time.
 */
#ifndef KEEL_INFER_PUBLIC_H
#define KEEL_INFER_PUBLIC_H

#include "keel/common.h"
#include "keel/error.h"
#include "keel/store.h"

/* Element types: ONNX's TensorProto codes. */
typedef enum keel_dtype {
    KEEL_DTYPE_FLOAT32 = 1,
    KEEL_DTYPE_UINT8 = 2,
    KEEL_DTYPE_INT8 = 3,
    KEEL_DTYPE_UINT16 = 4,
    KEEL_DTYPE_INT16 = 5,
    KEEL_DTYPE_INT32 = 6,
    KEEL_DTYPE_INT64 = 7,
    KEEL_DTYPE_STRING = 8, /* elements NUL-terminated, back to back */
    KEEL_DTYPE_BOOL = 9,
    KEEL_DTYPE_FLOAT16 = 10,
    KEEL_DTYPE_FLOAT64 = 11,
    KEEL_DTYPE_UINT32 = 12,
    KEEL_DTYPE_UINT64 = 13,
    KEEL_DTYPE_BFLOAT16 = 16,
    KEEL_DTYPE_JSON = 1000, /* an output that is no tensor (sequence, map): JSON text */
} keel_dtype;

#define KEEL_TENSOR_DIMS 8

typedef struct keel_tensor {
    const char *name; /* borrowed */
    keel_dtype dtype;
    size_t ndim;
    int64_t shape[KEEL_TENSOR_DIMS];
    const void *data; /* little-endian elements, row-major; borrowed */
    size_t nbytes;
} keel_tensor;

/* "float32", "int64", ... ("unknown" otherwise). Static storage. */
KEEL_API const char *keel_dtype_name(keel_dtype dt);

typedef struct keel_engine keel_engine;
typedef struct keel_model keel_model;
typedef struct keel_result keel_result;

typedef struct keel_engine_opts {
    const char *cache_dir;        /* optimized graphs are kept here; NULL: none. Copied */
    const char *onnxruntime_path; /* libonnxruntime.so.1 to load; NULL: see above. Copied */
    size_t max_sessions;          /* stateful sessions per package; 0: 1024 */
    uint64_t session_idle_s;      /* idle session expiry; 0: 300 */
} keel_engine_opts;

/* Opens an engine on store (borrowed: it must outlive the engine), resolves
 * what serves each package (keel_store_resolve_all: active, else previous,
 * else known-good, files verified) and loads it. opts may be NULL. A package that fails to
 * load is left out (keel_engine_model says why), not an error. */
KEEL_API KEEL_WUR int keel_engine_open(keel_store *store, const keel_engine_opts *opts,
                                       keel_engine **ret, keel_error *err);
/* Resolves again and loads versions that changed since (after an activation). */
KEEL_API KEEL_WUR int keel_engine_refresh(keel_engine *eng, keel_error *err);
/* Frees the engine. Models still referenced stay valid until unref'd. */
KEEL_API void keel_engine_close(keel_engine *eng);

/* The served model of package `name`, referenced (keel_model_unref).
 * KEEL_ENOTFOUND when the store serves no such inference package. */
KEEL_API KEEL_WUR int keel_engine_model(keel_engine *eng, const char *name, keel_model **ret,
                                        keel_error *err);
KEEL_API void keel_model_unref(keel_model *m);
/* name and version: valid while m is referenced. */
KEEL_API const char *keel_model_name(const keel_model *m);
KEEL_API const char *keel_model_version(const keel_model *m);
/* The inputs the package takes: *ret_n of them, valid while m is referenced. */
KEEL_API const keel_tensor *keel_model_inputs(const keel_model *m, size_t *ret_n);

typedef struct keel_run_opts {
    const char *tier;    /* run only this tier (tests, comparisons); NULL: the chain */
    const char *session; /* a stream whose state carries between calls; NULL: fresh */
} keel_run_opts;

/* Runs inputs[0..n) (borrowed for the call) through the model's tiers.
 * *ret owns the answer (keel_result_free). Errors: KEEL_EINVALID or
 * KEEL_ETOOBIG for a request that does not fit the package (the message
 * says how), KEEL_ENOTREADY when every tier failed (the message names each
 * failure), KEEL_EBUSY when every session slot is in use. */
KEEL_API KEEL_WUR int keel_model_run(keel_model *m, const keel_tensor *inputs, size_t n,
                                     keel_result **ret, keel_error *err);
/* The same with options (o may be NULL). */
KEEL_API KEEL_WUR int keel_model_run_opts(keel_model *m, const keel_tensor *inputs, size_t n,
                                          const keel_run_opts *o, keel_result **ret,
                                          keel_error *err);

/* The result. Every pointer is valid until keel_result_free. */
KEEL_API size_t keel_result_noutputs(const keel_result *r);
KEEL_API const keel_tensor *keel_result_output(const keel_result *r, size_t i); /* NULL past n */
/* The result rows as a JSON array, one {"label", "confidence", ...} object
 * per row, or NULL when the package has no postprocessing. */
KEEL_API const char *keel_result_rows(const keel_result *r);
KEEL_API const char *keel_result_tier(const keel_result *r);    /* the tier that served */
KEEL_API const char *keel_result_backend(const keel_result *r); /* "onnx", "rules", ... */
/* True when the first tier did not serve; keel_result_reason says why. */
KEEL_API bool keel_result_degraded(const keel_result *r);
KEEL_API const char *keel_result_reason(const keel_result *r);
KEEL_API void keel_result_free(keel_result *r);

#endif
