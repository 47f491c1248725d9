/*
 * crypto.h - hashing, Ed25519 keys and signature sets, on OpenSSL 3.
 *
 * Owns: streaming SHA-256 (OpenSSL picks SHA-NI / ARMv8 crypto where the CPU
 * has them), hex, Ed25519 key generation/loading/signing/verification, key
 * ids (SHA-256 of the raw 32-byte public key, shown as 64 hex digits), and
 * the signature-set file format used by keel.sig and the trust documents.
 * Knows nothing of packages or of which keys are trusted (see trust.h).
 *
 * Every signature keel makes is over a domain-separated message:
 *   CONTEXT || 0x00 || bytes
 * with CONTEXT one of the KEEL_SIGCTX_* strings, so a signature over a
 * manifest can never be replayed as a signature over a root document.
 */
#ifndef KEEL_CRYPTO_H
#define KEEL_CRYPTO_H

#include "keel/common.h"
#include "keel/error.h"

#define KEEL_SHA256_LEN      32
#define KEEL_SHA256_HEX      65 /* 64 digits + NUL */
#define KEEL_ED25519_PUB_LEN 32
#define KEEL_ED25519_SIG_LEN 64
#define KEEL_KEYID_LEN       32

#define KEEL_SIGCTX_PACKAGE     "keel-package-v1"
#define KEEL_SIGCTX_ROOT        "keel-root-v1"
#define KEEL_SIGCTX_REVOCATIONS "keel-revocations-v1"
#define KEEL_SIGCTX_INDEX       "keel-index-v1"     /* repository index.json */
#define KEEL_SIGCTX_TIMESTAMP   "keel-timestamp-v1" /* repository timestamp.json */

/* --- SHA-256 ------------------------------------------------------------ */

typedef struct keel_sha256 keel_sha256;

KEEL_API KEEL_WUR keel_sha256 *keel_sha256_new(void); /* NULL on NOMEM */
KEEL_API void keel_sha256_update(keel_sha256 *h, const void *data, size_t len);
/* Writes the digest and resets the context for reuse. */
KEEL_API void keel_sha256_final(keel_sha256 *h, uint8_t out[KEEL_SHA256_LEN]);
KEEL_API void keel_sha256_free(keel_sha256 *h);
KEEL_API void keel_sha256_buf(const void *data, size_t len, uint8_t out[KEEL_SHA256_LEN]);
/* Hashes a whole file with large sequential reads. ret_size may be NULL. */
KEEL_API KEEL_WUR int keel_sha256_file(const char *path, uint8_t out[KEEL_SHA256_LEN],
                                       uint64_t *ret_size, keel_error *err);

/* Lower-case hex; out must hold 2*len+1 bytes. */
KEEL_API void keel_hex_encode(const uint8_t *data, size_t len, char *out);
/* Decodes exactly 2*outlen hex digits from s (slen bytes). */
KEEL_API KEEL_WUR int keel_hex_decode(const char *s, size_t slen, uint8_t *out, size_t outlen);

/* --- Ed25519 keys -------------------------------------------------------- */

typedef struct keel_key keel_key;

KEEL_API KEEL_WUR int keel_key_generate(keel_key **ret_key, keel_error *err);
/* PEM files as written by keel_key_save (PKCS#8 private, SPKI public), also
 * what `openssl genpkey -algorithm ed25519` writes. */
KEEL_API KEEL_WUR int keel_key_load_private(const char *path, keel_key **ret_key, keel_error *err);
KEEL_API KEEL_WUR int keel_key_load_public(const char *path, keel_key **ret_key, keel_error *err);
KEEL_API KEEL_WUR int keel_key_from_raw(const uint8_t pub[KEEL_ED25519_PUB_LEN], keel_key **ret_key,
                                        keel_error *err);
/* Writes PRIV (mode 0600) and PUB (0644) atomically; priv_path may be NULL. */
KEEL_API KEEL_WUR int keel_key_save(const keel_key *key, const char *priv_path,
                                    const char *pub_path, keel_error *err);
KEEL_API bool keel_key_has_private(const keel_key *key);
KEEL_API void keel_key_raw_public(const keel_key *key, uint8_t out[KEEL_ED25519_PUB_LEN]);
KEEL_API void keel_key_id(const keel_key *key, uint8_t out[KEEL_KEYID_LEN]);
KEEL_API void keel_key_id_hex(const keel_key *key, char out[KEEL_SHA256_HEX]);
/* Signs CONTEXT || 0 || msg. */
KEEL_API KEEL_WUR int keel_key_sign(const keel_key *key, const char *context, const void *msg,
                                    size_t len, uint8_t sig[KEEL_ED25519_SIG_LEN], keel_error *err);
KEEL_API bool keel_key_verify(const keel_key *key, const char *context, const void *msg, size_t len,
                              const uint8_t sig[KEEL_ED25519_SIG_LEN]);
KEEL_API void keel_key_free(keel_key *key);

/* --- Signature sets (keel.sig, root.sig, revoked.sig) ------------------------
 *
 *   {"format": 1, "signatures": [{"keyid": "<64 hex>", "alg": "ed25519",
 *                                 "sig": "<128 hex>"}, ...]}
 */

#define KEEL_SIGSET_MAX 64

typedef struct keel_signature {
    uint8_t keyid[KEEL_KEYID_LEN];
    uint8_t sig[KEEL_ED25519_SIG_LEN];
} keel_signature;

typedef struct keel_sigset {
    size_t count;
    keel_signature sigs[KEEL_SIGSET_MAX];
} keel_sigset;

/* Parses at most `len` bytes; refuses duplicates, unknown alg, > KEEL_SIGSET_MAX. */
KEEL_API KEEL_WUR int keel_sigset_parse(const void *data, size_t len, keel_sigset *ret,
                                        keel_error *err);
/* Serializes to a malloc'd NUL-terminated JSON string (caller frees). */
KEEL_API KEEL_WUR int keel_sigset_format(const keel_sigset *set, char **ret_json, keel_error *err);
/* Adds (or replaces the signature of the same key). */
KEEL_API KEEL_WUR int keel_sigset_add(keel_sigset *set, const uint8_t keyid[KEEL_KEYID_LEN],
                                      const uint8_t sig[KEEL_ED25519_SIG_LEN], keel_error *err);

#endif
