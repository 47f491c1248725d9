/* test_obs.c - the metrics registry: exact Prometheus text per type (table),
 * byte-compatibility with a hand-written writer, label and HELP escaping,
 * histogram buckets, counters and histograms updated from 8 threads, JSON
 * that parses, collectors, removal of a model's series, bad registrations,
 * and `promtool check metrics` on the output. */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "obs/metrics.h"

/* The tables name only the fields they need. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

static keel__metric_family *reg_fam(keel__metrics *r, keel__metric_desc d)
{
    keel__metric_family *f = NULL;
    keel_error e;
    int rc = keel__metrics_register(r, &d, &f, &e);
    if (rc)
        fail_msg("register %s: %s", d.name, e.msg);
    return f;
}

static keel__metric_series *series(keel__metric_family *f, const char *const *v)
{
    keel__metric_series *s = NULL;
    keel_error e;
    if (keel__metrics_series(f, v, &s, &e))
        fail_msg("series: %s", e.msg);
    return s;
}

static char *prom(keel__metrics *r)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__metrics_prometheus(r, &b), 0);
    return keel__buf_steal(&b);
}

static void expect_text(const char *have, const char *want)
{
    if (strcmp(have, want))
        fail_msg("rendered:\n%s\nexpected:\n%s", have, want);
}

/* Writes text to a file and runs promtool on it, when promtool exists. */
static void promtool_ok(const char *text)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        print_message("promtool not installed: skipping its check\n");
        return;
    }
    const char *dir = th_tmpdir();
    const char *p = th_path(dir, "metrics.txt");
    th_write_str(dir, "metrics.txt", text);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s'", p);
    if (system(cmd) != 0)
        fail_msg("promtool check metrics rejected:\n%s", text);
}

/* --- one family of each type, exact text (table) ------------------------------------- */

static const double lat_bounds[] = {0.001, 0.01, 0.1, 1, 2.5};

