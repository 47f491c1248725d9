/* test_store.c - install, slots, activation, rollback, anti-rollback,
 * verification stamps, corruption fallback, sharing of blobs, revocation
 * re-checks of installed versions. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "faults.h"
#include "helpers.h"
#include "store/check.h"

typedef struct fx {
    const char *dir;
    char state[512], trust[512];
    keel_key *k;
    keel_trust *t;
    keel_store *s;
} fx;

static char *make_pkg(fx *f, const char *ver, size_t size)
{
    static char out[8][512];
    static int n;
    char *p = out[n++ & 7];
    char src[512];
    snprintf(src, sizeof(src), "%s/src-%s", f->dir, ver);
    th_make_src(src, "demo", ver, size);
    snprintf(p, 512, "%s/demo-%s.keel", f->dir, ver);
    th_pack(src, p, f->k);
    return p;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    keel_error e;
    f->dir = th_tmpdir();
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->trust, sizeof(f->trust), "%s/trust", f->dir);
    assert_int_equal(keel_key_generate(&f->k, &e), 0);
    th_trust(f->trust, f->k);
    assert_int_equal(keel_trust_load(f->trust, &f->t, &e), 0);
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    keel_store_close(f->s);
    keel_trust_free(f->t);
    keel_key_free(f->k);
    free(f);
    th_cleanup();
    return 0;
}

static void slots(fx *f, const char *want_active, const char *want_prev, const char *want_kg)
{
    char *json;
    keel_error e;
    char want[512];
    assert_int_equal(keel_store_status_json(f->s, &json, &e), 0);
#define Q(x) ((x) ? "\"" : ""), ((x) ? (x) : "null"), ((x) ? "\"" : "")
    snprintf(want, sizeof(want), "\"active\":%s%s%s,\"previous\":%s%s%s,\"known_good\":%s%s%s",
             Q(want_active), Q(want_prev), Q(want_kg));
#undef Q
    if (!strstr(json, want))
        fail_msg("status %s lacks %s", json, want);
    free(json);
}

static void test_install_activate_rollback(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_install_result r;
    keel_serving sv;
    bool ready;
    char why[512];
    /* empty store: not ready, and says why */
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_false(ready);
    assert_non_null(strstr(why, "no package is installed"));

    const char *p1 = make_pkg(f, "1.0.0", 200000);
    assert_int_equal(keel_store_install(f->s, p1, f->t, 0, &r, &e), 0);
    assert_false(r.activated);
    assert_int_equal(r.new_bytes, r.bytes);
    slots(f, NULL, NULL, NULL);
    assert_int_equal(keel_store_activate(f->s, "demo", NULL, &e), 0);
    slots(f, "1.0.0", NULL, NULL);
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_true(ready);
    assert_string_equal(why, "");

    /* 1.1.0 shares labels.txt: stored once */
    const char *p2 = make_pkg(f, "1.1.0", 200001);
    assert_int_equal(keel_store_install(f->s, p2, f->t, KEEL_INSTALL_ACTIVATE, &r, &e), 0);
    assert_true(r.new_bytes < r.bytes);
    slots(f, "1.1.0", "1.0.0", "1.0.0");
    /* installing the same bytes again is a no-op */
    assert_int_equal(keel_store_install(f->s, p2, f->t, 0, &r, &e), 0);
    assert_true(r.already);

    /* rollback goes to the previous (known-good), and forward again */
    assert_int_equal(keel_store_rollback(f->s, "demo", &e), 0);
    slots(f, "1.0.0", "1.1.0", "1.0.0");
    assert_int_equal(keel_store_activate(f->s, "demo", "1.1.0", &e), 0);
    slots(f, "1.1.0", "1.0.0", "1.0.0");

    /* a version below the high-water mark that is not known-good: refused */
    const char *p09 = make_pkg(f, "0.9.0", 1000);
    th_expect_err(keel_store_install(f->s, p09, f->t, 0, &r, &e), &e, KEEL_EDOWNGRADE,
                  "highest version this device has activated");
    /* same version, different content: refused */
    char src[512], other[512];
    snprintf(src, sizeof(src), "%s/src-other", f->dir);
    th_make_src(src, "demo", "1.1.0", 999);
    snprintf(other, sizeof(other), "%s/other.keel", f->dir);
    th_pack(src, other, f->k);
    th_expect_err(keel_store_install(f->s, other, f->t, 0, &r, &e), &e, KEEL_ECONFLICT,
                  "different content");
    /* 1.2.0 active -> known_good becomes 1.1.0, so 1.0.0 is now below the mark */
    const char *p3 = make_pkg(f, "1.2.0", 5000);
    assert_int_equal(keel_store_install(f->s, p3, f->t, KEEL_INSTALL_ACTIVATE, &r, &e), 0);
    slots(f, "1.2.0", "1.1.0", "1.1.0");
    th_expect_err(keel_store_activate(f->s, "demo", "1.0.0", &e), &e, KEEL_EDOWNGRADE,
                  "known-good version 1.1.0");
    assert_int_equal(keel_store_mark_good(f->s, "demo", &e), 0);
    slots(f, "1.2.0", "1.1.0", "1.2.0");
    th_expect_err(keel_store_rollback(f->s, "demo", &e), &e, KEEL_EDOWNGRADE, "1.1.0 is older");
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_ACTIVE);
    assert_string_equal(sv.version, "1.2.0");
    /* the file path of the serving version is a verified blob */
    char path[1024];
    assert_int_equal(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), 0);
    assert_non_null(strstr(path, "/blobs/sha256/"));
    th_expect_err(keel_store_file_path(f->s, "demo", "nope", path, sizeof(path), &e), &e,
                  KEEL_ENOTFOUND, "no file nope");
}

