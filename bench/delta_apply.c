/*
 * delta_apply.c BASE KEEL_PATCH ZSTD_PATCH OUT N - apply speed in one
 * process, so that start-up of either program does not count: N times
 * keel__patch_apply (base read and hashed, tensors transformed back,
 * result hashed, written, fsynced) against N times what `zstd -d
 * --patch-from` does (base read, one frame decompressed with the base as
 * prefix, result written). Prints the mean milliseconds of each and the
 * ratio zstd/keel (>= 0.8 is issue 11's target). Then the same without
 * the files: both decoders from memory to memory (keel: base hashed and
 * checked, result hashed; zstd: decompression only), which is the codec's
 * own speed; the file figure adds keel's two fsyncs (durable staging).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "core/core.h"
#include "update/patch.h"
#include "update/patch_format.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *slurp(const char *path, size_t *len)
{
    char *p;
    keel_error e;
    if (keel__fs_read(path, (size_t)1 << 32, &p, len, &e)) {
        fprintf(stderr, "delta_apply: %s\n", e.msg);
        exit(1);
    }
    return p;
}

static void zstd_apply(const char *base_path, const char *zpath, const char *out)
{
    size_t blen, zlen;
    char *base = slurp(base_path, &blen), *z = slurp(zpath, &zlen);
    unsigned long long n = ZSTD_getFrameContentSize(z, zlen);
    char *dst = malloc(n);
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 31);
    ZSTD_DCtx_refPrefix(d, base, blen);
    size_t r = ZSTD_decompressDCtx(d, dst, n, z, zlen);
    if (ZSTD_isError(r) || r != n)
        exit(1);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, dst, n) != (ssize_t)n)
        exit(1);
    close(fd);
    ZSTD_freeDCtx(d);
    free(dst);
    free(base);
    free(z);
}

static int discard(void *ctx, const uint8_t *p, size_t n, keel_error *err)
{
    (void)ctx, (void)p, (void)n, (void)err;
    return KEEL_OK;
}

static void in_memory(const char *base_path, const char *kpath, const char *zpath, int n)
{
    size_t blen, klen, zlen;
    char *base = slurp(base_path, &blen), *k = slurp(kpath, &klen), *z = slurp(zpath, &zlen);
    unsigned long long un = ZSTD_getFrameContentSize(z, zlen);
    char *dst = malloc(un);
    double best_k = 1e9, best_z = 1e9;
    uint8_t sha[32];
    keel_error e;
    for (int i = 0; i < n; i++) {
        double t0 = now();
        if (keel__patch_apply_mem((const uint8_t *)base, blen, (const uint8_t *)k, klen, true,
                                  discard, NULL, sha, &e))
            exit(1);
        double t1 = now();
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 31);
        ZSTD_DCtx_refPrefix(d, base, blen);
        if (ZSTD_isError(ZSTD_decompressDCtx(d, dst, un, z, zlen)))
            exit(1);
        ZSTD_freeDCtx(d);
        double t2 = now();
        best_k = t1 - t0 < best_k ? t1 - t0 : best_k;
        best_z = t2 - t1 < best_z ? t2 - t1 : best_z;
    }
    printf("in memory, best of %d: keel %.2f ms, zstd %.2f ms, speed ratio %.2f\n", n, best_k * 1e3,
           best_z * 1e3, best_z / best_k);
    free(base);
    free(k);
    free(z);
    free(dst);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: delta_apply BASE KEEL_PATCH ZSTD_PATCH OUT N\n");
        return 2;
    }
    int n = atoi(argv[5]);
    keel__patch_info info;
    keel_error e;
    if (keel__patch_read_info(argv[2], &info, &e)) {
        fprintf(stderr, "delta_apply: %s\n", e.msg);
        return 1;
    }
    double best_k = 1e9, best_z = 1e9;
    for (int i = 0; i < n; i++) {
        double t0 = now();
        if (keel__patch_apply(argv[1], argv[2], argv[4], info.target_sha256, &e)) {
            fprintf(stderr, "delta_apply: %s\n", e.msg);
            return 1;
        }
        double t1 = now();
        zstd_apply(argv[1], argv[3], argv[4]);
        double t2 = now();
        best_k = t1 - t0 < best_k ? t1 - t0 : best_k;
        best_z = t2 - t1 < best_z ? t2 - t1 : best_z;
    }
    printf("files, best of %d: keel %.2f ms, zstd %.2f ms, speed ratio %.2f\n", n, best_k * 1e3,
           best_z * 1e3, best_z / best_k);
    keel__patch_info_done(&info);
    in_memory(argv[1], argv[2], argv[3], n);
    return 0;
}