static void test_render_table(void **state)
{
    static const struct {
        keel__metric_desc d;
        const char *labels[2];
        double ops[4]; /* counter: inc by; gauge: set then add; histogram/summary: observe */
        size_t nops;
        const char *want;
    } cases[] = {
        {{"t_requests_total", "Requests.", KEEL_METRIC_COUNTER, 0, {0}, NULL, 0},
         {0},
         {1, 2, 39},
         3,
         "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n"
         "t_requests_total 42\n"},
        {{"t_depth", "Depth, by class.", KEEL_METRIC_GAUGE, 1, {"class"}, NULL, 0},
         {"bulk"},
         {-3, 1.25},
         2,
         "# HELP t_depth Depth, by class.\n# TYPE t_depth gauge\nt_depth{class=\"bulk\"} -1.75\n"},
        {{"t_latency_seconds",
          "Latency.",
          KEEL_METRIC_HISTOGRAM,
          2,
          {"model", "tier"},
          lat_bounds,
          5},
         {"vad", "primary"},
         {0.0005, 0.01, 0.3, 7},
         4,
         "# HELP t_latency_seconds Latency.\n# TYPE t_latency_seconds histogram\n"
         "t_latency_seconds_bucket{model=\"vad\",tier=\"primary\",le=\"0.001\"} 1\n"
         "t_latency_seconds_bucket{model=\"vad\",tier=\"primary\",le=\"0.01\"} 2\n"
         "t_latency_seconds_bucket{model=\"vad\",tier=\"primary\",le=\"0.1\"} 2\n"
         "t_latency_seconds_bucket{model=\"vad\",tier=\"primary\",le=\"1\"} 3\n"
         "t_latency_seconds_bucket{model=\"vad\",tier=\"primary\",le=\"2.5\"} 3\n"
         "t_latency_seconds_bucket{model=\"vad\",tier=\"primary\",le=\"+Inf\"} 4\n"
         "t_latency_seconds_sum{model=\"vad\",tier=\"primary\"} 7.3105\n"
         "t_latency_seconds_count{model=\"vad\",tier=\"primary\"} 4\n"},
        {{"t_ack_seconds", "Ack time.", KEEL_METRIC_SUMMARY, 0, {0}, NULL, 0},
         {0},
         {0.5, 0.25},
         2,
         "# HELP t_ack_seconds Ack time.\n# TYPE t_ack_seconds summary\n"
         "t_ack_seconds_sum 0.75\nt_ack_seconds_count 2\n"},
        {{"t_empty", "No series yet.", KEEL_METRIC_GAUGE, 1, {"model"}, NULL, 0},
         {0},
         {0},
         0,
         "# HELP t_empty No series yet.\n# TYPE t_empty gauge\n"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        keel__metrics *r;
        keel_error e;
        assert_int_equal(keel__metrics_new(&r, &e), 0);
        keel__metric_family *f = reg_fam(r, cases[i].d);
        if (cases[i].nops) {
            keel__metric_series *s = series(f, cases[i].labels);
            for (size_t k = 0; k < cases[i].nops; k++) {
                double v = cases[i].ops[k];
                switch (cases[i].d.type) {
                case KEEL_METRIC_COUNTER:
                    keel__metric_inc(s, (uint64_t)v);
                    break;
                case KEEL_METRIC_GAUGE:
                    if (k == 0)
                        keel__metric_gauge_set(s, v);
                    else
                        keel__metric_gauge_add(s, v);
                    break;
                default:
                    keel__metric_observe(s, v);
                }
            }
            keel__metric_series_unref(s);
        }
        char *t = prom(r);
        expect_text(t, cases[i].want);
        promtool_ok(t);
        free(t);
        keel__metrics_free(r);
    }
}

/* --- the router's hand-written text, reproduced byte for byte ----------------------------- */

static void test_router_compat(void **state)
{
    static const char want[] =
        "# HELP keel_upstream_breaker_state Upstream breaker: 0 closed, 1 open, 2 half-open.\n"
        "# TYPE keel_upstream_breaker_state gauge\nkeel_upstream_breaker_state 2\n"
        "# HELP keel_upstream_breaker_trips_total Times the upstream breaker opened.\n"
        "# TYPE keel_upstream_breaker_trips_total counter\nkeel_upstream_breaker_trips_total 3\n"
        "# HELP keel_upstream_requests_total Requests forwarded upstream, by outcome.\n"
        "# TYPE keel_upstream_requests_total counter\n"
        "keel_upstream_requests_total{outcome=\"ok\"} 10\n"
        "keel_upstream_requests_total{outcome=\"error\"} 4\n";
    keel__metrics *r;
    keel_error e;
    assert_int_equal(keel__metrics_new(&r, &e), 0);
    keel__metric_family *st =
        reg_fam(r, (keel__metric_desc){"keel_upstream_breaker_state",
                                       "Upstream breaker: 0 closed, 1 open, 2 half-open.",
                                       KEEL_METRIC_GAUGE});
    keel__metric_family *tr =
        reg_fam(r, (keel__metric_desc){"keel_upstream_breaker_trips_total",
                                       "Times the upstream breaker opened.", KEEL_METRIC_COUNTER});
    keel__metric_family *rq =
        reg_fam(r, (keel__metric_desc){"keel_upstream_requests_total",
                                       "Requests forwarded upstream, by outcome.",
                                       KEEL_METRIC_COUNTER,
                                       1,
                                       {"outcome"}});
    assert_int_equal(keel__metrics_set(st, NULL, 2, &e), 0);
    assert_int_equal(keel__metrics_set(tr, NULL, 3, &e), 0);
    assert_int_equal(keel__metrics_set(rq, (const char *[]){"ok"}, 10, &e), 0);
    assert_int_equal(keel__metrics_set(rq, (const char *[]){"error"}, 4, &e), 0);
    char *t = prom(r);
    expect_text(t, want);
    free(t);
    keel__metrics_free(r);
}

/* --- escaping ------------------------------------------------------------------------------ */

static void test_escaping(void **state)
{
    static const struct {
        const char *value, *want;
    } cases[] = {
        {"plain", "plain"},          {"quo\"te", "quo\\\"te"},  {"back\\slash", "back\\\\slash"},
        {"new\nline", "new\\nline"}, {"\\\"\n", "\\\\\\\"\\n"}, {"", ""},
        {"ünïcode ✓", "ünïcode ✓"},
    };
    keel__metrics *r;
    keel_error e;
    assert_int_equal(keel__metrics_new(&r, &e), 0);
    keel__metric_family *f =
        reg_fam(r, (keel__metric_desc){
                       "t_esc", "Help with \\ and\nnewline.", KEEL_METRIC_GAUGE, 1, {"model"}});
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++)
        assert_int_equal(keel__metrics_set(f, &cases[i].value, (double)i, &e), 0);
    char *t = prom(r);
    assert_non_null(strstr(t, "# HELP t_esc Help with \\\\ and\\nnewline.\n"));
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        char line[256];
        snprintf(line, sizeof(line), "t_esc{model=\"%s\"} %zu\n", cases[i].want, i);
        if (!strstr(t, line))
            fail_msg("case %zu: no line %s in\n%s", i, line, t);
    }
    promtool_ok(t);
    free(t);
    /* JSON gives the original values back. */
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__metrics_json(r, &b), 0);
    cJSON *doc = cJSON_Parse(b.data);
    if (!doc)
        fail_msg("JSON does not parse: %s", b.data);
    const cJSON *s =
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "families"), 0), "series");
    assert_int_equal(cJSON_GetArraySize(s), KEEL_ARRAY_LEN(cases));
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        const cJSON *it = cJSON_GetArrayItem(s, (int)i);
        assert_string_equal(
            cJSON_GetObjectItem(cJSON_GetObjectItem(it, "labels"), "model")->valuestring,
            cases[i].value);
        assert_true(cJSON_GetObjectItem(it, "value")->valuedouble == (double)i);
    }
    cJSON_Delete(doc);
    keel__buf_done(&b);
    keel__metrics_free(r);
}

