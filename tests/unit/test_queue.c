/* test_queue.c - the durable priority queue: priority order, FIFO within a
 * class, TTL, idempotency keys, ack, eviction order and counts, backpressure,
 * byte and row limits, reopen, group commit under 8 producer threads, bad
 * input, and kill -9 of a producer process at random moments. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "keel/queue.h"

static int64_t fake_now = 1700000000;

static int64_t fake_clock(void *ctx)
{
    (void)ctx;
    return fake_now;
}

typedef struct fx {
    const char *dir;
    char path[512];
    keel_queue_opts o;
    keel_queue *q;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    f->dir = th_tmpdir();
    snprintf(f->path, sizeof(f->path), "%s/state/queue.db", f->dir);
    keel_queue_opts_default(&f->o);
    f->o.clock = fake_clock;
    fake_now = 1700000000;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    keel_queue_close(f->q);
    free(f);
    th_cleanup();
    return 0;
}

static void reopen(fx *f)
{
    keel_error e;
    keel_queue_close(f->q);
    f->q = NULL;
    int rc = keel_queue_open(f->path, &f->o, &f->q, &e);
    if (rc)
        fail_msg("open %s: %s", f->path, e.msg);
}

/* Enqueues and asserts success; returns the id. */
static uint64_t put(fx *f, keel_prio p, const char *topic, const char *payload, int64_t ttl,
                    const char *key)
{
    keel_msg_in m = {.topic = topic,
                     .prio = p,
                     .payload = payload,
                     .payload_len = payload ? strlen(payload) : 0,
                     .idem_key = key,
                     .ttl_s = ttl};
    keel_error e;
    uint64_t id = 0;
    int rc = keel_queue_enqueue(f->q, &m, &id, &e);
    if (rc)
        fail_msg("enqueue %s/%s: %s", keel_prio_name(p), topic, e.msg);
    return id;
}

static int try_put(fx *f, keel_prio p, size_t len, keel_error *e)
{
    static char zeros[4096];
    keel_msg_in m = {.topic = "t", .prio = p, .payload = zeros, .payload_len = len};
    uint64_t id;
    return keel_queue_enqueue(f->q, &m, &id, e);
}

/* Every deliverable id, in delivery order. */
static size_t peek_ids(fx *f, uint64_t *ids, size_t max)
{
    keel_msg *b = NULL;
    size_t n = 0;
    keel_error e;
    assert_int_equal(keel_queue_peek_batch(f->q, max, SIZE_MAX, 0, &b, &n, &e), 0);
    for (size_t i = 0; i < n; i++)
        ids[i] = b[i].id;
    keel_queue_batch_free(b);
    return n;
}

static void expect_ids(fx *f, const uint64_t *want, size_t nwant)
{
    uint64_t got[64];
    size_t n = peek_ids(f, got, 64);
    char gs[512] = "", ws[512] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(gs + strlen(gs), sizeof(gs) - strlen(gs), " %" PRIu64, got[i]);
    for (size_t i = 0; i < nwant; i++)
        snprintf(ws + strlen(ws), sizeof(ws) - strlen(ws), " %" PRIu64, want[i]);
    if (strcmp(gs, ws) != 0)
        fail_msg("queue holds [%s ], expected [%s ]", gs, ws);
}

static keel_queue_stats stats(fx *f)
{
    keel_queue_stats s;
    keel_error e;
    assert_int_equal(keel_queue_stats_get(f->q, &s, &e), 0);
    return s;
}

/* --- order --------------------------------------------------------------------- */

