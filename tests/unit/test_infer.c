/* test_infer.c - the inference engine without the daemon: the rules
 * backend, pre/post-processing, and the tier chain (fallback, breakers,
 * pinning, request validation) on the real ONNX Runtime with the 120-byte
 * MatMul fixture and a rules tier. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "core/json.h"
#include "infer/model.h"
#include "infer/ort.h"

#ifndef KEEL_TEST_DATA
#define KEEL_TEST_DATA "tests/data"
#endif

static const char *dir;

/* Package files: "matmul.onnx" is the fixture, anything else lives in dir. */
static int path_of(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    if (!strcmp(rel, "matmul.onnx") || !strcmp(rel, "accumulate.onnx") ||
        !strcmp(rel, "shape_fold.onnx"))
        snprintf(buf, n, KEEL_TEST_DATA "/%s", rel);
    else
        snprintf(buf, n, "%s/%s", dir, rel);
    if (access(buf, R_OK))
        return keel__err(err, KEEL_ENOTFOUND, "no file %s", rel);
    return KEEL_OK;
}

static const char rules_json[] =
    "{\"format\":1,\"input\":\"a\","
    " \"features\":{\"first\":{\"fn\":\"value\",\"index\":0},\"mean\":{\"fn\":\"mean\"},"
    "  \"z\":{\"fn\":\"abs_zscore\",\"of\":\"mean\",\"mean\":0,\"std\":2},"
    "  \"hot\":{\"fn\":\"count_above\",\"threshold\":1}},"
    " \"rules\":[{\"if\":[[\"first\",\"<\",0]],\"label\":\"negative\",\"confidence\":0.9,"
    "             \"outputs\":{\"c\":[-1,-1,-1]}},"
    "            {\"if\":[[\"z\",\">\",1],[\"hot\",\">=\",2]],\"label\":\"hot\",\"confidence\":0.7,"
    "             \"outputs\":{\"c\":[2,2,2]}},"
    "            {\"label\":\"plain\",\"confidence\":0.5,\"outputs\":{\"c\":[0,0,0]}}]}";

static keel__model *build(const char *manifest)
{
    keel__infer_opts o = {0};
    keel__model *m = NULL;
    keel_error e = {0};
    if (keel__model_build(manifest, strlen(manifest), path_of, NULL, &o, &m, &e))
        fail_msg("build: %s", e.msg);
    return m;
}

#define CONTRACT                                                                                   \
    "\"format\":1,\"name\":\"mm\",\"version\":\"1.0.0\","                                          \
    "\"inputs\":[{\"name\":\"a\",\"dtype\":\"float32\",\"shape\":[-1,-1]},"                        \
    "{\"name\":\"b\",\"dtype\":\"float32\",\"shape\":[-1,-1]}],"                                   \
    "\"outputs\":[{\"name\":\"c\",\"dtype\":\"float32\",\"shape\":[-1,3]}]"

static float av[12], bv[12], bad[12];

static keel__infer_req req2(bool good)
{
    static keel__tensor in[2];
    in[0] = (keel__tensor){.name = "a",
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 2,
                           .shape = {3, 4},
                           .data = av,
                           .nbytes = sizeof(av)};
    in[1] = (keel__tensor){.name = "b",
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 2,
                           .shape = {good ? 4 : 3, good ? 3 : 4},
                           .data = good ? bv : bad,
                           .nbytes = sizeof(bv)};
    return (keel__infer_req){.inputs = in, .ninputs = 2};
}

static void setup_data(void)
{
    for (int i = 0; i < 12; i++) {
        av[i] = (float)i * 0.5f - 2.0f;
        bv[i] = (float)(i % 5) - 1.5f;
        bad[i] = 1;
    }
}

