/* helpers.c - unit-test fixtures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

static char dirs[32][256];
static int ndirs;

const char *th_tmpdir(void)
{
    assert_true(ndirs < 32);
    char *d = dirs[ndirs++];
    snprintf(d, 256, "/tmp/keel-unit-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

void th_cleanup(void)
{
    keel_error e;
    for (int i = 0; i < ndirs; i++) {
        /* blobs are read-only files in writable dirs: rm works */
        assert_int_equal(keel__fs_rm_rf(dirs[i], &e), 0);
    }
    ndirs = 0;
}

const char *th_path(const char *dir, const char *rel)
{
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 1024, "%s/%s", dir, rel);
    return b;
}

void th_write(const char *dir, const char *rel, const void *data, size_t len)
{
    char p[1024];
    keel_error e;
    snprintf(p, sizeof(p), "%s/%s", dir, rel);
    char *slash = strrchr(p, '/');
    *slash = '\0';
    assert_int_equal(keel__fs_mkdir_p(p, 0755, &e), 0);
    *slash = '/';
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

void th_write_str(const char *dir, const char *rel, const char *s)
{
    th_write(dir, rel, s, strlen(s));
}

void th_make_src(const char *dir, const char *name, const char *version, size_t model_bytes)
{
    char json[1024];
    unsigned char *m = malloc(model_bytes + 1);
    assert_non_null(m);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < model_bytes; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        m[i] = (unsigned char)x;
    }
    snprintf(json, sizeof(json),
             "{\"format\": 1, \"name\": \"%s\", \"version\": \"%s\", \"task\": \"test\","
             " \"tiers\": [{\"name\": \"primary\", \"backend\": \"onnx\", \"model\": "
             "\"model.onnx\"}], \"x-extra\": {\"kept\": true}}",
             name, version);
    th_write_str(dir, "keel.json", json);
    th_write(dir, "model.onnx", m, model_bytes);
    th_write_str(dir, "labels/labels.txt", "cat\ndog\n");
    free(m);
}

void th_pack(const char *src, const char *out, const keel_key *key)
{
    keel_error e = {0};
    int rc = keel_pack_dir(src, out, key ? &key : NULL, key ? 1 : 0, NULL, &e);
    if (rc)
        fail_msg("pack failed: %s", e.msg);
}

void th_trust(const char *dir, const keel_key *key)
{
    keel_error e = {0};
    int rc = keel_trust_init(dir, &key, 1, 1, &e);
    if (rc)
        fail_msg("trust init failed: %s", e.msg);
}

void th_expect_err_(int rc, const keel_error *err, int want, const char *sub, const char *file,
                    int line)
{
    if (rc != want)
        fail_msg("%s:%d: expected %s, got %s: %s", file, line, keel_errname(want), keel_errname(rc),
                 err->msg);
    if (sub && !strstr(err->msg, sub))
        fail_msg("%s:%d: message \"%s\" lacks \"%s\"", file, line, err->msg, sub);
}

static int nskipped;

void th_skip_(const char *why, const char *file, int line)
{
    const char *ci = getenv("CI");
    if (ci && ci[0]) {
        print_error(
            "%s:%d: would skip, but CI is set (CI=%s: every dependency must be there): %s\n", file,
            line, ci, why);
        _fail(file, line);
    }
    printf("SKIPPED: %s\n", why);
    nskipped++;
}

int th_exit(int rc)
{
    if (rc)
        return rc;
    return nskipped ? 77 : 0;
}

const char *th_shared(const char *rel)
{
    static char bufs[4][1024];
    static int k;
    char *b = bufs[k++ & 3];
    const char *root = getenv("KEEL_SHARED");
    snprintf(b, 1024, "%s/%s", root && root[0] ? root : KEEL_SHARED_DIR, rel);
    return b;
}
