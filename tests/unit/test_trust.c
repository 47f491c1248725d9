/* test_trust.c - root documents, thresholds, name rules, revocation, rotation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

static keel_key *keys[4];

static int setup(void **state)
{
    keel_error e;
    for (int i = 0; i < 4; i++)
        assert_int_equal(keel_key_generate(&keys[i], &e), 0);
    return 0;
}

static int teardown(void **state)
{
    for (int i = 0; i < 4; i++)
        keel_key_free(keys[i]);
    th_cleanup();
    return 0;
}

static void key_entry(keel_buf *b, const keel_key *k, bool comma)
{
    char id[65], pub[65];
    uint8_t raw[32];
    keel_key_id_hex(k, id);
    keel_key_raw_public(k, raw);
    keel_hex_encode(raw, 32, pub);
    assert_int_equal(keel__buf_appendf(b, "%s\"%s\": {\"alg\": \"ed25519\", \"public\": \"%s\"}",
                                       comma ? "," : "", id, pub),
                     0);
}

static const char *idh(const keel_key *k)
{
    static char bufs[8][65];
    static int n;
    char *b = bufs[n++ & 7];
    keel_key_id_hex(k, b);
    return b;
}

/* root version v: keys 0..2 known; root rule keys[r0],keys[r1] thr rt;
 * rules: "" -> key0, "vision-" -> key1+key2 threshold 2 */
static char *root_doc(unsigned v, const keel_key *r0, const keel_key *r1, unsigned rt)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__buf_appendf(&b,
                                       "{\"format\":1,\"type\":\"keel-root\",\"version\":%u,"
                                       "\"keys\":{",
                                       v),
                     0);
    for (int i = 0; i < 4; i++)
        key_entry(&b, keys[i], i > 0);
    assert_int_equal(keel__buf_appendf(&b,
                                       "},\"root\":{\"keys\":[\"%s\",\"%s\"],\"threshold\":%u},"
                                       "\"packages\":[{\"prefix\":\"\",\"keys\":[\"%s\"],"
                                       "\"threshold\":1},{\"prefix\":\"vision-\",\"keys\":[\"%s\","
                                       "\"%s\"],\"threshold\":2}]}",
                                       idh(r0), idh(r1), rt, idh(keys[0]), idh(keys[1]),
                                       idh(keys[2])),
                     0);
    return keel__buf_steal(&b);
}

static void sign_with(keel_sigset *s, const keel_key *k, const char *ctx, const char *msg)
{
    uint8_t sig[64], id[32];
    keel_error e;
    assert_int_equal(keel_key_sign(k, ctx, msg, strlen(msg), sig, &e), 0);
    keel_key_id(k, id);
    assert_int_equal(keel_sigset_add(s, id, sig, &e), 0);
}

static void test_rules_and_thresholds(void **state)
{
    keel_trust *t = NULL;
    keel_error e;
    char *root = root_doc(1, keys[0], keys[1], 1);
    assert_int_equal(keel_trust_from_root(root, strlen(root), &t, &e), 0);
    const char *m = "{\"manifest\":1}";
    keel_sigset s = {0};
    sign_with(&s, keys[0], KEEL_SIGCTX_PACKAGE, m);
    assert_int_equal(keel_trust_check_package(t, "plain", m, strlen(m), &s, &e), 0);
    /* longest prefix wins: vision-* needs key1 AND key2; key0 is not allowed there */
    th_expect_err(keel_trust_check_package(t, "vision-det", m, strlen(m), &s, &e), &e,
                  KEEL_EUNTRUSTED, "key not allowed for this name");
    keel_sigset v = {0};
    sign_with(&v, keys[1], KEEL_SIGCTX_PACKAGE, m);
    th_expect_err(keel_trust_check_package(t, "vision-det", m, strlen(m), &v, &e), &e,
                  KEEL_EUNTRUSTED, "1 valid signature of 2");
    sign_with(&v, keys[2], KEEL_SIGCTX_PACKAGE, m);
    assert_int_equal(keel_trust_check_package(t, "vision-det", m, strlen(m), &v, &e), 0);
    /* a signature made for a root document does not count for a package */
    keel_sigset r = {0};
    sign_with(&r, keys[0], KEEL_SIGCTX_ROOT, m);
    th_expect_err(keel_trust_check_package(t, "plain", m, strlen(m), &r, &e), &e, KEEL_EBADSIG,
                  "invalid signature");
    keel_trust_free(t);
    free(root);
    /* malformed roots */
    static const struct {
        const char *doc, *msg;
    } bad[] = {
        {"{\"format\":1,\"type\":\"keel-root\",\"version\":1,\"keys\":{},\"root\":{},\"packages\":["
         "]}",
         "1..256 keys"},
        {"{\"format\":3,\"type\":\"keel-root\"}", "upgrade keel"},
        {"{\"format\":1,\"type\":\"other\"}", "expected \"keel-root\""},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(bad); i++) {
        keel_error be = {0};
        assert_int_not_equal(keel_trust_from_root(bad[i].doc, strlen(bad[i].doc), &t, &be), 0);
        if (!strstr(be.msg, bad[i].msg))
            fail_msg("\"%s\" lacks \"%s\"", be.msg, bad[i].msg);
    }
}

