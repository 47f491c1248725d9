/* test_faults.c - the store and the queue keep their promises under I/O
 * errors. A shim (faults.c) fails the 1st, 2nd, ... Nth write, sync,
 * rename or truncate of an operation, in keel's own file code and in
 * SQLite's, with EIO, ENOSPC (sticky: the disk stays full), torn writes
 * and partial writes, until an iteration runs without reaching a fault
 * point: every I/O call on the path is hit at least once. After each fault
 * the invariants are checked (keel__store_check, keel__queue_check), then
 * again after a reopen. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faults.h"
#include "helpers.h"
#include "keel/queue.h"
#include "queue/check.h"
#include "store/check.h"

#define MAX_POINTS 400 /* a path with more I/O calls than this is a test bug */

static const struct {
    tf_kind kind;
    bool sticky;
} modes[] = {
    {TF_EIO, false},    /* one transient error */
    {TF_ENOSPC, true},  /* the disk fills and stays full */
    {TF_TORN, true},    /* half a write lands, then the disk is full */
    {TF_PARTIAL, false} /* a short write without error: must be retried */
};

static bool io_class(int rc)
{
    return rc == KEEL_EIO || rc == KEEL_ENOSPACE;
}

static void fresh(const char *dir)
{
    keel_error e;
    assert_int_equal(keel__fs_rm_rf(dir, &e), 0);
    assert_int_equal(keel__fs_mkdir_p(dir, 0700, &e), 0);
}

/* --- core: atomic writes ------------------------------------------------------------------ */

static void test_atomic_write(void **state)
{
    const char *dir = th_tmpdir();
    char path[512], *got;
    size_t len, big = 300000;
    char *newv = malloc(big);
    keel_error e;
    for (size_t i = 0; i < big; i++)
        newv[i] = (char)('a' + i % 26);
    snprintf(path, sizeof(path), "%s/doc.json", dir);
    tf_install();
    for (size_t m = 0; m < KEEL_ARRAY_LEN(modes); m++) {
        unsigned n;
        for (n = 1; n < MAX_POINTS; n++) {
            assert_int_equal(keel__fs_write_atomic(path, "old", 3, 0644, &e), 0);
            tf_arm_nth(TF_FS, n, modes[m].kind, modes[m].sticky);
            int rc = keel__fs_write_atomic(path, newv, big, 0644, &e);
            tf_disarm();
            if (!tf_fired())
                break;
            assert_int_equal(keel__fs_read(path, big + 1, &got, &len, &e), 0);
            bool old = len == 3 && !memcmp(got, "old", 3),
                 full = len == big && !memcmp(got, newv, big);
            if (!(old || full))
                fail_msg("%s: %s left %zu bytes: neither old nor new", tf_first(), path, len);
            if (modes[m].kind == TF_PARTIAL && (rc || !full))
                fail_msg("%s: a short write was not retried: %s", tf_first(), e.msg);
            if (rc && (!io_class(rc) || !strstr(e.msg, dir)))
                fail_msg("%s: error %d without the file: %s", tf_first(), rc, e.msg);
            free(got);
        }
        print_message("atomic write, %s: %u fault points\n", tf_kind_name(modes[m].kind), n - 1);
        assert_true(n > 3);
    }
    tf_uninstall();
    free(newv);
}

/* --- queue -------------------------------------------------------------------------------------
 */

typedef struct qrun {
    uint64_t ids[32];
    bool live[32]; /* acknowledged and not acked away since */
    size_t n;
} qrun;

static uint64_t put(keel_queue *q, keel_prio p, int i, int *ret_rc, keel_error *e)
{
    char topic[32], payload[600];
    snprintf(topic, sizeof(topic), "t/%d", i);
    memset(payload, 'p', sizeof(payload));
    keel_msg_in m = {.topic = topic, .prio = p, .payload = payload, .payload_len = sizeof(payload)};
    uint64_t id = 0;
    *ret_rc = keel_queue_enqueue(q, &m, &id, e);
    return id;
}

static void queue_ok(keel_queue *q, const char *when, const char *fault)
{
    keel_error e;
    if (keel__queue_check(q, &e))
        fail_msg("%s (%s): %s", when, fault, e.msg);
}

