/*
 * sha256.c - SHA-256 through OpenSSL's SHA256_* functions (the same
 * SHA-NI / ARMv8 assembly as EVP, same throughput), and hex.
 *
 * Why the API OpenSSL 3 marks deprecated: the first EVP digest loads the
 * provider machinery (configuration, method stores, the default provider),
 * about 2.2 MiB of RSS and several ms, in every keeld that hashes anything
 * (a model's manifest digest at start-up, the periodic re-verification).
 * SHA256_Init/Update/Final call the block function directly. The cost: the
 * digest does not go through a FIPS provider when one is configured;
 * signatures (key.c) still use EVP. If a build of OpenSSL drops the old
 * API (OPENSSL_NO_DEPRECATED_3_0), this file falls back to EVP.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "keel/crypto.h"
#include "keel/trust.h"

#ifndef OPENSSL_NO_DEPRECATED_3_0

struct keel_sha256 {
    SHA256_CTX ctx;
};

keel_sha256 *keel_sha256_new(void)
{
    keel_sha256 *h = calloc(1, sizeof(*h));
    if (h)
        SHA256_Init(&h->ctx);
    return h;
}

void keel_sha256_update(keel_sha256 *h, const void *data, size_t len)
{
    SHA256_Update(&h->ctx, data, len);
}

void keel_sha256_final(keel_sha256 *h, uint8_t out[KEEL_SHA256_LEN])
{
    SHA256_Final(out, &h->ctx);
    SHA256_Init(&h->ctx);
}

void keel_sha256_free(keel_sha256 *h)
{
    free(h);
}

void keel_sha256_buf(const void *data, size_t len, uint8_t out[KEEL_SHA256_LEN])
{
    /* Not SHA256(): in OpenSSL 3 the one-shot goes through EVP_Q_digest. */
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, data, len);
    SHA256_Final(out, &c);
}

#else /* OpenSSL without the deprecated API: EVP */

struct keel_sha256 {
    EVP_MD_CTX *ctx;
};

static const EVP_MD *sha256_md(void)
{
    /* Fetch once: EVP_sha256() goes through the provider lookup each call
     * in OpenSSL 3; an explicit fetch is cached here. */
    static const EVP_MD *md;
    const EVP_MD *m = __atomic_load_n(&md, __ATOMIC_ACQUIRE);
    if (!m) {
        EVP_MD *f = EVP_MD_fetch(NULL, "SHA256", NULL);
        const EVP_MD *expect = NULL;
        m = f ? f : EVP_sha256();
        if (!__atomic_compare_exchange_n(&md, &expect, m, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
            EVP_MD_free(f);
            m = expect;
        }
    }
    return m;
}

keel_sha256 *keel_sha256_new(void)
{
    keel_sha256 *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, sha256_md(), NULL) != 1) {
        EVP_MD_CTX_free(h->ctx);
        free(h);
        return NULL;
    }
    return h;
}

void keel_sha256_update(keel_sha256 *h, const void *data, size_t len)
{
    EVP_DigestUpdate(h->ctx, data, len);
}

void keel_sha256_final(keel_sha256 *h, uint8_t out[KEEL_SHA256_LEN])
{
    unsigned n = KEEL_SHA256_LEN;
    EVP_DigestFinal_ex(h->ctx, out, &n);
    EVP_DigestInit_ex(h->ctx, sha256_md(), NULL);
}

void keel_sha256_free(keel_sha256 *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

void keel_sha256_buf(const void *data, size_t len, uint8_t out[KEEL_SHA256_LEN])
{
    unsigned n = KEEL_SHA256_LEN;
    EVP_Digest(data, len, out, &n, sha256_md(), NULL);
}

#endif

#define HASH_READ_SIZE (1u << 20)

int keel_sha256_file(const char *path, uint8_t out[KEEL_SHA256_LEN], uint64_t *ret_size,
                     keel_error *err)
{
    int rc = KEEL_OK;
    uint64_t total = 0;
    keel_sha256 *h = NULL;
    unsigned char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", path);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    h = keel_sha256_new();
    buf = malloc(HASH_READ_SIZE);
    if (!h || !buf) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory hashing %s", path);
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf, HASH_READ_SIZE);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot read %s", path);
            goto out;
        }
        if (r == 0)
            break;
        keel_sha256_update(h, buf, (size_t)r);
        total += (uint64_t)r;
    }
    keel_sha256_final(h, out);
    if (ret_size)
        *ret_size = total;
out:
    free(buf);
    keel_sha256_free(h);
    close(fd);
    return rc;
}

void keel_hex_encode(const uint8_t *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int keel_hex_decode(const char *s, size_t slen, uint8_t *out, size_t outlen)
{
    if (slen != 2 * outlen)
        return KEEL_EINVALID;
    for (size_t i = 0; i < outlen; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return KEEL_EINVALID;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return KEEL_OK;
}
