/*
 * pkg.h - the package format (v1): manifest, chunk lists, pack, sign, read,
 * verify. See docs/package-format.md for the format itself.
 *
 * Owns: parsing and checking keel.json, semantic versions, content-defined
 * chunking, writing a .keel tar, reading one safely (libarchive, bounded,
 * no links/devices/absolute paths/`..`/duplicates/unlisted members), and
 * checking every byte against the manifest and the signatures against a
 * trust. Knows nothing of how a model runs or of the device's slots.
 */
#ifndef KEEL_PKG_H
#define KEEL_PKG_H

#include "keel/common.h"
#include "keel/config.h"
#include "keel/crypto.h"
#include "keel/error.h"
#include "keel/trust.h"

#define KEEL_PKG_FORMAT    1 /* newest manifest format this build reads and writes */
#define KEEL_MANIFEST_NAME "keel.json"
#define KEEL_SIG_NAME      "keel.sig"
#define KEEL_NAME_MAX      128
#define KEEL_VERSION_MAX   64
#define KEEL_PATH_MAX      1024

/* --- semantic versions (semver.org 2.0.0 precedence) ---------------------- */

KEEL_API bool keel_semver_valid(const char *v);
/* <0, 0, >0 like strcmp; invalid versions sort before valid ones. */
KEEL_API int keel_semver_cmp(const char *a, const char *b);

/* --- content-defined chunking ------------------------------------------------
 * Gear-hash chunker (FastCDC style): min 16 KiB, average ~64 KiB, max 256 KiB.
 * Boundaries depend only on content, so an insertion moves few chunks. */

#define KEEL_CHUNK_MIN (16u * 1024u)
#define KEEL_CHUNK_AVG (64u * 1024u)
#define KEEL_CHUNK_MAX (256u * 1024u)

typedef struct keel_chunk {
    uint64_t offset;
    uint32_t len;
    uint8_t sha256[KEEL_SHA256_LEN];
} keel_chunk;

typedef struct keel_chunker keel_chunker;
typedef void (*keel_chunk_cb)(void *ud, const keel_chunk *c);

KEEL_API KEEL_WUR keel_chunker *keel_chunker_new(keel_chunk_cb cb, void *ud);
/* Feeds bytes; calls cb for each completed chunk. */
KEEL_API void keel_chunker_update(keel_chunker *c, const void *data, size_t len);
/* Flushes the last chunk. The chunker is then reset for a new stream. */
KEEL_API void keel_chunker_finish(keel_chunker *c);
KEEL_API void keel_chunker_free(keel_chunker *c);

/* --- the manifest ----------------------------------------------------------- */

typedef struct keel_file {
    const char *path; /* relative, checked: no `..`, no leading `/` */
    uint64_t size;
    uint8_t sha256[KEEL_SHA256_LEN];
    size_t nchunks;
    const keel_chunk *chunks; /* may be NULL when nchunks == 0 */
} keel_file;

typedef struct keel_manifest keel_manifest;

/* Parses and checks manifest bytes (data, len; no terminator needed). The
 * manifest keeps a copy of the exact bytes. */
KEEL_API KEEL_WUR int keel_manifest_parse(const void *data, size_t len, const keel_limits *lim,
                                          keel_manifest **ret, keel_error *err);
KEEL_API void keel_manifest_free(keel_manifest *m);

