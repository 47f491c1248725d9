/*
 * tensor.c - dtype sizes, names and parsing, and the one element reader and
 * writer (saturating) that rules, constants, validation rows and
 * postprocessing share.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/tensor.h"

int keel__dtype_parse(const char *s)
{
    static const struct {
        const char *name;
        int dt;
    } names[] = {
        {"float32", KEEL_DT_FLOAT32},  {"float", KEEL_DT_FLOAT32},  {"float16", KEEL_DT_FLOAT16},
        {"float64", KEEL_DT_FLOAT64},  {"double", KEEL_DT_FLOAT64}, {"int8", KEEL_DT_INT8},
        {"int16", KEEL_DT_INT16},      {"int32", KEEL_DT_INT32},    {"int64", KEEL_DT_INT64},
        {"uint8", KEEL_DT_UINT8},      {"uint16", KEEL_DT_UINT16},  {"uint32", KEEL_DT_UINT32},
        {"uint64", KEEL_DT_UINT64},    {"bool", KEEL_DT_BOOL},      {"string", KEEL_DT_STRING},
        {"bfloat16", KEEL_DT_BFLOAT16}};
    for (size_t i = 0; s && i < KEEL_ARRAY_LEN(names); i++)
        if (!strcmp(s, names[i].name))
            return names[i].dt;
    return 0;
}

size_t keel__dtype_size(int dtype)
{
    switch (dtype) {
    case KEEL_DT_UINT8:
    case KEEL_DT_INT8:
    case KEEL_DT_BOOL:
        return 1;
    case KEEL_DT_UINT16:
    case KEEL_DT_INT16:
    case KEEL_DT_FLOAT16:
    case KEEL_DT_BFLOAT16:
        return 2;
    case KEEL_DT_FLOAT32:
    case KEEL_DT_INT32:
    case KEEL_DT_UINT32:
        return 4;
    case KEEL_DT_FLOAT64:
    case KEEL_DT_INT64:
    case KEEL_DT_UINT64:
        return 8;
    default:
        return 0;
    }
}

const char *keel__dtype_name(int dtype)
{
    static const char *const names[] = {
        [KEEL_DT_FLOAT32] = "float32", [KEEL_DT_UINT8] = "uint8",      [KEEL_DT_INT8] = "int8",
        [KEEL_DT_UINT16] = "uint16",   [KEEL_DT_INT16] = "int16",      [KEEL_DT_INT32] = "int32",
        [KEEL_DT_INT64] = "int64",     [KEEL_DT_STRING] = "string",    [KEEL_DT_BOOL] = "bool",
        [KEEL_DT_FLOAT16] = "float16", [KEEL_DT_FLOAT64] = "float64",  [KEEL_DT_UINT32] = "uint32",
        [KEEL_DT_UINT64] = "uint64",   [KEEL_DT_BFLOAT16] = "bfloat16"};
    if (dtype < 0 || (size_t)dtype >= KEEL_ARRAY_LEN(names) || !names[dtype])
        return "unknown";
    return names[dtype];
}

void keel__tensor_done(keel__tensor *t)
{
    if (!t)
        return;
    free(t->data);
    t->data = NULL;
    t->nbytes = 0;
}

double keel__tensor_get(const keel__tensor *t, size_t i)
{
    switch (t->dtype) {
    case KEEL_DT_FLOAT32:
        return ((const float *)t->data)[i];
    case KEEL_DT_FLOAT64:
        return ((const double *)t->data)[i];
    case KEEL_DT_INT64:
        return (double)((const int64_t *)t->data)[i];
    case KEEL_DT_INT32:
        return ((const int32_t *)t->data)[i];
    case KEEL_DT_INT16:
        return ((const int16_t *)t->data)[i];
    case KEEL_DT_INT8:
        return ((const int8_t *)t->data)[i];
    case KEEL_DT_UINT8:
    case KEEL_DT_BOOL:
        return ((const uint8_t *)t->data)[i];
    case KEEL_DT_UINT16:
        return ((const uint16_t *)t->data)[i];
    case KEEL_DT_UINT32:
        return ((const uint32_t *)t->data)[i];
    case KEEL_DT_UINT64:
        return (double)((const uint64_t *)t->data)[i];
    default:
        return NAN;
    }
}

bool keel__tensor_set(keel__tensor *t, size_t i, double v)
{
    switch (t->dtype) {
    case KEEL_DT_FLOAT32:
        ((float *)t->data)[i] = (float)v;
        return true;
    case KEEL_DT_FLOAT64:
        ((double *)t->data)[i] = v;
        return true;
    case KEEL_DT_INT64:
        ((int64_t *)t->data)[i] =
            (int64_t)keel__clamp(v, -9.2233720368547748e18, 9.2233720368547748e18);
        return true;
    case KEEL_DT_INT32:
        ((int32_t *)t->data)[i] = (int32_t)keel__clamp(v, -2147483648.0, 2147483647.0);
        return true;
    case KEEL_DT_INT16:
        ((int16_t *)t->data)[i] = (int16_t)keel__clamp(v, -32768, 32767);
        return true;
    case KEEL_DT_INT8:
        ((int8_t *)t->data)[i] = (int8_t)keel__clamp(v, -128, 127);
        return true;
    case KEEL_DT_UINT8:
    case KEEL_DT_BOOL:
        ((uint8_t *)t->data)[i] = (uint8_t)keel__clamp(v, 0, 255);
        return true;
    case KEEL_DT_UINT16:
        ((uint16_t *)t->data)[i] = (uint16_t)keel__clamp(v, 0, 65535);
        return true;
    case KEEL_DT_UINT32:
        ((uint32_t *)t->data)[i] = (uint32_t)keel__clamp(v, 0, 4294967295.0);
        return true;
    case KEEL_DT_UINT64:
        ((uint64_t *)t->data)[i] = (uint64_t)keel__clamp(v, 0, 1.8446744073709550e19);
        return true;
    default:
        return false;
    }
}

bool keel__tensor_nonfinite(const keel__tensor *t)
{
    size_t n;
    switch (t->dtype) {
    case KEEL_DT_FLOAT32:
        n = t->nbytes / 4;
        for (size_t i = 0; i < n; i++)
            if (!isfinite(((const float *)t->data)[i]))
                return true;
        return false;
    case KEEL_DT_FLOAT64:
        n = t->nbytes / 8;
        for (size_t i = 0; i < n; i++)
            if (!isfinite(((const double *)t->data)[i]))
                return true;
        return false;
    case KEEL_DT_FLOAT16: /* exponent all ones: Inf or NaN */
        n = t->nbytes / 2;
        for (size_t i = 0; i < n; i++)
            if ((((const uint16_t *)t->data)[i] & 0x7c00u) == 0x7c00u)
                return true;
        return false;
    default:
        return false;
    }
}

void keel__shape_str(const keel__tensor *t, char *buf, size_t size)
{
    size_t o = 0;
    if (size)
        buf[0] = 0;
    for (size_t d = 0; d < t->ndim && o < size; d++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, d ? "," : "", t->shape[d]);
}
