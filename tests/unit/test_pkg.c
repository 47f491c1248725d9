/*
 * test_pkg.c - semver, chunking, manifests, pack/sign/verify, and every bad
 * package the foundation issue names: each refused with its own error, and
 * nothing installed.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

/* --- semver ---------------------------------------------------------------- */

static void test_semver(void **state)
{
    static const char *const valid[] = {"0.0.0",         "1.2.3",         "10.20.30",
                                        "1.0.0-alpha.1", "1.0.0+build.5", "1.0.0-rc.1+b"};
    static const char *const invalid[] = {"1",      "1.2",     "01.2.3", "1.2.3-", "1.2.3-01",
                                          "v1.2.3", "1.2.3.4", "",       "1.2.3+", "1..3"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(valid); i++)
        assert_true(keel_semver_valid(valid[i]));
    for (size_t i = 0; i < KEEL_ARRAY_LEN(invalid); i++)
        assert_false(keel_semver_valid(invalid[i]));
    /* semver.org precedence example, ascending */
    static const char *const order[] = {"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta",
                                        "1.0.0-beta",  "1.0.0-beta.2",  "1.0.0-beta.11",
                                        "1.0.0-rc.1",  "1.0.0",         "1.0.1",
                                        "1.1.0",       "2.0.0",         "10.0.0"};
    for (size_t i = 0; i + 1 < KEEL_ARRAY_LEN(order); i++) {
        assert_true(keel_semver_cmp(order[i], order[i + 1]) < 0);
        assert_true(keel_semver_cmp(order[i + 1], order[i]) > 0);
    }
    assert_int_equal(keel_semver_cmp("1.0.0+a", "1.0.0+b"), 0);
}

/* --- chunking ------------------------------------------------------------------ */

typedef struct {
    keel_chunk c[256];
    size_t n;
} chunks;

static void collect(void *ud, const keel_chunk *c)
{
    chunks *cs = ud;
    assert_true(cs->n < 256);
    cs->c[cs->n++] = *c;
}

static void fill(unsigned char *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        p[i] = (unsigned char)seed;
    }
}

static void test_chunking(void **state)
{
    size_t n = 4u << 20;
    unsigned char *a = malloc(n + 100), *b = malloc(n + 100);
    chunks *ca = calloc(1, sizeof(chunks)), *cb = calloc(1, sizeof(chunks));
    fill(a, n, 7);
    keel_chunker *k = keel_chunker_new(collect, ca);
    /* odd feed sizes must not matter */
    for (size_t off = 0; off < n;) {
        size_t step = 1 + (off * 7919) % 100000;
        if (step > n - off)
            step = n - off;
        keel_chunker_update(k, a + off, step);
        off += step;
    }
    keel_chunker_finish(k);
    uint64_t sum = 0;
    for (size_t i = 0; i < ca->n; i++) {
        assert_true(ca->c[i].len <= KEEL_CHUNK_MAX);
        if (i + 1 < ca->n)
            assert_true(ca->c[i].len >= KEEL_CHUNK_MIN);
        assert_int_equal(ca->c[i].offset, sum);
        uint8_t h[32];
        keel_sha256_buf(a + ca->c[i].offset, ca->c[i].len, h);
        assert_memory_equal(h, ca->c[i].sha256, 32);
        sum += ca->c[i].len;
    }
    assert_int_equal(sum, n);
    /* average near 64 KiB: 4 MiB gives roughly 40..100 chunks */
    assert_in_range(ca->n, 30, 110);
    /* insert 100 bytes near the start: most chunks are found again */
    memcpy(b, a, 1000);
    fill(b + 1000, 100, 99);
    memcpy(b + 1100, a + 1000, n - 1000);
    keel_chunker *k2 = keel_chunker_new(collect, cb);
    keel_chunker_update(k2, b, n + 100);
    keel_chunker_finish(k2);
    size_t same = 0;
    for (size_t i = 0; i < cb->n; i++)
        for (size_t j = 0; j < ca->n; j++)
            if (!memcmp(cb->c[i].sha256, ca->c[j].sha256, 32)) {
                same++;
                break;
            }
    assert_true(same + 3 >= ca->n);
    keel_chunker_free(k);
    keel_chunker_free(k2);
    free(a);
    free(b);
    free(ca);
    free(cb);
}

