/* test_core.c - errors, buffers, JSON adapter, atomic files. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/json.h"
#include "helpers.h"

static void test_errors(void **state)
{
    assert_string_equal(keel_errname(KEEL_EBADSIG), "BADSIG");
    assert_string_equal(keel_strerror(KEEL_EDOWNGRADE), "version rollback refused");
    assert_string_equal(keel_errname(9999), "UNKNOWN");
    keel_error e;
    assert_int_equal(keel__err(&e, KEEL_EIO, "reading %s", "x"), KEEL_EIO);
    keel__err_prefix(&e, "outer");
    assert_string_equal(e.msg, "outer: reading x");
    assert_int_equal(keel__err_from_errno(2 /* ENOENT */), KEEL_ENOTFOUND);
}

static void test_buf_bounds(void **state)
{
    keel_buf b;
    keel__buf_init(&b, 10);
    assert_int_equal(keel__buf_append(&b, "12345", 5), 0);
    assert_int_equal(keel__buf_appendf(&b, "%d", 12345), 0);
    assert_int_equal(b.len, 10);
    assert_int_equal(keel__buf_append(&b, "x", 1), KEEL_ETOOBIG);
    assert_string_equal(b.data, "1234512345");
    keel__buf_done(&b);
}

static void test_json_errors(void **state)
{
    cJSON *j = NULL;
    keel_error e;
    th_expect_err(keel__json_parse("{\"a\":\n  1,}", 11, "doc", &j, &e), &e, KEEL_EINVALID,
                  "line 2");
    th_expect_err(keel__json_parse("{} x", 4, "doc", &j, &e), &e, KEEL_EINVALID,
                  "unexpected bytes");
    th_expect_err(keel__json_parse("", 0, "doc", &j, &e), &e, KEEL_EINVALID, "empty");
    const char *dup = "{\"a\": {\"n\": 1, \"x\": [{\"k\": 1, \"k\": 2}]}}";
    th_expect_err(keel__json_parse(dup, strlen(dup), "doc", &j, &e), &e, KEEL_EINVALID,
                  "key \"k\" appears twice");
    const char *top = "{\"name\": \"a\", \"version\": \"1\", \"name\": \"b\"}";
    th_expect_err(keel__json_parse(top, strlen(top), "doc", &j, &e), &e, KEEL_EINVALID,
                  "key \"name\" appears twice");
    assert_int_equal(keel__json_parse("{\"n\": 1.5, \"s\": 3}", 18, "doc", &j, &e), 0);
    uint64_t v;
    const char *s;
    th_expect_err(keel__json_u64(j, "n", true, &v, "doc", &e), &e, KEEL_EINVALID,
                  "non-negative integer");
    th_expect_err(keel__json_str(j, "s", true, 10, &s, "doc", &e), &e, KEEL_EINVALID,
                  "must be a string");
    th_expect_err(keel__json_str(j, "zz", true, 10, &s, "doc", &e), &e, KEEL_EINVALID,
                  "\"zz\" is missing");
    cJSON_Delete(j);
}

/* A NUL inside a string, escaped or raw, would cut the string for every C
 * reader ("a\u0000b" read as "a"): refused wherever it is. An escaped
 * backslash before u0000 is not a NUL. */
static void test_json_nul(void **state)
{
    (void)state;
    static const struct {
        const char *doc;
        size_t len;      /* 0: strlen */
        const char *err; /* NULL: parses */
    } cases[] = {
        {"{\"topic\":\"a\\u0000b\"}", 0, "NUL character (\\u0000 at byte 11)"},
        {"[\"x\", {\"k\": [\"\\u0000\"]}]", 0, "\\u0000"},
        {"{\"a\\u0000\": 1}", 0, "NUL"},
        {"{\"a\":\"b\0c\"}", 11, "(a zero byte at byte 7)"},
        {"{\"a\":\"\\\\u0000\"}", 0, NULL},      /* "\\u0000": a backslash, then u0000 */
        {"{\"a\":\"\\u0001\\u00e9\"}", 0, NULL}, /* other escapes are fine */
        {"{\"a\":1}\0\0", 9, NULL},              /* NUL padding after the value */
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        cJSON *j = NULL;
        keel_error e = {0};
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].doc);
        int rc = keel__json_parse(cases[i].doc, len, "doc", &j, &e);
        if (!cases[i].err) {
            if (rc)
                fail_msg("case %zu: %s", i, e.msg);
            cJSON_Delete(j);
        } else {
            th_expect_err(rc, &e, KEEL_EINVALID, cases[i].err);
        }
    }
}

