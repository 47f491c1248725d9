/* test_envelope.c - the batch envelope: round trips (compressed or not,
 * empty, binary, extreme fields), compression kept only when it shrinks,
 * every decoder error named, every truncation refused, and the size of 100
 * inference-record-like JSON payloads. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "sync/envelope.h"

/* An inference-record-like JSON payload, as keeld's records policy writes. */
static size_t record(char *out, size_t n, unsigned i)
{
    return (size_t)snprintf(
        out, n,
        "{\"model\":\"mnist\",\"version\":\"1.2.%u\",\"tier\":\"ort-cpu\",\"request_id\":"
        "\"req-%08x\",\"ts\":\"2025-01-%02uT10:%02u:%02uZ\",\"latency_ms\":%u.%03u,\"outputs\":"
        "{\"label\":%u,\"scores\":[0.%04u,0.%04u,0.%04u]},\"confidence\":0.%04u,"
        "\"input_sha256\":\"%08x%08x%08x%08x\"}",
        i % 7, i * 2654435761u, 1 + i % 28, i % 24, i % 60, 3 + i % 9, (i * 37) % 1000, i % 10,
        (i * 13) % 10000, (i * 17) % 10000, (i * 19) % 10000, 9000 + i % 1000, i * 2246822519u,
        i * 3266489917u, i * 668265263u, i * 374761393u);
}

static void expect_same(const keel__envelope *env, const char *device, uint64_t seq,
                        const keel__sync_msg *m, size_t n)
{
    assert_string_equal(env->device, device);
    assert_true(env->seq == seq);
    assert_int_equal(env->n, n);
    for (size_t i = 0; i < n; i++) {
        const keel__sync_msg *a = &env->msgs[i], *b = &m[i];
        assert_true(a->id == b->id);
        assert_int_equal(a->priority, b->priority);
        assert_true(a->created == b->created);
        assert_string_equal(a->topic, b->topic ? b->topic : "");
        assert_string_equal(a->content_type, b->content_type ? b->content_type : "");
        assert_int_equal(a->len, b->len);
        if (b->len)
            assert_memory_equal(a->payload, b->payload, b->len);
    }
}

static void test_round_trip(void **state)
{
    unsigned char bin[300];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (unsigned char)(i * 7 + 3);
    keel__sync_msg m[] = {
        {1, KEEL__PRIO_CRITICAL, 1700000000, "alarms/door", "application/json", "{\"open\":1}", 10},
        {UINT64_MAX, KEEL__PRIO_BULK, INT64_MIN, "", "", NULL, 0},
        {42, KEEL__PRIO_HIGH, -1, NULL, NULL, bin, sizeof(bin)},
        {7, KEEL__PRIO_NORMAL, INT64_MAX, "a/b/c/d/e", "application/octet-stream", bin, 1},
    };
    for (int compress = 0; compress < 2; compress++)
        for (size_t n = 0; n <= KEEL_ARRAY_LEN(m); n++) {
            keel_buf b;
            keel_error e;
            keel__envelope *env = NULL;
            keel__buf_init(&b, 0);
            assert_int_equal(keel__envelope_encode("dev-1", 99 + n, m, n, compress, &b, &e), 0);
            assert_memory_equal(b.data, "KENV", 4);
            assert_int_equal(keel__envelope_decode(b.data, b.len, NULL, &env, &e), 0);
            expect_same(env, "dev-1", 99 + n, m, n);
            assert_int_equal(env->version, 1);
            assert_int_equal(env->wire_len, b.len);
            keel__envelope_free(env);
            keel__buf_done(&b);
        }
}

