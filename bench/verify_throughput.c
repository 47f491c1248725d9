/*
 * verify_throughput.c - SHA-256 throughput of keel's file hashing against
 * `openssl dgst -sha256` on the same file in the same run.
 *
 *   verify_throughput FILE [PACKAGE TRUST_DIR]
 *
 * FILE is created (1 GiB from /dev/urandom) when absent or of another size.
 * Each side is timed 3 times over a warm page cache and the best run counts.
 * With PACKAGE and TRUST_DIR the whole package check (tar read, SHA-256 of
 * every member, Ed25519 against the trust) is timed the same way.
 * Prints MiB/s and keel/openssl ratios; exits 1 when the hashes disagree.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "keel/keel.h"

#define BENCH_SIZE (1ull << 30)
#define BENCH_RUNS 3

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int ensure_file(const char *path)
{
    struct stat st;
    char cmd[4200];
    if (stat(path, &st) == 0 && (unsigned long long)st.st_size == BENCH_SIZE)
        return 0;
    fprintf(stderr, "bench: generating %s (1 GiB)\n", path);
    snprintf(cmd, sizeof(cmd), "head -c %llu /dev/urandom > '%s'", BENCH_SIZE, path);
    return system(cmd) == 0 ? 0 : -1;
}

/* Reads the file once so every timed run sees a warm page cache. */
static void warm(const char *path)
{
    static char buf[1 << 20];
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    while (fread(buf, 1, sizeof(buf), f) > 0) {
    }
    fclose(f);
}

static double time_openssl(const char *path, char hex[KEEL_SHA256_HEX])
{
    char cmd[4200], line[512];
    double best = 1e9;
    snprintf(cmd, sizeof(cmd), "openssl dgst -sha256 -r '%s'", path);
    for (int i = 0; i < BENCH_RUNS; i++) {
        double t0 = now();
        FILE *p = popen(cmd, "r");
        if (!p || !fgets(line, sizeof(line), p) || pclose(p) != 0) {
            fprintf(stderr, "bench: `%s` failed\n", cmd);
            exit(1);
        }
        double t = now() - t0;
        best = t < best ? t : best;
        memcpy(hex, line, KEEL_SHA256_HEX - 1);
        hex[KEEL_SHA256_HEX - 1] = '\0';
    }
    return best;
}

static double time_keel(const char *path, char hex[KEEL_SHA256_HEX])
{
    uint8_t d[KEEL_SHA256_LEN];
    keel_error e;
    double best = 1e9;
    for (int i = 0; i < BENCH_RUNS; i++) {
        double t0 = now();
        if (keel_sha256_file(path, d, NULL, &e) != KEEL_OK) {
            fprintf(stderr, "bench: keel_sha256_file: %s\n", e.msg);
            exit(1);
        }
        double t = now() - t0;
        best = t < best ? t : best;
    }
    keel_hex_encode(d, sizeof(d), hex);
    return best;
}

static double time_package(const char *pkg, const char *trust_dir)
{
    keel_trust *trust = NULL;
    keel_limits lim;
    keel_error e;
    double best = 1e9;
    if (keel_trust_load(trust_dir, &trust, &e) != KEEL_OK) {
        fprintf(stderr, "bench: trust %s: %s\n", trust_dir, e.msg);
        exit(1);
    }
    keel_limits_default(&lim);
    for (int i = 0; i < BENCH_RUNS; i++) {
        double t0 = now();
        if (keel_pkg_verify_file(pkg, trust, &lim, &e) != KEEL_OK) {
            fprintf(stderr, "bench: verify %s: %s\n", pkg, e.msg);
            exit(1);
        }
        double t = now() - t0;
        best = t < best ? t : best;
    }
    keel_trust_free(trust);
    return best;
}

int main(int argc, char **argv)
{
    char hex_ossl[KEEL_SHA256_HEX], hex_keel[KEEL_SHA256_HEX];
    const double mib = (double)BENCH_SIZE / (1024.0 * 1024.0);
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: verify_throughput FILE [PACKAGE TRUST_DIR]\n");
        return 2;
    }
    keel_log_set_stderr(false);
    if (ensure_file(argv[1]) != 0)
        return 1;
    warm(argv[1]);
    double t_ossl = time_openssl(argv[1], hex_ossl);
    double t_keel = time_keel(argv[1], hex_keel);
    if (strcmp(hex_ossl, hex_keel) != 0) {
        fprintf(stderr, "bench: keel and openssl disagree: %s vs %s\n", hex_keel, hex_ossl);
        return 1;
    }
    printf("openssl dgst -sha256      %8.0f MiB/s   (best of %d)\n", mib / t_ossl, BENCH_RUNS);
    printf("keel_sha256_file          %8.0f MiB/s   ratio %.2fx  (target >= 0.90x)\n", mib / t_keel,
           t_ossl / t_keel);
    if (argc == 4) {
        warm(argv[2]);
        double t_pkg = time_package(argv[2], argv[3]);
        printf("keel_pkg_verify_file      %8.0f MiB/s   ratio %.2fx  (tar read + SHA-256 + "
               "Ed25519)\n",
               mib / t_pkg, t_ossl / t_pkg);
    }
    return 0;
}
