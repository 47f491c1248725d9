/* test_tier.c - tier policy beyond the tensor chain: capability routing of
 * generate and embed to the tiers whose backend declares them (with a toy
 * backend registered from the test), backend-owned sessions, the registry's
 * checks, and hybrid routing to a real upstream on loopback
 * (upstream_first, escalate, failed escalation reported as an event). */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "infer/model.h"

#ifndef KEEL_TEST_DATA
#define KEEL_TEST_DATA "tests/data"
#endif

static const char *dir;

static int path_of(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    if (!strcmp(rel, "matmul.onnx"))
        snprintf(buf, n, KEEL_TEST_DATA "/%s", rel);
    else
        snprintf(buf, n, "%s/%s", dir, rel);
    if (access(buf, R_OK))
        return keel__err(err, KEEL_ENOTFOUND, "no file %s", rel);
    return KEEL_OK;
}

/* --- a toy backend: generates and embeds, keeps a per-session counter ------------------ */

typedef struct toy_session {
    int32_t last; /* the last token it produced: the "KV cache" */
    int calls;
} toy_session;

static int toy_sessions_live, toy_fail;

static int toy_load(const keel__tier_ctx *ctx, void **ret, keel_error *err)
{
    *ret = calloc(1, 1);
    return KEEL_OK;
}

static void toy_unload(void *inst)
{
    free(inst);
}

static int toy_generate(void *inst, void *sess, const int32_t *tokens, size_t ntokens,
                        const keel__gen_params *p, keel__token_fn on_token, void *cb_ctx,
                        const keel__cancel *cancel, uint64_t deadline_ns, size_t *ret_ntokens,
                        keel_error *err)
{
    toy_session *s = sess;
    if (toy_fail)
        return keel__err(err, KEEL_EIO, "toy: told to fail");
    int32_t next = s && s->calls ? s->last + 1 : (ntokens ? tokens[ntokens - 1] + 1 : 0);
    size_t n = 0, max = p->max_tokens ? p->max_tokens : 16;
    if (s)
        s->calls++;
    while (n < max && !(cancel && atomic_load(&cancel->stop))) {
        char piece[16];
        int len = snprintf(piece, sizeof(piece), "t%d", next);
        n++;
        if (s)
            s->last = next;
        if (on_token(cb_ctx, next++, piece, (size_t)len) == KEEL__GEN_STOP)
            break;
    }
    *ret_ntokens = n;
    return KEEL_OK;
}

static int toy_embed(void *inst, const char *text, size_t len, const int32_t *tokens,
                     size_t ntokens, float **ret, size_t *ret_dim, keel_error *err)
{
    float *v = calloc(3, sizeof(float));
    if (!v)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    v[0] = (float)len;
    v[1] = text && len ? (float)text[0] : 0;
    v[2] = (float)ntokens;
    *ret = v;
    *ret_dim = 3;
    return KEEL_OK;
}

static int toy_session_new(void *inst, void **ret, keel_error *err)
{
    toy_sessions_live++;
    *ret = calloc(1, sizeof(toy_session));
    return *ret ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
}

static void toy_session_free(void *inst, void *sess)
{
    if (sess)
        toy_sessions_live--;
    free(sess);
}

static void toy_session_reset(void *inst, void *sess)
{
    memset(sess, 0, sizeof(toy_session));
}

static const keel__backend toy = {
    .name = "toy",
    .caps = KEEL__CAP_GENERATE | KEEL__CAP_EMBED | KEEL__CAP_SESSIONS | KEEL__CAP_CANCEL,
    .load = toy_load,
    .unload = toy_unload,
    .generate = toy_generate,
    .embed = toy_embed,
    .session_new = toy_session_new,
    .session_free = toy_session_free,
    .session_reset = toy_session_reset,
};

static keel__model *build_opts(const char *manifest, const keel__infer_opts *o)
{
    keel__model *m = NULL;
    keel_error e = {0};
    if (keel__model_build(manifest, strlen(manifest), path_of, NULL, o, &m, &e))
        fail_msg("build: %s", e.msg);
    return m;
}

