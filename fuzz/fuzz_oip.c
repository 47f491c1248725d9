/*
 * fuzz_oip.c - the Open Inference Protocol request parser (JSON and the
 * binary tensor extension) and the response encoder.
 *
 * Input: 2 bytes (little-endian u16 v), then the request body.
 *   v & 1       the package has an image input called "img"
 *   v >> 1      json_len as a fraction of the body: 0x7fff = the whole body
 *               (plain JSON), less = a JSON header followed by binary data
 * What the parser accepts must be well-formed tensors. An accepted request
 * is answered with a fake response: the request's own tensors echoed back
 * (as a model that returns its input would) plus outputs of every kind
 * (float specials, strings, sequence/map outputs as JSON), honouring the
 * requested outputs and their binary flags; a request with an "id" also
 * gets a postprocessing result. The response's JSON must parse and its
 * binary part must be exactly what the JSON announces.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "http/oip.h"
#include "keel/keel.h"

#define FRAC_ALL 0x7fffu

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t count_of(const keel__tensor *t)
{
    size_t n = 1;
    for (size_t d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* What the parser accepted is a well-formed tensor. */
static void check_request(const keel__oip_req *r)
{
    if (r->req.ninputs != r->ntensors || r->req.inputs != r->tensors ||
        r->ntensors > KEEL__MAX_IO || r->noutputs > KEEL__MAX_IO)
        __builtin_trap();
    for (size_t i = 0; i < r->ntensors; i++) {
        const keel__tensor *t = &r->tensors[i];
        if (!t->name || !t->data || t->ndim > KEEL_TENSOR_MAX_DIMS)
            __builtin_trap();
        for (size_t d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0)
                __builtin_trap();
        size_t es = keel__dtype_size(t->dtype), n = count_of(t);
        if (es && t->nbytes != n * es)
            __builtin_trap();
        if (t->dtype == KEEL_DT_STRING) { /* n NUL-terminated strings, nothing more */
            const char *s = t->data, *end = s + t->nbytes;
            for (size_t e = 0; e < n; e++) {
                const char *z = memchr(s, 0, (size_t)(end - s));
                if (!z)
                    __builtin_trap();
                s = z + 1;
            }
            if (s != end)
                __builtin_trap();
        }
    }
}

static void check_response(const char *out, size_t len, size_t json_len)
{
    cJSON *j = NULL;
    const cJSON *o;
    uint64_t bin = 0;
    if (json_len > len || keel__json_parse(out, json_len, "response", &j, NULL))
        __builtin_trap(); /* the encoder wrote malformed JSON */
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(j, "outputs"))
    {
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(o, "parameters"), "binary_data_size");
        uint64_t v = 0;
        if (bs && !keel__json_is_uint(bs, &v))
            __builtin_trap();
        bin += v;
    }
    cJSON_Delete(j);
    if (bin != len - json_len)
        __builtin_trap();
}

static void respond(const keel__oip_req *r, bool with_result)
{
    static float probs[6] = {0.25f, 0.5f, 0.25f, NAN, INFINITY, -0.0f};
    static double f64[2] = {1e300, -NAN};
    static uint16_t f16[3] = {0x3c00, 0x7c00, 0x0001}, bf16[2] = {0x3f80, 0xff81};
    static uint64_t u64[1] = {UINT64_MAX};
    static int8_t i8[2] = {-128, 127};
    static uint8_t b[2] = {0, 1};
    static char label[] = "cat\0\"d\\og\"\0\xc3\xa9\x01";
    static char zipmap[] = "[{\"0\":0.1,\"1\":0.9},{\"a\":1,\"b\":0}]";
    static char notarray[] = "{\"k\":[1,2]}";
    keel__infer_resp resp;
    memset(&resp, 0, sizeof(resp));
    keel__strlcpy(resp.model, "fuzz", sizeof(resp.model));
    keel__strlcpy(resp.version, "1.0.0", sizeof(resp.version));
    keel__strlcpy(resp.digest, "sha256:00", sizeof(resp.digest));
    keel__strlcpy(resp.tier, "primary", sizeof(resp.tier));
    keel__strlcpy(resp.backend, "rules", sizeof(resp.backend));
    keel__strlcpy(resp.reason, "secondary: \"quoted\"\n", sizeof(resp.reason));
    resp.degraded = true;
    resp.ns = 12345;
    /* clang-format off */
    const keel__tensor fixed[] = {
        {.name = "probs", .dtype = KEEL_DT_FLOAT32, .ndim = 2, .shape = {2, 3}, .data = probs,
         .nbytes = sizeof(probs)},
        {.name = "label", .dtype = KEEL_DT_STRING, .ndim = 1, .shape = {3}, .data = label,
         .nbytes = sizeof(label)},
        {.name = "zipmap", .dtype = KEEL_DT_JSON, .ndim = 0, .data = zipmap,
         .nbytes = sizeof(zipmap) - 1},
        {.name = "map", .dtype = KEEL_DT_JSON, .ndim = 0, .data = notarray,
         .nbytes = sizeof(notarray) - 1},
        {.name = "f64", .dtype = KEEL_DT_FLOAT64, .ndim = 1, .shape = {2}, .data = f64,
         .nbytes = sizeof(f64)},
        {.name = "f16", .dtype = KEEL_DT_FLOAT16, .ndim = 1, .shape = {3}, .data = f16,
         .nbytes = sizeof(f16)},
        {.name = "bf16", .dtype = KEEL_DT_BFLOAT16, .ndim = 2, .shape = {1, 2}, .data = bf16,
         .nbytes = sizeof(bf16)},
        {.name = "u64", .dtype = KEEL_DT_UINT64, .ndim = 0, .data = u64, .nbytes = sizeof(u64)},
        {.name = "i8", .dtype = KEEL_DT_INT8, .ndim = 1, .shape = {2}, .data = i8,
         .nbytes = sizeof(i8)},
        {.name = "b", .dtype = KEEL_DT_BOOL, .ndim = 1, .shape = {2}, .data = b,
         .nbytes = sizeof(b)},
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        resp.outputs[resp.noutputs++] = fixed[i];
    /* the request's tensors, as a model that echoes would answer */
    for (size_t i = 0; i < r->ntensors && resp.noutputs < KEEL__MAX_OUT; i++)
        resp.outputs[resp.noutputs++] = r->tensors[i];
    static char result[] = "[{\"label\":\"cat\",\"confidence\":0.5}]";
    resp.result = with_result ? result : NULL;

    char *out = NULL;
    size_t len = 0, json_len = 0;
    keel_error e;
    if (keel__oip_response(r, &resp, &out, &len, &json_len, &e) == KEEL_OK) {
        check_response(out, len, json_len);
        free(out);
    }
    /* resp borrows everything: nothing to free */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned v = (unsigned)data[0] | (unsigned)data[1] << 8;
    size_t len = size - 2;
    size_t frac = v >> 1, json_len = frac >= FRAC_ALL ? len : len * frac / FRAC_ALL;
    const char *image_input = (v & 1) ? "img" : NULL;
    /* a copy of exactly the body, so reads past it are caught */
    char *body = malloc(len ? len : 1);
    if (!body)
        return 0;
    memcpy(body, data + 2, len);
    keel_log_set_stderr(false);

    keel__oip_req r;
    keel_error e;
    e.msg[0] = 0;
    if (keel__oip_parse(body, len, json_len, image_input, &r, &e) == KEEL_OK) {
        check_request(&r);
        respond(&r, r.id[0] != 0);
        keel__oip_done(&r);
    } else if (!e.msg[0]) {
        __builtin_trap(); /* a failure says why */
    }
    free(body);
    return 0;
}
