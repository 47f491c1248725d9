/*
 * fuzz_inferpkg.c - a package manifest (keel.json) built into a model:
 * contract, tiers (constants, state, context, deadlines, budgets), policy,
 * pre/post-processing, labels; then requests through the tier chain.
 *
 * The input is the manifest. Its relative paths resolve into a temporary
 * directory holding a few rules files and labels files (names below), so
 * "rules" tiers load for real; "onnx" tiers fail to load (ONNX Runtime is
 * kept out on purpose: same behaviour wherever the fuzzer runs), which
 * opens their breakers and sends requests down the chain.
 *
 * A model that builds gets a request with every declared input (values
 * made up to fit the declaration, batch 2; an image when the package takes
 * one), then batch 1 in a session twice (state, context), then batch 1
 * pinned to the last tier; each answer also goes through postprocessing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "infer/model.h"
#include "infer/ort.h"
#include "http/oip.h"
#include "keel/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* clang-format off */
static const struct {
    const char *name, *text;
} files[] = {
    {"rules.json",
     "{\"format\":1,\"input\":\"float_input\",\"features\":{\"petal_length\":{\"fn\":\"value\","
     "\"index\":2}},\"rules\":[{\"if\":[[\"petal_length\",\"<\",2.45]],\"label\":\"setosa\","
     "\"confidence\":1.0,\"outputs\":{\"output_label\":[0],\"output_probability\":[1.0,0.0,"
     "0.0]}},{\"if\":[[\"petal_length\",\"<\",4.75]],\"label\":\"versicolor\",\"confidence\":"
     "0.97,\"outputs\":{\"output_label\":[1],\"output_probability\":[0.0,0.978,0.022]}},"
     "{\"label\":\"virginica\",\"confidence\":0.89,\"outputs\":{\"output_label\":[2],"
     "\"output_probability\":[0.0,0.109,0.891]}}]}"},
    {"temp.rules.json",
     "{\"format\":1,\"input\":\"window\",\"features\":{\"last\":{\"fn\":\"last\"},\"z\":{\"fn\":"
     "\"abs_zscore\",\"of\":\"last\",\"mean\":85.696554,\"std\":11.90088}},\"rules\":[{\"if\":"
     "[[\"z\",\">\",3.0]],\"label\":\"anomaly\",\"confidence\":0.73,\"outputs\":{\"score\":"
     "[0.73]}},{\"label\":\"normal\",\"confidence\":0.91,\"outputs\":{\"score\":[0.09]}}]}"},
    {"vad.rules.json",
     "{\"format\":1,\"input\":\"input\",\"features\":{\"rms\":{\"fn\":\"rms\"}},\"rules\":"
     "[{\"if\":[[\"rms\",\">=\",0.004]],\"label\":\"speech\",\"confidence\":0.96,\"outputs\":"
     "{\"output\":[0.96]}},{\"label\":\"silence\",\"confidence\":0.89,\"outputs\":{\"output\":"
     "[0.11]}}]}"},
    {"vad-state.rules.json", /* also the recurrent state output */
     "{\"format\":1,\"input\":\"input\",\"features\":{\"rms\":{\"fn\":\"rms\"}},\"rules\":"
     "[{\"if\":[[\"rms\",\">=\",0.004]],\"label\":\"speech\",\"confidence\":0.96,\"outputs\":"
     "{\"output\":[0.96],\"stateN\":[0.5,1]}},{\"label\":\"silence\",\"confidence\":0.89,"
     "\"outputs\":{\"output\":[0.11],\"stateN\":[0,0]}}]}"},
    {"mnist.rules.json",
     "{\"format\":1,\"input\":\"Input3\",\"features\":{\"m\":{\"fn\":\"mean\"},\"hi\":{\"fn\":"
     "\"max\"},\"sd\":{\"fn\":\"std\"}},\"rules\":[{\"if\":[[\"m\",\">\",0.5],[\"sd\",\"<\",1]],"
     "\"label\":\"1\",\"confidence\":0.6,\"outputs\":{\"Plus214_Output_0\":[0,9,0,0,0,0,0,0,0,"
     "1]}},{\"label\":\"0\",\"confidence\":0.5,\"outputs\":{\"Plus214_Output_0\":[3,-1,0,0,0,0,0,"
     "0,0,-2]}}]}"},
    {"all.rules.json",
     "{\"format\":1,\"input\":\"x\",\"features\":{\"v\":{\"fn\":\"value\",\"index\":1},\"l\":"
     "{\"fn\":\"last\"},\"mean\":{\"fn\":\"mean\"},\"min\":{\"fn\":\"min\"},\"max\":{\"fn\":"
     "\"max\"},\"sum\":{\"fn\":\"sum\"},\"rms\":{\"fn\":\"rms\"},\"std\":{\"fn\":\"std\"},"
     "\"range\":{\"fn\":\"range\"},\"ca\":{\"fn\":\"count_above\",\"threshold\":0},\"cb\":"
     "{\"fn\":\"count_below\",\"threshold\":1},\"z\":{\"fn\":\"zscore\",\"of\":\"mean\",\"mean\":"
     "0,\"std\":2},\"az\":{\"fn\":\"abs_zscore\",\"of\":\"v\",\"mean\":1,\"std\":0.5}},\"rules\":"
     "[{\"if\":[[\"v\",\"==\",1],[\"ca\",\"!=\",0],[\"z\",\"<=\",9],[\"az\",\">=\",0],[\"range\","
     "\">\",-1],[\"std\",\"<\",100]],\"label\":\"hit\",\"confidence\":0.75,\"outputs\":{\"y\":"
     "[0.1,0.7,0.2],\"k\":[1]}},{\"label\":\"miss\",\"confidence\":0.25,\"outputs\":{\"y\":[0.6,"
     "0.3,0.1],\"k\":[0]}}]}"},
    {"empty.rules.json", /* outputs without values */
     "{\"format\":1,\"input\":\"x\",\"rules\":[{\"label\":\"e\",\"outputs\":{\"y\":[],\"k\":"
     "[]}}]}"},
    {"bad.rules.json", "{\"format\":2,\"input\":\"x\",\"rules\":[]}"},
    {"labels.txt", "setosa\nversicolor\nvirginica\n"},
    {"digits.txt", "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n"},
    {"crlf.txt", "normal\r\n\r\n  \r\nanomaly \r\n\"quoted\"\\\n"},
    {"empty.txt", ""},
};
/* clang-format on */