static void test_compression_only_when_it_shrinks(void **state)
{
    keel_buf b;
    keel_error e;
    keel__envelope *env;
    unsigned char noise[4096];
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < sizeof(noise); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        noise[i] = (unsigned char)x;
    }
    keel__sync_msg m = {5, KEEL__PRIO_NORMAL, 0, "t", "x", noise, sizeof(noise)};
    keel__buf_init(&b, 0);
    assert_int_equal(keel__envelope_encode("d", 1, &m, 1, 1, &b, &e), 0);
    assert_int_equal(b.data[5], 0); /* stored: zstd did not shrink it */
    assert_int_equal(keel__envelope_decode(b.data, b.len, NULL, &env, &e), 0);
    assert_int_equal(env->flags, 0);
    keel__envelope_free(env);

    /* 100 inference records: compressed, and the numbers for the docs */
    static char payloads[100][512];
    keel__sync_msg recs[100];
    size_t total = 0;
    for (unsigned i = 0; i < 100; i++) {
        size_t len = record(payloads[i], sizeof(payloads[i]), i);
        recs[i] = (keel__sync_msg){1000 + i,    KEEL__PRIO_NORMAL,  1700000000 + i,
                                   "inference", "application/json", payloads[i],
                                   len};
        total += len;
    }
    keel_buf raw;
    keel__buf_init(&raw, 0);
    b.len = 0;
    assert_int_equal(keel__envelope_encode("edge-0042", 1, recs, 100, 0, &raw, &e), 0);
    assert_int_equal(keel__envelope_encode("edge-0042", 1, recs, 100, 1, &b, &e), 0);
    assert_int_equal(b.data[5], KEEL__ENVELOPE_FLAG_ZSTD);
    assert_true(b.len * 3 < raw.len);
    printf("envelope: 100 JSON records, %.1f payload bytes/msg: %.1f bytes/msg stored, "
           "%.1f bytes/msg zstd-3 (%.1fx)\n",
           (double)total / 100, (double)raw.len / 100, (double)b.len / 100,
           (double)raw.len / (double)b.len);
    assert_int_equal(keel__envelope_decode(b.data, b.len, NULL, &env, &e), 0);
    expect_same(env, "edge-0042", 1, recs, 100);
    keel__envelope_free(env);
    keel__buf_done(&raw);
    keel__buf_done(&b);
}

static void test_encode_errors(void **state)
{
    keel_buf b;
    keel_error e;
    char longdev[200];
    memset(longdev, 'd', sizeof(longdev) - 1);
    longdev[sizeof(longdev) - 1] = '\0';
    keel__sync_msg ok = {1, 0, 0, "t", "c", "x", 1};
    keel__sync_msg badprio = {1, 4, 0, "t", "c", "x", 1};
    keel__sync_msg nodata = {1, 0, 0, "t", "c", NULL, 5};
    keel__buf_init(&b, 0);
    th_expect_err(keel__envelope_encode("", 1, &ok, 1, 1, &b, &e), &e, KEEL_EINVALID, "device id");
    th_expect_err(keel__envelope_encode(longdev, 1, &ok, 1, 1, &b, &e), &e, KEEL_EINVALID,
                  "device id");
    th_expect_err(keel__envelope_encode("d", 1, &badprio, 1, 1, &b, &e), &e, KEEL_EINVALID,
                  "priority 4");
    th_expect_err(keel__envelope_encode("d", 1, &nodata, 1, 1, &b, &e), &e, KEEL_EINVALID,
                  "without data");
    assert_int_equal(b.len, 0);
    /* a bounded output buffer keeps its old length */
    keel_buf small;
    keel__buf_init(&small, 20);
    assert_int_equal(keel__buf_append(&small, "abc", 3), 0);
    th_expect_err(keel__envelope_encode("d", 1, &ok, 1, 0, &small, &e), &e, KEEL_ETOOBIG,
                  "output buffer");
    assert_int_equal(small.len, 3);
    keel__buf_done(&small);
    keel__buf_done(&b);
}

