/* test_graph.c - pipeline tiers (lib/infer/graph.c): a chain of real ONNX
 * models and ops run as one tier, each op's arithmetic, the manifest's
 * validation (one bad manifest per refusal, each naming what is wrong),
 * failover of the whole tier when a step fails (runtime error, op on a
 * too-short input, deadline), and sessions carried by a stateful step.
 * Fixtures: tests/data/graph (made by make_graph_models.py), tests/data/fault,
 * tests/data/accumulate.onnx. Manifests are written with ' for " here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "infer/graph.h"
#include "infer/model.h"

#ifndef KEEL_TEST_DATA
#define KEEL_TEST_DATA "tests/data"
#endif

static int path_of(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    snprintf(buf, n, KEEL_TEST_DATA "/%s", rel);
    if (access(buf, R_OK))
        return keel__err(err, KEEL_ENOTFOUND, "no file %s", rel);
    return KEEL_OK;
}

/* The manifest with every ' turned into " (static rotating buffer). */
static const char *q(const char *s)
{
    static char buf[4][16384];
    static int slot;
    char *b = buf[slot++ % 4];
    size_t i = 0;
    for (; s[i] && i < sizeof(buf[0]) - 1; i++)
        b[i] = s[i] == '\'' ? '"' : s[i];
    b[i] = 0;
    return b;
}

static int build(const char *manifest, keel__model **m, keel_error *e)
{
    keel__infer_opts o = {.max_sessions = 4, .session_idle_s = 60};
    const char *j = q(manifest);
    memset(e, 0, sizeof(*e));
    *m = NULL;
    return keel__model_build(j, strlen(j), path_of, NULL, &o, m, e);
}

static keel__model *must_build(const char *manifest)
{
    keel__model *m = NULL;
    keel_error e;
    if (build(manifest, &m, &e))
        fail_msg("build: %s", e.msg);
    return m;
}

static int run(keel__model *m, const float *x, int64_t rows, const char *session,
               keel__infer_resp *resp, keel_error *e)
{
    keel__tensor in = {.name = "x",
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 2,
                       .shape = {rows, 4},
                       .data = (void *)x,
                       .nbytes = (size_t)rows * 4 * sizeof(float)};
    keel__infer_req r = {.inputs = &in, .ninputs = 1, .session = session};
    memset(e, 0, sizeof(*e));
    return keel__model_run(m, &r, resp, e);
}

static const keel__tensor *output(const keel__infer_resp *r, const char *name)
{
    for (size_t i = 0; i < r->noutputs; i++)
        if (!strcmp(r->outputs[i].name, name))
            return &r->outputs[i];
    fail_msg("no output %s", name);
    return NULL;
}

#define HEAD(inputs, outputs)                                                                      \
    "{'format':1,'name':'g','version':'1.0.0','inputs':[" inputs "],'outputs':[" outputs "],"
#define X4     "{'name':'x','dtype':'float32','shape':[-1,4]}"
#define OUT(n) "{'name':'" n "','dtype':'float32','shape':[-1]}"

/* double -> flatten -> windows of 4, step 2 -> rowsum -> flatten: a chain
 * of two real models and ops between them. */
#define CHAIN_STEPS                                                                                \
    "'steps':["                                                                                    \
    "{'name':'double','model':'graph/double.onnx','inputs':{'x':'x'},'outputs':{'y':'y'}},"        \
    "{'name':'flat','op':'reshape','input':'y','shape':[-1],'output':'flat'},"                     \
    "{'name':'win','op':'window','input':'flat','axis':0,'size':4,'step':2,'output':'win'},"       \
    "{'name':'sum','model':'graph/rowsum.onnx','inputs':{'a':'win'},'outputs':{'s':'s'}},"         \
    "{'name':'sums','op':'reshape','input':'s','shape':[-1],'output':'sums'}]"