static char dir[64];

static void cleanup(void)
{
    char p[128];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i].name);
        unlink(p);
    }
    rmdir(dir);
}

static void setup(void)
{
    keel_error e;
    keel_log_set_stderr(false);
    /* Pin ONNX Runtime to "not installed": a path that does not exist keeps
     * the loader from trying its defaults, so onnx tiers fail the same way
     * under CTest and under scripts/fuzz.sh (where .deps/ is reachable). */
    if (keel__ort_load("/nonexistent/keel-fuzz/libonnxruntime.so.1", &e) == KEEL_OK)
        abort();
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/keel-fuzz-pkg-XXXXXX",
             tmp && *tmp && strlen(tmp) < 32 ? tmp : "/tmp");
    if (!mkdtemp(dir))
        abort();
    atexit(cleanup);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char p[128];
        snprintf(p, sizeof(p), "%s/%s", dir, files[i].name);
        FILE *f = fopen(p, "wb");
        if (!f || fputs(files[i].text, f) < 0 || fclose(f))
            abort();
    }
}

/* Like the store: paths inside the package only. */
static int path_of(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    (void)ctx;
    if (!rel[0] || rel[0] == '/' || strstr(rel, ".."))
        return keel__err(err, KEEL_EINVALID, "\"%s\" is not a path inside the package", rel);
    if ((size_t)snprintf(buf, n, "%s/%s", dir, rel) >= n)
        return keel__err(err, KEEL_EINVALID, "path too long");
    return KEEL_OK;
}

/* A 2x2 RGB PNG. */
static const unsigned char png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
    0x52, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0xfd,
    0xd4, 0x9a, 0x73, 0x00, 0x00, 0x00, 0x12, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60,
    0x68, 0xf8, 0x2f, 0x67, 0x13, 0xc5, 0x00, 0x26, 0x1a, 0x00, 0x20, 0x29, 0x04, 0x67, 0x85,
    0x4c, 0xca, 0xe1, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

#define MAX_ELEMS 65536