static void test_priority_order_fifo(void **state)
{
    fx *f = *state;
    keel_error e;
    f->o.durability = KEEL_QUEUE_SYNC;
    reopen(f);
    uint64_t b1 = put(f, KEEL_PRIO_BULK, "b", "b1", 0, NULL);
    uint64_t n1 = put(f, KEEL_PRIO_NORMAL, "n", "n1", 0, NULL);
    uint64_t c1 = put(f, KEEL_PRIO_CRITICAL, "c", "c1", 0, NULL);
    uint64_t h1 = put(f, KEEL_PRIO_HIGH, "h", "h1", 0, NULL);
    uint64_t c2 = put(f, KEEL_PRIO_CRITICAL, "c", "c2", 0, NULL);
    uint64_t b2 = put(f, KEEL_PRIO_BULK, "b", "b2", 0, NULL);
    uint64_t n2 = put(f, KEEL_PRIO_NORMAL, "n", "n2", 0, NULL);
    uint64_t c3 = put(f, KEEL_PRIO_CRITICAL, "c2", "c3", 0, NULL);
    assert_true(b1 < n1 && n1 < c1 && c1 < h1 && h1 < c2 && c2 < b2 && b2 < n2 && n2 < c3);
    uint64_t want[] = {c1, c2, c3, h1, n1, n2, b1, b2};
    expect_ids(f, want, 8);
    expect_ids(f, want, 8); /* peeking does not consume */

    keel_msg *b;
    size_t n;
    assert_int_equal(keel_queue_peek_batch(f->q, 8, SIZE_MAX, 0, &b, &n, &e), 0);
    assert_int_equal(n, 8);
    assert_string_equal(b[0].topic, "c");
    assert_int_equal(b[0].payload_len, 2);
    assert_memory_equal(b[0].payload, "c1", 2);
    assert_string_equal(b[0].content_type, "application/octet-stream");
    assert_null(b[0].idem_key);
    assert_int_equal(b[0].prio, KEEL_PRIO_CRITICAL);
    assert_int_equal(b[0].created_at, fake_now);
    assert_int_equal(b[0].expires_at, 0);
    assert_int_equal(b[7].prio, KEEL_PRIO_BULK);
    keel_queue_batch_free(b);

    /* max_msgs, max_bytes (each payload is 2 bytes; the first always comes) */
    assert_int_equal(keel_queue_peek_batch(f->q, 2, SIZE_MAX, 0, &b, &n, &e), 0);
    assert_int_equal(n, 2);
    assert_int_equal(b[1].id, c2);
    keel_queue_batch_free(b);
    assert_int_equal(keel_queue_peek_batch(f->q, 100, 5, 0, &b, &n, &e), 0);
    assert_int_equal(n, 2);
    keel_queue_batch_free(b);
    assert_int_equal(keel_queue_peek_batch(f->q, 100, 1, 0, &b, &n, &e), 0);
    assert_int_equal(n, 1);
    keel_queue_batch_free(b);
    /* one class and topic per batch */
    assert_int_equal(
        keel_queue_peek_batch(f->q, 100, SIZE_MAX, KEEL_QUEUE_PEEK_SAME_TOPIC, &b, &n, &e), 0);
    assert_int_equal(n, 2);
    assert_int_equal(b[0].id, c1);
    assert_int_equal(b[1].id, c2);
    keel_queue_batch_free(b);
    assert_int_equal(keel_queue_peek_batch(f->q, 0, SIZE_MAX, 0, &b, &n, &e), 0);
    assert_int_equal(n, 0);
    assert_null(b);

    /* content type, key and payload bytes round-trip */
    keel_msg_in m = {.topic = "x/y",
                     .prio = KEEL_PRIO_CRITICAL,
                     .payload = "\0\1\2",
                     .payload_len = 3,
                     .content_type = "application/cbor",
                     .idem_key = "key-1",
                     .ttl_s = 60};
    uint64_t id;
    assert_int_equal(keel_queue_enqueue(f->q, &m, &id, &e), 0);
    assert_int_equal(keel_queue_peek_batch(f->q, 4, SIZE_MAX, 0, &b, &n, &e), 0);
    assert_int_equal(b[3].id, id);
    assert_string_equal(b[3].topic, "x/y");
    assert_string_equal(b[3].content_type, "application/cbor");
    assert_string_equal(b[3].idem_key, "key-1");
    assert_memory_equal(b[3].payload, "\0\1\2", 3);
    assert_int_equal(b[3].expires_at, fake_now + 60);
    keel_queue_batch_free(b);
}

/* --- TTL ------------------------------------------------------------------------ */

static void test_ttl_expiry(void **state)
{
    fx *f = *state;
    keel_error e;
    uint64_t removed;
    reopen(f);
    uint64_t a = put(f, KEEL_PRIO_HIGH, "t", "short", 10, NULL);
    uint64_t b = put(f, KEEL_PRIO_HIGH, "t", "forever", 0, NULL);
    uint64_t c = put(f, KEEL_PRIO_BULK, "t", "long", 100, NULL);
    uint64_t all[] = {a, b, c};
    expect_ids(f, all, 3);
    fake_now += 9;
    expect_ids(f, all, 3);
    fake_now += 1; /* a expires at created + 10 */
    uint64_t live[] = {b, c};
    expect_ids(f, live, 2);
    assert_int_equal(stats(f).depth, 3); /* still stored until removed */
    assert_int_equal(keel_queue_expire(f->q, fake_now, &removed, &e), 0);
    assert_int_equal(removed, 1);
    keel_queue_stats s = stats(f);
    assert_int_equal(s.depth, 2);
    assert_int_equal(s.expired, 1);
    assert_int_equal(s.cls[KEEL_PRIO_HIGH].depth, 1);
    assert_int_equal(keel_queue_expire(f->q, fake_now, &removed, &e), 0);
    assert_int_equal(removed, 0);
    fake_now += 1000;
    assert_int_equal(keel_queue_expire(f->q, fake_now, &removed, &e), 0);
    assert_int_equal(removed, 1);
    reopen(f);
    s = stats(f);
    assert_int_equal(s.expired, 2); /* persisted */
    assert_int_equal(s.depth, 1);
    uint64_t left[] = {b};
    expect_ids(f, left, 1);
}

/* --- idempotency keys ------------------------------------------------------------- */

