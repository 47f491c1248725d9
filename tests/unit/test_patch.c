/*
 * test_patch.c - per-file patches (lib/update/patch.c, codec keel-tpatch-1):
 * exact round trips through every transform, on small ONNX-like files built
 * here (no ../shared needed); refusals of tampered, truncated and
 * wrong-base patches and of patches declaring huge sizes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "update/patch.h"
#include "update/patch_format.h"

/* --- fixtures: a tiny protobuf writer for ONNX-like models ----------------------- */

static void pb_varint(keel_buf *b, uint64_t v)
{
    do {
        uint8_t c = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            c |= 0x80;
        assert_int_equal(keel__buf_append(b, &c, 1), 0);
    } while (v);
}

static void pb_bytes(keel_buf *b, uint32_t field, const void *p, size_t n)
{
    pb_varint(b, (uint64_t)field << 3 | 2);
    pb_varint(b, n);
    assert_int_equal(keel__buf_append(b, p, n), 0);
}

static void pb_uint(keel_buf *b, uint32_t field, uint64_t v)
{
    pb_varint(b, (uint64_t)field << 3);
    pb_varint(b, v);
}

/* TensorProto {dims, data_type, name, raw_data} into b as field `field`. */
static void tensor(keel_buf *b, uint32_t field, const char *name, uint32_t data_type,
                   const void *raw, size_t n)
{
    keel_buf t;
    keel__buf_init(&t, 0);
    pb_uint(&t, 1, n);
    pb_uint(&t, 2, data_type);
    pb_bytes(&t, 8, name, strlen(name));
    pb_bytes(&t, 9, raw, n);
    pb_bytes(b, field, t.data, t.len);
    keel__buf_done(&t);
}