/* Uncompressed "dev" envelope with one message: offsets of its fields. */
enum {
    O_VER = 4,
    O_FLAGS = 5,
    O_RES = 6,
    O_RAW = 8,
    O_BODY = 12,
    O_DLEN = 16,
    O_COUNT = 16 + 2 + 3 + 8,
    O_MSG = O_COUNT + 4,
    O_PRIO = O_MSG + 8,
    O_MRES = O_MSG + 9,
    O_TLEN = O_MSG + 10,
    O_CLEN = O_MSG + 12,
    O_PLEN = O_MSG + 22,
    O_TOPIC = O_MSG + 26,
};

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void test_decode_errors(void **state)
{
    keel_buf b;
    keel_error e;
    keel__envelope *env = NULL;
    keel__sync_msg m = {3, KEEL__PRIO_HIGH, 5, "top", "ct", "payload", 7};
    keel__buf_init(&b, 0);
    assert_int_equal(keel__envelope_encode("dev", 1, &m, 1, 0, &b, &e), 0);
    const size_t len = b.len;
    unsigned char *good = malloc(len + 8), *d = malloc(len + 8);
    memcpy(good, b.data, len);

    static const struct {
        int off, val; /* byte to set; -1: none */
        int code;
        const char *msg;
    } table[] = {
        {0, 'X', KEEL_ECORRUPT, "bad magic"},
        {O_VER, 2, KEEL_EUNSUPPORTED, "version 2"},
        {O_FLAGS, 0x80, KEEL_EUNSUPPORTED, "unknown flags 0x80"},
        {O_RES, 1, KEEL_ECORRUPT, "reserved header"},
        {O_RAW, 0x7f, KEEL_ECORRUPT, "header says"},
        {O_BODY, 0x7f, KEEL_ECORRUPT, "body bytes"},
        {O_DLEN, 0, KEEL_ECORRUPT, "device id of 0 bytes"},
        {O_DLEN, 0xf0, KEEL_ECORRUPT, "device id of 240 bytes"},
        {O_DLEN + 2, 0, KEEL_ECORRUPT, "NUL"},
        {O_COUNT, 2, KEEL_ECORRUPT, "count says 2 messages"},
        {O_COUNT, 0, KEEL_ECORRUPT, "bytes after the last of 0"},
        {O_PRIO, 4, KEEL_ECORRUPT, "message 0: priority 4"},
        {O_MRES, 9, KEEL_ECORRUPT, "reserved byte"},
        {O_TLEN, 200, KEEL_ECORRUPT, "topic length 200"},
        {O_CLEN, 200, KEEL_ECORRUPT, "content type length 200"},
        {O_PLEN, 200, KEEL_ECORRUPT, "payload length 200"},
        {O_PLEN, 6, KEEL_ECORRUPT, "1 bytes after the last"},
        {O_TOPIC + 1, 0, KEEL_ECORRUPT, "NUL"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(table); i++) {
        memcpy(d, good, len);
        d[table[i].off] = (unsigned char)table[i].val;
        int rc = keel__envelope_decode(d, len, NULL, &env, &e);
        if (rc != table[i].code || !strstr(e.msg, table[i].msg))
            fail_msg("case %zu (byte %d = %d): rc %d '%s', want %d '%s'", i, table[i].off,
                     table[i].val, rc, e.msg, table[i].code, table[i].msg);
    }

    /* every truncation is refused, also with the header lengths fixed up */
    for (size_t n = 0; n < len; n++) {
        assert_int_equal(keel__envelope_decode(good, n, NULL, &env, &e), KEEL_ECORRUPT);
        if (n < 16)
            continue;
        memcpy(d, good, len);
        put32(d + O_RAW, (uint32_t)(n - 16));
        put32(d + O_BODY, (uint32_t)(n - 16));
        assert_int_equal(keel__envelope_decode(d, n, NULL, &env, &e), KEEL_ECORRUPT);
    }
    memcpy(d, good, len);
    d[len] = 0;
    th_expect_err(keel__envelope_decode(d, len + 1, NULL, &env, &e), &e, KEEL_ECORRUPT,
                  "body bytes");
    /* a consistent extra byte inside the body */
    memcpy(d, good, len);
    d[len] = 0;
    put32(d + O_RAW, (uint32_t)(len + 1 - 16));
    put32(d + O_BODY, (uint32_t)(len + 1 - 16));
    th_expect_err(keel__envelope_decode(d, len + 1, NULL, &env, &e), &e, KEEL_ECORRUPT,
                  "1 bytes after the last of 1 messages");

    /* limits */
    keel__envelope_limits lim = {.max_raw = 10};
    th_expect_err(keel__envelope_decode(good, len, &lim, &env, &e), &e, KEEL_ETOOBIG,
                  "exceeds the limit of 10");
    lim = (keel__envelope_limits){.max_payload = 6};
    th_expect_err(keel__envelope_decode(good, len, &lim, &env, &e), &e, KEEL_ETOOBIG,
                  "payload of 7 bytes");
    keel__buf_done(&b);
    keel__buf_init(&b, 0);
    keel__sync_msg two[2] = {m, m};
    assert_int_equal(keel__envelope_encode("dev", 1, two, 2, 0, &b, &e), 0);
    lim = (keel__envelope_limits){.max_msgs = 1};
    th_expect_err(keel__envelope_decode(b.data, b.len, &lim, &env, &e), &e, KEEL_ETOOBIG,
                  "2 messages, the limit is 1");
    /* 64 MiB is the ceiling whatever the caller asks */
    memcpy(d, good, len);
    put32(d + O_RAW, 64u * 1024 * 1024 + 1);
    d[O_FLAGS] = 1;
    lim = (keel__envelope_limits){.max_raw = SIZE_MAX};
    th_expect_err(keel__envelope_decode(d, len, &lim, &env, &e), &e, KEEL_ETOOBIG,
                  "exceeds the limit of 67108864");

    /* compressed: garbage, wrong sizes, trailing bytes */
    memcpy(d, good, len);
    d[O_FLAGS] = 1;
    th_expect_err(keel__envelope_decode(d, len, NULL, &env, &e), &e, KEEL_ECORRUPT, "zstd");
    keel__buf_done(&b);
    keel__buf_init(&b, 0);
    static char big[4000];
    memset(big, 'a', sizeof(big));
    keel__sync_msg bm = {1, 0, 0, "t", "c", big, sizeof(big)};
    assert_int_equal(keel__envelope_encode("dev", 1, &bm, 1, 1, &b, &e), 0);
    assert_int_equal(b.data[5], 1);
    unsigned char *z = malloc(b.len + 1);
    memcpy(z, b.data, b.len);
    put32(z + O_RAW, 100);
    th_expect_err(keel__envelope_decode(z, b.len, NULL, &env, &e), &e, KEEL_ECORRUPT,
                  "zstd frame holds");
    memcpy(z, b.data, b.len);
    z[b.len] = 0;
    put32(z + O_BODY, (uint32_t)(b.len + 1 - 16));
    th_expect_err(keel__envelope_decode(z, b.len + 1, NULL, &env, &e), &e, KEEL_ECORRUPT,
                  "exactly one complete frame");
    for (size_t n = 16; n < b.len; n++) { /* truncated frames */
        memcpy(z, b.data, b.len);
        put32(z + O_BODY, (uint32_t)(n - 16));
        assert_int_equal(keel__envelope_decode(z, n, NULL, &env, &e), KEEL_ECORRUPT);
    }
    free(z);
    free(good);
    free(d);
    keel__buf_done(&b);
}

static void test_prio_names(void **state)
{
    assert_string_equal(keel__prio_name(KEEL__PRIO_CRITICAL), "critical");
    assert_string_equal(keel__prio_name(KEEL__PRIO_BULK), "bulk");
    assert_null(keel__prio_name(-1));
    assert_null(keel__prio_name(KEEL__NPRIO));
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_compression_only_when_it_shrinks),
        cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_prio_names),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