static void test_revocation_and_rotation(void **state)
{
    const char *dir = th_tmpdir();
    char *root = root_doc(1, keys[0], keys[1], 2);
    keel_error e;
    keel_trust *t = NULL;
    th_write_str(dir, "root.json", root);
    assert_int_equal(keel_trust_load(dir, &t, &e), 0);
    assert_int_equal(keel_trust_root_version(t), 1);
    keel_trust_free(t);

    /* revocation needs the root threshold (2) */
    char rev[300];
    snprintf(rev, sizeof(rev),
             "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":5,\"keys\":[\"%s\"]}",
             idh(keys[0]));
    keel_sigset s = {0};
    sign_with(&s, keys[0], KEEL_SIGCTX_REVOCATIONS, rev);
    th_expect_err(keel_trust_revoke_install(dir, rev, strlen(rev), &s, &e), &e, KEEL_EUNTRUSTED,
                  "1 valid signature of 2");
    sign_with(&s, keys[1], KEEL_SIGCTX_REVOCATIONS, rev);
    assert_int_equal(keel_trust_revoke_install(dir, rev, strlen(rev), &s, &e), 0);
    assert_int_equal(keel_trust_load(dir, &t, &e), 0);
    assert_int_equal(keel_trust_revocation_serial(t), 5);
    const char *m = "{}";
    keel_sigset p = {0};
    sign_with(&p, keys[0], KEEL_SIGCTX_PACKAGE, m);
    th_expect_err(keel_trust_check_package(t, "plain", m, 2, &p, &e), &e, KEEL_EUNTRUSTED,
                  "revoked key");
    keel_trust_free(t);
    /* an older serial is refused */
    char old[300];
    snprintf(old, sizeof(old), "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":4}");
    keel_sigset so = {0};
    sign_with(&so, keys[0], KEEL_SIGCTX_REVOCATIONS, old);
    sign_with(&so, keys[1], KEEL_SIGCTX_REVOCATIONS, old);
    /* key0 is revoked now: its signature no longer counts, so this fails on threshold */
    assert_int_not_equal(keel_trust_revoke_install(dir, old, strlen(old), &so, &e), 0);
    /* a tampered revocation file on disk makes loading fail closed */
    th_write_str(dir, "revoked.json", "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":9}");
    th_expect_err(keel_trust_load(dir, &t, &e), &e, KEEL_EBADSIG, "refusing every package");
    th_write_str(dir, "revoked.json", rev);

    /* rotation: version 2 with roots key2+key3, signed by old (key1 valid,
     * key0 revoked -> need another old root... old roots are key0,key1 thr 2) */
    char *next = root_doc(2, keys[2], keys[3], 1);
    keel_sigset rs = {0};
    sign_with(&rs, keys[1], KEEL_SIGCTX_ROOT, next);
    sign_with(&rs, keys[2], KEEL_SIGCTX_ROOT, next);
    th_expect_err(keel_trust_rotate(dir, next, strlen(next), &rs, &e), &e, KEEL_EUNTRUSTED,
                  "by the current root keys");
    /* un-revoke (a new serial without key0) signed by both, then rotate */
    char rev2[200];
    snprintf(rev2, sizeof(rev2), "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":6}");
    keel_sigset s2 = {0};
    sign_with(&s2, keys[0], KEEL_SIGCTX_REVOCATIONS, rev2);
    sign_with(&s2, keys[1], KEEL_SIGCTX_REVOCATIONS, rev2);
    /* key0 is revoked under serial 5, so only key1 counts: refused */
    th_expect_err(keel_trust_revoke_install(dir, rev2, strlen(rev2), &s2, &e), &e, KEEL_EUNTRUSTED,
                  "revoked key");
    assert_int_equal(keel__fs_rm_rf(th_path(dir, "revoked.json"), &e), 0);
    assert_int_equal(keel__fs_rm_rf(th_path(dir, "revoked.sig"), &e), 0);
    sign_with(&rs, keys[0], KEEL_SIGCTX_ROOT, next);
    assert_int_equal(keel_trust_rotate(dir, next, strlen(next), &rs, &e), 0);
    assert_int_equal(keel_trust_load(dir, &t, &e), 0);
    assert_int_equal(keel_trust_root_version(t), 2);
    keel_trust_free(t);
    /* replaying version 1 is a downgrade */
    keel_sigset r1 = {0};
    sign_with(&r1, keys[2], KEEL_SIGCTX_ROOT, root);
    sign_with(&r1, keys[3], KEEL_SIGCTX_ROOT, root);
    th_expect_err(keel_trust_rotate(dir, root, strlen(root), &r1, &e), &e, KEEL_EDOWNGRADE,
                  "not higher");
    free(next);
    free(root);
    th_cleanup();
}

