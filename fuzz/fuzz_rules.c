/*
 * fuzz_rules.c - the rules backend: a rules file parsed against a fixed
 * package contract, then run on fixed input tensors.
 *
 * The input is the rules file (written to a temporary file: the backend
 * loads from a path). The contract declares outputs of several dtypes and
 * shapes, named as in the examples (output_label, output_probability,
 * score, output) plus a few more; the run gets float32 [2,8] tensors under
 * the examples' input names and tensors of other dtypes and shapes that a
 * rules file can pick by name. Every output must be a well-formed tensor:
 * non-negative shape whose element count matches its bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "infer/backend.h"
#include "keel/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64], path[128];

static void cleanup(void)
{
    if (path[0])
        unlink(path);
    if (dir[0])
        rmdir(dir);
}

/* clang-format off */
static const keel__tensor contract_out[] = {
    {.name = "output_label", .dtype = KEEL_DT_INT64, .ndim = 1, .shape = {-1}},
    {.name = "output_probability", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {-1, 3}},
    {.name = "score", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {-1, 1}},
    {.name = "output", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {1, 1}},
    {.name = "f64", .dtype = KEEL_DT_FLOAT64, .ndim = 3, .shape = {-1, 2, 2}},
    {.name = "i32", .dtype = KEEL_DT_INT32, .ndim = 0},
    {.name = "u8", .dtype = KEEL_DT_UINT8, .ndim = 2, .shape = {-1, 4}},
    {.name = "flag", .dtype = KEEL_DT_BOOL, .ndim = 1, .shape = {-1}},
    {.name = "i16", .dtype = KEEL_DT_INT16, .ndim = 1, .shape = {-1}},
    {.name = "half", .dtype = KEEL_DT_FLOAT16, .ndim = 1, .shape = {-1}},
    {.name = "text", .dtype = KEEL_DT_STRING, .ndim = 1, .shape = {-1}},
    {.name = "dyn", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {-1, -1}},
};

static const keel__tensor contract_in[] = {
    {.name = "float_input", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {-1, 8}},
};

static float rows[2][8] = {{5.1f, 3.5f, 1.4f, 0.2f, 0.0f, -1.5f, 85.7f, 120.0f},
                           {6.7f, 3.0f, 5.2f, 2.3f, 1e-3f, -1e30f, 1e30f, 0.004f}};
static double f64[2][3] = {{1, 2, 3}, {-4, 0.5, 1e308}};
static int64_t i64[3][2] = {{1, -1}, {INT64_MAX, INT64_MIN}, {0, 7}};
static int32_t i32[2] = {-7, 2147483647};
static int16_t i16[4] = {-32768, 0, 1, 32767};
static int8_t i8[4] = {-128, -1, 1, 127};
static uint8_t u8[2][4] = {{0, 1, 2, 255}, {9, 8, 7, 6}};
static uint16_t u16[2] = {0, 65535}, f16[2] = {0x3c00, 0x7c00};
static uint32_t u32[2] = {0, 4294967295u};
static uint64_t u64[1] = {UINT64_MAX};
static char str[] = "a\0bc";
static float empty[1];