/* Outside bytes made printable for logs: cut with "..." when long. */
static void test_escape(void **state)
{
    (void)state;
    char out[16];
    assert_string_equal(keel__escape(out, sizeof(out), "a\"\\b\n\xff", 6), "a\\\"\\\\b\\x0a\\xff");
    assert_string_equal(keel__escape(out, sizeof(out), "a\0b", 3), "a\\x00b");
    assert_string_equal(keel__escape(out, sizeof(out), "0123456789abcdefghij", 20),
                        "0123456789ab...");
    assert_string_equal(keel__escape(out, sizeof(out), "0123456789abcde", 15), "0123456789abcde");
    assert_string_equal(keel__escape(out, 6, "\x01\x02", 2), "...");
    assert_string_equal(keel__escape(out, sizeof(out), "", 0), "");
}

/* keel__json_parse_except: the skipped member is gone, everything else
 * reads as a whole parse would; malformed input fails as a whole parse. */
static void test_json_parse_except(void **state)
{
    static const struct {
        const char *doc, *want; /* want: compact print, NULL: an error */
    } cases[] = {
        {"{\"a\":1,\"files\":[[1,\"x]}\"],{\"b\":[2]}],\"c\":\"d\"}", "{\"a\":1,\"c\":\"d\"}"},
        {" {\"files\": {\"q\\\"}\": 1}}\n", "{}"},
        {"{\"a\": true , \"files\" : null , \"b\": -2.5e3 }", "{\"a\":true,\"b\":-2500}"},
        {"{\"a\":{\"files\":1},\"files\":2,\"files\":3}", "{\"a\":{\"files\":1}}"},
        {"{\"filesx\":1,\"\\u0066iles\":2}", "{\"filesx\":1,\"files\":2}"},
        {"{}", "{}"},
        {"[1,2]", "[1,2]"},
        {"{\"a\":1,\"files\":[1,2}", NULL},
        {"{\"a\":1,}", NULL},
        {"{\"a\":1} x", NULL},
        {"{\"a\" 1}", NULL},
        {"", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *j = NULL;
        keel_error e = {0};
        int rc =
            keel__json_parse_except(cases[i].doc, strlen(cases[i].doc), "files", "doc", &j, &e);
        if (!cases[i].want) {
            assert_int_equal(rc, KEEL_EINVALID);
            assert_non_null(strstr(e.msg, "doc: "));
            continue;
        }
        assert_int_equal(rc, 0);
        char *p = cJSON_PrintUnformatted(j);
        assert_string_equal(p, cases[i].want);
        cJSON_free(p);
        cJSON_Delete(j);
    }
}

static void test_atomic_write(void **state)
{
    const char *d = th_tmpdir();
    keel_error e;
    char *data;
    size_t len;
    assert_int_equal(keel__fs_write_atomic(th_path(d, "f"), "one", 3, 0600, &e), 0);
    assert_int_equal(keel__fs_write_atomic(th_path(d, "f"), "two!", 4, 0600, &e), 0);
    assert_int_equal(keel__fs_read(th_path(d, "f"), 100, &data, &len, &e), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(data, "two!", 4);
    free(data);
    struct stat st;
    assert_int_equal(stat(th_path(d, "f"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    th_expect_err(keel__fs_read(th_path(d, "f"), 2, &data, &len, &e), &e, KEEL_ETOOBIG, "limit");
    th_expect_err(keel__fs_read(th_path(d, "missing"), 2, &data, &len, &e), &e, KEEL_ENOTFOUND,
                  "cannot open");
    th_cleanup();
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_buf_bounds),
        cmocka_unit_test(test_json_errors),  cmocka_unit_test(test_json_nul),
        cmocka_unit_test(test_escape),       cmocka_unit_test(test_json_parse_except),
        cmocka_unit_test(test_atomic_write),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