/* Rotation must not strand an installed revocation list, and an update of
 * the list interrupted between its two files falls back to the previous pair. */
static void test_rotation_keeps_revocations_valid(void **state)
{
    const char *dir = th_tmpdir();
    keel_error e;
    keel_trust *t = NULL;
    char *root = root_doc(1, keys[0], keys[1], 1);
    th_write_str(dir, "root.json", root);
    char rev[300];
    snprintf(rev, sizeof(rev), "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":1}");
    keel_sigset s = {0};
    sign_with(&s, keys[0], KEEL_SIGCTX_REVOCATIONS, rev);
    assert_int_equal(keel_trust_revoke_install(dir, rev, strlen(rev), &s, &e), 0);
    /* new root: keys 2 and 3; the list is signed by key0 only */
    char *next = root_doc(2, keys[2], keys[3], 1);
    keel_sigset rs = {0};
    sign_with(&rs, keys[0], KEEL_SIGCTX_ROOT, next);
    sign_with(&rs, keys[2], KEEL_SIGCTX_ROOT, next);
    th_expect_err(keel_trust_rotate(dir, next, strlen(next), &rs, &e), &e, KEEL_ECONFLICT,
                  "not signed by the new root's keys");
    /* the way out the message names: a list signed by both, then rotate */
    char rev2[300];
    snprintf(rev2, sizeof(rev2), "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":2}");
    keel_sigset s2 = {0};
    sign_with(&s2, keys[0], KEEL_SIGCTX_REVOCATIONS, rev2);
    sign_with(&s2, keys[2], KEEL_SIGCTX_REVOCATIONS, rev2);
    assert_int_equal(keel_trust_revoke_install(dir, rev2, strlen(rev2), &s2, &e), 0);
    assert_int_equal(keel_trust_rotate(dir, next, strlen(next), &rs, &e), 0);
    assert_int_equal(keel_trust_load(dir, &t, &e), 0);
    assert_int_equal(keel_trust_root_version(t), 2);
    assert_int_equal(keel_trust_revocation_serial(t), 2);
    keel_trust_free(t);

    /* crash between the two files of a list update: previous pair kept as
     * *.prev, new signatures written, document still old */
    char *old_doc, *old_sig, *new_sig;
    size_t l1, l2;
    assert_int_equal(keel__fs_read(th_path(dir, "revoked.json"), 4096, &old_doc, &l1, &e), 0);
    assert_int_equal(keel__fs_read(th_path(dir, "revoked.sig"), 4096, &old_sig, &l2, &e), 0);
    th_write(dir, "revoked.json.prev", old_doc, l1);
    th_write(dir, "revoked.sig.prev", old_sig, l2);
    char rev3[300];
    snprintf(rev3, sizeof(rev3), "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":3}");
    keel_sigset s3 = {0};
    sign_with(&s3, keys[2], KEEL_SIGCTX_REVOCATIONS, rev3);
    assert_int_equal(keel_sigset_format(&s3, &new_sig, &e), 0);
    th_write_str(dir, "revoked.sig", new_sig);
    assert_int_equal(keel_trust_load(dir, &t, &e), 0);
    assert_int_equal(keel_trust_revocation_serial(t), 2);
    keel_trust_free(t);
    /* without a previous pair the device fails closed */
    assert_int_equal(unlink(th_path(dir, "revoked.json.prev")), 0);
    th_expect_err(keel_trust_load(dir, &t, &e), &e, KEEL_EBADSIG, "refusing every package");
    free(old_doc);
    free(old_sig);
    free(new_sig);
    free(next);
    free(root);
    th_cleanup();
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_and_thresholds),
        cmocka_unit_test(test_revocation_and_rotation),
        cmocka_unit_test(test_rotation_keeps_revocations_valid),
    };
    return th_exit(cmocka_run_group_tests(tests, setup, teardown));
}
