/* test_shadow.c - the device shadow's merge of local and cloud changes
 * (version vectors; the device's concurrent change wins, and is reported). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "core/json.h"
#include "sync/shadow.h"

static void shadow_is(keel__shadow *s, const char *key, const char *want)
{
    char *v = keel__shadow_get(s, key);
    if (!want) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    assert_string_equal(v, want);
    free(v);
}

static void desired(keel__shadow *s, const char *doc, unsigned want_applied,
                    unsigned want_conflicts)
{
    unsigned a = 99, c = 99;
    keel_error e;
    if (keel__shadow_apply_desired(s, doc, strlen(doc), &a, &c, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(a, want_applied);
    assert_int_equal(c, want_conflicts);
}

static void test_merge(void **state)
{
    const char *dir = th_tmpdir();
    char path[512];
    keel_error e;
    keel__shadow *s = NULL;
    snprintf(path, sizeof(path), "%s/shadow.json", dir);
    if (keel__shadow_open(path, &s, &e))
        fail_msg("%s", e.msg);

    /* the cloud sets two keys; the device had seen nothing of it: applied */
    desired(s,
            "{\"version\":1,\"device_seen\":0,\"set\":{\"log_level\":\"info\","
            "\"sync_window\":\"every 15m\"}}",
            2, 0);
    shadow_is(s, "log_level", "\"info\"");

    /* the same retained document again: ignored */
    desired(s, "{\"version\":1,\"device_seen\":0,\"set\":{\"log_level\":\"debug\"}}", 0, 0);
    shadow_is(s, "log_level", "\"info\"");

    /* offline, someone on site changes log_level and adds maintenance (d=1, 2) */
    if (keel__shadow_set_local(s, "log_level", "\"debug\"", &e) ||
        keel__shadow_set_local(s, "maintenance", "true", &e))
        fail_msg("%s", e.msg);

    /* meanwhile the cloud, having seen device version 0, changes log_level
     * and sync_window: sync_window is applied; log_level is a conflict and
     * the device's value stays */
    desired(s,
            "{\"version\":2,\"device_seen\":0,\"set\":{\"log_level\":\"warn\","
            "\"sync_window\":\"02:00-04:00\"}}",
            1, 1);
    shadow_is(s, "log_level", "\"debug\"");
    shadow_is(s, "sync_window", "\"02:00-04:00\"");
    shadow_is(s, "maintenance", "true");
    char *j = keel__shadow_json(s);
    assert_non_null(strstr(j, "\"conflicts\":[{\"key\":\"log_level\",\"kept_local\":\"debug\","
                              "\"remote\":\"warn\""));
    free(j);

    /* once the cloud has seen the device's change (device_seen 2), its
     * next write wins */
    desired(s, "{\"version\":3,\"device_seen\":2,\"set\":{\"log_level\":\"error\"}}", 1, 0);
    shadow_is(s, "log_level", "\"error\"");

    /* persisted: reopen and everything is there */
    keel__shadow_close(s);
    if (keel__shadow_open(path, &s, &e))
        fail_msg("%s", e.msg);
    shadow_is(s, "log_level", "\"error\"");
    shadow_is(s, "maintenance", "true");
    desired(s, "{\"version\":3,\"device_seen\":2,\"set\":{\"log_level\":\"info\"}}", 0, 0);

    /* bad documents name the problem and change nothing */
    static const struct {
        const char *doc, *want;
    } bad[] = {
        {"{\"version\":9,\"set\":{}}", "device_seen"},
        {"{\"version\":9,\"device_seen\":0,\"set\":[1]}", "set"},
        {"{\"version\":9,\"device_seen\":0,\"set\":{\"Bad Key\":1}}", "Bad Key"},
        {"{\"version\":9,\"device_seen\":99,\"set\":{}}", "ahead of this device"},
        {"not json", "desired shadow"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned a, c;
        th_expect_err(keel__shadow_apply_desired(s, bad[i].doc, strlen(bad[i].doc), &a, &c, &e), &e,
                      KEEL_EINVALID, bad[i].want);
    }
    shadow_is(s, "log_level", "\"error\"");
    th_expect_err(keel__shadow_set_local(s, "x", "{not json", &e), &e, KEEL_EINVALID,
                  "shadow value");
    keel__shadow_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_merge)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return th_exit(rc);
}