static void test_rules_backend(void **state)
{
    dir = th_tmpdir();
    th_write_str(dir, "rules.json", rules_json);
    keel__model *m = build("{" CONTRACT ",\"tiers\":[{\"name\":\"rules\",\"backend\":\"rules\","
                           "\"model\":\"rules.json\"}]}");
    /* rows: negative first value / two values > 1 with |mean|/2 > 1 / plain */
    float a[12] = {-1, 0, 0, 0, 3, 3, 2, 1, 0.5f, 0.5f, 0.5f, 0.5f};
    keel__tensor in[1] = {{.name = "a",
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 2,
                           .shape = {3, 4},
                           .data = a,
                           .nbytes = sizeof(a)}};
    keel__tensor bt = {.name = "b",
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 2,
                       .shape = {4, 3},
                       .data = bv,
                       .nbytes = sizeof(bv)};
    keel__tensor both[2] = {in[0], bt};
    keel__infer_req r = {.inputs = both, .ninputs = 2};
    keel__infer_resp resp;
    keel_error e = {0};
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(resp.tier, "rules");
    assert_string_equal(resp.backend, "rules");
    assert_false(resp.degraded);
    assert_int_equal(resp.noutputs, 1);
    assert_int_equal(resp.outputs[0].shape[0], 3);
    assert_int_equal(resp.outputs[0].shape[1], 3);
    const float *c = resp.outputs[0].data;
    assert_float_equal(c[0], -1, 0);
    assert_float_equal(c[3], 2, 0);
    assert_float_equal(c[6], 0, 0);
    assert_non_null(strstr(resp.result, "\"label\":\"negative\""));
    assert_non_null(strstr(resp.result, "\"label\":\"hot\""));
    assert_non_null(strstr(resp.result, "\"label\":\"plain\""));
    keel__infer_resp_done(&resp);
    keel__model_unref(m);

    /* bad rules files name their problem */
    static const struct {
        const char *text, *want;
    } bad_rules[] = {
        {"{\"format\":2,\"input\":\"a\",\"rules\":[{\"label\":\"x\"}]}", "newer"},
        {"{\"format\":1,\"input\":\"a\",\"rules\":[]}", "at least one rule"},
        {"{\"format\":1,\"input\":\"a\",\"features\":{\"f\":{\"fn\":\"median\"}},\"rules\":[{"
         "\"label\":\"x\"}]}",
         "not one of value"},
        {"{\"format\":1,\"input\":\"a\",\"rules\":[{\"if\":[[\"nope\",\"<\",1]],\"label\":\"x\"}]}",
         "unknown feature"},
        {"{\"format\":1,\"input\":\"a\",\"features\":{\"f\":{\"fn\":\"mean\"}},\"rules\":[{\"if\":"
         "[[\"f\",\"=~\",1]],\"label\":\"x\"}]}",
         "operator"},
        {"{\"format\":1,\"input\":\"a\",\"rules\":[{\"label\":\"x\",\"outputs\":{\"zz\":[1]}}]}",
         "not an output the package declares"},
        {"{\"format\":1,\"input\":\"a\",\"rules\":[{\"label\":\"x\",\"confidence\":3}]}",
         "within 0..1"},
        /* the declared output shape [-1,3] holds 3 values a row */
        {"{\"format\":1,\"input\":\"a\",\"rules\":[{\"label\":\"x\",\"outputs\":{\"c\":[1,2]}}]}",
         "rules[0].outputs.c: 2 values, but the package declares shape [-1,3]: a row needs 3"},
        {"{\"format\":1,\"input\":\"zz\",\"rules\":[{\"label\":\"x\"}]}",
         "\"zz\" is not an input the package declares"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(bad_rules); i++) {
        th_write_str(dir, "rules.json", bad_rules[i].text);
        const char *man = "{" CONTRACT ",\"tiers\":[{\"name\":\"rules\",\"backend\":\"rules\","
                          "\"model\":\"rules.json\"}]}";
        keel__infer_opts o = {0};
        m = NULL;
        if (keel__model_build(man, strlen(man), path_of, NULL, &o, &m, &e))
            fail_msg("build: %s", e.msg);
        /* the tier failed to load: a request gets every tier's failure */
        r = req2(true);
        th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_ENOTREADY, bad_rules[i].want);
        keel__model_unref(m);
    }
}

static void test_fallback_and_breaker(void **state)
{
    keel_error e = {0};
    keel__infer_resp resp;
    dir = th_tmpdir();
    setup_data();
    th_write_str(dir, "rules.json", rules_json);
    th_write_str(dir, "garbage.onnx", "this is not an ONNX graph");
    keel__model *m = build("{" CONTRACT ",\"tiers\":["
                           "{\"name\":\"broken\",\"backend\":\"onnx\",\"model\":\"garbage.onnx\"},"
                           "{\"name\":\"primary\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"},"
                           "{\"name\":\"rules\",\"backend\":\"rules\",\"model\":\"rules.json\"}],"
                           "\"policy\":{\"breaker\":{\"failures\":3,\"cooldown_ms\":100}}}");
    assert_true(keel__model_ready(m));

    /* a tier that cannot load: the next one serves, marked degraded, with why */
    keel__infer_req r = req2(true);
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(resp.tier, "primary");
    assert_true(resp.degraded);
    assert_non_null(strstr(resp.reason, "broken: breaker open after load failure"));
    assert_int_equal(resp.noutputs, 1);
    keel__infer_resp_done(&resp);

    /* run-time failures in primary: rules serves; after 3 the breaker opens */
    for (int i = 0; i < 3; i++) {
        r = req2(false);
        if (keel__model_run(m, &r, &resp, &e))
            fail_msg("%s", e.msg);
        assert_string_equal(resp.tier, "rules");
        assert_non_null(strstr(resp.reason, "primary: run:"));
        keel__infer_resp_done(&resp);
    }
    assert_int_equal(m->tiers[1].br.state, BR_OPEN);
    r = req2(true); /* a good request skips the open breaker */
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(resp.tier, "rules");
    assert_non_null(strstr(resp.reason, "primary: breaker open"));
    keel__infer_resp_done(&resp);

    /* pinned: honoured even with the breaker open */
    r = req2(true);
    r.tier = "primary";
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(resp.tier, "primary");
    keel__infer_resp_done(&resp);

    /* after the cool-down, one probe; success closes the breaker */
    usleep(150 * 1000);
    r = req2(true);
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(resp.tier, "primary");
    keel__infer_resp_done(&resp);
    assert_int_equal(m->tiers[1].br.state, BR_CLOSED);
    assert_true(m->transitions >= 2);

    /* request errors name the problem */
    r = req2(true);
    r.tier = "nope";
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_EINVALID, "no tier \"nope\"");
    r = req2(true);
    r.ninputs = 1;
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_EINVALID, "input \"b\" is missing");
    keel__tensor wrong[2];
    r = req2(true);
    memcpy(wrong, r.inputs, sizeof(wrong));
    wrong[0].dtype = KEEL_DT_FLOAT64;
    r.inputs = wrong;
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_EINVALID,
                  "datatype float64, the model takes float32");
    memcpy(wrong, req2(true).inputs, sizeof(wrong));
    wrong[1].name = "zz";
    r.inputs = wrong;
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_EINVALID, "unknown input \"zz\"");
    memcpy(wrong, req2(true).inputs, sizeof(wrong));
    wrong[0].ndim = 3;
    r.inputs = wrong;
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_EINVALID, "does not fit");
    keel__model_unref(m);
}