/* --- manifests ------------------------------------------------------------------- */

#define SHA0  "\"0000000000000000000000000000000000000000000000000000000000000000\""
#define FILE0 "{\"path\":\"m.onnx\",\"size\":3,\"sha256\":" SHA0 "}"
#define HDR   "\"format\":1,\"name\":\"a\",\"version\":\"1.0.0\""

static const struct {
    const char *json;
    int rc;
    const char *msg;
} manifest_cases[] = {
    {"{" HDR ",\"files\":[" FILE0 "],\"unknown\":{\"kept\":1}}", 0, NULL},
    {"{\"format\":2,\"name\":\"a\",\"version\":\"1.0.0\",\"files\":[]}", KEEL_EUNSUPPORTED,
     "newer than this keel supports"},
    {"{\"format\":0,\"name\":\"a\",\"version\":\"1.0.0\",\"files\":[]}", KEEL_EINVALID,
     "\"format\" must be 1"},
    {"{\"format\":1,\"name\":\"A b\",\"version\":\"1.0.0\",\"files\":[]}", KEEL_EINVALID,
     "name \"A b\""},
    {"{\"format\":1,\"name\":\"a\",\"version\":\"1.0\",\"files\":[]}", KEEL_EINVALID,
     "semantic version"},
    {"{\"format\":1,\"name\":\"a\",\"version\":\"1.0.0\"}", KEEL_EINVALID, "\"files\" is missing"},
    {"{" HDR ",\"files\":[{\"path\":\"../x\",\"size\":1,\"sha256\":" SHA0 "}]}", KEEL_EINVALID,
     "\"..\""},
    {"{" HDR ",\"files\":[{\"path\":\"/etc/x\",\"size\":1,\"sha256\":" SHA0 "}]}", KEEL_EINVALID,
     "absolute"},
    {"{" HDR ",\"files\":[{\"path\":\"keel.sig\",\"size\":1,\"sha256\":" SHA0 "}]}", KEEL_EINVALID,
     "reserved"},
    {"{" HDR ",\"files\":[" FILE0 "," FILE0 "]}", KEEL_EINVALID, "listed twice"},
    {"{" HDR ",\"files\":[{\"path\":\"m\",\"size\":-1,\"sha256\":" SHA0 "}]}", KEEL_EINVALID,
     "files[0]: field \"size\""},
    {"{" HDR ",\"files\":[{\"path\":\"m\",\"size\":1,\"sha256\":\"xyz\"}]}", KEEL_EINVALID,
     "64 hex"},
    {"{" HDR ",\"files\":[{\"path\":\"m\",\"size\":5,\"sha256\":" SHA0 ",\"chunks\":[[3," SHA0
     "]]}]}",
     KEEL_EINVALID, "add up to 3"},
    {"{" HDR ",\"files\":[],\"tiers\":[{\"name\":\"p\",\"backend\":\"onnx\",\"model\":\"no\"}]}",
     KEEL_EINVALID, "model \"no\" is not in \"files\""},
    {"{" HDR ",\"files\":[],\"inputs\":[{\"name\":\"x\",\"dtype\":\"float8\"}]}", KEEL_EINVALID,
     "dtype \"float8\""},
    {"{" HDR ",\"files\":[],\"policy\":[1]}", KEEL_EINVALID, "\"policy\" must be an object"},
    {"{" HDR ",\"files\":[]", KEEL_EINVALID, "malformed JSON"},
    {"[]", KEEL_EINVALID, "JSON object"},
};

static void test_manifest_table(void **state)
{
    for (size_t i = 0; i < KEEL_ARRAY_LEN(manifest_cases); i++) {
        keel_manifest *m = NULL;
        keel_error e = {0};
        int rc = keel_manifest_parse(manifest_cases[i].json, strlen(manifest_cases[i].json), NULL,
                                     &m, &e);
        th_expect_err(rc, &e, manifest_cases[i].rc, manifest_cases[i].msg);
        if (!rc) {
            assert_string_equal(keel_manifest_name(m), "a");
            assert_non_null(keel_manifest_find(m, "m.onnx"));
        }
        keel_manifest_free(m);
    }
    keel_limits lim;
    keel_limits_default(&lim);
    lim.max_file_bytes = 2;
    keel_manifest *m = NULL;
    keel_error e;
    const char *j = manifest_cases[0].json;
    th_expect_err(keel_manifest_parse(j, strlen(j), &lim, &m, &e), &e, KEEL_ETOOBIG,
                  "over the limit");
}