static void corrupt(const char *path, long off)
{
    assert_int_equal(chmod(path, 0644), 0);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    fseek(fp, off, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, off, SEEK_SET);
    fputc(c ^ 0x55, fp);
    fclose(fp);
}

static void test_corruption_fallback(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_serving sv;
    bool ready;
    char why[4096], path[1024];
    assert_int_equal(keel_store_install(f->s, make_pkg(f, "1.0.0", 100000), f->t,
                                        KEEL_INSTALL_ACTIVATE, NULL, &e),
                     0);
    /* keep the file: packing again would stamp another `created` time,
     * which is a different package (CONFLICT), not a repair */
    char p2[512];
    snprintf(p2, sizeof(p2), "%s", make_pkg(f, "2.0.0", 100002));
    assert_int_equal(keel_store_install(f->s, p2, f->t, KEEL_INSTALL_ACTIVATE, NULL, &e), 0);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), 0);
    /* a changed byte changes mtime/ctime, so the stamp no longer matches */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    corrupt(path, 5000);
    /* resolve re-hashes the file and falls back to previous */
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_PREVIOUS);
    assert_true(sv.degraded);
    assert_string_equal(sv.version, "1.0.0");
    assert_non_null(strstr(sv.reason, "corrupt on disk"));
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_true(ready);
    assert_non_null(strstr(why, "degraded"));
    /* reinstalling the package repairs the blob */
    assert_int_equal(keel_store_install(f->s, p2, f->t, 0, NULL, &e), 0);
    assert_int_equal(keel_store_resolve(f->s, "demo", KEEL_VERIFY_DEEP, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_ACTIVE);
    /* now break both versions: nothing valid left, not ready, says why */
    assert_int_equal(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), 0);
    corrupt(path, 10);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_false(ready);
    assert_non_null(strstr(why, "nothing valid is left"));
    assert_non_null(strstr(why, "missing from the blob store"));
}

static void test_stamps_skip_rehash(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_serving sv;
    char path[1024];
    assert_int_equal(keel_store_install(f->s, make_pkg(f, "1.0.0", 300000), f->t,
                                        KEEL_INSTALL_ACTIVATE, NULL, &e),
                     0);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), 0);
    /* Corrupt a byte and put mtime back: ctime still changes, so the stamp
     * catches it (ctime cannot be set from user space). */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    corrupt(path, 77);
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_NONE);
    /* reopening the store keeps everything */
    keel_store_close(f->s);
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    char *json;
    assert_int_equal(keel_store_list_json(f->s, &json, &e), 0);
    assert_non_null(strstr(json, "\"version\":\"1.0.0\""));
    free(json);
}

/* Two handles on one store behave like two processes (flock is per open
 * file): leftovers are cleaned and gc runs only when nobody else has it open. */
static void test_store_shared_between_processes(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_store *other = NULL;
    uint64_t freed;
    th_write_str(th_path(f->state, "staging/blobs"), "partial.XXXX", "half a blob");
    assert_int_equal(keel_store_open(f->state, NULL, &other, &e), 0);
    assert_true(keel__fs_exists(th_path(f->state, "staging/blobs/partial.XXXX")));
    th_expect_err(keel_store_gc(other, &freed, &e), &e, KEEL_EBUSY, "in use");
    th_expect_err(keel_store_gc(f->s, &freed, &e), &e, KEEL_EBUSY, "in use");
    keel_store_close(other);
    assert_int_equal(keel_store_gc(f->s, &freed, &e), 0);
    /* the store is still usable after gc (back to a shared lock) */
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "1.0.0", 1000), f->t, KEEL_INSTALL_ACTIVATE, NULL, &e),
        0);
    keel_store_close(f->s);
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    assert_false(keel__fs_exists(th_path(f->state, "staging/blobs/partial.XXXX")));
}

