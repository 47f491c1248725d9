/* test_probation.c - probation's statistics, health rules and decision
 * (update/probation.h), and the verdicts file (update/verdict.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "core/json.h"
#include "update/probation.h"
#include "update/verdict.h"

#define MS 1000000ull

/* n requests: errors every err_every-th (0: none), fallbacks every fb_every-th,
 * latency ms, confidence conf. */
static void feed(keel__probation_stats *s, int n, int err_every, int fb_every, double ms,
                 double conf)
{
    for (int i = 1; i <= n; i++) {
        bool ok = !(err_every && i % err_every == 0);
        bool fb = fb_every && i % fb_every == 0;
        keel__probation_add(s, ok, fb, (uint64_t)(ms * (double)MS), conf, 1000);
    }
}

static keel__probation_decision decide(const keel__health *h, const keel__probation_stats *cur,
                                       const keel__probation_stats *prev, int64_t now, char *why)
{
    return keel__probation_decide(h, cur, prev, "2.0.0", now, why, 512);
}

static void test_p95(void **state)
{
    (void)state;
    keel__probation_stats s = {0};
    assert_true(keel__probation_p95_ms(&s) < 0);
    feed(&s, 95, 0, 0, 1.0, -1);
    feed(&s, 5, 0, 0, 100.0, -1);
    double p = keel__probation_p95_ms(&s);
    assert_true(p >= 1.0 && p < 1.2); /* 95 of 100 at 1 ms: the bucket above 1 ms */
    feed(&s, 10, 0, 0, 100.0, -1);
    p = keel__probation_p95_ms(&s);
    assert_true(p >= 100.0 && p < 110.0);
    keel__probation_figures f;
    keel__probation_figures_of(&s, &f);
    assert_true(f.error_rate == 0 && f.fallback_rate == 0 && f.mean_confidence < 0);
}