static void test_chain(void **state)
{
    keel__model *m = must_build(
        HEAD(X4, OUT("sums")) "'tiers':[{'name':'pipe','backend':'graph'," CHAIN_STEPS "}]}");
    float x[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    keel__infer_resp r;
    keel_error e;
    if (run(m, x, 2, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_string_equal(r.tier, "pipe");
    assert_string_equal(r.backend, "graph");
    const keel__tensor *s = output(&r, "sums");
    assert_int_equal(s->ndim, 1);
    assert_int_equal(s->shape[0], 3); /* (8 - 4) / 2 + 1 windows */
    const float *v = s->data;
    assert_float_equal(v[0], 2 * (0 + 1 + 2 + 3), 1e-6);
    assert_float_equal(v[1], 2 * (2 + 3 + 4 + 5), 1e-6);
    assert_float_equal(v[2], 2 * (4 + 5 + 6 + 7), 1e-6);
    keel__infer_resp_done(&r);
    /* longer input, more windows; the package describes the graph's input */
    float y[16];
    for (int i = 0; i < 16; i++)
        y[i] = 1;
    if (run(m, y, 4, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_int_equal(output(&r, "sums")->shape[0], 7);
    assert_float_equal(((float *)output(&r, "sums")->data)[6], 8, 1e-6);
    keel__infer_resp_done(&r);
    keel__model_unref(m);

    /* without declared inputs the graph describes them (the first reader's) */
    m = must_build("{'format':1,'name':'g','version':'1.0.0','tiers':[{'name':'pipe',"
                   "'backend':'graph'," CHAIN_STEPS "}]}");
    keel__model_desc d;
    keel__model_describe(m, &d);
    assert_int_equal(d.ninputs, 1);
    assert_string_equal(d.inputs[0].name, "x");
    assert_int_equal(d.inputs[0].ndim, 2);
    assert_int_equal(d.inputs[0].shape[1], 4);
    keel__model_unref(m);
}

/* Each op's arithmetic, in a graph of ops only. */
static void test_ops(void **state)
{
    keel__model *m =
        must_build(HEAD(X4, OUT("cat") "," OUT("mid") "," OUT("aff") "," OUT("soft") "," OUT(
                                "std") ","
                                       "{'name':'int','dtype':'int32','shape':[-1]"
                                       "}") "'tiers':[{'name':'ops','backend':'"
                                            "graph','steps':["
                                            "{'name':'c','op':'concat','inputs':['"
                                            "x','x'],'axis':1,'output':'cat'},"
                                            "{'name':'s','op':'slice','input':'cat'"
                                            ",'axis':-1,'start':3,'end':-3,'output'"
                                            ":'mid'},"
                                            "{'name':'a','op':'affine','input':'x',"
                                            "'scale':2,'offset':1,'output':'aff'},"
                                            "{'name':'p','op':'activation','input':"
                                            "'x','activation':'softmax','output':'"
                                            "soft'},"
                                            "{'name':'z','op':'standardize','input'"
                                            ":'x','mean':[1,2,3,4],'std':[2,2,2,2],"
                                            "'output':'std'},"
                                            "{'name':'k','op':'cast','input':'aff',"
                                            "'dtype':'int32','output':'int'}]}]}");
    float x[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    keel__infer_resp r;
    keel_error e;
    if (run(m, x, 2, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    const keel__tensor *t = output(&r, "cat");
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 8);
    assert_float_equal(((float *)t->data)[5], 1, 0);  /* row 0: 0 1 2 3 0 1 2 3 */
    assert_float_equal(((float *)t->data)[12], 4, 0); /* row 1: 4 5 6 7 4 5 6 7 */
    t = output(&r, "mid");                            /* columns 3..4 of the 8 */
    assert_int_equal(t->shape[1], 2);
    assert_float_equal(((float *)t->data)[0], 3, 0);
    assert_float_equal(((float *)t->data)[1], 0, 0);
    assert_float_equal(((float *)t->data)[2], 7, 0);
    assert_float_equal(((float *)output(&r, "aff")->data)[7], 15, 0);
    const float *sm = output(&r, "soft")->data;
    assert_float_equal(sm[0] + sm[1] + sm[2] + sm[3], 1, 1e-6);
    assert_true(sm[3] > sm[2] && sm[2] > sm[1]);
    assert_float_equal(((float *)output(&r, "std")->data)[5], (5 - 2) / 2.0, 1e-6);
    t = output(&r, "int");
    assert_int_equal(t->dtype, KEEL_DT_INT32);
    assert_int_equal(((int32_t *)t->data)[7], 15);
    keel__infer_resp_done(&r);
    keel__model_unref(m);
}

/* A manifest refused at build (at_build: what the manifest shows alone,
 * which keel pack and keel lint see too), or (what needs the models: their
 * input and output names and shapes) a tier that does not load, recorded with the reason as any
 * tier's load failure is, so the package activates only if another tier serves. */
static void expect_refused(const char *man, int code, const char *want, bool at_build)
{
    keel__model *m = NULL;
    keel_error e;
    int rc = build(man, &m, &e);
    if (at_build && !rc)
        fail_msg("expected the build to refuse it (%s); the tier failed to load instead: %s", want,
                 m->tiers[0].load_error);
    if (!at_build && rc)
        fail_msg("expected a load failure (%s), the build refused it: %s", want, e.msg);
    if (rc) {
        th_expect_err(rc, &e, code, want);
        assert_null(m);
        return;
    }
    assert_null(atomic_load(&m->tiers[0].inst));
    if (!strstr(m->tiers[0].load_error, want))
        fail_msg("expected the load error to say '%s', got '%s'", want, m->tiers[0].load_error);
    assert_false(keel__model_ready(m));
    keel__model_unref(m);
}

/* Every refusal names what is wrong, at activation, before a request. */
static void test_validation(void **state)
{
    static char many[8192];
    size_t o = (size_t)snprintf(many, sizeof(many),
                                HEAD(X4, "") "'tiers':[{'name':'p','backend':'graph','steps':[");
    for (int i = 0; i < 33; i++)
        o += (size_t)snprintf(many + o, sizeof(many) - o,
                              "%s{'name':'s%d','op':'affine','input':'%s','output':'t%d'}",
                              i ? "," : "", i, i ? "t" : "x", i);
    snprintf(many + o, sizeof(many) - o, "]}]}");
    static const char *const pre = HEAD(X4, OUT("y")) "'tiers':[{'name':'p','backend':'graph',";
    struct {
        const char *steps, *want;
        int code;
        bool model; /* needs the models: found at load, not at build */
    } cases[] = {
        {"'steps':[{'name':'a','op':'transpose','input':'x','output':'y'}]", "unknown op",
         KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'affine','input':'y','output':'t'},"
         "{'name':'b','op':'affine','input':'t','output':'y'}]",
         "\"a\", \"b\" wait for each other's outputs in a cycle", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'affine','input':'nope','output':'y'}]",
         "reads tensor \"nope\", which no step writes", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'reshape','input':'x','shape':[-1,2],'output':'h'},"
         "{'name':'b','model':'graph/rowsum.onnx','inputs':{'a':'h'},'outputs':{'s':'y'}}]",
         "input \"a\" takes float32 [?,4], but tensor \"h\" is float32 [?,2]", KEEL_EINVALID, true},
        {"'steps':[{'name':'a','op':'affine','input':'x','output':'y'},"
         "{'name':'b','op':'affine','input':'x','output':'y'}]",
         "tensor \"y\" is already written by step \"a\"", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'affine','input':'x','output':'y','size':3}]",
         "unknown field \"size\" for a affine step", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'affine','model':'graph/double.onnx','input':'x',"
         "'output':'y'}]",
         "exactly one of \"model\"", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','model':'graph/rowsum.onnx','inputs':{'b':'x'},"
         "'outputs':{'s':'y'}}]",
         "graph/rowsum.onnx has no input \"b\" (it takes \"a\")", KEEL_EINVALID, true},
        {"'steps':[{'name':'a','op':'slice','input':'x','axis':1,'start':2,'end':6,"
         "'output':'y'}]",
         "slice 2..6 of axis 1 does not fit \"x\", whose axis has 4", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'window','input':'x','axis':1,'size':5,'output':'y'}]",
         "needs at least 5; \"x\" has 4", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'affine','input':'x','output':'y'},"
         "{'name':'b','op':'affine','input':'x','output':'unused'}]",
         "steps[1] (\"b\"): nothing reads its outputs", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','backend':'graph','model':'graph/double.onnx',"
         "'inputs':{'x':'x'},'outputs':{'y':'y'}}]",
         "cannot itself be a pipeline", KEEL_EINVALID, false},
        {"'model':'graph/double.onnx','steps':[{'name':'a','op':'affine','input':'x',"
         "'output':'y'}]",
         "names its models in its steps", KEEL_EINVALID, false},
        {"'outputs':['zz'],'steps':[{'name':'a','op':'affine','input':'x','output':'y'}]",
         "no step writes tensor \"zz\"", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'affine','input':'x','output':'t'}]",
         "package output \"y\" is written by no step", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','model':'graph/nofile.onnx','inputs':{'x':'x'},"
         "'outputs':{'y':'y'}}]",
         "no file graph/nofile.onnx", KEEL_ENOTFOUND, false},
        {"'steps':[{'name':'a','op':'reshape','input':'x','shape':[3,-1],'output':'y'}]", "", 0,
         false},
        {"'steps':[]", "a pipeline needs at least one step", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'window','input':'x','axis':0,'size':0,'output':'y'}]",
         "size: expected an integer 1..", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'activation','input':'x','activation':'relu','output':'y'}]",
         "\"relu\" is not softmax or sigmoid", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'cast','input':'x','dtype':'string','output':'y'}]",
         "dtype: \"string\" is not", KEEL_EINVALID, false},
        {"'steps':[{'name':'a','op':'standardize','input':'x','mean':[1,2],'std':[1],"
         "'output':'y'}]",
         "mean has 2 values and std 1", KEEL_EINVALID, false},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        char man[4096];
        keel__model *m = NULL;
        keel_error e;
        snprintf(man, sizeof(man), "%s%s}]}", pre, cases[i].steps);
        if (!cases[i].code) { /* [-1,4] reshaped to [3,-1]: fits some requests; not refused */
            assert_int_equal(build(man, &m, &e), KEEL_OK);
            float x[12] = {0};
            keel__infer_resp r;
            assert_int_equal(run(m, x, 3, NULL, &r, &e), KEEL_OK);
            assert_int_equal(output(&r, "y")->shape[1], 4);
            keel__infer_resp_done(&r);
            th_expect_err(run(m, x, 2, NULL, &r, &e), &e, KEEL_ENOTREADY,
                          "cannot reshape \"x\" [2,4] (8 elements)");
            keel__model_unref(m);
            continue;
        }
        expect_refused(man, cases[i].code, cases[i].want, !cases[i].model);
    }
    keel_error e;
    expect_refused(many, KEEL_ETOOBIG, "33 steps, more than the 32", true);
    /* a model output that does not exist: at load where the backend describes
     * its outputs, else when the step runs; never a silent empty tensor */
    snprintf(many, sizeof(many), "%s%s}]}", pre,
             "'steps':[{'name':'a','model':'graph/double.onnx','inputs':{'x':'x'},"
             "'outputs':{'zz':'y'}}]");
    keel__model *m = NULL;
    assert_int_equal(build(many, &m, &e), KEEL_OK);
    if (!strstr(m->tiers[0].load_error,
                "graph/double.onnx has no output \"zz\" (it gives \"y\")")) {
        float x[4] = {0};
        keel__infer_resp r;
        th_expect_err(run(m, x, 1, NULL, &r, &e), &e, KEEL_ENOTREADY,
                      "step \"a\" graph/double.onnx: graph/double.onnx gave no output \"zz\"");
    }
    keel__model_unref(m);
    /* the structural check alone (what a pack-time lint can call) */
    const char *t = q("{'name':'p','backend':'graph','steps':[{'name':'a','op':'affine',"
                      "'input':'y','output':'y'}]}");
    cJSON *j = cJSON_Parse(t);
    th_expect_err(keel__graph_check(j, &e), &e, KEEL_EINVALID, "cycle");
    cJSON_Delete(j);
}