/* Writes the first len bytes of src to dst, flipping the byte at flip
 * (when flip < len). */
static void copy_part(const char *src, const char *dst, long len, long flip)
{
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    for (long i = 0; i < len; i++) {
        int c = fgetc(in);
        assert_true(c != EOF);
        fputc(i == flip ? c ^ 0x55 : c, out);
    }
    fclose(in);
    fclose(out);
}

/* Installing a version that is there already reads and hashes every byte
 * as a first install does: a truncated or altered copy of it is refused,
 * not answered "already installed" (it once was, from the signed manifest
 * alone), and what is installed stays as it was. */
static void test_reinstall_reads_every_byte(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_install_result r;
    struct stat st;
    char cut[512], flipped[512];
    const char *p = make_pkg(f, "1.0.0", 300000);
    assert_int_equal(keel_store_install(f->s, p, f->t, KEEL_INSTALL_ACTIVATE, &r, &e), 0);
    assert_false(r.already);
    assert_int_equal(stat(p, &st), 0);

    snprintf(cut, sizeof(cut), "%s/cut.keel", f->dir);
    copy_part(p, cut, st.st_size / 2, -1);
    int rc = keel_store_install(f->s, cut, f->t, 0, &r, &e);
    if (rc == KEEL_OK)
        fail_msg("a truncated copy of an installed version was accepted (already %d)", r.already);
    assert_true(rc == KEEL_ECORRUPT || rc == KEEL_EIO);
    printf("truncated copy: %s\n", e.msg);

    snprintf(flipped, sizeof(flipped), "%s/flipped.keel", f->dir);
    copy_part(p, flipped, st.st_size, st.st_size / 2);
    rc = keel_store_install(f->s, flipped, f->t, 0, &r, &e);
    if (rc == KEEL_OK)
        fail_msg("an altered copy of an installed version was accepted (already %d)", r.already);
    printf("altered copy: %s\n", e.msg);

    /* nothing changed: the installed version serves and verifies */
    slots(f, "1.0.0", NULL, NULL);
    assert_int_equal(keel_store_verify(f->s, "demo", "1.0.0", KEEL_VERIFY_DEEP, &e), 0);
    assert_int_equal(keel__store_check(f->s, &e), 0);
    /* the intact package again: already installed, nothing written */
    assert_int_equal(keel_store_install(f->s, p, f->t, 0, &r, &e), 0);
    assert_true(r.already);
    assert_int_equal(r.new_bytes, 0);
}

/* The state dir is private: a 0755 one is closed to 0700 at open, one every
 * user may write to is refused and left as it is; databases are 0600. */