/* --- pack, sign, verify ------------------------------------------------------------- */

typedef struct fixture {
    const char *dir;
    keel_key *k1, *k2;
    char pkg[512];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    keel_error e;
    f->dir = th_tmpdir();
    assert_int_equal(keel_key_generate(&f->k1, &e), 0);
    assert_int_equal(keel_key_generate(&f->k2, &e), 0);
    th_make_src(th_path(f->dir, "src"), "demo", "1.0.0", 300000);
    snprintf(f->pkg, sizeof(f->pkg), "%s/demo.keel", f->dir);
    th_pack(th_path(f->dir, "src"), f->pkg, f->k1);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    keel_key_free(f->k1);
    keel_key_free(f->k2);
    free(f);
    th_cleanup();
    return 0;
}

static void test_pack_roundtrip(void **state)
{
    fixture *f = *state;
    keel_pkg *p = NULL;
    keel_error e;
    keel_trust *t = NULL;
    th_trust(th_path(f->dir, "trust"), f->k1);
    assert_int_equal(keel_trust_load(th_path(f->dir, "trust"), &t, &e), 0);
    assert_int_equal(keel_pkg_open(f->pkg, NULL, &p, &e), 0);
    const keel_manifest *m = keel_pkg_manifest(p);
    assert_string_equal(keel_manifest_name(m), "demo");
    assert_int_equal(keel_manifest_nfiles(m), 2);
    const keel_file *mf = keel_manifest_find(m, "model.onnx");
    assert_non_null(mf);
    assert_int_equal(mf->size, 300000);
    assert_true(mf->nchunks >= 2);
    assert_int_equal(keel_pkg_sigs(p)->count, 1);
    /* unknown fields survive packing */
    size_t len;
    const uint8_t *bytes = keel_manifest_bytes(m, &len);
    assert_non_null(memmem(bytes, len, "x-extra", 7));
    assert_int_equal(keel_pkg_check_trust(p, t, &e), 0);
    assert_int_equal(keel_pkg_extract(p, NULL, &e), 0);
    keel_pkg_close(p);
    /* a second signature by a key the trust does not know changes nothing */
    assert_int_equal(keel_pkg_sign(f->pkg, f->k2, NULL, &e), 0);
    assert_int_equal(keel_pkg_verify_file(f->pkg, t, NULL, &e), 0);
    assert_int_equal(keel_pkg_open(f->pkg, NULL, &p, &e), 0);
    assert_int_equal(keel_pkg_sigs(p)->count, 2);
    keel_pkg_close(p);
    /* packing is deterministic with SOURCE_DATE_EPOCH */
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    char a[512], b[512], *da, *db;
    size_t la, lb;
    snprintf(a, sizeof(a), "%s/a.keel", f->dir);
    snprintf(b, sizeof(b), "%s/b.keel", f->dir);
    th_pack(th_path(f->dir, "src"), a, f->k1);
    th_pack(th_path(f->dir, "src"), b, f->k1);
    unsetenv("SOURCE_DATE_EPOCH");
    assert_int_equal(keel__fs_read(a, 1 << 24, &da, &la, &e), 0);
    assert_int_equal(keel__fs_read(b, 1 << 24, &db, &lb, &e), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(da, db, la);
    free(da);
    free(db);
    keel_trust_free(t);
}

/* --- crafted bad packages ------------------------------------------------------------ */

typedef struct member {
    char name[256];
    int type; /* AE_IFREG, AE_IFLNK, AE_IFDIR */
    char link[256];
    unsigned char *data;
    size_t len;
    la_int64_t hdr_size; /* -1: use len */
} member;

typedef struct tarball {
    member m[16];
    size_t n;
} tarball;

static void tar_load(const char *path, tarball *t)
{
    struct archive *a = archive_read_new();
    struct archive_entry *e;
    archive_read_support_format_tar(a);
    assert_int_equal(archive_read_open_filename(a, path, 65536), ARCHIVE_OK);
    t->n = 0;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        member *m = &t->m[t->n++];
        memset(m, 0, sizeof(*m));
        snprintf(m->name, sizeof(m->name), "%s", archive_entry_pathname(e));
        m->type = AE_IFREG;
        m->hdr_size = -1;
        m->len = (size_t)archive_entry_size(e);
        m->data = malloc(m->len + 1);
        assert_int_equal(archive_read_data(a, m->data, m->len), (la_ssize_t)m->len);
        m->data[m->len] = 0;
    }
    archive_read_free(a);
}

