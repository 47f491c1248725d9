/*
 * tensor.h - the tensor every part of lib/infer passes around: element
 * types (ONNX TensorProto codes, so the onnx backend converts nothing),
 * shape, and a data pointer with its byte length; element readers and
 * writers; dtype names.
 *
 * It owns the type only. It knows no backend: ONNX Runtime's adapter
 * (ort.h) includes this header, not the other way round. The public
 * keel_tensor (include/keel/infer.h) has the same fields and codes.
 */
#ifndef KEEL_INFER_TENSOR_H
#define KEEL_INFER_TENSOR_H

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
/* "float32" etc. to a dtype; 0 when unknown (manifest spelling, "float" and
 * "double" too). */
int keel__dtype_parse(const char *s);
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

/* Whether a float32, float64 or float16 tensor holds NaN or Inf (false
 * for every other dtype). */
bool keel__tensor_nonfinite(const keel__tensor *t);
/* t's shape as "1,-1,3" into buf (size bytes; cut when it does not fit),
 * for messages. */
void keel__shape_str(const keel__tensor *t, char *buf, size_t size);

#endif