/* Made-up values for declaration d: -1 axes take 1 (batch for the first). */
static int make_input(const keel__tensor *d, int64_t batch, keel__tensor *t)
{
    size_t n = 1, es = keel__dtype_size(d->dtype);
    memset(t, 0, sizeof(*t));
    t->name = d->name;
    t->dtype = d->dtype;
    t->ndim = d->ndim;
    for (size_t i = 0; i < d->ndim; i++) {
        t->shape[i] = d->shape[i] < 0 ? (i ? 1 : batch) : d->shape[i];
        if (t->shape[i] > MAX_ELEMS || (n *= (size_t)t->shape[i]) > MAX_ELEMS)
            return -1;
    }
    if (d->dtype == KEEL_DT_STRING) {
        char *s = malloc(2 * n + 1);
        if (!s)
            return -1;
        for (size_t i = 0; i < n; i++) {
            s[2 * i] = (char)('a' + i % 26);
            s[2 * i + 1] = 0;
        }
        t->data = s;
        t->nbytes = 2 * n;
        return 0;
    }
    if (!es)
        return -1;
    unsigned char *p = calloc(n ? n : 1, es);
    if (!p)
        return -1;
    for (size_t i = 0; i < n; i++) {
        double v = (double)((i * 37) % 17) * 0.5 - 3.0;
        switch (d->dtype) {
        case KEEL_DT_FLOAT32: {
            float f = (float)v;
            memcpy(p + i * 4, &f, 4);
            break;
        }
        case KEEL_DT_FLOAT64:
            memcpy(p + i * 8, &v, 8);
            break;
        case KEEL_DT_FLOAT16:
        case KEEL_DT_BFLOAT16: {
            uint16_t h = (uint16_t)(0x3c00 + (i % 7));
            memcpy(p + i * 2, &h, 2);
            break;
        }
        case KEEL_DT_BOOL:
            p[i] = (unsigned char)(i & 1);
            break;
        default: { /* integers: small, the low bytes of a little-endian int64 */
            int64_t x = (int64_t)(i % 5);
            memcpy(p + i * es, &x, es);
            break;
        }
        }
    }
    t->data = p;
    t->nbytes = n * es;
    return 0;
}

static void check_result(const char *s)
{
    cJSON *j = NULL;
    if (s && (keel__json_parse(s, strlen(s), "result", &j, NULL) || !cJSON_IsArray(j)))
        __builtin_trap();
    cJSON_Delete(j);
}

static void run(keel__model *m, const keel__infer_req *req)
{
    keel__infer_resp resp;
    keel_error e;
    e.msg[0] = 0;
    if (keel__model_run(m, req, &resp, &e) != KEEL_OK) {
        if (!e.msg[0] || resp.noutputs || resp.result)
            __builtin_trap(); /* failures say why and hand back nothing */
        return;
    }
    for (size_t i = 0; i < resp.noutputs; i++) {
        const keel__tensor *t = &resp.outputs[i];
        size_t n = 1, es = keel__dtype_size(t->dtype);
        if (!t->name || !t->data)
            __builtin_trap();
        for (size_t d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                __builtin_trap(); /* readers size the data from the shape */
            n *= (size_t)t->shape[d];
        }
        if (es && n * es != t->nbytes)
            __builtin_trap();
    }
    check_result(resp.result);
    /* what the postprocessing makes of these outputs (rules tiers give their
     * own result, other backends get this one) */
    char *res = NULL;
    if (keel__post_result(&m->post, resp.outputs, resp.noutputs, &res, &e) == KEEL_OK) {
        check_result(res);
        free(res);
    }
    keel__infer_resp_done(&resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0])
        setup();
    keel__infer_opts o = {.max_sessions = 4, .session_idle_s = 60};
    keel__model *m = NULL;
    keel_error e;
    e.msg[0] = 0;
    if (keel__model_build((const char *)data, size, path_of, NULL, &o, &m, &e) != KEEL_OK) {
        if (m || !e.msg[0])
            __builtin_trap();
        return 0;
    }
    char *meta = keel__model_metadata_json(m);
    if (meta) {
        cJSON *j = NULL;
        if (keel__json_parse(meta, strlen(meta), "metadata", &j, NULL))
            __builtin_trap();
        cJSON_Delete(j);
        free(meta);
    }
    (void)keel__model_ready(m);

    const char *image_input = keel__model_image_input(m);
    bool send_image =
        image_input && (size_t)m->pre.image.width * (size_t)m->pre.image.height <= 64 * 64;
    /* a batch of 2 without a session, then a stream (batch 1: context needs
     * it) in a session twice, then batch 1 pinned to the last tier */
    for (int pass = 0; pass < 4; pass++) {
        keel__tensor ins[KEEL__MAX_IO];
        size_t nin = 0;
        bool ok = true;
        const keel__tensor *d;
        for (size_t i = 0; ok && (d = keel__model_input(m, i)); i++) {
            if (send_image && !strcmp(d->name, image_input))
                continue;
            ok = make_input(d, pass ? 1 : 2, &ins[nin]) == 0;
            if (ok)
                nin++;
        }
        keel__infer_req req = {.inputs = ins, .ninputs = nin};
        if (send_image) {
            req.image = png;
            req.image_len = sizeof(png);
        }
        if (pass == 1 || pass == 2)
            req.session = "fuzz-session";
        if (pass == 3)
            req.tier = m->tiers[m->ntiers - 1].name;
        if (ok)
            run(m, &req);
        for (size_t i = 0; i < nin; i++)
            free(ins[i].data);
        if (!ok)
            break;
    }
    keel__model_unref(m);
    return 0;
}