static void tar_free(tarball *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->m[i].data);
    t->n = 0;
}

static void tar_save(const tarball *t, const char *path)
{
    struct archive *a = archive_write_new();
    struct archive_entry *e = archive_entry_new();
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < t->n; i++) {
        const member *m = &t->m[i];
        archive_entry_clear(e);
        archive_entry_set_pathname(e, m->name);
        archive_entry_set_filetype(e, (unsigned)m->type);
        archive_entry_set_perm(e, 0644);
        if (m->type == AE_IFLNK)
            archive_entry_set_symlink(e, m->link);
        archive_entry_set_size(e, m->type == AE_IFREG ? (la_int64_t)m->len : 0);
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (m->type == AE_IFREG && m->len)
            assert_int_equal(archive_write_data(a, m->data, m->len), (la_ssize_t)m->len);
    }
    archive_write_close(a);
    archive_write_free(a);
    archive_entry_free(e);
}

static member *find(tarball *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->m[i].name, name))
            return &t->m[i];
    fail_msg("no member %s", name);
    return NULL;
}

static void add(tarball *t, const char *name, int type, const char *link, const char *data)
{
    member *m = &t->m[t->n++];
    memset(m, 0, sizeof(*m));
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->type = type;
    m->hdr_size = -1;
    if (link)
        snprintf(m->link, sizeof(m->link), "%s", link);
    m->len = data ? strlen(data) : 0;
    m->data = (unsigned char *)strdup(data ? data : "");
}

/* Re-signs keel.json in t with key (after a manifest edit). */
static void resign(tarball *t, const keel_key *key)
{
    member *mj = find(t, "keel.json"), *ms = find(t, "keel.sig");
    keel_sigset s = {0};
    keel_error e;
    uint8_t sig[64], id[32];
    char *json;
    if (key) {
        assert_int_equal(keel_key_sign(key, KEEL_SIGCTX_PACKAGE, mj->data, mj->len, sig, &e), 0);
        keel_key_id(key, id);
        assert_int_equal(keel_sigset_add(&s, id, sig, &e), 0);
    }
    assert_int_equal(keel_sigset_format(&s, &json, &e), 0);
    free(ms->data);
    ms->data = (unsigned char *)json;
    ms->len = strlen(json);
}

enum tweak {
    T_MODEL_BYTE,
    T_MANIFEST_BYTE,
    T_NO_SIG,
    T_WRONG_KEY,
    T_REVOKED,
    T_THRESHOLD,
    T_DOTDOT,
    T_ABSOLUTE,
    T_SYMLINK,
    T_OVERSIZED,
    T_OVER_LIMIT,
    T_DUPLICATE,
    T_TRUNCATED,
    T_UNLISTED,
    T_MISSING,
    T_NEWER_FORMAT,
    T_ORDER,
    T_DIRECTORY,
};