/* A step that fails fails the whole tier; the next tier answers. */
static void test_failover(void **state)
{
    static const char *const good = "{'name':'plain','backend':'onnx','model':'fault/good.onnx'}";
    keel__model *m = NULL;
    char man[4096];
    snprintf(
        man, sizeof(man),
        q(HEAD(X4,
               "{'name':'y','dtype':'float32','shape':[-1,3]}") "'tiers':[{'name':'pipe','backend':"
                                                                "'graph','steps':["
                                                                "{'name':'double','model':'graph/"
                                                                "double.onnx','inputs':{'x':'x'},"
                                                                "'outputs':{'y':'d'}},"
                                                                "{'name':'bad','model':'fault/"
                                                                "runtime_error.onnx','inputs':{'x':"
                                                                "'d'},"
                                                                "'outputs':{'y':'y'}}]},%s]}"),
        q(good));
    keel_error e;
    assert_int_equal(build(man, &m, &e), KEEL_OK);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    keel__infer_resp r;
    if (run(m, x, 2, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_string_equal(r.tier, "plain");
    assert_true(r.degraded);
    assert_non_null(strstr(r.reason, "pipe: step \"bad\" fault/runtime_error.onnx"));
    assert_int_equal(output(&r, "y")->shape[1], 3);
    keel__infer_resp_done(&r);
    keel__model_unref(m);

    /* an op that cannot take this request (too few rows for a window) fails
     * the tier; a longer request is served by the pipeline */
    snprintf(
        man, sizeof(man),
        q(HEAD(
            X4,
            "{'name':'y','dtype':'float32','shape':[-1,3]}") "'tiers':[{'name':'pipe','backend':'"
                                                             "graph','steps':["
                                                             "{'name':'flat','op':'reshape','input'"
                                                             ":'x','shape':[-1],'output':'f'},"
                                                             "{'name':'win','op':'window','input':'"
                                                             "f','axis':0,'size':12,'output':'w'},"
                                                             "{'name':'rows','op':'reshape','input'"
                                                             ":'w','shape':[-1,4],'output':'w4'},"
                                                             "{'name':'good','model':'fault/"
                                                             "good.onnx','inputs':{'x':'w4'},"
                                                             "'outputs':{'y':'y'}}]},%s]}"),
        q(good));
    assert_int_equal(build(man, &m, &e), KEEL_OK);
    if (run(m, x, 2, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_string_equal(r.tier, "plain");
    assert_non_null(strstr(r.reason, "step \"win\": a window of 12 along axis 0 needs at least "
                                     "12; \"f\" has 8"));
    keel__infer_resp_done(&r);
    float x16[16] = {0};
    if (run(m, x16, 4, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_string_equal(r.tier, "pipe");
    assert_int_equal(output(&r, "y")->shape[0], 15); /* 5 windows of 12 = 15 rows of 4 */
    keel__infer_resp_done(&r);
    keel__model_unref(m);

    /* one deadline for the whole pipeline: a slow step times the tier out */
    snprintf(
        man, sizeof(man),
        q(HEAD(X4,
               "{'name':'y','dtype':'float32','shape':[-1,3]}") "'tiers':[{'name':'pipe','backend':"
                                                                "'graph','deadline_ms':50,'steps':["
                                                                "{'name':'double','model':'graph/"
                                                                "double.onnx','inputs':{'x':'x'},"
                                                                "'outputs':{'y':'d'}},"
                                                                "{'name':'slow','model':'fault/"
                                                                "slow.onnx','inputs':{'x':'d'},"
                                                                "'outputs':{'y':'y'}}]},%s]}"),
        q(good));
    assert_int_equal(build(man, &m, &e), KEEL_OK);
    if (run(m, x, 2, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_string_equal(r.tier, "plain");
    assert_non_null(strstr(r.reason, "pipe: step \"slow\""));
    keel__infer_resp_done(&r);
    keel__model_unref(m);

    /* every tier failing names the step */
    snprintf(
        man, sizeof(man), "%s",
        q(HEAD(X4, "{'name':'y','dtype':'float32','shape':[-1,3]}") "'tiers':[{'name':'pipe','"
                                                                    "backend':'graph','steps':["
                                                                    "{'name':'bad','model':'fault/"
                                                                    "runtime_error.onnx','inputs':{"
                                                                    "'x':'x'},"
                                                                    "'outputs':{'y':'y'}}]}]}"));
    assert_int_equal(build(man, &m, &e), KEEL_OK);
    th_expect_err(run(m, x, 2, NULL, &r, &e), &e, KEEL_ENOTREADY,
                  "every tier failed: pipe: step \"bad\"");
    keel__model_unref(m);
}

/* A stateful step keeps its state per client session. */
static void test_sessions(void **state)
{
    keel__model *m = must_build(HEAD(
        "{'name':'x','dtype':'float32','shape':[1,4]}",
        OUT("acc")) "'tiers':[{'name':'pipe','backend':'graph','steps':["
                    "{'name':'half','op':'affine','input':'x','scale':0.5,'output':'h'},"
                    "{'name':'acc','model':'accumulate.onnx','inputs':{'x':'h'},'outputs':{'y':'y'}"
                    ","
                    "'state':[{'input':'state','output':'state_out','dtype':'float32','shape':[1,1]"
                    "}]},"
                    "{'name':'flat','op':'reshape','input':'y','shape':[-1],'output':'acc'}]}]}");
    float x[4] = {1, 1, 1, 1};
    keel__infer_resp r;
    keel_error e;
    float want[] = {2, 4, 6};
    for (int i = 0; i < 3; i++) {
        if (run(m, x, 1, "s1", &r, &e))
            fail_msg("run: %s", e.msg);
        assert_float_equal(((float *)output(&r, "acc")->data)[0], want[i], 1e-6);
        keel__infer_resp_done(&r);
    }
    if (run(m, x, 1, NULL, &r, &e)) /* no session: fresh state */
        fail_msg("run: %s", e.msg);
    assert_float_equal(((float *)output(&r, "acc")->data)[0], 2, 1e-6);
    keel__infer_resp_done(&r);
    keel__model_unref(m);
}

/* A gate: a step runs only when its "when" tensor reaches the threshold;
 * what it (and everything after it) would write is absent from the answer. */
static void test_gate(void **state)
{
    keel__model *m = must_build(
        HEAD(X4, "{'name':'s','dtype':'float32','shape':[-1,1]},"
                 "{'name':'y','dtype':'float32','shape':[-1,4]}," OUT(
                     "yf")) "'tiers':[{'name':'pipe','backend':'graph','steps':["
                            "{'name':'double','model':'graph/"
                            "double.onnx','inputs':{'x':'x'},'outputs':{'y':'y'},"
                            "'when':{'tensor':'s','at_least':10}},"
                            "{'name':'flat','op':'reshape','input':'y','shape':[-1],'output':'yf'},"
                            "{'name':'sum','model':'graph/"
                            "rowsum.onnx','inputs':{'a':'x'},'outputs':{'s':'s'}}]}]}");
    float lo[4] = {1, 1, 1, 1}, hi[4] = {3, 3, 3, 3};
    keel__infer_resp r;
    keel_error e;
    if (run(m, lo, 1, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_int_equal(r.noutputs, 1); /* the sum only: the gate stayed closed */
    assert_string_equal(r.outputs[0].name, "s");
    assert_float_equal(((float *)r.outputs[0].data)[0], 4, 0);
    keel__infer_resp_done(&r);
    if (run(m, hi, 1, NULL, &r, &e))
        fail_msg("run: %s", e.msg);
    assert_int_equal(r.noutputs, 3);
    assert_float_equal(((float *)output(&r, "y")->data)[3], 6, 0);
    assert_float_equal(((float *)output(&r, "yf")->data)[3], 6, 0);
    keel__infer_resp_done(&r);
    keel__model_unref(m);
    static const char *const pre = HEAD(X4, OUT("y")) "'tiers':[{'name':'p','backend':'graph',";
    char man[2048];
    snprintf(man, sizeof(man), "%s%s}]}", pre,
             "'steps':[{'name':'a','op':'affine','input':'x','output':'y',"
             "'when':{'tensor':'vad','at_least':0.5}}]");
    expect_refused(man, KEEL_EINVALID, "reads tensor \"vad\", which no step writes", true);
    snprintf(man, sizeof(man), "%s%s}]}", pre,
             "'steps':[{'name':'a','op':'affine','input':'x','output':'y',"
             "'when':{'tensor':'x','above':0.5}}]");
    expect_refused(man, KEEL_EINVALID, "when: expected {\"tensor\": NAME, \"at_least\": NUMBER}",
                   true);
    snprintf(man, sizeof(man), "%s%s}]}", pre,
             "'steps':[{'name':'a','op':'affine','input':'x','output':'y',"
             "'when':{'tensor':'y','at_least':0.5}}]");
    expect_refused(man, KEEL_EINVALID, "in a cycle", true);
}

/* keel pack and install check what the package format fixes: every
 * step's model is a file of the package. */
static void test_manifest(void **state)
{
    static const char *const files =
        "'files':[{'path':'a.onnx','size':1,'sha256':"
        "'0000000000000000000000000000000000000000000000000000000000000000'}],";
    char man[2048];
    keel_manifest *mf = NULL;
    keel_error e;
    snprintf(man, sizeof(man), "%s", q("{'format':1,'name':'g','version':'1.0.0',"));
    strcat(man, q(files));
    strcat(man, q("'tiers':[{'name':'p','backend':'graph','steps':[{'name':'s','model':'a.onnx',"
                  "'inputs':{'x':'x'},'outputs':{'y':'y'}}]}]}"));
    assert_int_equal(keel_manifest_parse(man, strlen(man), NULL, &mf, &e), KEEL_OK);
    keel_manifest_free(mf);
    snprintf(man, sizeof(man), "%s", q("{'format':1,'name':'g','version':'1.0.0',"));
    strcat(man, q(files));
    strcat(man, q("'tiers':[{'name':'p','backend':'graph','steps':[{'name':'s','model':'b.onnx',"
                  "'inputs':{'x':'x'},'outputs':{'y':'y'}}]}]}"));
    th_expect_err(keel_manifest_parse(man, strlen(man), NULL, &mf, &e), &e, KEEL_EINVALID,
                  "tiers[0].steps[0]: model \"b.onnx\" is not in \"files\"");
    snprintf(man, sizeof(man), "%s", q("{'format':1,'name':'g','version':'1.0.0',"));
    strcat(man, q(files));
    strcat(man, q("'tiers':[{'name':'p','backend':'graph','steps':{}}]}"));
    th_expect_err(keel_manifest_parse(man, strlen(man), NULL, &mf, &e), &e, KEEL_EINVALID,
                  "field \"steps\" must be an array");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain),      cmocka_unit_test(test_ops),
        cmocka_unit_test(test_validation), cmocka_unit_test(test_failover),
        cmocka_unit_test(test_sessions),   cmocka_unit_test(test_gate),
        cmocka_unit_test(test_manifest),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return rc;
}