#define CONTRACT                                                                                   \
    "\"format\":1,\"name\":\"mm\",\"version\":\"1.0.0\","                                          \
    "\"inputs\":[{\"name\":\"a\",\"dtype\":\"float32\",\"shape\":[-1,-1]},"                        \
    "{\"name\":\"b\",\"dtype\":\"float32\",\"shape\":[-1,-1]}],"                                   \
    "\"outputs\":[{\"name\":\"c\",\"dtype\":\"float32\",\"shape\":[-1,3]}]"

typedef struct collected {
    int32_t tokens[64];
    size_t n, stop_after;
    char text[256];
} collected;

static int on_token(void *ctx, int32_t token, const char *piece, size_t len)
{
    collected *c = ctx;
    c->tokens[c->n++] = token;
    strncat(c->text, piece, len);
    return c->stop_after && c->n >= c->stop_after ? KEEL__GEN_STOP : 0;
}

static void test_registry(void **state)
{
    keel_error e;
    static const keel__backend liar = {
        .name = "liar", .caps = KEEL__CAP_GENERATE, .load = toy_load, .unload = toy_unload};
    static const keel__backend onnx2 = {.name = "onnx", .load = toy_load, .unload = toy_unload};
    th_expect_err(keel__backend_register(&liar, &e), &e, KEEL_EINVALID,
                  "declares GENERATE without generate");
    th_expect_err(keel__backend_register(&onnx2, &e), &e, KEEL_EEXISTS, "already registered");
    assert_null(keel__backend_find("liar"));
    assert_ptr_equal(keel__backend_find("onnx"), &keel__backend_onnx);
    assert_ptr_equal(keel__backend_find("rules"), &keel__backend_rules);
    assert_true(keel__backend_onnx.caps & KEEL__CAP_SESSIONS);
    assert_false(keel__backend_rules.caps & KEEL__CAP_GENERATE);
}