/* Table: one previous version, one candidate, the health rules, the decision. */
static void test_decide_table(void **state)
{
    (void)state;
    struct {
        const char *what;
        int n, err_every, fb_every;
        double ms, conf;
        int pn, perr_every; /* previous version: pn requests (0: none) */
        double pms, pconf;
        double max_err, max_p95, min_conf;
        uint64_t window;
        keel__probation_decision want;
        const char *why;
    } cases[] = {
        {"too few requests", 10, 0, 0, 1, 0.9, 0, 0, 0, 0, -1, -1, -1, 100,
         KEEL__PROBATION_CONTINUE, "10 of at least 30"},
        {"as good as before: pass", 100, 0, 0, 1, 0.9, 100, 0, 1, 0.9, -1, -1, -1, 100,
         KEEL__PROBATION_PASS, "within limits"},
        {"half the requests fail: early breach on the previous version", 40, 2, 0, 1, 0.9, 100, 0,
         1, 0.9, -1, -1, -1, 200, KEEL__PROBATION_BREACH,
         "error_rate 0.500 > 0.020 (previous version 2.0.0: 0.000 + tolerance 0.020)"},
        {"slightly more errors, not yet clear: continue", 40, 20, 0, 1, 0.9, 100, 0, 1, 0.9, -1, -1,
         -1, 200, KEEL__PROBATION_CONTINUE, "40 requests seen"},
        {"... and at the window's end the point estimate decides", 200, 20, 0, 1, 0.9, 100, 0, 1,
         0.9, -1, -1, -1, 200, KEEL__PROBATION_BREACH, "error_rate 0.050 > 0.020"},
        {"slower than the previous version", 100, 0, 0, 20, 0.9, 100, 0, 5, 0.9, -1, -1, -1, 100,
         KEEL__PROBATION_BREACH, "p95_ms"},
        {"lower confidence than before", 100, 0, 0, 1, 0.5, 100, 0, 1, 0.9, -1, -1, -1, 100,
         KEEL__PROBATION_BREACH, "mean_confidence 0.500 < 0.850 (previous version 2.0.0"},
        {"absolute limit, no previous version", 100, 10, 0, 1, 0.9, 0, 0, 0, 0, 0.05, -1, -1, 100,
         KEEL__PROBATION_BREACH, "error_rate 0.100 > 0.050 (health.max_error_rate)"},
        {"absolute p95 limit", 100, 0, 0, 80, 0.9, 0, 0, 0, 0, -1, 50, -1, 100,
         KEEL__PROBATION_BREACH, "(health.max_p95_ms)"},
        {"absolute confidence limit", 100, 0, 0, 1, 0.4, 0, 0, 0, 0, -1, -1, 0.6, 100,
         KEEL__PROBATION_BREACH, "(health.min_mean_confidence)"},
        {"a previous version with too few requests is no reference", 100, 0, 0, 20, 0.9, 5, 0, 1,
         0.9, -1, -1, -1, 100, KEEL__PROBATION_PASS, "within limits"},
        {"the previous version was as bad: within tolerance", 100, 10, 0, 1, 0.9, 100, 10, 1, 0.9,
         -1, -1, -1, 100, KEEL__PROBATION_PASS, "previous version"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        keel__health h;
        keel__probation_stats cur = {0}, prev = {0};
        char why[512];
        keel__health_defaults(&h, cases[i].window, 0);
        h.max_error_rate = cases[i].max_err;
        h.max_p95_ms = cases[i].max_p95;
        h.min_mean_confidence = cases[i].min_conf;
        feed(&cur, cases[i].n, cases[i].err_every, cases[i].fb_every, cases[i].ms, cases[i].conf);
        if (cases[i].pn)
            feed(&prev, cases[i].pn, cases[i].perr_every, 0, cases[i].pms, cases[i].pconf);
        keel__probation_decision d = decide(&h, &cur, cases[i].pn ? &prev : NULL, 1001, why);
        if (d != cases[i].want || !strstr(why, cases[i].why))
            fail_msg("%s: got %s (%s), want %s (%s)", cases[i].what,
                     keel__probation_decision_name(d), why,
                     keel__probation_decision_name(cases[i].want), cases[i].why);
    }
}

static void test_time_window(void **state)
{
    (void)state;
    keel__health h;
    keel__probation_stats s = {.started = 1000};
    char why[512];
    keel__health_defaults(&h, 0, 60);
    feed(&s, 40, 0, 0, 1, 0.9);
    assert_int_equal(decide(&h, &s, NULL, 1030, why), KEEL__PROBATION_CONTINUE);
    assert_int_equal(decide(&h, &s, NULL, 1060, why), KEEL__PROBATION_PASS);
    /* time is up but the sample is too small: keep watching */
    keel__probation_stats few = {.started = 1000};
    feed(&few, 5, 0, 0, 1, 0.9);
    assert_int_equal(decide(&h, &few, NULL, 5000, why), KEEL__PROBATION_CONTINUE);
    assert_non_null(strstr(why, "5 of at least 30"));
}

static void test_baseline_and_parse(void **state)
{
    (void)state;
    keel__health h;
    keel_error e;
    bool has = false;
    keel__health_defaults(&h, 500, 0);
    const char *m = "{\"format\":1,\"name\":\"p\",\"version\":\"1.0.0\",\"files\":[],"
                    "\"health\":{\"probation\":{\"requests\":100,\"minutes\":30,"
                    "\"min_requests\":20},\"max_error_rate\":0.05,\"max_p95_ms\":50,"
                    "\"tolerance\":{\"p95_ratio\":2,\"confidence\":0.1}},"
                    "\"baseline\":{\"mean_confidence\":0.95,\"p95_ms\":3}}";
    if (keel__health_from_manifest(m, strlen(m), &h, &has, &e))
        fail_msg("%s", e.msg);
    assert_true(has);
    assert_int_equal(h.requests, 100);
    assert_int_equal(h.seconds, 1800);
    assert_int_equal(h.min_requests, 20);
    assert_true(h.max_error_rate == 0.05 && h.max_p95_ms == 50 && h.p95_ratio == 2);
    assert_true(h.max_fallback_rate < 0 && h.tol_error == KEEL__PROBATION_TOL_ERROR);
    /* the baseline is a reference of its own */
    keel__probation_stats s = {0};
    char why[512];
    feed(&s, 100, 0, 0, 1, 0.7);
    assert_int_equal(decide(&h, &s, NULL, 1001, why), KEEL__PROBATION_BREACH);
    assert_non_null(strstr(why, "mean_confidence 0.700 < 0.850 (baseline: 0.950 - tolerance"));

    /* no health section: nothing changes */
    keel__health_defaults(&h, 0, 0);
    const char *none = "{\"format\":1,\"name\":\"p\",\"version\":\"1.0.0\",\"files\":[]}";
    if (keel__health_from_manifest(none, strlen(none), &h, &has, &e))
        fail_msg("%s", e.msg);
    assert_false(has);
    assert_false(keel__health_applies(&h));

    struct {
        const char *health, *want;
    } bad[] = {
        {"{\"max_eror_rate\":0.1}", "health: unknown field \"max_eror_rate\""},
        {"{\"max_error_rate\":2}", "health.max_error_rate: expected a number from 0 to 1"},
        {"{\"max_error_rate\":\"low\"}", "health.max_error_rate"},
        {"{\"probation\":5}", "health.probation: expected an object"},
        {"{\"probation\":{\"requests\":10,\"min_requests\":50}}", "min_requests (50) is above"},
        {"{\"tolerance\":{\"p95_ratio\":0.5}}", "health.tolerance.p95_ratio"},
        {"{\"tolerance\":{\"speed\":1}}", "health.tolerance: unknown field \"speed\""},
        {"[]", "\"health\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char doc[512];
        keel__health before;
        keel__health_defaults(&h, 7, 0);
        before = h;
        snprintf(doc, sizeof(doc), "{\"format\":1,\"files\":[],\"health\":%s}", bad[i].health);
        th_expect_err(keel__health_from_manifest(doc, strlen(doc), &h, &has, &e), &e, KEEL_EINVALID,
                      bad[i].want);
        assert_memory_equal(&h, &before, sizeof(h)); /* untouched */
    }
}

static void test_stats_roundtrip(void **state)
{
    (void)state;
    keel__probation_stats s = {0}, back;
    keel_buf b;
    keel_error e;
    cJSON *j = NULL;
    feed(&s, 50, 5, 7, 3.5, 0.8);
    feed(&s, 3, 0, 0, 900, -1);
    keel__buf_init(&b, 0);
    assert_int_equal(keel__probation_stats_json(&s, &b), 0);
    if (keel__json_parse(b.data, b.len, "stats", &j, &e) ||
        keel__probation_stats_parse(j, &back, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(back.requests, s.requests);
    assert_int_equal(back.errors, s.errors);
    assert_int_equal(back.fallbacks, s.fallbacks);
    assert_true(fabs(back.conf_sum - s.conf_sum) < 1e-9);
    assert_memory_equal(back.lat, s.lat, sizeof(s.lat));
    cJSON_Delete(j);
    keel__buf_done(&b);
    const char *bad[] = {
        "{\"requests\":1,\"errors\":2,\"fallbacks\":0,\"scored\":0,\"conf_sum\":0,"
        "\"conf_sq\":0,\"started\":0,\"lat\":[]}",
        "{\"requests\":9,\"errors\":0,\"fallbacks\":0,\"scored\":0,\"conf_sum\":0,"
        "\"conf_sq\":0,\"started\":0,\"lat\":[[99999,1]]}",
        "{\"requests\":9}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (keel__json_parse(bad[i], strlen(bad[i]), "stats", &j, &e))
            fail_msg("%s", e.msg);
        assert_int_not_equal(keel__probation_stats_parse(j, &back, &e), 0);
        cJSON_Delete(j);
    }
}

static void test_verdicts(void **state)
{
    (void)state;
    const char *dir = th_tmpdir();
    char path[512], why[KEEL__VERDICT_REASON_MAX];
    keel_error e;
    keel__verdicts *v = NULL;
    snprintf(path, sizeof(path), "%s/update/verdicts.json", dir);
    if (keel__verdict_load(path, &v, &e)) /* absent: empty */
        fail_msg("%s", e.msg);
    assert_int_equal(keel__verdict_lookup(v, "vad", "3.0.0", why, sizeof(why)), KEEL__VERDICT_NONE);
    if (keel__verdict_record(v, "vad", "3.0.0", KEEL__VERDICT_ROLLED_BACK, "error_rate 0.5 > 0.02",
                             &e) ||
        keel__verdict_record(v, "vad", "2.0.0", KEEL__VERDICT_PROMOTED, "ok", &e) ||
        keel__verdict_record(v, "kws", "1.0.0", KEEL__VERDICT_REFUSED, "validation failed", &e))
        fail_msg("%s", e.msg);
    keel__verdict_free(v);
    v = NULL;
    if (keel__verdict_load(path, &v, &e)) /* survives a restart */
        fail_msg("%s", e.msg);
    assert_int_equal(keel__verdict_lookup(v, "vad", "3.0.0", why, sizeof(why)),
                     KEEL__VERDICT_ROLLED_BACK);
    assert_string_equal(why, "error_rate 0.5 > 0.02");
    assert_false(keel__verdict_retry(KEEL__VERDICT_ROLLED_BACK));
    assert_false(keel__verdict_retry(KEEL__VERDICT_REFUSED));
    assert_true(keel__verdict_retry(KEEL__VERDICT_PROMOTED));
    assert_int_equal(keel__verdict_lookup(v, "kws", "1.0.0", NULL, 0), KEEL__VERDICT_REFUSED);
    assert_int_equal(keel__verdict_lookup(v, "vad", "2.0.0", NULL, 0), KEEL__VERDICT_PROMOTED);
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__verdict_json(v, "vad", &b), 0);
    assert_non_null(strstr(b.data, "\"kind\":\"rolled_back\",\"retry\":false"));
    assert_null(strstr(b.data, "kws"));
    keel__buf_done(&b);
    keel__verdict_free(v);

    /* a corrupt file is refused, naming it */
    const char *bad[] = {"{not json", "{\"format\":1,\"type\":\"other\",\"verdicts\":[]}",
                         "{\"format\":1,\"type\":\"keel-verdicts\",\"verdicts\":[{\"name\":\"a\","
                         "\"version\":\"1.0.0\",\"kind\":\"maybe\"}]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        th_write_str(dir, "update/verdicts.json", bad[i]);
        v = NULL;
        assert_int_not_equal(keel__verdict_load(path, &v, &e), 0);
        assert_null(v);
        assert_non_null(strstr(e.msg, "verdicts.json"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_p95),
        cmocka_unit_test(test_decide_table),
        cmocka_unit_test(test_time_window),
        cmocka_unit_test(test_baseline_and_parse),
        cmocka_unit_test(test_stats_roundtrip),
        cmocka_unit_test(test_verdicts),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return th_exit(rc);
}