static void test_idempotency_keys(void **state)
{
    fx *f = *state;
    keel_error e;
    f->o.idem_retention_s = 100;
    reopen(f);
    uint64_t a = put(f, KEEL_PRIO_NORMAL, "t", "first", 0, "k1");
    assert_int_equal(put(f, KEEL_PRIO_NORMAL, "t", "second", 0, "k1"), a);
    assert_int_equal(put(f, KEEL_PRIO_CRITICAL, "other", "third", 0, "k1"), a);
    assert_int_equal(stats(f).depth, 1);
    uint64_t b = put(f, KEEL_PRIO_NORMAL, "t", "x", 0, "k2");
    assert_true(b > a);
    uint64_t c = put(f, KEEL_PRIO_NORMAL, "t", "x", 0, NULL);
    uint64_t d = put(f, KEEL_PRIO_NORMAL, "t", "x", 0, "");
    assert_true(c != d);
    assert_int_equal(stats(f).depth, 4);
    /* acked, but within the retention window: still a duplicate */
    assert_int_equal(keel_queue_ack(f->q, &a, 1, &e), 0);
    fake_now += 50;
    assert_int_equal(put(f, KEEL_PRIO_NORMAL, "t", "again", 0, "k1"), a);
    assert_int_equal(stats(f).depth, 3);
    /* a queued message keeps its key past the window */
    fake_now += 100;
    assert_int_equal(put(f, KEEL_PRIO_NORMAL, "t", "x", 0, "k2"), b);
    /* gone and past the window: a new message */
    uint64_t a2 = put(f, KEEL_PRIO_NORMAL, "t", "again", 0, "k1");
    assert_true(a2 > d);
    /* keys survive a reopen */
    reopen(f);
    assert_int_equal(put(f, KEEL_PRIO_NORMAL, "t", "x", 0, "k1"), a2);
    /* expire forgets keys of gone messages past the window */
    uint64_t removed;
    assert_int_equal(keel_queue_ack(f->q, &a2, 1, &e), 0);
    fake_now += 1000;
    assert_int_equal(keel_queue_expire(f->q, fake_now, &removed, &e), 0);
    assert_true(put(f, KEEL_PRIO_NORMAL, "t", "x", 0, "k1") > a2);

    /* retention 0: only while the message exists */
    f->o.idem_retention_s = 0;
    reopen(f);
    uint64_t k = put(f, KEEL_PRIO_HIGH, "t", "x", 0, "k3");
    assert_int_equal(put(f, KEEL_PRIO_HIGH, "t", "x", 0, "k3"), k);
    assert_int_equal(keel_queue_ack(f->q, &k, 1, &e), 0);
    assert_true(put(f, KEEL_PRIO_HIGH, "t", "x", 0, "k3") > k);
}

/* --- ack ----------------------------------------------------------------------------- */

static void test_ack(void **state)
{
    fx *f = *state;
    keel_error e;
    reopen(f);
    uint64_t ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = put(f, KEEL_PRIO_NORMAL, "t", "p", 0, NULL);
    uint64_t some[] = {ids[1], ids[3], 999999};
    assert_int_equal(keel_queue_ack(f->q, some, 3, &e), 0);
    assert_int_equal(keel_queue_ack(f->q, some, 3, &e), 0); /* again: nothing happens */
    uint64_t left[] = {ids[0], ids[2], ids[4]};
    expect_ids(f, left, 3);
    assert_int_equal(stats(f).bytes, 3 * (1 + 1 + 24));
    assert_int_equal(keel_queue_ack(f->q, NULL, 0, &e), 0);
    th_expect_err(keel_queue_ack(f->q, NULL, 2, &e), &e, KEEL_EINVALID, "ids");
    assert_int_equal(keel_queue_ack(f->q, left, 3, &e), 0);
    assert_int_equal(stats(f).depth, 0);
    assert_int_equal(stats(f).bytes, 0);
    /* ids are never reused, even after the queue emptied and reopened */
    reopen(f);
    assert_true(put(f, KEEL_PRIO_NORMAL, "t", "p", 0, NULL) > ids[4]);
}

/* --- eviction and backpressure ----------------------------------------------------------- */