static void test_queue(void **state)
{
    static const keel_queue_durability dur[] = {KEEL_QUEUE_SYNC, KEEL_QUEUE_GROUP};
    const char *root = th_tmpdir();
    char dir[512], path[600];
    snprintf(dir, sizeof(dir), "%s/q", root);
    snprintf(path, sizeof(path), "%s/queue.db", dir);
    tf_install();
    for (size_t d = 0; d < KEEL_ARRAY_LEN(dur); d++)
        for (size_t m = 0; m < KEEL_ARRAY_LEN(modes); m++) {
            unsigned n, failed_ops = 0;
            for (n = 1; n < MAX_POINTS; n++) {
                keel_queue_opts o;
                keel_queue *q = NULL;
                keel_error e;
                qrun r = {0};
                int rc;
                keel_queue_opts_default(&o);
                o.durability = dur[d];
                o.max_rows = 12; /* the faulted enqueues also evict */
                fresh(dir);
                assert_int_equal(keel_queue_open(path, &o, &q, &e), 0);
                for (int i = 0; i < 10; i++) {
                    r.ids[r.n] = put(q, i < 6 ? KEEL_PRIO_BULK : KEEL_PRIO_CRITICAL, i, &rc, &e);
                    assert_int_equal(rc, 0);
                    r.live[r.n++] = true;
                }
                /* The faulted part: enqueues that evict, an ack, an expire. */
                tf_arm_nth(TF_DB, n, modes[m].kind, modes[m].sticky);
                for (int i = 0; i < 6; i++) {
                    keel_queue_stats before, after;
                    assert_int_equal(keel_queue_stats_get(q, &before, &e), 0);
                    uint64_t id = put(q, KEEL_PRIO_HIGH, 100 + i, &rc, &e);
                    if (rc) {
                        failed_ops++;
                        if (!io_class(rc) || !strstr(e.msg, path))
                            fail_msg("%s: enqueue failed with %d: %s", tf_first(), rc, e.msg);
                        assert_int_equal(keel_queue_stats_get(q, &after, &e), 0);
                        if (after.depth != before.depth || after.bytes != before.bytes)
                            fail_msg("%s: a failed enqueue changed depth %" PRIu64 " -> %" PRIu64,
                                     tf_first(), before.depth, after.depth);
                    } else {
                        r.ids[r.n] = id;
                        r.live[r.n++] = true;
                    }
                    queue_ok(q, "after an enqueue", tf_first());
                }
                /* Ack the oldest critical message. */
                uint64_t ack = r.ids[6];
                rc = keel_queue_ack(q, &ack, 1, &e);
                if (rc)
                    failed_ops++;
                else
                    r.live[6] = false;
                queue_ok(q, "after an ack", tf_first());
                uint64_t removed;
                if (keel_queue_expire(q, 1, &removed, &e))
                    failed_ops++;
                queue_ok(q, "after expire", tf_first());
                tf_disarm();
                bool fired = tf_fired() > 0;
                char fault[256];
                snprintf(fault, sizeof(fault), "%s", fired ? tf_first() : "no fault");
                /* Once the disk is fine again, the same queue works. */
                (void)put(q, KEEL_PRIO_CRITICAL, 999, &rc, &e);
                if (rc)
                    fail_msg("%s: the queue does not recover after the fault: %s", fault, e.msg);
                keel_queue_close(q);
                q = NULL;
                assert_int_equal(keel_queue_open(path, &o, &q, &e), 0);
                queue_ok(q, "after reopen", fault);
                /* Every acknowledged message is still there, bulk aside
                 * (eviction may remove it on purpose). */
                keel_msg *batch;
                size_t nb;
                assert_int_equal(keel_queue_peek_batch(q, 100, 64u << 20, 0, &batch, &nb, &e), 0);
                for (size_t i = 6; i < r.n; i++) {
                    bool found = false;
                    for (size_t k = 0; k < nb; k++)
                        found |= batch[k].id == r.ids[i];
                    if (r.live[i] && !found)
                        fail_msg("%s: acknowledged message %" PRIu64 " lost", fault, r.ids[i]);
                    if (!r.live[i] && found)
                        fail_msg("%s: acked message %" PRIu64 " came back", fault, r.ids[i]);
                }
                keel_queue_batch_free(batch);
                keel_queue_close(q);
                if (!fired)
                    break;
            }
            print_message("queue %s, %s: %u fault points, %u operations failed\n",
                          keel_queue_durability_name(dur[d]), tf_kind_name(modes[m].kind), n - 1,
                          failed_ops);
            assert_true(n > 3 && n < MAX_POINTS);
        }
    tf_uninstall();
}

/* --- store ---------------------------------------------------------------------------------------
 */

typedef struct sfx {
    const char *root;
    char trust[512], pkg1[512], pkg2[512], state[512];
    keel_key *k;
    keel_trust *t;
} sfx;

static void make_pkg(sfx *f, const char *ver, size_t size, char *out)
{
    char src[512];
    snprintf(src, sizeof(src), "%s/src-%s", f->root, ver);
    th_make_src(src, "demo", ver, size);
    snprintf(out, 512, "%s/demo-%s.keel", f->root, ver);
    th_pack(src, out, f->k);
}

static void serving_is(sfx *f, keel_store *s, const char *ver, const char *fault)
{
    keel_serving sv;
    keel_error e;
    assert_int_equal(keel_store_resolve(s, "demo", KEEL_VERIFY_DEEP, &sv, &e), 0);
    if (strcmp(sv.version, ver) || sv.degraded || sv.slot != KEEL_SLOT_ACTIVE)
        fail_msg("%s: serving %s (slot %s%s), expected active %s: %s", fault, sv.version,
                 keel_slot_name(sv.slot), sv.degraded ? ", degraded" : "", ver, sv.reason);
    if (keel__store_check(s, &e))
        fail_msg("%s: %s", fault, e.msg);
}