static void test_state_dir_private(void **state)
{
    fx *f = *state;
    keel_error e;
    struct stat st;
    keel_store_close(f->s);
    f->s = NULL;
    assert_int_equal(chmod(f->state, 0755), 0);
    assert_int_equal(chmod(th_path(f->state, "keel.db"), 0644), 0);
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    assert_int_equal(stat(f->state, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(stat(th_path(f->state, "keel.db"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    keel_store_close(f->s);
    f->s = NULL;
    assert_int_equal(chmod(f->state, 01777), 0);
    th_expect_err(keel_store_open(f->state, NULL, &f->s, &e), &e, KEEL_EPERM,
                  "is writable by every user (mode 1777)");
    assert_int_equal(stat(f->state, &st), 0);
    assert_int_equal(st.st_mode & 07777, 01777);
    assert_int_equal(chmod(f->state, 0700), 0);
    /* a new store's database is 0600 from the start */
    char fresh[512];
    keel_store *s2 = NULL;
    snprintf(fresh, sizeof(fresh), "%s/fresh", f->dir);
    assert_int_equal(keel_store_open(fresh, NULL, &s2, &e), 0);
    assert_int_equal(stat(th_path(fresh, "keel.db"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    keel_store_close(s2);
}

/* --- revocation reaching installed versions (keel_store_recheck) ------------------ */

/* Signs doc with key under ctx into *set. */
static void sign_doc(keel_sigset *set, const keel_key *key, const char *ctx, const char *doc)
{
    uint8_t sig[KEEL_ED25519_SIG_LEN], id[KEEL_KEYID_LEN];
    keel_error e;
    assert_int_equal(keel_key_sign(key, ctx, doc, strlen(doc), sig, &e), 0);
    keel_key_id(key, id);
    assert_int_equal(keel_sigset_add(set, id, sig, &e), 0);
}

/* Installs a revocation list (serial, one revoked key id or digest, each
 * may be NULL) signed by the root key, and loads the trust afresh. */
static void revoke_list(fx *f, unsigned serial, const char *key_hex, const char *digest)
{
    char doc[1024];
    keel_sigset set = {0};
    keel_error e;
    snprintf(doc, sizeof(doc),
             "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":%u,\"keys\":[%s%s%s],"
             "\"packages\":[%s%s%s]}",
             serial, key_hex ? "\"" : "", key_hex ? key_hex : "", key_hex ? "\"" : "",
             digest ? "\"" : "", digest ? digest : "", digest ? "\"" : "");
    sign_doc(&set, f->k, KEEL_SIGCTX_REVOCATIONS, doc);
    if (keel_trust_revoke_install(f->trust, doc, strlen(doc), &set, &e))
        fail_msg("revocation list %u: %s", serial, e.msg);
    keel_trust_free(f->t);
    f->t = NULL;
    assert_int_equal(keel_trust_load(f->trust, &f->t, &e), 0);
}

/* Re-checks and expects n changes; returns the first (static copy). */
static keel_revocation recheck(fx *f, size_t want_n)
{
    keel_revocation *ch = NULL, first;
    size_t n = 99;
    keel_error e;
    if (keel_store_recheck(f->s, f->t, &ch, &n, &e))
        fail_msg("recheck: %s", e.msg);
    if (n != want_n)
        fail_msg("recheck: %zu changes, expected %zu (first: %s %s)", n, want_n,
                 n ? ch[0].version : "-", n ? ch[0].reason : "-");
    memset(&first, 0, sizeof(first));
    if (n)
        first = ch[0];
    free(ch);
    assert_int_equal(keel__store_check(f->s, &e), 0);
    return first;
}

static bool is_revoked(fx *f, const char *ver)
{
    bool r = false;
    keel_error e;
    assert_int_equal(keel_store_revoked(f->s, "demo", ver, &r, NULL, 0, &e), 0);
    return r;
}

/* v2 active over v1; a list revoking v2's digest: v2 stops serving, v1
 * serves (degraded), v2 cannot be activated or rolled back to; the mark
 * survives a reopen and a list put back to an older state; a newer list
 * without the digest lifts it. */
static void test_recheck_revoked_digest(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_install_result r1, r2;
    keel_serving sv;
    bool ready;
    char why[4096], *json;
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "1.0.0", 1000), f->t, KEEL_INSTALL_ACTIVATE, &r1, &e),
        0);
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "2.0.0", 1001), f->t, KEEL_INSTALL_ACTIVATE, &r2, &e),
        0);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    recheck(f, 0); /* nothing revoked: nothing changes */

    revoke_list(f, 1, NULL, r2.digest);
    keel_revocation c = recheck(f, 1);
    assert_true(c.revoked);
    assert_string_equal(c.version, "2.0.0");
    assert_string_equal(c.digest, r2.digest);
    assert_non_null(strstr(c.reason, "has been revoked"));
    assert_non_null(strstr(c.reason, "revocation list serial 1"));
    assert_true(is_revoked(f, "2.0.0"));
    assert_false(is_revoked(f, "1.0.0"));
    /* the re-check re-resolved: what serves is v1 at once */
    char path[1024], want[1024];
    assert_int_equal(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), 0);
    assert_int_equal(
        keel_store_version_file(f->s, "demo", "1.0.0", "model.onnx", want, sizeof(want), &e), 0);
    assert_string_equal(path, want);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_PREVIOUS);
    assert_string_equal(sv.version, "1.0.0");
    assert_true(sv.degraded);
    assert_non_null(strstr(sv.reason, "active version 2.0.0 is revoked: "));
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_true(ready);
    assert_non_null(strstr(why, "degraded: demo: active version 2.0.0 is revoked"));
    assert_int_equal(keel_store_status_json(f->s, &json, &e), 0);
    assert_non_null(strstr(json, "\"revoked\":[{\"version\":\"2.0.0\""));
    assert_non_null(strstr(json, "has been revoked"));
    free(json);
    assert_int_equal(keel_store_list_json(f->s, &json, &e), 0);
    assert_non_null(strstr(json, "\"revoked\":true,\"revoked_reason\":"));
    free(json);
    /* a revoked version goes live by no path */
    th_expect_err(keel_store_activate(f->s, "demo", "2.0.0", &e), &e, KEEL_EUNTRUSTED,
                  "demo 2.0.0 is revoked, so it cannot be activated");
    th_expect_err(keel_store_mark_good(f->s, "demo", &e), &e, KEEL_EUNTRUSTED,
                  "cannot be marked known-good");
    assert_int_equal(keel_store_rollback(f->s, "demo", &e), 0); /* to v1: fine */
    slots(f, "1.0.0", "2.0.0", "1.0.0");
    th_expect_err(keel_store_rollback(f->s, "demo", &e), &e, KEEL_EUNTRUSTED,
                  "cannot be rolled back to");
    slots(f, "1.0.0", "2.0.0", "1.0.0");
    assert_int_equal(keel__store_check(f->s, &e), 0);

    /* durable: a reopened store knows, and the same trust changes nothing */
    keel_store_close(f->s);
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    assert_true(is_revoked(f, "2.0.0"));
    recheck(f, 0);
    /* the list deleted by hand (serial 0): not a newer trust, v2 stays revoked */
    assert_int_equal(unlink(th_path(f->trust, "revoked.json")), 0);
    assert_int_equal(unlink(th_path(f->trust, "revoked.sig")), 0);
    keel_trust_free(f->t);
    f->t = NULL;
    assert_int_equal(keel_trust_load(f->trust, &f->t, &e), 0);
    recheck(f, 0);
    assert_true(is_revoked(f, "2.0.0"));
    /* a list with a higher serial that no longer names it: lifted */
    revoke_list(f, 2, NULL, NULL);
    c = recheck(f, 1);
    assert_false(c.revoked);
    assert_string_equal(c.version, "2.0.0");
    assert_false(is_revoked(f, "2.0.0"));
    assert_int_equal(keel_store_activate(f->s, "demo", "2.0.0", &e), 0);
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_ACTIVE);
    assert_string_equal(sv.version, "2.0.0");
}