/* --- threads ------------------------------------------------------------------------------- */

#define NTHREADS 8
#define NITER    50000

typedef struct th_arg {
    keel__metric_family *ctr, *hist;
    int id;
} th_arg;

static void *hammer(void *p)
{
    th_arg *a = p;
    char id[16];
    snprintf(id, sizeof(id), "%d", a->id % 2);
    const char *v[] = {id};
    keel__metric_series *c = series(a->ctr, v), *h = series(a->hist, v);
    for (int i = 0; i < NITER; i++) {
        keel__metric_inc(c, 1);
        keel__metric_observe(h, (double)(i % 4) * 0.5); /* 0, 0.5, 1, 1.5 */
    }
    keel__metric_series_unref(c);
    keel__metric_series_unref(h);
    return NULL;
}

static void test_threads_exact(void **state)
{
    static const double bounds[] = {0.25, 1};
    keel__metrics *r;
    keel_error e;
    assert_int_equal(keel__metrics_new(&r, &e), 0);
    th_arg a[NTHREADS];
    pthread_t t[NTHREADS];
    keel__metric_family *ctr =
        reg_fam(r, (keel__metric_desc){"t_ops_total", "Ops.", KEEL_METRIC_COUNTER, 1, {"shard"}});
    keel__metric_family *hist = reg_fam(
        r, (keel__metric_desc){"t_size", "Sizes.", KEEL_METRIC_HISTOGRAM, 1, {"shard"}, bounds, 2});
    for (int i = 0; i < NTHREADS; i++) {
        a[i] = (th_arg){ctr, hist, i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
    }
    /* Scrapes while they run must not disturb anything. */
    for (int i = 0; i < 20; i++)
        free(prom(r));
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    char *text = prom(r);
    char want[256];
    int per = NTHREADS / 2 * NITER;
    for (int sh = 0; sh < 2; sh++) {
        snprintf(want, sizeof(want), "t_ops_total{shard=\"%d\"} %d\n", sh, per);
        assert_non_null(strstr(text, want));
        snprintf(want, sizeof(want),
                 "t_size_bucket{shard=\"%d\",le=\"0.25\"} %d\n"
                 "t_size_bucket{shard=\"%d\",le=\"1\"} %d\n"
                 "t_size_bucket{shard=\"%d\",le=\"+Inf\"} %d\n"
                 "t_size_sum{shard=\"%d\"} %d\nt_size_count{shard=\"%d\"} %d\n",
                 sh, per / 4, sh, per * 3 / 4, sh, per, sh, per * 3 / 4, sh, per);
        if (!strstr(text, want))
            fail_msg("no\n%s\nin\n%s", want, text);
    }
    promtool_ok(text);
    free(text);
    keel__metrics_free(r);
}

/* --- JSON ----------------------------------------------------------------------------------- */

static void test_json(void **state)
{
    keel__metrics *r;
    keel_error e;
    assert_int_equal(keel__metrics_new(&r, &e), 0);
    keel__metric_family *h = reg_fam(
        r, (keel__metric_desc){"t_lat", "L.", KEEL_METRIC_HISTOGRAM, 1, {"m"}, lat_bounds, 5});
    keel__metric_family *g = reg_fam(r, (keel__metric_desc){"t_g", "G.", KEEL_METRIC_GAUGE});
    keel__metric_series *s = series(h, (const char *[]){"a"});
    keel__metric_observe(s, 0.05);
    keel__metric_observe(s, 5);
    keel__metric_series_unref(s);
    assert_int_equal(keel__metrics_set(g, NULL, NAN, &e), 0);
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__metrics_json(r, &b), 0);
    cJSON *doc = cJSON_Parse(b.data);
    if (!doc)
        fail_msg("JSON does not parse: %s", b.data);
    assert_int_equal(cJSON_GetObjectItem(doc, "format")->valueint, 1);
    const cJSON *fams = cJSON_GetObjectItem(doc, "families");
    assert_int_equal(cJSON_GetArraySize(fams), 2);
    const cJSON *f0 = cJSON_GetArrayItem(fams, 0);
    assert_string_equal(cJSON_GetObjectItem(f0, "type")->valuestring, "histogram");
    const cJSON *s0 = cJSON_GetArrayItem(cJSON_GetObjectItem(f0, "series"), 0);
    const cJSON *bk = cJSON_GetObjectItem(s0, "buckets");
    assert_int_equal(cJSON_GetArraySize(bk), 6);
    assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(bk, 2), "le")->valuedouble == 0.1);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(bk, 2), "count")->valueint, 1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(bk, 5), "le")->valuestring, "+Inf");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(bk, 5), "count")->valueint, 2);
    assert_true(cJSON_GetObjectItem(s0, "sum")->valuedouble == 5.05);
    assert_int_equal(cJSON_GetObjectItem(s0, "count")->valueint, 2);
    const cJSON *g0 =
        cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(fams, 1), "series"), 0);
    assert_string_equal(cJSON_GetObjectItem(g0, "value")->valuestring, "NaN");
    cJSON_Delete(doc);
    keel__buf_done(&b);
    keel__metrics_free(r);
}