static const keel__tensor inputs[] = {
    {.name = "float_input", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {2, 8}, .data = rows,
     .nbytes = sizeof(rows)},
    {.name = "window", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {2, 8}, .data = rows,
     .nbytes = sizeof(rows)},
    {.name = "input", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {2, 8}, .data = rows,
     .nbytes = sizeof(rows)},
    {.name = "flat", .dtype = KEEL_DT_FLOAT32, .ndim = 1, .shape = {16}, .data = rows,
     .nbytes = sizeof(rows)},
    {.name = "scalar", .dtype = KEEL_DT_FLOAT32, .ndim = 0, .data = rows, .nbytes = 4},
    {.name = "none", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {0, 8}, .data = empty,
     .nbytes = 0},
    {.name = "zero_wide", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {2, 0}, .data = empty,
     .nbytes = 0},
    {.name = "f64", .dtype = KEEL_DT_FLOAT64, .ndim = 2, .shape = {2, 3}, .data = f64,
     .nbytes = sizeof(f64)},
    {.name = "i64", .dtype = KEEL_DT_INT64, .ndim = 2, .shape = {3, 2}, .data = i64,
     .nbytes = sizeof(i64)},
    {.name = "i32", .dtype = KEEL_DT_INT32, .ndim = 1, .shape = {2}, .data = i32,
     .nbytes = sizeof(i32)},
    {.name = "i16", .dtype = KEEL_DT_INT16, .ndim = 2, .shape = {1, 4}, .data = i16,
     .nbytes = sizeof(i16)},
    {.name = "i8", .dtype = KEEL_DT_INT8, .ndim = 2, .shape = {2, 2}, .data = i8,
     .nbytes = sizeof(i8)},
    {.name = "u8", .dtype = KEEL_DT_UINT8, .ndim = 2, .shape = {2, 4}, .data = u8,
     .nbytes = sizeof(u8)},
    {.name = "bool", .dtype = KEEL_DT_BOOL, .ndim = 2, .shape = {2, 4}, .data = u8,
     .nbytes = sizeof(u8)},
    {.name = "u16", .dtype = KEEL_DT_UINT16, .ndim = 1, .shape = {2}, .data = u16,
     .nbytes = sizeof(u16)},
    {.name = "u32", .dtype = KEEL_DT_UINT32, .ndim = 1, .shape = {2}, .data = u32,
     .nbytes = sizeof(u32)},
    {.name = "u64", .dtype = KEEL_DT_UINT64, .ndim = 1, .shape = {1}, .data = u64,
     .nbytes = sizeof(u64)},
    {.name = "half", .dtype = KEEL_DT_FLOAT16, .ndim = 1, .shape = {2}, .data = f16,
     .nbytes = sizeof(f16)},
    {.name = "text", .dtype = KEEL_DT_STRING, .ndim = 1, .shape = {2}, .data = str,
     .nbytes = sizeof(str)},
};

#define NIN (sizeof(inputs) / sizeof(inputs[0]))
/* clang-format on */

static void check_output(const keel__tensor *t)
{
    size_t es = keel__dtype_size(t->dtype), n = 1;
    if (!t->name || !t->data || !es || t->ndim > KEEL_TENSOR_MAX_DIMS)
        __builtin_trap();
    for (size_t d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            __builtin_trap(); /* readers size the data from the shape */
        n *= (size_t)t->shape[d];
    }
    if (n * es != t->nbytes)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        keel_log_set_stderr(false);
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/keel-fuzz-rules-XXXXXX",
                 tmp && *tmp && strlen(tmp) < 32 ? tmp : "/tmp");
        if (!mkdtemp(dir))
            abort();
        snprintf(path, sizeof(path), "%s/rules.json", dir);
        atexit(cleanup);
    }
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f))
        abort();

    keel__tier_ctx ctx = {
        .model_path = path,
        .model_hex = NULL,
        .tier = NULL,
        .inputs = contract_in,
        .ninputs = sizeof(contract_in) / sizeof(contract_in[0]),
        .outputs = contract_out,
        .noutputs = sizeof(contract_out) / sizeof(contract_out[0]),
    };
    void *inst = NULL;
    keel_error e;
    e.msg[0] = 0;
    if (keel__backend_rules.load(&ctx, &inst, &e) != KEEL_OK) {
        if (inst || !e.msg[0])
            __builtin_trap();
        return 0;
    }
    /* all inputs at once (the file names the one it reads), then a run
     * without the first: a file that reads float_input finds it missing */
    for (int pass = 0; pass < 2; pass++) {
        keel__tensor out[KEEL__MAX_IO];
        size_t nout = 0;
        char *result = NULL;
        e.msg[0] = 0;
        int rc = keel__backend_rules.run(inst, NULL, inputs + pass, NIN - (size_t)pass, out, &nout,
                                         &result, 0, &e);
        if (rc) {
            if (!e.msg[0] || result)
                __builtin_trap();
            continue;
        }
        cJSON *j = NULL;
        if (!result || nout > ctx.noutputs ||
            keel__json_parse(result, strlen(result), "result", &j, NULL) || !cJSON_IsArray(j))
            __builtin_trap(); /* one {"label","confidence"} per row, as JSON */
        cJSON_Delete(j);
        for (size_t i = 0; i < nout; i++) {
            check_output(&out[i]);
            keel__tensor_done(&out[i]);
        }
        free(result);
    }
    keel__backend_rules.unload(inst);
    return 0;
}