static void test_capability_routing(void **state)
{
    dir = th_tmpdir();
    th_write_str(dir, "toy.bin", "toy");
    keel_error e = {0};
    /* a package without a generating tier refuses generate and embed clearly */
    keel__infer_opts o = {.max_sessions = 4, .session_idle_s = 60};
    keel__model *m = build_opts("{" CONTRACT ",\"tiers\":[{\"name\":\"primary\",\"backend\":"
                                "\"onnx\",\"model\":\"matmul.onnx\"}]}",
                                &o);
    int32_t prompt[2] = {7, 9};
    collected c = {0};
    keel__gen_req g = {.tokens = prompt, .ntokens = 2, .on_token = on_token, .cb_ctx = &c};
    keel__gen_resp gr;
    th_expect_err(keel__model_generate(m, &g, &gr, &e), &e, KEEL_EUNSUPPORTED,
                  "no tier's backend can generate (tiers: primary (onnx))");
    keel__embed_req er = {.text = "hi", .len = 2};
    keel__embed_resp ers;
    th_expect_err(keel__model_embed(m, &er, &ers, &e), &e, KEEL_EUNSUPPORTED,
                  "no tier's backend can embed");
    keel__model_unref(m);

    /* onnx first, then toy: generate and embed go to toy, run to onnx */
    if (!keel__backend_find("toy") && keel__backend_register(&toy, &e))
        fail_msg("%s", e.msg);
    m = build_opts("{" CONTRACT ",\"tiers\":[{\"name\":\"primary\",\"backend\":\"onnx\","
                   "\"model\":\"matmul.onnx\"},{\"name\":\"llm\",\"backend\":\"toy\","
                   "\"model\":\"toy.bin\"}]}",
                   &o);
    g.params.max_tokens = 3;
    if (keel__model_generate(m, &g, &gr, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(gr.tier, "llm");
    assert_string_equal(gr.backend, "toy");
    assert_false(gr.degraded); /* the first tier that can generate */
    assert_int_equal(gr.ntokens, 3);
    assert_int_equal(c.tokens[0], 10);
    assert_string_equal(c.text, "t10t11t12");
    /* the callback stops it */
    memset(&c, 0, sizeof(c));
    c.stop_after = 2;
    g.params.max_tokens = 10;
    if (keel__model_generate(m, &g, &gr, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(gr.ntokens, 2);
    /* so does the cancel flag */
    keel__cancel cancel;
    atomic_init(&cancel.stop, true);
    memset(&c, 0, sizeof(c));
    g.cancel = &cancel;
    if (keel__model_generate(m, &g, &gr, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(gr.ntokens, 0);
    g.cancel = NULL;
    /* a session keeps the backend's state across calls (its own object) */
    memset(&c, 0, sizeof(c));
    g.session = "chat-1";
    g.params.max_tokens = 2;
    if (keel__model_generate(m, &g, &gr, &e) || keel__model_generate(m, &g, &gr, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(c.n, 4);
    assert_int_equal(c.tokens[2], 12); /* continued from 11, not from the prompt */
    assert_int_equal(toy_sessions_live, 1);
    assert_int_equal(m->nsessions, 1);
    g.session = NULL;
    /* pinning a tier that cannot generate says so */
    g.tier = "primary";
    th_expect_err(keel__model_generate(m, &g, &gr, &e), &e, KEEL_EUNSUPPORTED,
                  "tier primary's backend (onnx) cannot generate");
    g.tier = NULL;
    /* embed */
    if (keel__model_embed(m, &er, &ers, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(ers.tier, "llm");
    assert_int_equal(ers.dim, 3);
    assert_float_equal(ers.vec[0], 2, 0);
    assert_float_equal(ers.vec[1], 'h', 0);
    keel__embed_resp_done(&ers);
    /* a failing generator is a hard failure like any tier's */
    toy_fail = 1;
    th_expect_err(keel__model_generate(m, &g, &gr, &e), &e, KEEL_ENOTREADY,
                  "llm: toy: told to fail");
    toy_fail = 0;
    /* run still goes to onnx and skips the tier that cannot run */
    keel__model_desc d;
    keel__model_describe(m, &d);
    assert_int_equal(d.ntiers, 2);
    assert_string_equal(d.backends[1], "toy");
    assert_true(d.caps[1] & KEEL__CAP_GENERATE);
    keel__model_unref(m);
    assert_int_equal(toy_sessions_live, 0); /* freed with the model, by the backend */
}

/* --- hybrid routing against a real upstream on loopback ---------------------------------- */

static int up_requests;
static char up_last_body[512];

typedef struct upbody {
    char data[512];
    size_t len;
} upbody;

static enum MHD_Result up_handler(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **con_cls)
{
    upbody *b = *con_cls;
    if (!b) {
        *con_cls = calloc(1, sizeof(upbody));
        return MHD_YES;
    }
    if (*size) {
        size_t n = *size < sizeof(b->data) - 1 - b->len ? *size : sizeof(b->data) - 1 - b->len;
        memcpy(b->data + b->len, data, n);
        b->len += n;
        *size = 0;
        return MHD_YES;
    }
    up_requests++;
    snprintf(up_last_body, sizeof(up_last_body), "%s", b->data);
    free(b);
    *con_cls = NULL;
    static const char answer[] = "{\"model_name\":\"mm\",\"outputs\":[],\"parameters\":"
                                 "{\"tier\":\"fog-primary\"},\"result\":[{\"label\":\"fog\"}]}";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(answer), (void *)answer, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(c, strstr(url, "/mm/") ? 200 : 404, r);
    MHD_destroy_response(r);
    return ret;
}

static int events[KEEL__EV_OUTCOME + 1];
static char esc_raw[512], esc_result[256];

static void on_event(void *ctx, const keel__infer_event *ev)
{
    events[ev->type]++;
    if (ev->type == KEEL__EV_ESCALATION_FAILED) {
        snprintf(esc_raw, sizeof(esc_raw), "%.*s", (int)ev->raw_json_len, (const char *)ev->raw);
        snprintf(esc_result, sizeof(esc_result), "%s", ev->result ? ev->result : "");
    }
}

static const char rules_json[] = "{\"format\":1,\"input\":\"a\",\"rules\":[{\"label\":\"maybe\","
                                 "\"confidence\":0.4,\"outputs\":{\"c\":[1,1,1]}}]}";

static float av[12], bv[12];

static keel__infer_req request(const char *raw)
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
                           .shape = {4, 3},
                           .data = bv,
                           .nbytes = sizeof(bv)};
    return (keel__infer_req){.inputs = in, .ninputs = 2, .raw = raw, .raw_len = strlen(raw)};
}

static keel__model *routed(const char *mode, double below, keel__router *up)
{
    char man[1024];
    snprintf(man, sizeof(man),
             "{" CONTRACT ",\"routing\":{\"mode\":\"%s\",\"confidence_below\":%g,"
             "\"deadline_ms\":2000},\"tiers\":[{\"name\":\"rules\",\"backend\":\"rules\","
             "\"model\":\"rules.json\"}]}",
             mode, below);
    keel__infer_opts o = {.event = on_event, .upstream = up};
    return build_opts(man, &o);
}

static void test_routing(void **state)
{
    dir = th_tmpdir();
    th_write_str(dir, "rules.json", rules_json);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                                            up_handler, NULL, MHD_OPTION_END);
    assert_non_null(d);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)info->port);
    keel__router *up = NULL;
    keel_error e = {0};
    if (keel__router_new(url, &up, &e))
        fail_msg("%s", e.msg);
    const char *raw = "{\"inputs\":[\"the request as received\"]}";
    keel__infer_resp resp;
    memset(events, 0, sizeof(events));

    /* upstream_first: the upstream's answer, marked as such */
    keel__model *m = routed("upstream_first", 0.6, up);
    keel__infer_req r = request(raw);
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_true(resp.upstream);
    assert_string_equal(resp.tier, "upstream");
    assert_int_equal(up_requests, 1);
    assert_string_equal(up_last_body, raw);
    assert_non_null(strstr(resp.answer.body.data, "\"tier\":\"upstream\""));
    assert_non_null(strstr(resp.answer.body.data, "\"upstream_tier\":\"fog-primary\""));
    assert_int_equal(resp.answer.json_len, resp.answer.body.len);
    keel__infer_resp_done(&resp);
    /* a pinned tier, or no raw bytes (an image body), stays local */
    r.tier = "rules";
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_false(resp.upstream);
    assert_string_equal(resp.tier, "rules");
    keel__infer_resp_done(&resp);
    r = request(raw);
    r.raw = NULL;
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_false(resp.upstream);
    keel__infer_resp_done(&resp);
    assert_int_equal(up_requests, 1);
    keel__model_unref(m);

    /* escalate: confidence 0.4 < 0.6 goes upstream; 0.4 >= 0.3 stays local */
    m = routed("escalate", 0.6, up);
    r = request(raw);
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_true(resp.upstream);
    assert_int_equal(resp.noutputs, 0);
    assert_null(resp.result);
    keel__infer_resp_done(&resp);
    assert_int_equal(up_requests, 2);
    keel__model_unref(m);
    m = routed("escalate", 0.3, up);
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_false(resp.upstream);
    assert_string_equal(resp.escalation, "");
    keel__infer_resp_done(&resp);
    /* ... unless the request says it is complex */
    r.complex = true;
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_true(resp.upstream);
    keel__infer_resp_done(&resp);
    assert_int_equal(up_requests, 3);
    keel__model_unref(m);

    /* the upstream goes away: the local answer stands, marked, and the
     * request is handed to the owner for re-processing */
    MHD_stop_daemon(d);
    m = routed("escalate", 0.6, up);
    r = request(raw);
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_false(resp.upstream);
    assert_string_equal(resp.tier, "rules");
    assert_non_null(strstr(resp.escalation, "escalation failed"));
    assert_non_null(strstr(resp.escalation, "queued for re-processing"));
    assert_int_equal(events[KEEL__EV_ESCALATION_FAILED], 1);
    assert_string_equal(esc_raw, raw);
    assert_non_null(strstr(esc_result, "\"label\":\"maybe\""));
    keel__infer_resp_done(&resp);
    keel__model_unref(m);
    /* upstream_first with the upstream down: local, and says why */
    m = routed("upstream_first", 0.6, up);
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_false(resp.upstream);
    assert_non_null(strstr(resp.escalation, "upstream first: "));
    keel__infer_resp_done(&resp);
    keel__model_unref(m);
    /* without an upstream every mode is local */
    m = routed("upstream_first", 0.6, NULL);
    if (keel__model_infer(m, &r, &resp, &e))
        fail_msg("%s", e.msg);
    assert_false(resp.upstream);
    assert_string_equal(resp.escalation, "");
    keel__infer_resp_done(&resp);
    keel__model_unref(m);
    keel__router_free(up);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_capability_routing),
        cmocka_unit_test(test_routing),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return th_exit(rc);
}