static void test_all_tiers_fail(void **state)
{
    keel_error e = {0};
    keel__infer_resp resp;
    dir = th_tmpdir();
    setup_data();
    keel__model *m = build("{" CONTRACT ",\"tiers\":["
                           "{\"name\":\"primary\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"}"
                           ",{\"name\":\"second\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"}"
                           "]}");
    keel__infer_req r = req2(false);
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_ENOTREADY, "every tier failed");
    assert_non_null(strstr(e.msg, "primary: run:"));
    assert_non_null(strstr(e.msg, "second: run:"));
    assert_int_equal(m->all_failed, 1);
    keel__model_unref(m);
}

static void test_postprocess(void **state)
{
    keel__post p;
    keel_error e = {0};
    cJSON *j = NULL;
    const char *spec = "{\"activation\":\"softmax\",\"top_k\":2}";
    if (keel__json_parse(spec, strlen(spec), "t", &j, &e) || keel__post_parse(j, &p, &e))
        fail_msg("%s", e.msg);
    cJSON_Delete(j);
    dir = th_tmpdir();
    th_write_str(dir, "labels.txt", "cat\ndog\r\nbird\n\n");
    char path[512];
    snprintf(path, sizeof(path), "%s/labels.txt", dir);
    if (keel__post_labels(&p, path, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(p.nlabels, 3);
    float logits[6] = {1, 3, 2, 0, 0, 5};
    keel__tensor t = {.name = "y",
                      .dtype = KEEL_DT_FLOAT32,
                      .ndim = 2,
                      .shape = {2, 3},
                      .data = logits,
                      .nbytes = sizeof(logits)};
    char *res = NULL;
    if (keel__post_result(&p, &t, 1, &res, &e))
        fail_msg("%s", e.msg);
    cJSON *r = cJSON_Parse(res);
    const cJSON *r0 = cJSON_GetArrayItem(r, 0), *r1 = cJSON_GetArrayItem(r, 1);
    assert_string_equal(cJSON_GetObjectItem(r0, "label")->valuestring, "dog");
    double want = exp(3.0) / (exp(1.0) + exp(3.0) + exp(2.0));
    assert_float_equal(cJSON_GetObjectItem(r0, "confidence")->valuedouble, want, 1e-5);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(r0, "top_k")), 2);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r0, "top_k"), 1), "label")
            ->valuestring,
        "bird");
    assert_string_equal(cJSON_GetObjectItem(r1, "label")->valuestring, "bird");
    cJSON_Delete(r);
    free(res);

    /* top_k never goes past the classes there are, nor lists classes whose
     * probability underflowed to 0 (logits thousands apart, as mnist's) */
    p.top_k = 5;
    float far[6] = {0, 4000, 2000, 1, 3, 2};
    t.data = far;
    if (keel__post_result(&p, &t, 1, &res, &e))
        fail_msg("%s", e.msg);
    r = cJSON_Parse(res);
    const cJSON *k0 = cJSON_GetObjectItem(cJSON_GetArrayItem(r, 0), "top_k"),
                *k1 = cJSON_GetObjectItem(cJSON_GetArrayItem(r, 1), "top_k");
    assert_int_equal(cJSON_GetArraySize(k0), 1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(k0, 0), "label")->valuestring,
                        "dog");
    assert_int_equal(cJSON_GetArraySize(k1), 3);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(k1, 2), "label")->valuestring,
                        "cat");
    cJSON_Delete(r);
    free(res);
    keel__post_done(&p);

    /* binary threshold on one score */
    spec = "{\"threshold\":0.5}";
    if (keel__json_parse(spec, strlen(spec), "t", &j, &e) || keel__post_parse(j, &p, &e))
        fail_msg("%s", e.msg);
    cJSON_Delete(j);
    float score[2] = {0.7f, 0.2f};
    keel__tensor s = {.name = "p",
                      .dtype = KEEL_DT_FLOAT32,
                      .ndim = 2,
                      .shape = {2, 1},
                      .data = score,
                      .nbytes = sizeof(score)};
    if (keel__post_result(&p, &s, 1, &res, &e))
        fail_msg("%s", e.msg);
    assert_non_null(strstr(res, "\"index\":1,\"score\":0.7"));
    assert_non_null(strstr(res, "\"index\":0,\"score\":0.2"));
    free(res);

    /* bad specs */
    static const char *const bad[] = {"{\"activation\":\"relu\"}", "[1]", "{\"top_k\":5000}"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(bad); i++) {
        j = cJSON_Parse(bad[i]);
        assert_int_equal(keel__post_parse(j, &p, &e), KEEL_EINVALID);
        cJSON_Delete(j);
    }
}