/* The key that signed both versions is revoked: nothing is left to serve,
 * not ready, and the reason names each version. */
static void test_recheck_revoked_key(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_serving sv;
    bool ready;
    char why[4096], kid[KEEL_SHA256_HEX];
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "1.0.0", 1000), f->t, KEEL_INSTALL_ACTIVATE, NULL, &e),
        0);
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "2.0.0", 1001), f->t, KEEL_INSTALL_ACTIVATE, NULL, &e),
        0);
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_true(ready);
    keel_key_id_hex(f->k, kid);
    revoke_list(f, 1, kid, NULL);
    keel_revocation c = recheck(f, 2);
    assert_true(c.revoked);
    assert_non_null(strstr(c.reason, "revoked key"));
    assert_true(is_revoked(f, "1.0.0"));
    assert_true(is_revoked(f, "2.0.0"));
    assert_int_equal(keel_store_resolve(f->s, "demo", 0, &sv, &e), 0);
    assert_int_equal(sv.slot, KEEL_SLOT_NONE);
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_false(ready);
    assert_non_null(strstr(why, "active version 2.0.0 is revoked: "));
    assert_non_null(strstr(why, "previous version 1.0.0 is revoked: "));
    assert_non_null(strstr(why, "nothing valid is left to serve (install a version the trust"));
    char path[1024];
    th_expect_err(keel_store_file_path(f->s, "demo", "model.onnx", path, sizeof(path), &e), &e,
                  KEEL_ENOTREADY, "no verified version");
    th_expect_err(keel_store_rollback(f->s, "demo", &e), &e, KEEL_EUNTRUSTED, "is revoked");
    assert_int_equal(keel__store_check(f->s, &e), 0);
}

/* root.json of version ver: the device key is the root key; packages are
 * signed by pkg. */
static char *root_doc(unsigned ver, const keel_key *root, const keel_key *pkg)
{
    static char doc[2048];
    char rid[KEEL_SHA256_HEX], pid[KEEL_SHA256_HEX], rpub[65], ppub[65];
    uint8_t raw[KEEL_ED25519_PUB_LEN];
    keel_key_id_hex(root, rid);
    keel_key_id_hex(pkg, pid);
    keel_key_raw_public(root, raw);
    keel_hex_encode(raw, sizeof(raw), rpub);
    keel_key_raw_public(pkg, raw);
    keel_hex_encode(raw, sizeof(raw), ppub);
    snprintf(doc, sizeof(doc),
             "{\"format\":1,\"type\":\"keel-root\",\"version\":%u,\"keys\":{\"%s\":{\"alg\":"
             "\"ed25519\",\"public\":\"%s\"}%s%s%s%s%s},\"root\":{\"keys\":[\"%s\"],\"threshold\":"
             "1},\"packages\":[{\"prefix\":\"\",\"keys\":[\"%s\"],\"threshold\":1}]}",
             ver, rid, rpub, root == pkg ? "" : ",\"", root == pkg ? "" : pid,
             root == pkg ? "" : "\":{\"alg\":\"ed25519\",\"public\":\"", root == pkg ? "" : ppub,
             root == pkg ? "" : "\"}", rid, pid);
    return doc;
}