static void test_eviction_order(void **state)
{
    fx *f = *state;
    keel_error e;
    f->o.max_rows = 6;
    f->o.durability = KEEL_QUEUE_SYNC;
    reopen(f);
    uint64_t x1 = put(f, KEEL_PRIO_NORMAL, "t", "expiring", 5, NULL);
    uint64_t b1 = put(f, KEEL_PRIO_BULK, "t", "b1", 0, NULL);
    uint64_t b2 = put(f, KEEL_PRIO_BULK, "t", "b2", 0, NULL);
    uint64_t n1 = put(f, KEEL_PRIO_NORMAL, "t", "n1", 0, NULL);
    uint64_t h1 = put(f, KEEL_PRIO_HIGH, "t", "h1", 0, NULL);
    uint64_t c1 = put(f, KEEL_PRIO_CRITICAL, "t", "c1", 0, NULL);
    (void)x1;
    fake_now += 6;
    /* full: the expired message goes first, nothing is evicted */
    uint64_t b3 = put(f, KEEL_PRIO_BULK, "t", "b3", 0, NULL);
    keel_queue_stats s = stats(f);
    assert_int_equal(s.expired, 1);
    for (int i = 0; i < KEEL_PRIO_COUNT; i++)
        assert_int_equal(s.cls[i].evicted, 0);
    /* then bulk, oldest first */
    uint64_t n2 = put(f, KEEL_PRIO_NORMAL, "t", "n2", 0, NULL);   /* evicts b1 */
    uint64_t c2 = put(f, KEEL_PRIO_CRITICAL, "t", "c2", 0, NULL); /* evicts b2 */
    uint64_t h2 = put(f, KEEL_PRIO_HIGH, "t", "h2", 0, NULL);     /* evicts b3 */
    {
        uint64_t want[] = {c1, c2, h1, h2, n1, n2};
        expect_ids(f, want, 6);
    }
    /* a bulk message may evict only older bulk: refused */
    th_expect_err(try_put(f, KEEL_PRIO_BULK, 1, &e), &e, KEEL_ENOSPACE,
                  "of critical/high/normal messages waiting; not evicting them for a bulk");
    /* then normal, oldest first */
    uint64_t c3 = put(f, KEEL_PRIO_CRITICAL, "t", "c3", 0, NULL); /* evicts n1 */
    uint64_t n3 = put(f, KEEL_PRIO_NORMAL, "t", "n3", 0, NULL);   /* evicts n2 */
    {
        uint64_t want[] = {c1, c2, c3, h1, h2, n3};
        expect_ids(f, want, 6);
    }
    s = stats(f);
    assert_int_equal(s.cls[KEEL_PRIO_BULK].evicted, 3);
    assert_int_equal(s.cls[KEEL_PRIO_NORMAL].evicted, 2);
    assert_int_equal(s.cls[KEEL_PRIO_HIGH].evicted, 0);
    assert_int_equal(s.cls[KEEL_PRIO_CRITICAL].evicted, 0);
    assert_int_equal(s.cls[KEEL_PRIO_BULK].refused, 1);
    assert_int_equal(s.depth, 6);
    (void)b1, (void)b2, (void)b3, (void)n2;
    /* counts survive a reopen */
    reopen(f);
    s = stats(f);
    assert_int_equal(s.cls[KEEL_PRIO_BULK].evicted, 3);
    assert_int_equal(s.cls[KEEL_PRIO_NORMAL].evicted, 2);
    assert_int_equal(s.expired, 1);
}

static void test_backpressure_critical(void **state)
{
    fx *f = *state;
    keel_error e;
    f->o.max_rows = 4;
    reopen(f);
    uint64_t ids[4];
    ids[0] = put(f, KEEL_PRIO_CRITICAL, "t", "c1", 0, NULL);
    ids[1] = put(f, KEEL_PRIO_HIGH, "t", "h1", 0, NULL);
    ids[2] = put(f, KEEL_PRIO_CRITICAL, "t", "c2", 0, NULL);
    ids[3] = put(f, KEEL_PRIO_HIGH, "t", "h2", 0, NULL);
    for (int i = 0; i < 3; i++) {
        th_expect_err(try_put(f, KEEL_PRIO_CRITICAL, 10, &e), &e, KEEL_ENOSPACE,
                      "queue full: 108 bytes of critical/high messages waiting; not evicting them");
        assert_non_null(strstr(e.msg, "max_rows 4"));
    }
    th_expect_err(try_put(f, KEEL_PRIO_HIGH, 10, &e), &e, KEEL_ENOSPACE, "not evicting them");
    th_expect_err(try_put(f, KEEL_PRIO_NORMAL, 10, &e), &e, KEEL_ENOSPACE,
                  "not evicting them for a normal message");
    th_expect_err(try_put(f, KEEL_PRIO_BULK, 10, &e), &e, KEEL_ENOSPACE, "not evicting them");
    uint64_t want[] = {ids[0], ids[2], ids[1], ids[3]};
    expect_ids(f, want, 4); /* nothing critical or high lost */
    keel_queue_stats s = stats(f);
    assert_int_equal(s.cls[KEEL_PRIO_CRITICAL].refused, 3);
    assert_int_equal(s.cls[KEEL_PRIO_HIGH].refused, 1);
    for (int i = 0; i < KEEL_PRIO_COUNT; i++)
        assert_int_equal(s.cls[i].evicted, 0);
    /* delivering makes room again */
    assert_int_equal(keel_queue_ack(f->q, ids, 1, &e), 0);
    assert_int_equal(try_put(f, KEEL_PRIO_CRITICAL, 10, &e), 0);

    /* the free-disk floor refuses the same way */
    f->o.max_rows = 0;
    f->o.min_free_disk = UINT64_MAX / 4;
    reopen(f);
    th_expect_err(try_put(f, KEEL_PRIO_CRITICAL, 10, &e), &e, KEEL_ENOSPACE, "min_free_disk");
    assert_int_equal(stats(f).depth, 4);
}