static const struct {
    enum tweak tweak;
    const char *what;
    int rc;
    const char *msg;
} bad_cases[] = {
    {T_MODEL_BYTE, "tampered model byte", KEEL_ECORRUPT, "does not match its hash"},
    {T_MANIFEST_BYTE, "tampered manifest", KEEL_EBADSIG, "invalid signature"},
    {T_NO_SIG, "missing signature", KEEL_EUNTRUSTED, "is not signed"},
    {T_WRONG_KEY, "wrong key", KEEL_EUNTRUSTED, "unknown key"},
    {T_REVOKED, "revoked key", KEEL_EUNTRUSTED, "revoked key"},
    {T_THRESHOLD, "below threshold", KEEL_EUNTRUSTED, "1 valid signature of 2 needed"},
    {T_DOTDOT, "member with ..", KEEL_EINVALID, "unsafe path: \".\" or \"..\""},
    {T_ABSOLUTE, "absolute member", KEEL_EINVALID, "unsafe path: absolute"},
    {T_SYMLINK, "symlink member", KEEL_EINVALID, "is a link"},
    {T_OVERSIZED, "member larger than listed", KEEL_ECORRUPT, "in the tar but keel.json lists"},
    {T_OVER_LIMIT, "member over the size limit", KEEL_ETOOBIG, "over the limit"},
    {T_DUPLICATE, "duplicate member", KEEL_EINVALID, "appears twice"},
    {T_TRUNCATED, "truncated tar", KEEL_ECORRUPT, "truncated"},
    {T_UNLISTED, "member not in manifest", KEEL_EINVALID, "not listed in keel.json"},
    {T_MISSING, "listed file missing", KEEL_ECORRUPT, "missing from the package"},
    {T_NEWER_FORMAT, "newer format", KEEL_EUNSUPPORTED, "upgrade keel"},
    {T_ORDER, "keel.json not first", KEEL_EINVALID, "first member must be keel.json"},
    {T_DIRECTORY, "directory member", KEEL_EINVALID, "not a regular file"},
};

static void count_dir(const char *path, int *n)
{
    DIR *d = opendir(path);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d))) {
        char sub[1024];
        struct stat st;
        if (de->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            count_dir(sub, n);
        else
            (*n)++;
    }
    closedir(d);
}