static void rotate(fx *f, unsigned ver, const keel_key *pkg)
{
    keel_sigset set = {0};
    keel_error e;
    const char *doc = root_doc(ver, f->k, pkg);
    sign_doc(&set, f->k, KEEL_SIGCTX_ROOT, doc);
    if (keel_trust_rotate(f->trust, doc, strlen(doc), &set, &e))
        fail_msg("rotation to %u: %s", ver, e.msg);
    keel_trust_free(f->t);
    f->t = NULL;
    assert_int_equal(keel_trust_load(f->trust, &f->t, &e), 0);
}

/* A rotation that drops the key that signed the installed version revokes
 * it; a later rotation that trusts the key again lifts the mark. */
static void test_recheck_rotation(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_key *other = NULL;
    bool ready;
    char why[4096];
    assert_int_equal(keel_key_generate(&other, &e), 0);
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "1.0.0", 1000), f->t, KEEL_INSTALL_ACTIVATE, NULL, &e),
        0);
    rotate(f, 2, other);
    keel_revocation c = recheck(f, 1);
    assert_true(c.revoked);
    assert_non_null(strstr(c.reason, "trust root version 2"));
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_false(ready);
    assert_non_null(strstr(why, "active version 1.0.0 is revoked: "));
    rotate(f, 3, f->k);
    c = recheck(f, 1);
    assert_false(c.revoked);
    assert_int_equal(keel_store_resolve_all(f->s, 0, &ready, why, sizeof(why), &e), 0);
    assert_true(ready);
    assert_string_equal(why, "");
    keel_key_free(other);
}

/* A trust dir put back to an older state lifts nothing, even after a newer
 * one confirmed the mark: only a trust above every one that refused the
 * version does. */
static void test_recheck_older_trust_lifts_nothing(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_install_result r;
    char *root1 = NULL, *root2 = NULL;
    size_t l1, l2;
    assert_int_equal(
        keel_store_install(f->s, make_pkg(f, "1.0.0", 1000), f->t, KEEL_INSTALL_ACTIVATE, &r, &e),
        0);
    assert_int_equal(keel__fs_read(th_path(f->trust, "root.json"), 1 << 20, &root1, &l1, &e), 0);
    revoke_list(f, 1, NULL, r.digest);
    assert_true(recheck(f, 1).revoked); /* marked at root 1, serial 1 */
    rotate(f, 2, f->k);
    recheck(f, 0); /* confirmed at root 2 */
    assert_int_equal(keel__fs_read(th_path(f->trust, "root.json"), 1 << 20, &root2, &l2, &e), 0);
    th_write(f->trust, "root.json", root1, l1); /* root 1 copied back by hand */
    keel_trust_free(f->t);
    f->t = NULL;
    assert_int_equal(keel_trust_load(f->trust, &f->t, &e), 0);
    recheck(f, 0);
    revoke_list(f, 2, NULL, NULL); /* root 1, serial 2: accepts it, but root 1 < 2 */
    recheck(f, 0);
    assert_true(is_revoked(f, "1.0.0"));
    th_write(f->trust, "root.json", root2, l2); /* root 2, serial 2: newer than both */
    keel_trust_free(f->t);
    f->t = NULL;
    assert_int_equal(keel_trust_load(f->trust, &f->t, &e), 0);
    assert_false(recheck(f, 1).revoked);
    assert_false(is_revoked(f, "1.0.0"));
    free(root1);
    free(root2);
}

/* --- keel_store_install_dir ------------------------------------------------------- */

typedef struct unpack_ctx {
    const char *dir;
    FILE *out;
} unpack_ctx;

static int unpack_begin(void *ud, const keel_file *f, bool *ret_skip, keel_error *err)
{
    unpack_ctx *u = ud;
    char hex[KEEL_SHA256_HEX];
    (void)err;
    keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
    *ret_skip = false;
    u->out = fopen(th_path(u->dir, hex), "wb");
    assert_non_null(u->out);
    return KEEL_OK;
}