static uint32_t rng(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* A model: a float tensor of nf weights (seeded), an int8 tensor of ni, and
 * a float tensor inside a subgraph (If node attribute), around some graph
 * bytes. change: how much every weight moves (0: the seed's model). */
static uint8_t *model(uint32_t seed, size_t nf, size_t ni, float change, size_t *ret_len)
{
    keel_buf g, node, attr, sub, m;
    float *f = malloc(nf * sizeof(float)), *f2 = malloc(64 * sizeof(float));
    int8_t *q = malloc(ni ? ni : 1);
    uint32_t s = seed, s2 = seed + 99;
    assert_non_null(f);
    for (size_t i = 0; i < nf; i++) {
        float v = ((float)(rng(&s) % 20001) - 10000.0f) / 40000.0f;
        float d = ((float)(rng(&s2) % 2001) - 1000.0f) / 1000.0f;
        f[i] = v + change * d * 0.01f;
    }
    for (size_t i = 0; i < ni; i++)
        q[i] = (int8_t)((int)(rng(&s) % 200) - 100 + (change > 0 && (rng(&s2) & 3) == 0 ? 1 : 0));
    for (size_t i = 0; i < 64; i++)
        f2[i] = (float)i * 0.5f + change;
    keel__buf_init(&g, 0);
    keel__buf_init(&node, 0);
    keel__buf_init(&attr, 0);
    keel__buf_init(&sub, 0);
    keel__buf_init(&m, 0);
    pb_bytes(&g, 2, "main", 4);
    tensor(&g, 5, "w", 1, f, nf * sizeof(float));
    tensor(&g, 5, "q", 3, q, ni);
    tensor(&sub, 5, "inner", 1, f2, 64 * sizeof(float));
    pb_bytes(&attr, 1, "then_branch", 11);
    pb_bytes(&attr, 6, sub.data, sub.len);
    pb_bytes(&node, 4, "If", 2);
    pb_bytes(&node, 5, attr.data, attr.len);
    pb_bytes(&g, 1, node.data, node.len);
    pb_uint(&m, 1, 8);
    pb_bytes(&m, 7, g.data, g.len);
    *ret_len = m.len;
    uint8_t *out = (uint8_t *)keel__buf_steal(&m);
    keel__buf_done(&g);
    keel__buf_done(&node);
    keel__buf_done(&attr);
    keel__buf_done(&sub);
    free(f);
    free(f2);
    free(q);
    return out;
}

typedef struct mem_sink {
    keel_buf b;
} mem_sink;

static int to_buf(void *ctx, const uint8_t *p, size_t n, keel_error *err)
{
    mem_sink *s = ctx;
    if (keel__buf_append(&s->b, p, n))
        return keel__err(err, KEEL_ETOOBIG, "output too large");
    return KEEL_OK;
}

/* Applies in memory; returns rc, the output in *out (caller frees). */
static int apply_mem(const uint8_t *base, size_t blen, const uint8_t *patch, size_t plen,
                     keel_buf *out, uint8_t sha[32], keel_error *err)
{
    mem_sink s;
    keel__buf_init(&s.b, 256u << 20);
    int rc = keel__patch_apply_mem(base, blen, patch, plen, true, to_buf, &s, sha, err);
    *out = s.b;
    return rc;
}

static void roundtrip(const uint8_t *base, size_t blen, const uint8_t *target, size_t tlen,
                      int transform, size_t *ret_size)
{
    uint8_t *patch = NULL, sha[32], want[32];
    size_t plen = 0;
    keel_buf out;
    keel_error e;
    assert_int_equal(keel__patch_make_mem(base, blen, target, tlen, transform, &patch, &plen, &e),
                     0);
    assert_int_equal(apply_mem(base, blen, patch, plen, &out, sha, &e), 0);
    keel_sha256_buf(target, tlen, want);
    assert_memory_equal(sha, want, 32);
    assert_int_equal(out.len, tlen);
    if (tlen)
        assert_memory_equal(out.data, target, tlen);
    keel__buf_done(&out);
    free(patch);
    if (ret_size)
        *ret_size = plen;
}

/* --- tests ----------------------------------------------------------------------------- */

static void test_onnx_regions(void **state)
{
    size_t n;
    uint8_t *m = model(1, 1000, 300, 0, &n);
    keel__patch_region r[8];
    size_t count = keel__patch_onnx_regions(m, n, r, 8);
    assert_int_equal(count, 3); /* w, q, and the subgraph's tensor */
    assert_int_equal(r[0].width, 4);
    assert_int_equal(r[0].len, 4000);
    assert_int_equal(r[1].width, 1);
    assert_int_equal(r[1].len, 300);
    assert_int_equal(r[2].width, 4);
    assert_int_equal(r[2].len, 256);
    /* not ONNX: no regions, never a crash */
    uint8_t junk[64];
    memset(junk, 0xff, sizeof(junk));
    assert_int_equal(keel__patch_onnx_regions(junk, sizeof(junk), r, 8), 0);
    assert_int_equal(keel__patch_onnx_regions(m, n / 2, r, 8), 0);
    free(m);
}

static void test_roundtrip_every_transform(void **state)
{
    size_t blen, tlen, size[KEEL__PATCH_NTRANSFORMS], best;
    uint8_t *base = model(7, 20000, 5000, 0, &blen);
    uint8_t *target = model(7, 20000, 5000, 1.0f, &tlen);
    for (int t = 0; t < KEEL__PATCH_NTRANSFORMS; t++)
        roundtrip(base, blen, target, tlen, t, &size[t]);
    roundtrip(base, blen, target, tlen, -1, &best);
    for (int t = 0; t < KEEL__PATCH_NTRANSFORMS; t++)
        assert_true(best <= size[t]);
    /* every weight moved a little: a tensor-aware transform beats plain zstd */
    assert_true(best < size[KEEL__PATCH_PLAIN]);
    /* unrelated files, empty files, a file against itself */
    uint8_t rnd[5000];
    uint32_t s = 3;
    for (size_t i = 0; i < sizeof(rnd); i++)
        rnd[i] = (uint8_t)rng(&s);
    roundtrip(base, blen, rnd, sizeof(rnd), -1, NULL);
    roundtrip(rnd, sizeof(rnd), target, tlen, -1, NULL);
    roundtrip(rnd, 0, target, tlen, -1, NULL);
    roundtrip(base, blen, rnd, 0, -1, NULL);
    roundtrip(base, blen, base, blen, -1, &best);
    assert_true(best < blen / 10);
    free(base);
    free(target);
}

/* A target over one segment (16 MiB): several frames, and a tensor cut
 * between them at a block boundary. */
static void test_roundtrip_segments(void **state)
{
    size_t blen, tlen, plen;
    uint8_t *base = model(11, (17u << 20) / 4, 100, 0, &blen);
    uint8_t *target = model(11, (17u << 20) / 4, 100, 0, &tlen);
    keel__patch_region r[4];
    assert_true(keel__patch_onnx_regions(base, blen, r, 4) >= 1);
    for (size_t i = 0; i < r[0].len / 4; i++) { /* smooth weights: quick to compress */
        float v = (float)(i % 4096) * 1e-3f;
        memcpy(base + r[0].off + 4 * i, &v, 4);
        memcpy(target + r[0].off + 4 * i, &v, 4);
    }
    target[tlen / 2] ^= 1;
    target[tlen - 100] ^= 0x40;
    roundtrip(base, blen, target, tlen, KEEL__PATCH_PLANES, &plen);
    assert_true(plen < tlen / 10);
    roundtrip(base, blen, target, tlen, KEEL__PATCH_PLAIN, NULL);
    free(base);
    free(target);
}

static uint8_t *make_patch(const uint8_t *base, size_t blen, const uint8_t *target, size_t tlen,
                           int transform, size_t *plen)
{
    uint8_t *patch = NULL;
    keel_error e;
    assert_int_equal(keel__patch_make_mem(base, blen, target, tlen, transform, &patch, plen, &e),
                     0);
    return patch;
}

static void test_tampered_and_truncated(void **state)
{
    size_t blen, tlen, plen;
    uint8_t *base = model(5, 600, 300, 0, &blen);
    uint8_t *target = model(5, 600, 300, 2.0f, &tlen);
    uint8_t want[32], sha[32];
    keel_sha256_buf(target, tlen, want);
    for (int t = 0; t < KEEL__PATCH_NTRANSFORMS; t++) {
        uint8_t *patch = make_patch(base, blen, target, tlen, t, &plen);
        /* every byte flipped: refused, or (bytes zstd ignores) the exact target */
        for (size_t i = 0; i < plen; i += (i < 200 ? 1 : 61)) {
            keel_buf out;
            keel_error e;
            patch[i] ^= 0x5a;
            int rc = apply_mem(base, blen, patch, plen, &out, sha, &e);
            if (rc == KEEL_OK) /* bytes zstd ignores: then the exact target */
                assert_memory_equal(sha, want, 32);
            if (rc)
                assert_true(rc == KEEL_ECORRUPT || rc == KEEL_EINVALID || rc == KEEL_EUNSUPPORTED);
            keel__buf_done(&out);
            patch[i] ^= 0x5a;
        }
        /* every truncation */
        for (size_t n = 0; n < plen; n += (n < 200 ? 1 : 37)) {
            keel_buf out;
            keel_error e;
            int rc = apply_mem(base, blen, patch, n, &out, sha, &e);
            assert_true(rc == KEEL_ECORRUPT || rc == KEEL_EINVALID);
            keel__buf_done(&out);
        }
        free(patch);
    }
    free(base);
    free(target);
}

static void test_files(void **state)
{
    const char *dir = th_tmpdir();
    size_t blen, tlen;
    uint8_t *base = model(9, 4000, 0, 0, &blen);
    uint8_t *target = model(9, 4000, 0, 0.5f, &tlen);
    uint8_t want[32], other[32];
    keel_error e;
    keel_sha256_buf(target, tlen, want);
    th_write(dir, "base", base, blen);
    th_write(dir, "target", target, tlen);
    th_write(dir, "other", target, tlen);
    char bpath[4096], tpath[4096], ppath[4096], opath[4096], xpath[4096];
    snprintf(bpath, sizeof(bpath), "%s/base", dir);
    snprintf(tpath, sizeof(tpath), "%s/target", dir);
    snprintf(ppath, sizeof(ppath), "%s/p.patch", dir);
    snprintf(opath, sizeof(opath), "%s/out", dir);
    snprintf(xpath, sizeof(xpath), "%s/other", dir);
    assert_int_equal(keel__patch_make(bpath, tpath, ppath, &e), 0);
    assert_int_equal(keel__patch_apply(bpath, ppath, opath, want, &e), 0);
    uint64_t size;
    uint8_t got[32];
    assert_int_equal(keel_sha256_file(opath, got, &size, &e), 0);
    assert_memory_equal(got, want, 32);
    unlink(opath);

    /* wrong base: refused, nothing written */
    th_expect_err(keel__patch_apply(xpath, ppath, opath, want, &e), &e, KEEL_EINVALID,
                  "wrong base");
    assert_false(keel__fs_exists(opath));
    /* a patch for another target than the one expected */
    memset(other, 0x11, sizeof(other));
    th_expect_err(keel__patch_apply(bpath, ppath, opath, other, &e), &e, KEEL_EINVALID,
                  "not the expected");
    assert_false(keel__fs_exists(opath));
    /* not a patch */
    th_expect_err(keel__patch_apply(bpath, bpath, opath, want, &e), &e, KEEL_EINVALID,
                  "not a keel patch");
    /* tampered payload: the output is refused and nothing is left */
    char *p;
    size_t plen;
    assert_int_equal(keel__fs_read(ppath, 1 << 24, &p, &plen, &e), 0);
    p[plen - 5] ^= 0x01;
    th_write(dir, "bad.patch", p, plen);
    snprintf(ppath, sizeof(ppath), "%s/bad.patch", dir);
    int rc = keel__patch_apply(bpath, ppath, opath, want, &e);
    assert_int_equal(rc, KEEL_ECORRUPT);
    assert_false(keel__fs_exists(opath));
    /* truncated file */
    th_write(dir, "short.patch", p, plen - 3);
    snprintf(ppath, sizeof(ppath), "%s/short.patch", dir);
    th_expect_err(keel__patch_apply(bpath, ppath, opath, want, &e), &e, KEEL_ECORRUPT, NULL);
    assert_false(keel__fs_exists(opath));
    free(p);
    free(base);
    free(target);
    th_cleanup();
}

/* Patches that declare huge sizes are refused from the header and table,
 * before anything of that size is allocated (ASan would report a
 * multi-GiB malloc as an error). */
static void test_huge_declared(void **state)
{
    size_t blen, tlen, plen;
    uint8_t *base = model(2, 1000, 0, 0, &blen);
    uint8_t *target = model(2, 1000, 0, 1.0f, &tlen);
    uint8_t *patch = make_patch(base, blen, target, tlen, KEEL__PATCH_PLANES, &plen);
    uint8_t sha[32];
    keel_error e;
    keel_buf out;
    uint8_t *bad = malloc(plen + 64);
    struct {
        size_t off;
        uint8_t bytes[8];
        size_t n;
        const char *msg;
    } cases[] = {
        {24, {0, 0, 0, 0, 0, 1, 0, 0}, 8, "over the limits"},         /* target 2^40 */
        {16, {0, 0, 0, 0, 0, 1, 0, 0}, 8, "over the limits"},         /* base 2^40 */
        {96, {0, 0, 0, 0x40, 0, 0, 0, 0}, 4, "segments of"},          /* 1 GiB segments */
        {100, {0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}, 4, "a table of"}, /* table 2 GiB */
        {8, {2, 0, 0, 0, 0, 0, 0, 0}, 4, "version 2"},
        {12, {9, 0, 0, 0, 0, 0, 0, 0}, 4, "transform 9"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        memcpy(bad, patch, plen);
        memcpy(bad + cases[i].off, cases[i].bytes, cases[i].n);
        int rc = apply_mem(base, blen, bad, plen, &out, sha, &e);
        assert_true(rc == KEEL_ECORRUPT || rc == KEEL_EUNSUPPORTED);
        assert_non_null(strstr(e.msg, cases[i].msg));
        keel__buf_done(&out);
    }
    /* a table declaring 2^30 regions in a few bytes */
    memcpy(bad, patch, KEEL__PATCH_HEADER_SIZE);
    uint8_t table[] = {0x80, 0x80, 0x80, 0x80, 0x04, 0, 0};
    bad[100] = sizeof(table);
    bad[101] = bad[102] = bad[103] = 0;
    memcpy(bad + KEEL__PATCH_HEADER_SIZE, table, sizeof(table));
    th_expect_err(
        apply_mem(base, blen, bad, KEEL__PATCH_HEADER_SIZE + sizeof(table), &out, sha, &e), &e,
        KEEL_ECORRUPT, "more regions");
    keel__buf_done(&out);
    /* a segment declaring a huge frame */
    uint8_t table2[] = {0, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 0x80, 0x80, 0x80, 0x80, 0x10};
    bad[100] = sizeof(table2);
    memcpy(bad + KEEL__PATCH_HEADER_SIZE, table2, sizeof(table2));
    th_expect_err(
        apply_mem(base, blen, bad, KEEL__PATCH_HEADER_SIZE + sizeof(table2), &out, sha, &e), &e,
        KEEL_ECORRUPT, "segment of a bad size");
    keel__buf_done(&out);
    free(bad);
    free(patch);
    free(base);
    free(target);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_onnx_regions),
        cmocka_unit_test(test_roundtrip_every_transform),
        cmocka_unit_test(test_roundtrip_segments),
        cmocka_unit_test(test_tampered_and_truncated),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_huge_declared),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