static void test_tabular(void **state)
{
    keel__pre p;
    keel_error e = {0};
    cJSON *j = cJSON_Parse("{\"input\":\"x\",\"tabular\":{\"mean\":[1,2],\"std\":[2,4]}}");
    if (keel__pre_parse(j, &p, &e))
        fail_msg("%s", e.msg);
    cJSON_Delete(j);
    float v[4] = {3, 6, 1, 2};
    keel__tensor t = {.name = "x",
                      .dtype = KEEL_DT_FLOAT32,
                      .ndim = 2,
                      .shape = {2, 2},
                      .data = v,
                      .nbytes = sizeof(v)};
    if (keel__pre_tabular(&p, &t, &e))
        fail_msg("%s", e.msg);
    assert_float_equal(v[0], 1, 1e-6);
    assert_float_equal(v[1], 1, 1e-6);
    assert_float_equal(v[2], 0, 1e-6);
    assert_float_equal(v[3], 0, 1e-6);
    keel__pre_done(&p);
    j = cJSON_Parse("{\"input\":\"x\",\"tabular\":{\"mean\":[1],\"std\":[0]}}");
    assert_int_equal(keel__pre_parse(j, &p, &e), KEEL_EINVALID);
    keel__pre_done(&p);
    cJSON_Delete(j);
    j = cJSON_Parse("{\"input\":\"x\",\"image\":{\"width\":28,\"height\":28},\"tabular\":{}}");
    th_expect_err(keel__pre_parse(j, &p, &e), &e, KEEL_EINVALID, "exactly one");
    keel__pre_done(&p);
    cJSON_Delete(j);
}

static void test_manifest_errors(void **state)
{
    static const struct {
        const char *m, *want;
        int code;
    } cases[] = {
        {"{" CONTRACT ",\"tiers\":[{\"name\":\"p\",\"backend\":\"tensorflow\",\"model\":\"x\"}]}",
         "not a backend", KEEL_EUNSUPPORTED},
        {"{" CONTRACT ",\"tiers\":[]}", "no tier", KEEL_EINVALID},
        {"{" CONTRACT ",\"tiers\":[{\"name\":\"p\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"},"
         "{\"name\":\"p\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"}]}",
         "used twice", KEEL_EINVALID},
        {"{" CONTRACT ",\"tiers\":[{\"name\":\"p\",\"backend\":\"onnx\",\"model\":\"nope.onnx\"}]}",
         "tiers[0].model", KEEL_ENOTFOUND},
        {"{" CONTRACT ",\"tiers\":[{\"name\":\"p\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\","
         "\"deadline_ms\":\"soon\"}]}",
         "deadline_ms", KEEL_EINVALID},
        {"{\"format\":1,\"name\":\"x\",\"version\":\"1.0.0\",\"inputs\":[{\"name\":\"a\","
         "\"dtype\":\"complex64\",\"shape\":[1]}],\"tiers\":[]}",
         "complex64", KEEL_EINVALID},
        {"{" CONTRACT ",\"policy\":{\"breaker\":{\"window\":100}},\"tiers\":[{\"name\":\"p\","
         "\"backend\":\"onnx\",\"model\":\"matmul.onnx\"}]}",
         "window 1..64", KEEL_EINVALID},
    };
    keel__infer_opts o = {0};
    keel_error e;
    dir = th_tmpdir();
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        keel__model *m = NULL;
        th_expect_err(keel__model_build(cases[i].m, strlen(cases[i].m), path_of, NULL, &o, &m, &e),
                      &e, cases[i].code, cases[i].want);
        assert_null(m);
    }
}

