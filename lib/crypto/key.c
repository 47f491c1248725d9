/* key.c - Ed25519 keys on OpenSSL 3: generate, load/save PEM, sign, verify. */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "keel/crypto.h"
#include "keel/trust.h"

struct keel_key {
    EVP_PKEY *pkey;
    bool has_private;
    uint8_t pub[KEEL_ED25519_PUB_LEN];
    uint8_t id[KEEL_KEYID_LEN];
};

static int ossl_err(keel_error *err, int code, const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return keel__err(err, code, "%s: %s", what, e ? buf : "unknown OpenSSL error");
}

static int key_wrap(EVP_PKEY *pkey, bool priv, keel_key **ret, keel_error *err)
{
    size_t n = KEEL_ED25519_PUB_LEN;
    keel_key *k;
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pkey);
        return keel__err(err, KEEL_EINVALID, "key is not an Ed25519 key");
    }
    k = calloc(1, sizeof(*k));
    if (!k) {
        EVP_PKEY_free(pkey);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    if (EVP_PKEY_get_raw_public_key(pkey, k->pub, &n) != 1 || n != KEEL_ED25519_PUB_LEN) {
        EVP_PKEY_free(pkey);
        free(k);
        return ossl_err(err, KEEL_EINVALID, "cannot read the raw public key");
    }
    k->pkey = pkey;
    k->has_private = priv;
    keel_sha256_buf(k->pub, sizeof(k->pub), k->id);
    *ret = k;
    return KEEL_OK;
}

int keel_key_generate(keel_key **ret_key, keel_error *err)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &pkey) != 1) {
        EVP_PKEY_CTX_free(ctx);
        return ossl_err(err, KEEL_EINTERNAL, "Ed25519 key generation failed");
    }
    EVP_PKEY_CTX_free(ctx);
    return key_wrap(pkey, true, ret_key, err);
}

static int load_pem(const char *path, bool priv, keel_key **ret_key, keel_error *err)
{
    char *data;
    size_t len;
    int rc = keel__fs_read(path, 64 * 1024, &data, &len, err);
    if (rc)
        return rc;
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    EVP_PKEY *pkey = NULL;
    if (bio) {
        pkey = priv ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
                    : PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        if (!pkey && !priv) {
            /* A private key file also gives the public key. */
            BIO_free(bio);
            bio = BIO_new_mem_buf(data, (int)len);
            pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
            if (pkey)
                priv = true;
        }
    }
    BIO_free(bio);
    free(data);
    if (!pkey) {
        ERR_clear_error();
        return keel__err(err, KEEL_EINVALID,
                         "%s is not a PEM Ed25519 %s key (make one with `keel keygen`)", path,
                         priv ? "private" : "public");
    }
    rc = key_wrap(pkey, priv, ret_key, err);
    return rc ? keel__err_prefix(err, "%s", path) : KEEL_OK;
}

int keel_key_load_private(const char *path, keel_key **ret_key, keel_error *err)
{
    return load_pem(path, true, ret_key, err);
}

int keel_key_load_public(const char *path, keel_key **ret_key, keel_error *err)
{
    return load_pem(path, false, ret_key, err);
}

int keel_key_from_raw(const uint8_t pub[KEEL_ED25519_PUB_LEN], keel_key **ret_key, keel_error *err)
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, KEEL_ED25519_PUB_LEN);
    if (!pkey)
        return ossl_err(err, KEEL_EINVALID, "not a valid Ed25519 public key");
    return key_wrap(pkey, false, ret_key, err);
}

static int write_pem(const keel_key *key, bool priv, const char *path, keel_error *err)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *mem;
    long n;
    int ok, rc;
    if (!bio)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    ok = priv ? PEM_write_bio_PrivateKey(bio, key->pkey, NULL, NULL, 0, NULL, NULL)
              : PEM_write_bio_PUBKEY(bio, key->pkey);
    if (ok != 1) {
        BIO_free(bio);
        return ossl_err(err, KEEL_EINTERNAL, "cannot encode key");
    }
    n = BIO_get_mem_data(bio, &mem);
    rc = keel__fs_write_atomic(path, mem, (size_t)n, priv ? 0600 : 0644, err);
    BIO_free(bio);
    return rc;
}

int keel_key_save(const keel_key *key, const char *priv_path, const char *pub_path, keel_error *err)
{
    int rc = KEEL_OK;
    if (priv_path) {
        if (!key->has_private)
            return keel__err(err, KEEL_EINVALID, "key has no private half to save");
        rc = write_pem(key, true, priv_path, err);
    }
    if (!rc && pub_path)
        rc = write_pem(key, false, pub_path, err);
    return rc;
}

bool keel_key_has_private(const keel_key *key)
{
    return key->has_private;
}

void keel_key_raw_public(const keel_key *key, uint8_t out[KEEL_ED25519_PUB_LEN])
{
    memcpy(out, key->pub, KEEL_ED25519_PUB_LEN);
}

void keel_key_id(const keel_key *key, uint8_t out[KEEL_KEYID_LEN])
{
    memcpy(out, key->id, KEEL_KEYID_LEN);
}

void keel_key_id_hex(const keel_key *key, char out[KEEL_SHA256_HEX])
{
    keel_hex_encode(key->id, KEEL_KEYID_LEN, out);
}

/* CONTEXT || 0x00 || msg, the exact bytes that are signed. */
static unsigned char *domain_msg(const char *context, const void *msg, size_t len, size_t *ret_len)
{
    size_t cl = strlen(context);
    unsigned char *m = malloc(cl + 1 + len + 1);
    if (!m)
        return NULL;
    memcpy(m, context, cl);
    m[cl] = 0;
    if (len)
        memcpy(m + cl + 1, msg, len);
    *ret_len = cl + 1 + len;
    return m;
}

int keel_key_sign(const keel_key *key, const char *context, const void *msg, size_t len,
                  uint8_t sig[KEEL_ED25519_SIG_LEN], keel_error *err)
{
    size_t mlen, siglen = KEEL_ED25519_SIG_LEN;
    unsigned char *m;
    EVP_MD_CTX *ctx;
    int rc = KEEL_OK;
    if (!key->has_private)
        return keel__err(err, KEEL_EINVALID, "cannot sign with a public key");
    m = domain_msg(context, msg, len, &mlen);
    ctx = EVP_MD_CTX_new();
    if (!m || !ctx) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, key->pkey) != 1 ||
        EVP_DigestSign(ctx, sig, &siglen, m, mlen) != 1)
        rc = ossl_err(err, KEEL_EINTERNAL, "Ed25519 signing failed");
out:
    EVP_MD_CTX_free(ctx);
    free(m);
    return rc;
}

bool keel_key_verify(const keel_key *key, const char *context, const void *msg, size_t len,
                     const uint8_t sig[KEEL_ED25519_SIG_LEN])
{
    size_t mlen;
    bool ok = false;
    unsigned char *m = domain_msg(context, msg, len, &mlen);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (m && ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key->pkey) == 1)
        ok = EVP_DigestVerify(ctx, sig, KEEL_ED25519_SIG_LEN, m, mlen) == 1;
    ERR_clear_error();
    EVP_MD_CTX_free(ctx);
    free(m);
    return ok;
}

void keel_key_free(keel_key *key)
{
    if (!key)
        return;
    EVP_PKEY_free(key->pkey);
    free(key);
}