/* --- collectors and removal ------------------------------------------------------------------ */

typedef struct qstate {
    keel__metric_family *depth;
    int calls;
} qstate;

static void collect_depth(void *ctx)
{
    qstate *q = ctx;
    static const char *const cls[] = {"critical", "bulk"};
    q->calls++;
    for (int i = 0; i < 2; i++)
        if (keel__metrics_set(q->depth, &cls[i], (double)(q->calls * 10 + i), NULL))
            fail_msg("collector could not set a value");
}

static void test_collector_and_remove(void **state)
{
    keel__metrics *r;
    keel_error e;
    assert_int_equal(keel__metrics_new(&r, &e), 0);
    qstate q = {reg_fam(r, (keel__metric_desc){"keel_queue_depth",
                                               "Messages waiting, by priority class.",
                                               KEEL_METRIC_GAUGE,
                                               1,
                                               {"class"}}),
                0};
    assert_int_equal(keel__metrics_collector_add(r, collect_depth, &q, &e), 0);
    char *t = prom(r);
    assert_non_null(strstr(t, "keel_queue_depth{class=\"critical\"} 10\n"));
    assert_non_null(strstr(t, "keel_queue_depth{class=\"bulk\"} 11\n"));
    free(t);
    t = prom(r);
    assert_non_null(strstr(t, "keel_queue_depth{class=\"critical\"} 20\n"));
    free(t);
    keel__metrics_collector_remove(r, collect_depth, &q);
    free(prom(r));
    assert_int_equal(q.calls, 2);

    /* A model is unloaded: its series go, another model's stay, and a handle
     * still held stays usable until released. */
    keel__metric_family *req = reg_fam(r, (keel__metric_desc){"keel_infer_requests_total",
                                                              "Inference attempts.",
                                                              KEEL_METRIC_COUNTER,
                                                              3,
                                                              {"model", "tier", "outcome"}});
    keel__metric_family *lat = reg_fam(r, (keel__metric_desc){"keel_infer_latency_seconds",
                                                              "L.",
                                                              KEEL_METRIC_HISTOGRAM,
                                                              2,
                                                              {"model", "tier"},
                                                              lat_bounds,
                                                              5});
    keel__metric_series *held = series(req, (const char *[]){"vad", "primary", "ok"});
    keel__metric_series *other = series(req, (const char *[]){"kws", "primary", "ok"});
    keel__metric_series *hl = series(lat, (const char *[]){"vad", "primary"});
    keel__metric_inc(held, 5);
    keel__metric_inc(other, 7);
    assert_int_equal(keel__metrics_remove_all(r, "model", "vad"), 2);
    assert_int_equal(keel__metrics_remove_all(r, "model", "vad"), 0);
    keel__metric_inc(held, 1); /* removed, still safe */
    keel__metric_observe(hl, 0.2);
    t = prom(r);
    assert_null(strstr(t, "model=\"vad\""));
    assert_non_null(
        strstr(t, "keel_infer_requests_total{model=\"kws\",tier=\"primary\",outcome=\"ok\"} 7\n"));
    free(t);
    keel__metric_series_unref(held);
    keel__metric_series_unref(hl);
    /* The model comes back (a new package version): fresh series. */
    held = series(req, (const char *[]){"vad", "primary", "ok"});
    keel__metric_inc(held, 1);
    keel__metric_series_unref(held);
    keel__metric_series_unref(other);
    t = prom(r);
    assert_non_null(
        strstr(t, "keel_infer_requests_total{model=\"vad\",tier=\"primary\",outcome=\"ok\"} 1\n"));
    promtool_ok(t);
    free(t);
    assert_int_equal(keel__metrics_remove(req, NULL, NULL), 2);
    keel__metrics_unregister(r, lat);
    t = prom(r);
    assert_null(strstr(t, "keel_infer_latency_seconds"));
    free(t);
    keel__metrics_free(r);
}