/* One frame through the accumulator; returns y. */
static float accumulate(keel__model *m, const char *session, float v)
{
    float x[4] = {v, v, v, v};
    keel__tensor in = {.name = "x",
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 2,
                       .shape = {1, 4},
                       .data = x,
                       .nbytes = sizeof(x)};
    keel__infer_req r = {.inputs = &in, .ninputs = 1, .session = session};
    keel__infer_resp resp;
    keel_error e = {0};
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(resp.noutputs, 1); /* state_out is internal */
    float y = *(const float *)resp.outputs[0].data;
    keel__infer_resp_done(&resp);
    return y;
}

static void test_sessions(void **state)
{
    dir = th_tmpdir();
    const char *man =
        "{\"format\":1,\"name\":\"acc\",\"version\":\"1.0.0\","
        "\"outputs\":[{\"name\":\"y\",\"dtype\":\"float32\",\"shape\":[1,1]}],"
        "\"tiers\":[{\"name\":\"primary\",\"backend\":\"onnx\",\"model\":\"accumulate.onnx\","
        "\"state\":[{\"input\":\"state\",\"output\":\"state_out\",\"dtype\":\"float32\","
        "\"shape\":[1,1]}],\"context\":{\"input\":\"x\",\"samples\":2}}]}";
    keel__infer_opts o = {.max_sessions = 2, .session_idle_s = 1};
    keel__model *m = NULL;
    keel_error e = {0};
    if (keel__model_build(man, strlen(man), path_of, NULL, &o, &m, &e))
        fail_msg("%s", e.msg);
    /* the contract comes from the model, without the state input */
    assert_int_equal(m->nin, 1);
    assert_string_equal(m->in[0].name, "x");
    /* no session: fresh state and context every time */
    assert_float_equal(accumulate(m, NULL, 1), 4, 0);
    assert_float_equal(accumulate(m, NULL, 1), 4, 0);
    /* session a: state carries (4, then 4 + 4 + 2 context samples = 10) */
    assert_float_equal(accumulate(m, "a", 1), 4, 0);
    assert_float_equal(accumulate(m, "a", 1), 10, 0);
    /* session b is separate */
    assert_float_equal(accumulate(m, "b", 2), 8, 0);
    assert_float_equal(accumulate(m, "a", 0), 12, 0); /* +0 frame, +2 context of 1s */
    /* a third session evicts the least recently used (b) */
    assert_float_equal(accumulate(m, "c", 1), 4, 0);
    assert_int_equal(m->nsessions, 2);
    assert_int_equal(m->sessions_evicted, 1);
    assert_float_equal(accumulate(m, "a", 0), 12, 0); /* a survived */
    assert_float_equal(accumulate(m, "b", 1), 4, 0);  /* b starts over */
    /* idle expiry */
    sleep(2);
    assert_float_equal(accumulate(m, "a", 1), 4, 0);
    assert_true(m->sessions_expired >= 1);
    keel__model_unref(m);
}

static void test_provider_fallback(void **state)
{
    /* No CUDA provider library ships with the npm runtime: the preference
     * list falls through to CPU and the tier still serves. */
    dir = th_tmpdir();
    setup_data();
    keel__model *m = build("{" CONTRACT ",\"tiers\":[{\"name\":\"primary\",\"backend\":\"onnx\","
                           "\"model\":\"matmul.onnx\",\"options\":{\"execution_providers\":"
                           "[\"tensorrt\",\"cuda\",\"npu9000\",\"cpu\"],"
                           "\"graph_optimization\":\"basic\",\"intra_op_threads\":2}}]}");
    void *inst = atomic_load(&m->tiers[0].inst);
    assert_non_null(inst);
    assert_string_equal(m->tiers[0].be->device(inst), "cpu");
    keel__infer_req r = req2(true);
    keel__infer_resp resp;
    keel_error e = {0};
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(resp.tier, "primary");
    keel__infer_resp_done(&resp);
    keel__model_unref(m);
}

static int events[KEEL__EV_OUTCOME + 1], outcomes_degraded, outcomes_failed;
static char last_from[32], last_tier[32];

static void on_event(void *ctx, const keel__infer_event *ev)
{
    events[ev->type]++;
    if (ev->type == KEEL__EV_OUTCOME) { /* probation's input: one per request */
        outcomes_degraded += ev->degraded;
        outcomes_failed += !ev->ok;
        assert_true(ev->ns > 0);
        assert_string_equal(ev->version, "1.0.0");
    }
    if (ev->type == KEEL__EV_TRANSITION) {
        snprintf(last_from, sizeof(last_from), "%s", ev->from_tier);
        snprintf(last_tier, sizeof(last_tier), "%s", ev->tier);
    }
    if (ev->type == KEEL__EV_RECORD)
        assert_true(ev->resp && ev->resp->noutputs == 1);
}