static void test_byte_and_row_limits(void **state)
{
    fx *f = *state;
    keel_error e;
    /* every message below: 100 payload + 1 topic + 24 content type = 125 bytes */
    f->o.max_bytes = 500;
    f->o.max_rows = 0;
    reopen(f);
    for (int i = 0; i < 4; i++)
        assert_int_equal(try_put(f, KEEL_PRIO_BULK, 100, &e), 0);
    assert_int_equal(stats(f).bytes, 500);
    uint64_t before[4];
    assert_int_equal(peek_ids(f, before, 4), 4);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(try_put(f, KEEL_PRIO_BULK, 100, &e), 0);
        keel_queue_stats s = stats(f);
        assert_true(s.bytes <= 500);
        assert_int_equal(s.depth, 4);
    }
    uint64_t after[4];
    assert_int_equal(peek_ids(f, after, 4), 4);
    assert_true(after[0] > before[3]); /* the oldest went first */
    assert_int_equal(stats(f).cls[KEEL_PRIO_BULK].evicted, 10);
    /* a larger message evicts as many as it needs */
    assert_int_equal(try_put(f, KEEL_PRIO_NORMAL, 300, &e), 0);
    keel_queue_stats s = stats(f);
    assert_int_equal(s.cls[KEEL_PRIO_BULK].depth, 1);
    assert_int_equal(s.bytes, 125 + 325);
    /* a message larger than the whole queue */
    th_expect_err(try_put(f, KEEL_PRIO_CRITICAL, 476, &e), &e, KEEL_ETOOBIG, "max_bytes");

    f->o.max_bytes = 0;
    f->o.max_rows = 3;
    reopen(f);
    assert_int_equal(try_put(f, KEEL_PRIO_NORMAL, 1, &e), 0);
    assert_int_equal(try_put(f, KEEL_PRIO_NORMAL, 1, &e), 0);
    assert_int_equal(stats(f).depth, 3);
    assert_int_equal(stats(f).cls[KEEL_PRIO_BULK].depth, 0); /* the bulk one went */
}

/* --- reopen ------------------------------------------------------------------------------ */

static void test_reopen_keeps_everything(void **state)
{
    fx *f = *state;
    keel_error e;
    reopen(f);
    uint64_t ids[12];
    for (int i = 0; i < 12; i++)
        ids[i] = put(f, (keel_prio)(i % 4), i % 2 ? "a" : "b", "payload", i == 5 ? 1000 : 0,
                     i == 7 ? "key" : NULL);
    assert_int_equal(keel_queue_mark_synced(f->q, fake_now - 30, &e), 0);
    keel_queue_stats s1 = stats(f);
    uint64_t got1[12], got2[12];
    assert_int_equal(peek_ids(f, got1, 12), 12);
    f->o.durability = KEEL_QUEUE_SYNC;
    reopen(f);
    keel_queue_stats s2 = stats(f);
    assert_int_equal(peek_ids(f, got2, 12), 12);
    assert_memory_equal(got1, got2, sizeof(got1));
    assert_int_equal(s2.depth, 12);
    assert_int_equal(s1.bytes, s2.bytes);
    for (int i = 0; i < KEEL_PRIO_COUNT; i++) {
        assert_int_equal(s1.cls[i].depth, s2.cls[i].depth);
        assert_int_equal(s1.cls[i].bytes, s2.cls[i].bytes);
    }
    assert_int_equal(s2.last_sync, fake_now - 30);
    assert_int_equal(put(f, KEEL_PRIO_NORMAL, "x", "y", 0, "key"), ids[7]);
    assert_true(put(f, KEEL_PRIO_NORMAL, "x", "y", 0, NULL) > ids[11]);

    /* stats as JSON */
    fake_now += 5;
    char *json;
    s2 = stats(f);
    assert_int_equal(keel_queue_stats_json(&s2, &json, &e), 0);
    assert_non_null(strstr(json, "\"format\":1,\"durability\":\"sync\",\"depth\":13"));
    assert_non_null(strstr(json, "\"last_sync\":\"2023-11-14T22:12:50Z\""));
    assert_non_null(strstr(json, "\"critical\":{\"depth\":3,\"bytes\":"));
    assert_non_null(strstr(json, "\"oldest_age_s\":5,\"evicted\":0,\"refused\":0}"));
    free(json);
    /* a second owner is refused */
    keel_queue *other = NULL;
    th_expect_err(keel_queue_open(f->path, &f->o, &other, &e), &e, KEEL_EBUSY, "queue.db");
    assert_null(other);
}

/* --- group commit ---------------------------------------------------------------------------- */

#define PRODUCERS    8
#define PER_PRODUCER 150