enum { OP_INSTALL_ACTIVATE, OP_INSTALL_STAGE, OP_ACTIVATE, OP_ROLLBACK };
static const char *const op_names[] = {"install --activate", "install (staged)", "activate",
                                       "rollback"};

static void test_store(void **state)
{
    sfx f = {.root = th_tmpdir()};
    keel_error e;
    snprintf(f.trust, sizeof(f.trust), "%s/trust", f.root);
    snprintf(f.state, sizeof(f.state), "%s/state", f.root);
    assert_int_equal(keel_key_generate(&f.k, &e), 0);
    th_trust(f.trust, f.k);
    assert_int_equal(keel_trust_load(f.trust, &f.t, &e), 0);
    make_pkg(&f, "1.0.0", 1000, f.pkg1);
    make_pkg(&f, "2.0.0", 150000, f.pkg2); /* several writes per blob */
    tf_install();
    for (int op = OP_INSTALL_ACTIVATE; op <= OP_ROLLBACK; op++)
        for (size_t m = 0; m < KEEL_ARRAY_LEN(modes); m++) {
            unsigned n, failed = 0;
            for (n = 1; n < MAX_POINTS; n++) {
                keel_store *s = NULL;
                int rc;
                fresh(f.state);
                assert_int_equal(keel_store_open(f.state, NULL, &s, &e), 0);
                assert_int_equal(
                    keel_store_install(s, f.pkg1, f.t, KEEL_INSTALL_ACTIVATE, NULL, &e), 0);
                if (op == OP_ACTIVATE)
                    assert_int_equal(keel_store_install(s, f.pkg2, f.t, 0, NULL, &e), 0);
                if (op == OP_ROLLBACK)
                    assert_int_equal(
                        keel_store_install(s, f.pkg2, f.t, KEEL_INSTALL_ACTIVATE, NULL, &e), 0);
                const char *before = op == OP_ROLLBACK ? "2.0.0" : "1.0.0";
                const char *after = op == OP_ROLLBACK || op == OP_INSTALL_STAGE ? "1.0.0" : "2.0.0";
                if (op == OP_INSTALL_STAGE)
                    before = "1.0.0";
                tf_arm_nth(TF_ALL, n, modes[m].kind, modes[m].sticky);
                switch (op) {
                case OP_INSTALL_ACTIVATE:
                    rc = keel_store_install(s, f.pkg2, f.t, KEEL_INSTALL_ACTIVATE, NULL, &e);
                    break;
                case OP_INSTALL_STAGE:
                    rc = keel_store_install(s, f.pkg2, f.t, 0, NULL, &e);
                    break;
                case OP_ACTIVATE:
                    rc = keel_store_activate(s, "demo", NULL, &e);
                    break;
                default:
                    rc = keel_store_rollback(s, "demo", &e);
                }
                tf_disarm();
                bool fired = tf_fired() > 0;
                char fault[300];
                snprintf(fault, sizeof(fault), "%s, %s", op_names[op],
                         fired ? tf_first() : "no fault");
                if (rc) {
                    failed++;
                    if (!io_class(rc) || !strstr(e.msg, f.state))
                        fail_msg("%s: failed with %d, not an I/O class naming the file: %s", fault,
                                 rc, e.msg);
                }
                if (modes[m].kind == TF_PARTIAL && rc)
                    fail_msg("%s: a short write was not retried: %s", fault, e.msg);
                const char *want = rc ? before : after;
                serving_is(&f, s, want, fault);
                keel_store_close(s);
                /* After a restart: the same answer, verified by re-hashing. */
                assert_int_equal(keel_store_open(f.state, NULL, &s, &e), 0);
                serving_is(&f, s, want, fault);
                /* The disk is fine again: the operation can be redone, and no
                 * partial blob left by the fault is taken as verified. */
                if (rc && op <= OP_INSTALL_STAGE) {
                    if (keel_store_install(s, f.pkg2, f.t, KEEL_INSTALL_ACTIVATE, NULL, &e))
                        fail_msg("%s: install after the fault: %s", fault, e.msg);
                    serving_is(&f, s, "2.0.0", fault);
                }
                keel_store_close(s);
                if (!fired)
                    break;
            }
            print_message("store %s, %s: %u fault points, %u failed cleanly\n", op_names[op],
                          tf_kind_name(modes[m].kind), n - 1, failed);
            assert_true(n > 1 && n < MAX_POINTS);
        }
    tf_uninstall();
    keel_trust_free(f.t);
    keel_key_free(f.k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_atomic_write),
        cmocka_unit_test(test_queue),
        cmocka_unit_test(test_store),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_cleanup();
    return th_exit(rc);
}