static void test_events(void **state)
{
    dir = th_tmpdir();
    setup_data();
    th_write_str(dir, "rules.json", rules_json);
    const char *man =
        "{" CONTRACT ",\"records\":{\"mode\":\"sampled\",\"sample_rate\":0.5},"
        "\"tiers\":[{\"name\":\"primary\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"},"
        "{\"name\":\"rules\",\"backend\":\"rules\",\"model\":\"rules.json\"}]}";
    keel__infer_opts o = {.event = on_event};
    keel__model *m = NULL;
    keel_error e = {0};
    keel__infer_resp resp;
    memset(events, 0, sizeof(events));
    outcomes_degraded = outcomes_failed = 0;
    if (keel__model_build(man, strlen(man), path_of, NULL, &o, &m, &e))
        fail_msg("%s", e.msg);
    bool good[4] = {true, false, false, true};
    for (int i = 0; i < 4; i++) {
        keel__infer_req r = req2(good[i]);
        if (keel__model_run(m, &r, &resp, &e))
            fail_msg("%s", e.msg);
        keel__infer_resp_done(&resp);
    }
    /* primary -> rules -> primary: two transitions, logged as events */
    assert_int_equal(events[KEEL__EV_TRANSITION], 2);
    assert_string_equal(last_from, "rules");
    assert_string_equal(last_tier, "primary");
    assert_int_equal(events[KEEL__EV_RECORD], 2);  /* every second answer */
    assert_int_equal(events[KEEL__EV_OUTCOME], 4); /* every answer */
    assert_int_equal(outcomes_degraded, 2);        /* the rules tier answered two */
    assert_int_equal(outcomes_failed, 0);
    keel__model_unref(m);
    /* a bad policy names its field */
    const char *bad = "{" CONTRACT ",\"records\":{\"mode\":\"most\"},\"tiers\":[]}";
    th_expect_err(keel__model_build(bad, strlen(bad), path_of, NULL, &o, &m, &e), &e, KEEL_EINVALID,
                  "records.mode");
}

/* A rules tier gives its outputs in their declared shapes: a free size
 * takes what the values fill; a fixed first size must match the rows. */
static void test_rules_shapes(void **state)
{
    dir = th_tmpdir();
    setup_data();
    th_write_str(dir, "rules.json",
                 "{\"format\":1,\"input\":\"a\",\"rules\":[{\"label\":\"x\","
                 "\"outputs\":{\"c\":[1,2,3,4]}}]}");
    static const struct {
        const char *shape, *want; /* want: the output's shape, or the error */
    } cases[] = {
        {"[-1,2,-1]", "3,2,2"},
        {"[-1,4,1]", "3,4,1"},
        {"[3,4]", "3,4"},
        {"[1,4]", "declares output \"c\" with 1 rows, but the input \"a\" has 3"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        char man[1024];
        snprintf(man, sizeof(man),
                 "{\"format\":1,\"name\":\"r\",\"version\":\"1.0.0\","
                 "\"inputs\":[{\"name\":\"a\",\"dtype\":\"float32\",\"shape\":[-1,4]}],"
                 "\"outputs\":[{\"name\":\"c\",\"dtype\":\"float32\",\"shape\":%s}],"
                 "\"tiers\":[{\"name\":\"rules\",\"backend\":\"rules\",\"model\":\"rules.json\"}]}",
                 cases[i].shape);
        keel__model *m = build(man);
        keel__tensor in = {.name = "a",
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 2,
                           .shape = {3, 4},
                           .data = av,
                           .nbytes = sizeof(av)};
        keel__infer_req r = {.inputs = &in, .ninputs = 1};
        keel__infer_resp resp;
        keel_error e = {0};
        if (strchr(cases[i].want, '"')) {
            th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_ENOTREADY, cases[i].want);
        } else {
            if (keel__model_run(m, &r, &resp, &e))
                fail_msg("%s: %s", cases[i].shape, e.msg);
            char got[64] = "";
            size_t o = 0;
            for (size_t d = 0; d < resp.outputs[0].ndim; d++)
                o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%lld", d ? "," : "",
                                      (long long)resp.outputs[0].shape[d]);
            assert_string_equal(got, cases[i].want);
            keel__infer_resp_done(&resp);
        }
        keel__model_unref(m);
    }
    /* more than one free size after the first: the rules cannot fill it */
    const char *man =
        "{\"format\":1,\"name\":\"r\",\"version\":\"1.0.0\","
        "\"outputs\":[{\"name\":\"c\",\"dtype\":\"float32\",\"shape\":[-1,-1,-1]}],"
        "\"tiers\":[{\"name\":\"rules\",\"backend\":\"rules\",\"model\":\"rules.json\"}]}";
    keel__model *m = build(man);
    assert_false(keel__model_ready(m));
    assert_non_null(strstr(m->tiers[0].load_error, "more than one free size"));
    keel__model_unref(m);
}

/* A tier whose model cannot serve the package's contract does not load
 * (the package is not ready, and says why); what the manifest leaves out
 * comes from the model; requested outputs must be ones the package gives. */