typedef struct producer {
    keel_queue *q;
    int n;
    uint64_t ids[PER_PRODUCER];
    int failed;
    char msg[256];
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    char payload[64];
    for (int i = 0; i < PER_PRODUCER; i++) {
        snprintf(payload, sizeof(payload), "producer %d message %d", p->n, i);
        keel_msg_in m = {.topic = "sensors/temp",
                         .prio = (keel_prio)(i % 4),
                         .payload = payload,
                         .payload_len = strlen(payload)};
        keel_error e;
        if (keel_queue_enqueue(p->q, &m, &p->ids[i], &e)) {
            p->failed++;
            keel__strlcpy(p->msg, e.msg, sizeof(p->msg));
        }
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_group_concurrent_producers(void **state)
{
    fx *f = *state;
    f->o.durability = KEEL_QUEUE_GROUP;
    reopen(f);
    producer *p = calloc(PRODUCERS, sizeof(*p));
    pthread_t t[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        p[i].q = f->q;
        p[i].n = i;
        assert_int_equal(pthread_create(&t[i], NULL, produce, &p[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    keel_queue_stats s = stats(f);
    print_message("group commit: %" PRIu64 " messages in %" PRIu64 " transactions\n", s.enqueued,
                  s.commits);
    assert_true(s.commits <= s.enqueued);
    for (int i = 0; i < PRODUCERS; i++)
        if (p[i].failed)
            fail_msg("producer %d: %d enqueues failed: %s", i, p[i].failed, p[i].msg);
    reopen(f);
    size_t total = PRODUCERS * PER_PRODUCER;
    uint64_t *got = calloc(total + 1, sizeof(*got));
    keel_msg *b;
    size_t n;
    keel_error e;
    assert_int_equal(keel_queue_peek_batch(f->q, total + 1, SIZE_MAX, 0, &b, &n, &e), 0);
    assert_int_equal(n, total);
    for (size_t i = 0; i < n; i++) {
        got[i] = b[i].id;
        if (i > 0 && b[i].prio == b[i - 1].prio)
            assert_true(b[i].id > b[i - 1].id);
    }
    keel_queue_batch_free(b);
    qsort(got, n, sizeof(*got), cmp_u64);
    for (size_t i = 1; i < n; i++)
        assert_true(got[i] > got[i - 1]);
    for (int i = 0; i < PRODUCERS; i++) {
        for (int j = 0; j < PER_PRODUCER; j++) {
            if (!bsearch(&p[i].ids[j], got, n, sizeof(*got), cmp_u64))
                fail_msg("acknowledged id %" PRIu64 " missing after reopen", p[i].ids[j]);
            if (j > 0)
                assert_true(p[i].ids[j] > p[i].ids[j - 1]);
        }
    }
    free(got);
    free(p);
}

/* Refusals and duplicates inside shared batches: each producer gets its own
 * answer, and the batch's other messages are stored. */
typedef struct racer {
    keel_queue *q;
    const char *key;
    int ok, full;
    uint64_t ids[20];
    char msg[256];
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    for (int i = 0; i < 20; i++) {
        keel_msg_in m = {.topic = "t", .prio = KEEL_PRIO_CRITICAL, .idem_key = r->key};
        keel_error e;
        uint64_t id;
        int rc = keel_queue_enqueue(r->q, &m, &id, &e);
        if (rc == KEEL_OK)
            r->ids[r->ok++] = id;
        else if (rc == KEEL_ENOSPACE && strstr(e.msg, "queue full"))
            r->full++;
        else
            keel__strlcpy(r->msg, e.msg, sizeof(r->msg));
    }
    return NULL;
}

static void test_group_refusals_and_duplicates(void **state)
{
    fx *f = *state;
    racer r[PRODUCERS];
    pthread_t t[PRODUCERS];
    int ok = 0, full = 0;
    f->o.durability = KEEL_QUEUE_GROUP;
    f->o.max_rows = 50;
    reopen(f);
    memset(r, 0, sizeof(r));
    for (int i = 0; i < PRODUCERS; i++) {
        r[i].q = f->q;
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        pthread_join(t[i], NULL);
        if (r[i].msg[0])
            fail_msg("producer %d: %s", i, r[i].msg);
        ok += r[i].ok;
        full += r[i].full;
    }
    assert_int_equal(ok, 50);
    assert_int_equal(full, PRODUCERS * 20 - 50);
    assert_int_equal(stats(f).cls[KEEL_PRIO_CRITICAL].refused, PRODUCERS * 20 - 50);
    reopen(f);
    assert_int_equal(stats(f).depth, 50);
    uint64_t got[64];
    assert_int_equal(peek_ids(f, got, 64), 50);
    for (int i = 0; i < PRODUCERS; i++)
        for (int j = 0; j < r[i].ok; j++) {
            bool found = false;
            for (int k = 0; k < 50; k++)
                found |= got[k] == r[i].ids[j];
            assert_true(found);
        }

    /* everyone sends the same key at once: one message, one id for all */
    keel_error e;
    assert_int_equal(keel_queue_ack(f->q, got, 50, &e), 0);
    memset(r, 0, sizeof(r));
    for (int i = 0; i < PRODUCERS; i++) {
        r[i].q = f->q;
        r[i].key = "same-key";
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < PRODUCERS; i++) {
        assert_int_equal(r[i].ok, 20);
        for (int j = 0; j < 20; j++)
            assert_int_equal(r[i].ids[j], r[0].ids[0]);
    }
    assert_int_equal(stats(f).depth, 1);
}

/* --- bad input -----------------------------------------------------------------------------------
 */

static void test_bad_inputs(void **state)
{
    fx *f = *state;
    keel_error e;
    uint64_t id;
    char big[300];
    f->o.max_payload = 1000;
    reopen(f);
    keel_msg_in ok = {.topic = "t", .prio = KEEL_PRIO_NORMAL, .payload = "x", .payload_len = 1};
    keel_msg_in m;

    m = ok, m.topic = "";
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "topic is empty");
    m = ok, m.topic = NULL;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "topic is empty");
    memset(big, 'a', sizeof(big));
    big[257] = '\0';
    m = ok, m.topic = big;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID,
                  "is longer than 256 bytes");
    big[256] = '\0';
    m = ok, m.topic = big; /* exactly 256: fine */
    assert_int_equal(keel_queue_enqueue(f->q, &m, &id, &e), 0);
    m = ok, m.topic = "a/+/b";
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "MQTT wildcard");
    m = ok, m.topic = "a\nb";
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "control character");
    m = ok, m.prio = (keel_prio)7;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID,
                  "unknown priority class 7");
    m = ok, m.prio = (keel_prio)-1;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "unknown priority");
    m = ok, m.payload_len = 1001;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_ETOOBIG,
                  "payload is 1001 bytes; this queue accepts at most 1000 (max_payload)");
    m = ok, m.payload = NULL;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "payload is NULL");
    m = ok, m.payload = NULL, m.payload_len = 0; /* an empty payload is fine */
    assert_int_equal(keel_queue_enqueue(f->q, &m, &id, &e), 0);
    m = ok, m.ttl_s = -5;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "ttl_s is -5");
    m = ok, m.idem_key = big;
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "idempotency key");
    m = ok, m.content_type = "text/plain\r\nX: y";
    th_expect_err(keel_queue_enqueue(f->q, &m, &id, &e), &e, KEEL_EINVALID, "content type");
    th_expect_err(keel_queue_enqueue(f->q, NULL, &id, &e), &e, KEEL_EINVALID, "no message");
    assert_int_equal(stats(f).depth, 2);

    keel_prio p;
    assert_int_equal(keel_prio_parse("bulk", 4, &p, &e), 0);
    assert_int_equal(p, KEEL_PRIO_BULK);
    assert_int_equal(keel_prio_parse("highest", 4, &p, &e), 0);
    assert_int_equal(p, KEEL_PRIO_HIGH);
    th_expect_err(keel_prio_parse("urgent", 6, &p, &e), &e, KEEL_EINVALID,
                  "unknown priority class \"urgent\"");
    assert_string_equal(keel_prio_name((keel_prio)9), "unknown");

    /* options */
    keel_queue *q2 = NULL;
    keel_queue_opts o;
    keel_queue_opts_default(&o);
    o.group_window_us = 20000;
    th_expect_err(keel_queue_open(th_path(f->dir, "q2.db"), &o, &q2, &e), &e, KEEL_EINVALID,
                  "group_window_us is 20000");
    keel_queue_opts_default(&o);
    o.durability = (keel_queue_durability)5;
    th_expect_err(keel_queue_open(th_path(f->dir, "q2.db"), &o, &q2, &e), &e, KEEL_EINVALID,
                  "durability");
    th_expect_err(keel_queue_open("", NULL, &q2, &e), &e, KEEL_EINVALID, "path");
    /* not a database */
    th_write_str(f->dir, "junk.db", "this is not an SQLite database, not at all, no..........");
    th_expect_err(keel_queue_open(th_path(f->dir, "junk.db"), NULL, &q2, &e), &e, KEEL_ECORRUPT,
                  "junk.db");
    assert_null(q2);
    /* another SQLite database (keel.db, say) is not written into */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(th_path(f->dir, "keel.db"), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE packages(name TEXT)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    th_expect_err(keel_queue_open(th_path(f->dir, "keel.db"), NULL, &q2, &e), &e, KEEL_EUNSUPPORTED,
                  "not a keel queue");
    assert_int_equal(sqlite3_open(th_path(f->dir, "keel.db"), &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    /* a queue database says what it is in its header */
    assert_int_equal(keel_queue_open(th_path(f->dir, "mine.db"), NULL, &q2, &e), 0);
    keel_queue_close(q2);
    assert_int_equal(sqlite3_open(th_path(f->dir, "mine.db"), &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA application_id", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0x4b455155);
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_int_equal(keel_queue_open(th_path(f->dir, "mine.db"), NULL, &q2, &e), 0);
    keel_queue_close(q2);
}

/* --- kill -9 -------------------------------------------------------------------------------------
 */

typedef struct crash_ctx {
    keel_queue *q;
    int fd;
    unsigned seed;
} crash_ctx;

static void *crash_producer(void *arg)
{
    crash_ctx *c = arg;
    char payload[3000], line[32];
    memset(payload, 'p', sizeof(payload));
    for (unsigned i = 0;; i++) {
        unsigned r = rand_r(&c->seed);
        keel_msg_in m = {.topic = "crash/test",
                         .prio = (keel_prio)(r % 4),
                         .payload = payload,
                         .payload_len = r % sizeof(payload)};
        keel_error e;
        uint64_t id;
        if (keel_queue_enqueue(c->q, &m, &id, &e)) {
            dprintf(2, "crash child: enqueue: %s\n", e.msg);
            _exit(3);
        }
        int n = snprintf(line, sizeof(line), "%" PRIu64 "\n", id);
        if (write(c->fd, line, (size_t)n) != n) /* one write < PIPE_BUF: atomic */
            _exit(4);
    }
    return NULL;
}

static void crash_child(const char *path, keel_queue_durability d, int fd, unsigned seed)
{
    keel_queue_opts o;
    keel_error e;
    crash_ctx c[4];
    pthread_t t[4];
    int threads = d == KEEL_QUEUE_GROUP ? 4 : 1;
    keel_queue_opts_default(&o);
    o.durability = d;
    o.max_bytes = o.max_rows = o.min_free_disk = 0; /* no eviction: every id must stay */
    keel_queue *q;
    if (keel_queue_open(path, &o, &q, &e)) {
        dprintf(2, "crash child: open: %s\n", e.msg);
        _exit(2);
    }
    for (int i = 0; i < threads; i++) {
        c[i] = (crash_ctx){.q = q, .fd = fd, .seed = seed + (unsigned)i};
        if (pthread_create(&t[i], NULL, crash_producer, &c[i]))
            _exit(5);
    }
    pause();
    _exit(0);
}

static void test_crash_kill9(void **state)
{
    fx *f = *state;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    uint64_t prev_max = 0, total_acked = 0;
    print_message("crash test seed %u\n", seed);
    srand(seed);
    f->o.max_bytes = f->o.max_rows = f->o.min_free_disk = 0;
    f->o.clock = NULL;
    for (int round = 0; round < 20; round++) {
        keel_queue_durability d = round % 2 ? KEEL_QUEUE_SYNC : KEEL_QUEUE_GROUP;
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(f->path, d, fds[1], seed + (unsigned)round * 16);
        }
        close(fds[1]);
        /* read what the child acknowledges for a random 0-300 ms, then kill it */
        size_t cap = 4096, n = 0, len = 0;
        uint64_t *acked = malloc(cap * sizeof(*acked));
        char buf[8192], *text = NULL;
        keel_buf all;
        keel__buf_init(&all, 0);
        uint64_t deadline = keel__now_mono_ns() + (uint64_t)(rand() % 300) * 1000000;
        bool killed = false;
        for (;;) {
            uint64_t t = keel__now_mono_ns();
            if (!killed && t >= deadline) {
                kill(pid, SIGKILL);
                killed = true;
            }
            struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
            int wait_ms = killed ? 1000 : (int)((deadline - t) / 1000000) + 1;
            if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
                fail_msg("poll: %s", strerror(errno));
            if (!(pfd.revents & (POLLIN | POLLHUP)))
                continue;
            ssize_t r = read(fds[0], buf, sizeof(buf));
            if (r < 0 && errno == EINTR)
                continue;
            assert_true(r >= 0);
            if (r == 0)
                break; /* the child is gone */
            assert_int_equal(keel__buf_append(&all, buf, (size_t)r), 0);
        }
        close(fds[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status))
            fail_msg("round %d: the child exited with %d before the kill", round,
                     WEXITSTATUS(status));
        text = all.data;
        len = all.len;
        for (size_t i = 0; text && i < len;) {
            char *end;
            uint64_t v = strtoull(text + i, &end, 10);
            if (*end != '\n')
                break; /* cannot happen: lines are written whole */
            if (n == cap)
                acked = realloc(acked, (cap *= 2) * sizeof(*acked));
            acked[n++] = v;
            i = (size_t)(end - text) + 1;
        }

        /* Reopen: every acknowledged id is there, ids are new, counters match rows. */
        reopen(f);
        keel_msg *b;
        size_t nb;
        keel_error e;
        assert_int_equal(keel_queue_peek_batch(f->q, SIZE_MAX, SIZE_MAX, 0, &b, &nb, &e), 0);
        uint64_t *ids = malloc((nb + 1) * sizeof(*ids));
        for (size_t i = 0; i < nb; i++)
            ids[i] = b[i].id;
        keel_queue_batch_free(b);
        qsort(ids, nb, sizeof(*ids), cmp_u64);
        for (size_t i = 0; i < nb; i++) {
            if (i > 0 && ids[i] == ids[i - 1])
                fail_msg("round %d: id %" PRIu64 " twice", round, ids[i]);
            if (ids[i] <= prev_max)
                fail_msg("round %d: id %" PRIu64 " reused (earlier rounds reached %" PRIu64 ")",
                         round, ids[i], prev_max);
        }
        for (size_t i = 0; i < n; i++)
            if (!bsearch(&acked[i], ids, nb, sizeof(*ids), cmp_u64))
                fail_msg("round %d (%s): acknowledged id %" PRIu64 " lost after kill -9 (%zu of "
                         "%zu acknowledged ids present)",
                         round, keel_queue_durability_name(d), acked[i], nb, n);
        assert_true(nb >= n);
        assert_true(nb <= n + 4); /* at most one unacknowledged message per producer */
        assert_int_equal(stats(f).depth, nb);
        if (nb)
            prev_max = ids[nb - 1];
        total_acked += n;
        /* empty the queue: the next child must still not reuse ids */
        assert_int_equal(keel_queue_ack(f->q, ids, nb, &e), 0);
        keel_queue_close(f->q);
        f->q = NULL;
        free(ids);
        free(acked);
        keel__buf_done(&all);
    }
    print_message("crash test: %" PRIu64 " acknowledged messages over 20 kills, none lost\n",
                  total_acked);
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_priority_order_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ttl_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_critical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_byte_and_row_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_concurrent_producers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_refusals_and_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9, setup, teardown),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