static int unpack_write(void *ud, const void *data, size_t len, keel_error *err)
{
    unpack_ctx *u = ud;
    (void)err;
    assert_int_equal(fwrite(data, 1, len, u->out), len);
    return KEEL_OK;
}

static int unpack_end(void *ud, const keel_file *f, bool ok, keel_error *err)
{
    unpack_ctx *u = ud;
    (void)f, (void)err;
    assert_true(ok);
    fclose(u->out);
    return KEEL_OK;
}

/* A download folder as lib/update/fetch.c leaves it: keel.json, keel.sig and
 * every file named by its SHA-256 hex. */
static const char *unpack_dir(fx *f, const char *pkg, const char *name)
{
    static char dirs[4][512];
    static int n;
    char *d = dirs[n++ & 3];
    keel_pkg *p;
    keel_error e;
    char *sig;
    size_t len;
    snprintf(d, 512, "%s/state/update/downloads/%s", f->dir, name);
    assert_int_equal(keel__fs_mkdir_p(d, 0700, &e), 0);
    assert_int_equal(keel_pkg_open(pkg, NULL, &p, &e), 0);
    const uint8_t *mb = keel_manifest_bytes(keel_pkg_manifest(p), &len);
    th_write(d, "keel.json", mb, len);
    assert_int_equal(keel_sigset_format(keel_pkg_sigs(p), &sig, &e), 0);
    th_write_str(d, "keel.sig", sig);
    free(sig);
    unpack_ctx u = {.dir = d};
    keel_pkg_sink sink = {unpack_begin, unpack_write, unpack_end, &u};
    assert_int_equal(keel_pkg_extract(p, &sink, &e), 0);
    keel_pkg_close(p);
    return d;
}

static size_t blob_files(const char *dir)
{
    size_t n = 0;
    FILE *p;
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "ls %s | grep -cE '^[0-9a-f]{64}$'", dir);
    p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%zu", &n), 1);
    pclose(p);
    return n;
}