static void test_contract(void **state)
{
    dir = th_tmpdir();
    setup_data();
    static const struct {
        const char *contract, *want;
    } bad[] = {
        {"\"inputs\":[{\"name\":\"a\",\"dtype\":\"float32\",\"shape\":[3,4]}]",
         "the model needs input \"b\", which the package does not declare (it declares \"a\")"},
        {"\"inputs\":[{\"name\":\"a\",\"dtype\":\"float32\",\"shape\":[3,4]},"
         "{\"name\":\"b\",\"dtype\":\"float32\",\"shape\":[4,3]},"
         "{\"name\":\"x\",\"dtype\":\"float32\",\"shape\":[1]}]",
         "declares input \"x\", which the model does not take (it takes \"a\", \"b\")"},
        {"\"inputs\":[{\"name\":\"a\",\"dtype\":\"int64\",\"shape\":[3,4]},"
         "{\"name\":\"b\",\"dtype\":\"float32\",\"shape\":[4,3]}]",
         "input \"a\": the package declares int64, the model takes float32"},
        {"\"inputs\":[{\"name\":\"a\",\"dtype\":\"float32\",\"shape\":[3,5]},"
         "{\"name\":\"b\",\"dtype\":\"float32\",\"shape\":[4,3]}]",
         "input \"a\": the package declares shape [3,5], the model takes [3,4]"},
        {"\"outputs\":[{\"name\":\"d\",\"dtype\":\"float32\",\"shape\":[3,3]}]",
         "declares output \"d\", which the model does not give (it gives \"c\")"},
        {"\"outputs\":[{\"name\":\"c\",\"dtype\":\"int64\",\"shape\":[3,3]}]",
         "output \"c\": the package declares int64, the model gives float32"},
    };
    keel_error e = {0};
    keel__infer_resp resp;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(bad); i++) {
        char man[1024];
        snprintf(man, sizeof(man),
                 "{\"format\":1,\"name\":\"mm\",\"version\":\"1.0.0\",%s,\"tiers\":[{\"name\":"
                 "\"primary\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"}]}",
                 bad[i].contract);
        keel__model *m = build(man);
        assert_false(keel__model_ready(m));
        char why[1024];
        keel__model_load_errors(m, why, sizeof(why));
        if (!strstr(why, bad[i].want))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, why, bad[i].want);
        assert_non_null(strstr(why, "primary: "));
        keel__model_unref(m);
    }

    /* nothing declared: inputs and outputs come from the model */
    keel__model *m =
        build("{\"format\":1,\"name\":\"mm\",\"version\":\"1.0.0\",\"tiers\":["
              "{\"name\":\"primary\",\"backend\":\"onnx\",\"model\":\"matmul.onnx\"}]}");
    assert_int_equal(m->nin, 2);
    assert_int_equal(m->nout, 1);
    assert_string_equal(m->out[0].name, "c");
    assert_int_equal(m->out[0].dtype, KEEL_DT_FLOAT32);
    keel__infer_req r = req2(true);
    if (keel__model_run(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(resp.noutputs, 1);
    assert_string_equal(resp.outputs[0].name, "c");
    keel__infer_resp_done(&resp);
    /* asking for outputs: known ones pass, an unknown one names the valid ones */
    r.outputs[0] = "c";
    r.noutputs = 1;
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    keel__infer_resp_done(&resp);
    r.outputs[1] = "logits";
    r.noutputs = 2;
    th_expect_err(keel__model_infer(m, &r, &resp, &e), &e, KEEL_EINVALID,
                  "unknown output \"logits\"; mm gives \"c\"");
    th_expect_err(keel__model_run(m, &r, &resp, &e), &e, KEEL_EINVALID, "unknown output");
    keel__model_unref(m);
}

/* The optimized-graph cache serves a graph only when it has exactly the
 * original's inputs and outputs, checked against its record at each use. */
static void test_graph_cache(void **state)
{
    static const char hex[] = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    char cache[512], man[512], graph[1024], sigp[1024], off[1024];
    char *data = NULL, *sig = NULL, *sig2 = NULL;
    size_t len = 0, slen = 0;
    keel_error e = {0};
    keel__infer_resp resp;
    dir = th_tmpdir();
    snprintf(cache, sizeof(cache), "%s/cache", dir);
    keel__infer_opts o = {.cache_dir = cache};
    if (keel__ort_load(NULL, &e))
        fail_msg("%s", e.msg);
    snprintf(graph, sizeof(graph), "%s/%s-o99-ort%s.onnx", cache, hex, keel__ort_version());
    snprintf(sigp, sizeof(sigp), "%s/%s-o99-ort%s.sig", cache, hex, keel__ort_version());
    snprintf(off, sizeof(off), "%s/%s-o99-ort%s.nocache", cache, hex, keel__ort_version());
    snprintf(man, sizeof(man),
             "{\"format\":1,\"name\":\"fold\",\"version\":\"1.0.0\",\"tiers\":[{\"name\":"
             "\"primary\",\"backend\":\"onnx\",\"model\":\"%s\"}]}",
             hex);

    /* a graph whose saved optimized form needs an extra input (w0__SHAPE):
     * served with its own inputs on every load; saved once, found wrong at
     * the next load, never saved again */
    if (keel__fs_read(KEEL_TEST_DATA "/shape_fold.onnx", 1 << 20, &data, &len, &e))
        fail_msg("%s", e.msg);
    th_write(dir, hex, data, len);
    free(data);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    keel__tensor in = {.name = "x",
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 4,
                       .shape = {1, 2, 2, 2},
                       .data = x,
                       .nbytes = sizeof(x)};
    keel__infer_req r = {.inputs = &in, .ninputs = 1};
    /* after each round: whether KEY.onnx and KEY.nocache exist */
    static const bool want_graph[] = {true, false, false, true, false};
    for (int round = 0; round < 5; round++) {
        if (round == 3) { /* a file without its record (older keel, foreign): not used */
            assert_int_equal(unlink(off), 0);
            if (keel__fs_read(KEEL_TEST_DATA "/matmul.onnx", 1 << 20, &data, &len, &e) ||
                keel__fs_write_atomic(graph, data, len, 0600, &e))
                fail_msg("%s", e.msg);
            free(data);
        }
        keel__model *m = NULL;
        if (keel__model_build(man, strlen(man), path_of, NULL, &o, &m, &e))
            fail_msg("build: %s", e.msg);
        assert_true(keel__model_ready(m));
        assert_int_equal(m->nin, 1); /* x only, in every round */
        assert_string_equal(m->in[0].name, "x");
        if (keel__model_run(m, &r, &resp, &e))
            fail_msg("round %d: %s", round, e.msg);
        assert_int_equal(resp.noutputs, 1);
        assert_float_equal(((const float *)resp.outputs[0].data)[0], 0.25f * (1 + 5), 1e-6);
        keel__infer_resp_done(&resp);
        keel__model_unref(m);
        if (keel__fs_exists(graph) != want_graph[round] ||
            keel__fs_exists(off) == want_graph[round])
            fail_msg("round %d: graph %d, nocache %d", round, keel__fs_exists(graph),
                     keel__fs_exists(off));
    }
    if (keel__fs_read(off, 1 << 20, &data, &len, &e))
        fail_msg("%s", e.msg);
    assert_non_null(strstr(data, "fold@1.0.0 tier primary adds the input \"w0__SHAPE\""));
    free(data);

    /* a graph that keeps its signature is cached with its record; a record
     * that cannot be read makes it saved again, one that differs from the
     * graph stops the caching */
    if (keel__fs_read(KEEL_TEST_DATA "/matmul.onnx", 1 << 20, &data, &len, &e))
        fail_msg("%s", e.msg);
    th_write(dir, hex, data, len);
    free(data);
    assert_int_equal(unlink(off), 0);
    setup_data();
    for (int round = 0; round < 4; round++) {
        if (round == 2)
            th_write_str(cache, strrchr(sigp, '/') + 1, "not a record");
        if (round == 3)
            th_write_str(cache, strrchr(sigp, '/') + 1,
                         "keel onnx cache signature 1\nin 1 [3,4] 1:z\n");
        keel__model *m = NULL;
        if (keel__model_build(man, strlen(man), path_of, NULL, &o, &m, &e))
            fail_msg("build: %s", e.msg);
        keel__infer_req r2 = req2(true);
        if (keel__model_run(m, &r2, &resp, &e))
            fail_msg("round %d: %s", round, e.msg);
        keel__infer_resp_done(&resp);
        keel__model_unref(m);
        if (round == 3)
            break;
        assert_true(keel__fs_exists(graph));
        assert_false(keel__fs_exists(off));
        if (keel__fs_read(sigp, 1 << 20, round ? &sig2 : &sig, round ? &slen : &len, &e))
            fail_msg("%s", e.msg);
        if (round) {
            assert_int_equal(slen, len);
            assert_memory_equal(sig, sig2, len);
            free(sig2);
        }
    }
    assert_non_null(strstr(sig, "in 1 [3,4] 1:a\nin 1 [4,3] 1:b\nout 1 [3,3] 1:c\n"));
    free(sig);
    assert_false(keel__fs_exists(graph));
    if (keel__fs_read(off, 1 << 20, &data, &len, &e))
        fail_msg("%s", e.msg);
    assert_non_null(strstr(data, "adds the input \"a\""));
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_backend),     cmocka_unit_test(test_fallback_and_breaker),
        cmocka_unit_test(test_all_tiers_fail),    cmocka_unit_test(test_sessions),
        cmocka_unit_test(test_provider_fallback), cmocka_unit_test(test_events),
        cmocka_unit_test(test_postprocess),       cmocka_unit_test(test_tabular),
        cmocka_unit_test(test_manifest_errors),   cmocka_unit_test(test_rules_shapes),
        cmocka_unit_test(test_contract),          cmocka_unit_test(test_graph_cache),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return th_exit(rc);
}