/* Accessors: strings valid until the manifest is freed. Optional ones may be "". */
KEEL_API int keel_manifest_format(const keel_manifest *m);
KEEL_API const char *keel_manifest_name(const keel_manifest *m);
KEEL_API const char *keel_manifest_version(const keel_manifest *m);
KEEL_API const char *keel_manifest_description(const keel_manifest *m);
KEEL_API const char *keel_manifest_task(const keel_manifest *m);
KEEL_API const char *keel_manifest_created(const keel_manifest *m);
KEEL_API size_t keel_manifest_nfiles(const keel_manifest *m);
KEEL_API const keel_file *keel_manifest_file(const keel_manifest *m, size_t i);
KEEL_API const keel_file *keel_manifest_find(const keel_manifest *m, const char *path);
KEEL_API uint64_t keel_manifest_total_bytes(const keel_manifest *m);
KEEL_API size_t keel_manifest_ntiers(const keel_manifest *m);
/* Tier i: name and backend/model strings. Valid until the manifest is freed. */
KEEL_API const char *keel_manifest_tier_name(const keel_manifest *m, size_t i);
KEEL_API const char *keel_manifest_tier_backend(const keel_manifest *m, size_t i);
KEEL_API const char *keel_manifest_tier_model(const keel_manifest *m, size_t i);
/* The exact bytes parsed, and their SHA-256 (the package digest). */
KEEL_API const uint8_t *keel_manifest_bytes(const keel_manifest *m, size_t *ret_len);
KEEL_API void keel_manifest_digest(const keel_manifest *m, uint8_t out[KEEL_SHA256_LEN]);
/* "sha256:<hex>" into out (72 bytes is enough). */
KEEL_API void keel_manifest_digest_str(const keel_manifest *m, char out[72]);
/* A malloc'd JSON summary (name, version, digest, files, tiers, ...). */
KEEL_API KEEL_WUR int keel_manifest_summary_json(const keel_manifest *m, char **ret_json,
                                                 keel_error *err);

/* --- packing and signing -------------------------------------------------------
 * SRC_DIR holds keel.json (a template: `files` is computed and overwritten)
 * and the package's files. Writes OUT atomically: keel.json, keel.sig, then
 * files in sorted order, deterministic tar headers. Each key in keys (borrowed,
 * may be empty) signs the manifest. */
KEEL_API KEEL_WUR int keel_pack_dir(const char *src_dir, const char *out_path,
                                    const keel_key *const *keys, size_t nkeys,
                                    const keel_limits *lim, keel_error *err);
/* Adds key's signature to an existing package file, atomically in place. */
KEEL_API KEEL_WUR int keel_pkg_sign(const char *path, const keel_key *key, const keel_limits *lim,
                                    keel_error *err);

/* --- reading ------------------------------------------------------------------ */

typedef struct keel_pkg keel_pkg;

/* Opens a .keel file and reads keel.json and keel.sig (the first two members).
 * Nothing else is read yet. */
KEEL_API KEEL_WUR int keel_pkg_open(const char *path, const keel_limits *lim, keel_pkg **ret,
                                    keel_error *err);
/* Same over memory (borrowed; must outlive the keel_pkg). For fuzzing and tests. */
KEEL_API KEEL_WUR int keel_pkg_open_mem(const void *data, size_t len, const keel_limits *lim,
                                        keel_pkg **ret, keel_error *err);
KEEL_API void keel_pkg_close(keel_pkg *p);

KEEL_API const keel_manifest *keel_pkg_manifest(const keel_pkg *p); /* valid until close */
KEEL_API const keel_sigset *keel_pkg_sigs(const keel_pkg *p);       /* valid until close */

/* Checks the signatures against `trust` (borrowed). */
KEEL_API KEEL_WUR int keel_pkg_check_trust(const keel_pkg *p, const keel_trust *trust,
                                           keel_error *err);

/* Receives each member's bytes while the reader checks them. `begin` may set
 * *ret_skip to have the member hashed but not delivered (already stored).
 * `end` is called with ok=true only after size and SHA-256 matched; with
 * ok=false the sink must discard what it got. Any callback may fail. */
typedef struct keel_pkg_sink {
    int (*begin)(void *ud, const keel_file *f, bool *ret_skip, keel_error *err);
    int (*write)(void *ud, const void *data, size_t len, keel_error *err);
    int (*end)(void *ud, const keel_file *f, bool ok, keel_error *err);
    void *ud;
} keel_pkg_sink;

/* Reads every remaining member, checking each against the manifest (listed,
 * not duplicated, regular file, size, SHA-256), and requires every listed
 * file to be present. sink may be NULL (verify only). Call once. */
KEEL_API KEEL_WUR int keel_pkg_extract(keel_pkg *p, const keel_pkg_sink *sink, keel_error *err);

/* Open + check_trust (when trust is not NULL) + extract with no sink. */
KEEL_API KEEL_WUR int keel_pkg_verify_file(const char *path, const keel_trust *trust,
                                           const keel_limits *lim, keel_error *err);

#endif