/* --- bad registrations (table) ---------------------------------------------------------------- */

static void test_register_errors(void **state)
{
    static const double bad_order[] = {1, 0.5}, ok_b[] = {1};
    static const struct {
        keel__metric_desc d;
        int want;
        const char *sub;
    } cases[] = {
        {{"9bad", "h", KEEL_METRIC_COUNTER}, KEEL_EINVALID, "metric name"},
        {{"has space", "h", KEEL_METRIC_COUNTER}, KEEL_EINVALID, "metric name"},
        {{"t_ok", NULL, KEEL_METRIC_COUNTER}, KEEL_EINVALID, "HELP"},
        {{"t_l", "h", KEEL_METRIC_GAUGE, 1, {"__x"}}, KEEL_EINVALID, "label name"},
        {{"t_l", "h", KEEL_METRIC_GAUGE, 2, {"a", "a"}}, KEEL_EINVALID, "twice"},
        {{"t_l", "h", KEEL_METRIC_GAUGE, 5, {"a"}}, KEEL_ETOOBIG, "labels"},
        {{"t_h", "h", KEEL_METRIC_HISTOGRAM, 1, {"le"}, ok_b, 1}, KEEL_EINVALID, "label name"},
        {{"t_h", "h", KEEL_METRIC_HISTOGRAM, 0, {0}, bad_order, 2}, KEEL_EINVALID, "increasing"},
        {{"t_h", "h", KEEL_METRIC_HISTOGRAM, 0, {0}, NULL, 0}, KEEL_EINVALID, "bucket bounds"},
        {{"t_g", "h", KEEL_METRIC_GAUGE, 0, {0}, ok_b, 1}, KEEL_EINVALID, "bounds on a gauge"},
        {{"t_same", "other help", KEEL_METRIC_COUNTER}, KEEL_ECONFLICT, "already registered"},
    };
    keel__metrics *r;
    keel_error e;
    keel__metric_family *f, *again;
    assert_int_equal(keel__metrics_new(&r, &e), 0);
    f = reg_fam(r, (keel__metric_desc){"t_same", "help", KEEL_METRIC_COUNTER});
    again = reg_fam(r, (keel__metric_desc){"t_same", "help", KEEL_METRIC_COUNTER});
    assert_ptr_equal(f, again);
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        keel__metric_family *x = NULL;
        int rc = keel__metrics_register(r, &cases[i].d, &x, &e);
        th_expect_err(rc, &e, cases[i].want, cases[i].sub);
    }
    /* Label values: missing, too long; the series limit. */
    keel__metric_family *g =
        reg_fam(r, (keel__metric_desc){"t_v", "h", KEEL_METRIC_GAUGE, 1, {"model"}});
    th_expect_err(keel__metrics_set(g, NULL, 1, &e), &e, KEEL_EINVALID, "no value for label");
    char big[KEEL_METRICS_VALUE_MAX + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    th_expect_err(keel__metrics_set(g, (const char *[]){big}, 1, &e), &e, KEEL_ETOOBIG,
                  "label model");
    int rc = KEEL_OK;
    for (int i = 0; i <= KEEL_METRICS_MAX_SERIES && !rc; i++) {
        char v[16];
        snprintf(v, sizeof(v), "m%d", i);
        rc = keel__metrics_set(g, (const char *[]){v}, 1, &e);
    }
    th_expect_err(rc, &e, KEEL_ETOOBIG, "too many values");
    keel__metrics_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_table),
        cmocka_unit_test(test_router_compat),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_threads_exact),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_collector_and_remove),
        cmocka_unit_test(test_register_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return th_exit(rc);
}
