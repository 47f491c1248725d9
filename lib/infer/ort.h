/*
 * ort.h - the adapter to ONNX Runtime, loaded with dlopen.
 *
 * No C header for ONNX Runtime is reachable from this build, so ort.c
 * declares the OrtApi entries it uses at their slot positions in the
 * append-only OrtApi table (onnxruntime_c_api.h, stable since API 1) and
 * checks the runtime's version string at load. Nothing of ONNX Runtime's
 * types leaves lib/infer/ort.c.
 *
 * It covers load, sessions (options, execution providers), runs with every
 * tensor dtype including strings, run cancellation, and sequence/map outputs
 * as JSON. lib/infer/onnx.c is the backend built on it.
 */
#ifndef KEEL_INFER_ORT_H
#define KEEL_INFER_ORT_H

#include "core/core.h"

/* Element types use ONNX's TensorProto codes. */
enum {
    KEEL_DT_FLOAT32 = 1,
    KEEL_DT_UINT8 = 2,
    KEEL_DT_INT8 = 3,
    KEEL_DT_UINT16 = 4,
    KEEL_DT_INT16 = 5,
    KEEL_DT_INT32 = 6,
    KEEL_DT_INT64 = 7,
    KEEL_DT_STRING = 8,
    KEEL_DT_BOOL = 9,
    KEEL_DT_FLOAT16 = 10,
    KEEL_DT_FLOAT64 = 11,
    KEEL_DT_UINT32 = 12,
    KEEL_DT_UINT64 = 13,
    KEEL_DT_BFLOAT16 = 16,
    /* not ONNX: a non-tensor output (sequence, map) rendered as JSON text in
     * data (nbytes long, NUL-terminated), e.g. scikit-learn's ZipMap */
    KEEL_DT_JSON = 1000,
};
/* Bytes per element of a numeric dtype; 0 for string/unknown. */
size_t keel__dtype_size(int dtype);
const char *keel__dtype_name(int dtype);

#define KEEL_TENSOR_MAX_DIMS 8

typedef struct keel__tensor {
    const char *name; /* borrowed */
    int dtype;
    size_t ndim;
    int64_t shape[KEEL_TENSOR_MAX_DIMS];
    void *data; /* inputs: borrowed; outputs: malloc'd, freed by keel__tensor_done.
                 * strings: the elements as NUL-terminated strings back to back */
    size_t nbytes;
} keel__tensor;

/* v clamped to [lo, hi] (NaN to 0): float-to-integer casts out of range
 * are undefined behaviour in C. */
static inline double keel__clamp(double v, double lo, double hi)
{
    return v != v ? 0 : v < lo ? lo : v > hi ? hi : v;
}

void keel__tensor_done(keel__tensor *t);
/* Element i of a numeric tensor as a double (NaN for float16, bfloat16,
 * strings). */
double keel__tensor_get(const keel__tensor *t, size_t i);
/* Stores v as element i, converted to the tensor's type; integers saturate
 * (NaN becomes 0). false for types it cannot store (float16, bfloat16,
 * strings). */
bool keel__tensor_set(keel__tensor *t, size_t i, double v);

/* Loads the runtime once (thread-safe): lib_path, or KEEL_ORT_LIB, or
 * .deps/onnxruntime/lib/libonnxruntime.so.1, or the system's. */
KEEL_WUR int keel__ort_load(const char *lib_path, keel_error *err);
/* The runtime's version ("1.30.0") once loaded, else NULL. */
const char *keel__ort_version(void);

typedef struct keel__ort_opts {
    int intra_threads;                /* 0: ORT default */
    int opt_level;                    /* 0 disable, 1 basic, 2 extended, 99 all (default) */
    const char *optimized_model_path; /* save the optimized graph here (may be NULL) */
    const char *const *providers; /* preference order, e.g. {"cuda", "cpu"}; CPU if none takes */
    size_t nproviders;
} keel__ort_opts;

typedef struct keel__ort_session keel__ort_session;

KEEL_WUR int keel__ort_session_new(const char *model_path, const keel__ort_opts *opts,
                                   keel__ort_session **ret, keel_error *err);
/* The same from a model in memory (data must stay valid during the call). */
KEEL_WUR int keel__ort_session_from_memory(const void *data, size_t len, const keel__ort_opts *opts,
                                           keel__ort_session **ret, keel_error *err);
void keel__ort_session_free(keel__ort_session *s);
size_t keel__ort_ninputs(const keel__ort_session *s);
size_t keel__ort_noutputs(const keel__ort_session *s);
/* Describes input/output i: name (valid until free), dtype, shape (-1 dynamic). */
const keel__tensor *keel__ort_input(const keel__ort_session *s, size_t i);
const keel__tensor *keel__ort_output(const keel__ort_session *s, size_t i);

/* The execution provider the session runs on ("cpu", "cuda", ...). */
const char *keel__ort_provider(const keel__ort_session *s);

/* A run control: lets another thread stop a Run in flight (deadlines). */
typedef struct keel__ort_runctl keel__ort_runctl;
KEEL_WUR int keel__ort_runctl_new(keel__ort_runctl **ret, keel_error *err);
void keel__ort_runctl_free(keel__ort_runctl *c);
void keel__ort_runctl_terminate(keel__ort_runctl *c); /* thread-safe */
void keel__ort_runctl_reset(keel__ort_runctl *c);
KEEL_WUR int keel__ort_run_ctl(keel__ort_session *s, const keel__tensor *inputs, size_t ninputs,
                               keel__tensor *outputs, keel__ort_runctl *ctl, keel_error *err);

/* Runs with inputs (by name) and fills outputs[0..noutputs) in session order.
 * Thread-safe for one session (ORT sessions allow concurrent Run). */
KEEL_WUR int keel__ort_run(keel__ort_session *s, const keel__tensor *inputs, size_t ninputs,
                           keel__tensor *outputs, keel_error *err);

#endif