static void test_bad_packages(void **state)
{
    fixture *f = *state;
    keel_error e;
    /* trust A: k1 alone; trust B: k1+k2, threshold 2; trust C: k1 revoked */
    const char *ta = th_path(f->dir, "ta"), *tb = th_path(f->dir, "tb"),
               *tc = th_path(f->dir, "tc");
    char tas[512], tbs[512], tcs[512];
    snprintf(tas, sizeof(tas), "%s", ta);
    snprintf(tbs, sizeof(tbs), "%s", tb);
    snprintf(tcs, sizeof(tcs), "%s", tc);
    th_trust(tas, f->k1);
    const keel_key *both[] = {f->k1, f->k2};
    assert_int_equal(keel_trust_init(tbs, both, 2, 2, &e), 0);
    assert_int_equal(keel_trust_init(tcs, both, 2, 1, &e), 0);
    {
        char rev[400], id[65];
        uint8_t sig[64], kid[32];
        keel_sigset s = {0};
        keel_key_id_hex(f->k1, id);
        snprintf(rev, sizeof(rev),
                 "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":1,\"keys\":[\"%s\"]}", id);
        assert_int_equal(keel_key_sign(f->k2, KEEL_SIGCTX_REVOCATIONS, rev, strlen(rev), sig, &e),
                         0);
        keel_key_id(f->k2, kid);
        assert_int_equal(keel_sigset_add(&s, kid, sig, &e), 0);
        assert_int_equal(keel_trust_revoke_install(tcs, rev, strlen(rev), &s, &e), 0);
    }
    for (size_t i = 0; i < KEEL_ARRAY_LEN(bad_cases); i++) {
        tarball t;
        char bad[512], sdir[512];
        const char *trust_dir = tas;
        keel_limits lim;
        keel_limits_default(&lim);
        tar_load(f->pkg, &t);
        snprintf(bad, sizeof(bad), "%s/bad%zu.keel", f->dir, i);
        snprintf(sdir, sizeof(sdir), "%s/state%zu", f->dir, i);
        switch (bad_cases[i].tweak) {
        case T_MODEL_BYTE:
            find(&t, "model.onnx")->data[1234] ^= 1;
            break;
        case T_MANIFEST_BYTE: {
            member *m = find(&t, "keel.json");
            unsigned char *p = memmem(m->data, m->len, "\"test\"", 6);
            assert_non_null(p);
            p[1] = 'b';
            break;
        }
        case T_NO_SIG:
            resign(&t, NULL);
            break;
        case T_WRONG_KEY:
            resign(&t, f->k2);
            break;
        case T_REVOKED:
            trust_dir = tcs;
            break;
        case T_THRESHOLD:
            trust_dir = tbs;
            break;
        case T_DOTDOT:
            add(&t, "labels/../../evil", AE_IFREG, NULL, "x");
            break;
        case T_ABSOLUTE:
            add(&t, "/tmp/evil", AE_IFREG, NULL, "x");
            break;
        case T_SYMLINK:
            add(&t, "model2.onnx", AE_IFLNK, "/etc/passwd", NULL);
            break;
        case T_OVERSIZED: {
            member *m = find(&t, "labels/labels.txt");
            m->data = realloc(m->data, m->len + 10);
            memcpy(m->data + m->len, "0123456789", 10);
            m->len += 10;
            break;
        }
        case T_OVER_LIMIT:
            lim.max_file_bytes = 1000;
            break;
        case T_DUPLICATE: {
            member *m = find(&t, "labels/labels.txt");
            add(&t, "labels/labels.txt", AE_IFREG, NULL, (const char *)m->data);
            break;
        }
        case T_TRUNCATED:
            break; /* cut below */
        case T_UNLISTED:
            add(&t, "extra.bin", AE_IFREG, NULL, "surprise");
            break;
        case T_MISSING: {
            member *m = find(&t, "labels/labels.txt");
            free(m->data);
            *m = t.m[--t.n];
            break;
        }
        case T_NEWER_FORMAT: {
            member *m = find(&t, "keel.json");
            unsigned char *p = memmem(m->data, m->len, "\"format\":\t1", 11);
            if (!p)
                p = memmem(m->data, m->len, "\"format\": 1", 11);
            assert_non_null(p);
            p[10] = '2';
            resign(&t, f->k1);
            break;
        }
        case T_ORDER: {
            member tmp = t.m[0];
            t.m[0] = t.m[1];
            t.m[1] = tmp;
            break;
        }
        case T_DIRECTORY:
            add(&t, "labels", AE_IFDIR, NULL, NULL);
            break;
        }
        tar_save(&t, bad);
        tar_free(&t);
        if (bad_cases[i].tweak == T_TRUNCATED) {
            struct stat st;
            assert_int_equal(stat(bad, &st), 0);
            assert_int_equal(truncate(bad, st.st_size / 2), 0);
        }
        /* through the store: refused with its own error, nothing installed */
        keel_store *s = NULL;
        keel_trust *tr = NULL;
        keel_error ie = {0};
        assert_int_equal(keel_store_open(sdir, &lim, &s, &e), 0);
        assert_int_equal(keel_trust_load(trust_dir, &tr, &e), 0);
        int rc = keel_store_install(s, bad, tr, KEEL_INSTALL_ACTIVATE, NULL, &ie);
        if (rc != bad_cases[i].rc || !strstr(ie.msg, bad_cases[i].msg))
            fail_msg("%s: expected %s \"%s\", got %s: %s", bad_cases[i].what,
                     keel_errname(bad_cases[i].rc), bad_cases[i].msg, keel_errname(rc), ie.msg);
        char *json;
        assert_int_equal(keel_store_list_json(s, &json, &e), 0);
        assert_string_equal(json, "{\"packages\":[]}");
        free(json);
        int nblobs = 0, nstaging = 0;
        count_dir(th_path(sdir, "blobs"), &nblobs);
        count_dir(th_path(sdir, "staging"), &nstaging);
        /* a refused package may leave verified blobs no record points at (gc
         * removes them), never partial files */
        assert_int_equal(nstaging, 0);
        uint64_t freed;
        assert_int_equal(keel_store_gc(s, &freed, &e), 0);
        nblobs = 0;
        count_dir(th_path(sdir, "blobs"), &nblobs);
        assert_int_equal(nblobs, 0);
        keel_trust_free(tr);
        keel_store_close(s);
    }
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_semver),
        cmocka_unit_test(test_chunking),
        cmocka_unit_test(test_manifest_table),
        cmocka_unit_test_setup_teardown(test_pack_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_packages, setup, teardown),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