static void test_install_dir(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_install_result r;
    const char *p1 = make_pkg(f, "1.0.0", 300000), *p2 = make_pkg(f, "2.0.0", 200000);
    const char *p15 = make_pkg(f, "1.5.0", 100000);

    /* a tampered file: CORRUPT, naming the file; nothing recorded */
    const char *d1 = unpack_dir(f, p1, "one");
    assert_true(blob_files(d1) > 0);
    {
        char cmd[700];
        snprintf(cmd, sizeof(cmd),
                 "f=$(ls %s | grep -E '^[0-9a-f]{64}$' | head -n1); chmod u+w %s/$f; "
                 "printf x | dd of=%s/$f bs=1 seek=10 conv=notrunc status=none",
                 d1, d1, d1);
        assert_int_equal(system(cmd), 0);
    }
    th_expect_err(keel_store_install_dir(f->s, d1, f->t, KEEL_INSTALL_ACTIVATE, &r, &e), &e,
                  KEEL_ECORRUPT, "the manifest says");
    char *list;
    assert_int_equal(keel_store_list_json(f->s, &list, &e), 0);
    assert_non_null(strstr(list, "\"packages\":[]"));
    free(list);
    assert_int_equal(keel__store_check(f->s, &e), 0);

    /* the intact folder: installed, active, files moved into the blob store */
    d1 = unpack_dir(f, p1, "one-ok");
    assert_int_equal(keel_store_install_dir(f->s, d1, f->t, KEEL_INSTALL_ACTIVATE, &r, &e), 0);
    assert_true(r.activated);
    assert_false(r.already);
    assert_true(r.new_bytes > 0);
    assert_int_equal(blob_files(d1), 0);
    slots(f, "1.0.0", NULL, NULL);
    assert_int_equal(keel_store_verify(f->s, "demo", "1.0.0", KEEL_VERIFY_DEEP, &e), 0);
    assert_int_equal(keel__store_check(f->s, &e), 0);

    /* the same version again from an empty folder: already there */
    assert_int_equal(keel_store_install_dir(f->s, d1, f->t, 0, &r, &e), 0);
    assert_true(r.already);

    /* a file neither in the folder nor in the store (model.onnx; labels.txt
     * is the same in every version: 1.0.0 brought it) */
    const char *d2 = unpack_dir(f, p2, "two");
    {
        keel_pkg *pk;
        char hex[KEEL_SHA256_HEX];
        assert_int_equal(keel_pkg_open(p2, NULL, &pk, &e), 0);
        const keel_file *mf = keel_manifest_find(keel_pkg_manifest(pk), "model.onnx");
        assert_non_null(mf);
        keel_hex_encode(mf->sha256, KEEL_SHA256_LEN, hex);
        assert_int_equal(unlink(th_path(d2, hex)), 0);
        keel_pkg_close(pk);
    }
    th_expect_err(keel_store_install_dir(f->s, d2, f->t, 0, &r, &e), &e, KEEL_ECORRUPT,
                  "the store has no valid copy");
    slots(f, "1.0.0", NULL, NULL);

    /* signed by a key the trust does not know */
    keel_key *other;
    keel_trust *ot;
    char odir[512];
    snprintf(odir, sizeof(odir), "%s/other-trust", f->dir);
    assert_int_equal(keel_key_generate(&other, &e), 0);
    th_trust(odir, other);
    assert_int_equal(keel_trust_load(odir, &ot, &e), 0);
    d2 = unpack_dir(f, p2, "two-ok");
    assert_int_not_equal(keel_store_install_dir(f->s, d2, ot, 0, &r, &e), 0);
    printf("untrusted: %s\n", e.msg);
    th_expect_err(keel_store_install_dir(f->s, d2, NULL, 0, &r, &e), &e, KEEL_EUNTRUSTED, NULL);
    keel_trust_free(ot);
    keel_key_free(other);

    /* staged, then activated; 1.5.0 is then a downgrade */
    assert_int_equal(keel_store_install_dir(f->s, d2, f->t, 0, &r, &e), 0);
    assert_false(r.activated);
    assert_int_equal(keel_store_activate(f->s, "demo", NULL, &e), 0);
    slots(f, "2.0.0", "1.0.0", "1.0.0");
    const char *d15 = unpack_dir(f, p15, "one-five");
    th_expect_err(keel_store_install_dir(f->s, d15, f->t, 0, &r, &e), &e, KEEL_EDOWNGRADE, NULL);

    /* other bytes under an installed name@version */
    char src[512], alt[512];
    snprintf(src, sizeof(src), "%s/src-alt", f->dir);
    snprintf(alt, sizeof(alt), "%s/demo-2.0.0-alt.keel", f->dir);
    th_make_src(src, "demo", "2.0.0", 12345);
    th_pack(src, alt, f->k);
    const char *da = unpack_dir(f, alt, "alt");
    th_expect_err(keel_store_install_dir(f->s, da, f->t, 0, &r, &e), &e, KEEL_ECONFLICT, NULL);
    assert_int_equal(keel__store_check(f->s, &e), 0);
}

/* A COMMIT that fails after the blobs were placed (here: the database
 * refuses writes; in the field: kill -9 or power loss) leaves the download
 * folder whole, so the next attempt downloads nothing again; that attempt
 * installs and empties the folder. */
static void test_install_dir_commit_fails(void **state)
{
    fx *f = *state;
    keel_error e;
    keel_install_result r;
    const char *p1 = make_pkg(f, "1.0.0", 300000);
    const char *d = unpack_dir(f, p1, "commit");
    size_t n = blob_files(d);
    assert_true(n > 0);
    keel_store_close(f->s); /* the fault VFS applies to databases opened after tf_install */
    tf_install();
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    tf_arm_nth(TF_DB_WRITE | TF_DB_SYNC, 1, TF_EIO, true);
    int rc = keel_store_install_dir(f->s, d, f->t, KEEL_INSTALL_ACTIVATE, &r, &e);
    tf_disarm();
    keel_store_close(f->s);
    tf_uninstall();
    assert_int_not_equal(rc, KEEL_OK);
    printf("failed commit: %s\n", e.msg);
    assert_int_equal(blob_files(d), n);
    assert_int_equal(keel_store_open(f->state, NULL, &f->s, &e), 0);
    assert_int_equal(keel_store_install_dir(f->s, d, f->t, KEEL_INSTALL_ACTIVATE, &r, &e), 0);
    assert_int_equal(blob_files(d), 0);
    slots(f, "1.0.0", NULL, NULL);
    assert_int_equal(keel_store_verify(f->s, "demo", "1.0.0", KEEL_VERIFY_DEEP, &e), 0);
    assert_int_equal(keel__store_check(f->s, &e), 0);
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_install_activate_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corruption_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stamps_skip_rehash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_shared_between_processes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reinstall_reads_every_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_dir_private, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recheck_revoked_digest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recheck_revoked_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recheck_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recheck_older_trust_lifts_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install_dir_commit_fails, setup, teardown),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
