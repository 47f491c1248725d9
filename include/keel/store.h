/*
 * store.h - the packages installed on this device, and which one serves.
 *
 * Owns: STATE_DIR/keel.db (SQLite, WAL) tables for packages, slots,
 * anti-rollback high-water marks and verification stamps, and the
 * content-addressed STATE_DIR/blobs/sha256/ab/<hex> files (read-only, shared
 * between versions). Knows nothing of the network or of how models run.
 *
 * Slots per package name: active, previous, known_good, staged. Install
 * verifies signatures and every hash while copying into the blob store, then
 * records the package in one transaction; activation and rollback are one
 * transaction each. A kill -9 at any instant leaves the old or the new
 * version active and the store consistent (docs/internals/store.md).
 *
 * Thread safety: a keel_store may be used from several threads; calls that
 * touch the database serialize on an internal lock. Hashing during install
 * runs outside that lock.
 */
#ifndef KEEL_STORE_H
#define KEEL_STORE_H

#include "keel/common.h"
#include "keel/config.h"
#include "keel/error.h"
#include "keel/pkg.h"
#include "keel/trust.h"

typedef enum keel_slot {
    KEEL_SLOT_ACTIVE = 0,
    KEEL_SLOT_PREVIOUS = 1,
    KEEL_SLOT_KNOWN_GOOD = 2,
    KEEL_SLOT_STAGED = 3,
    KEEL_SLOT_COUNT = 4,
    KEEL_SLOT_NONE = -1,
} keel_slot;

/* "active", "previous", "known_good", "staged", "none". */
KEEL_API const char *keel_slot_name(keel_slot s);

typedef struct keel_store keel_store;

/* Opens (creating when absent) the store under state_dir. lim is copied. */
KEEL_API KEEL_WUR int keel_store_open(const char *state_dir, const keel_limits *lim,
                                      keel_store **ret, keel_error *err);
KEEL_API void keel_store_close(keel_store *s);
/* Replaces the limits installs are checked against (config reload). Copied. */
KEEL_API void keel_store_set_limits(keel_store *s, const keel_limits *lim);

/* --- install, activate, rollback -------------------------------------------- */

#define KEEL_INSTALL_ACTIVATE 0x1u /* activate right after a successful install */

typedef struct keel_install_result {
    char name[KEEL_NAME_MAX];
    char version[KEEL_VERSION_MAX];
    char digest[72];    /* "sha256:<hex>" of keel.json */
    uint64_t bytes;     /* payload bytes in the package */
    uint64_t new_bytes; /* of which new to this store (not already in blobs) */
    bool already;       /* this exact package was installed before */
    bool activated;
} keel_install_result;

/*
 * Verifies the package at pkg_path against trust (borrowed; required) and
 * the anti-rollback rule, copies its files into the blob store checking
 * every hash, and records it in the staged slot (or active with
 * KEEL_INSTALL_ACTIVATE). Nothing is recorded unless everything checked.
 * ret may be NULL.
 */
KEEL_API KEEL_WUR int keel_store_install(keel_store *s, const char *pkg_path,
                                         const keel_trust *trust, unsigned flags,
                                         keel_install_result *ret, keel_error *err);

/*
 * The same install from a download folder (lib/update/fetch.c's work dir):
 * dir holds keel.json, keel.sig and one file per blob the store lacks, named
 * by its SHA-256 hex. Same trust, CONFLICT and DOWNGRADE checks as
 * keel_store_install; each file is hashed (size and SHA-256 against the
 * signed manifest) and then hard-linked into the blob store, so dir must be
 * on the state dir's file system (STATE_DIR/update/downloads/...); the
 * folder's names are removed once the version is recorded (a crash before
 * leaves them: nothing is downloaded again). Files the folder lacks must be
 * valid blobs already. ret may be NULL.
 */
KEEL_API KEEL_WUR int keel_store_install_dir(keel_store *s, const char *dir,
                                             const keel_trust *trust, unsigned flags,
                                             keel_install_result *ret, keel_error *err);

/* Makes `version` (or the staged one when version is NULL) active: the old
 * active becomes previous. Verifies the files first (stamps, or re-hash if a
 * file changed). Refuses a version below the high-water mark unless it is
 * this device's recorded known-good. */
KEEL_API KEEL_WUR int keel_store_activate(keel_store *s, const char *name, const char *version,
                                          keel_error *err);
/* Swaps active and previous (or activates known_good when there is no
 * previous). The version rolled away from is not marked bad; it stays installed. */
KEEL_API KEEL_WUR int keel_store_rollback(keel_store *s, const char *name, keel_error *err);
/* Records the active version as this device's known-good. */
KEEL_API KEEL_WUR int keel_store_mark_good(keel_store *s, const char *name, keel_error *err);

/*
 * A validator runs before any activation (keel_store_activate, and install
 * with KEEL_INSTALL_ACTIVATE, which then installs staged, validates, and
 * activates). It gets the installed-but-not-active version and returns
 * KEEL_OK to let it go live, or an error whose message is the report. The
 * store lock is not held while it runs: it may call the keel_store_version_*
 * readers. keeld and the CLI set the inference self-test here.
 */
typedef int (*keel_store_validator)(void *ctx, keel_store *s, const char *name, const char *version,
                                    keel_error *err);
KEEL_API void keel_store_set_validator(keel_store *s, keel_store_validator fn, void *ctx);

/* keel.json of an installed version (malloc'd copy). */
KEEL_API KEEL_WUR int keel_store_version_manifest(keel_store *s, const char *name,
                                                  const char *version, char **ret, size_t *ret_len,
                                                  keel_error *err);
/* Path of a file of an installed version (not necessarily serving). */
KEEL_API KEEL_WUR int keel_store_version_file(keel_store *s, const char *name, const char *version,
                                              const char *path, char *buf, size_t n,
                                              keel_error *err);

/* --- verification and serving ------------------------------------------------ */

#define KEEL_VERIFY_DEEP 0x1u /* re-hash every file, ignoring stamps */

typedef struct keel_serving {
    char name[KEEL_NAME_MAX];
    char version[KEEL_VERSION_MAX]; /* "" when nothing valid is left */
    char digest[72];
    keel_slot slot;    /* which slot serves; KEEL_SLOT_NONE if none */
    bool degraded;     /* serving something other than active */
    char reason[2048]; /* why not active, or why nothing (one line per slot tried) */
} keel_serving;

/*
 * Decides what serves `name`: the active version if it is not revoked and
 * its files verify, else previous, else known_good (the same test). Results
 * are kept for status. Returns KEEL_OK with ret->slot == KEEL_SLOT_NONE when
 * nothing valid is left.
 */
KEEL_API KEEL_WUR int keel_store_resolve(keel_store *s, const char *name, unsigned flags,
                                         keel_serving *ret, keel_error *err);
/* Resolves every installed name. ret_ready is true when every name with an
 * active slot has something valid to serve and at least one package exists;
 * why (n bytes) says what is wrong otherwise, and also names packages served
 * degraded (not from their active slot) while still ready; "" when all is well. */
KEEL_API KEEL_WUR int keel_store_resolve_all(keel_store *s, unsigned flags, bool *ret_ready,
                                             char *why, size_t n, keel_error *err);

/* Verifies one installed version's files (stamps, or re-hash with DEEP). */
KEEL_API KEEL_WUR int keel_store_verify(keel_store *s, const char *name, const char *version,
                                        unsigned flags, keel_error *err);

/* Path of the blob whose SHA-256 is hex (64 lower-case digits) when it is a
 * file of an installed version and its stamp says it verified and has not
 * changed since (no re-hash: quick enough for a request). For LAN peers,
 * which serve what they hold (GET /api/chunks/sha256/HEX). KEEL_ENOTFOUND
 * when no installed version has it; KEEL_ECORRUPT when it is missing,
 * changed or not verified since it changed. *ret_size: its size. */
KEEL_API KEEL_WUR int keel_store_blob_path(keel_store *s, const char *hex, char *buf, size_t n,
                                           uint64_t *ret_size, keel_error *err);

/* What serves each package right now, as last resolved (malloc'd array). */
KEEL_API KEEL_WUR int keel_store_serving_list(keel_store *s, keel_serving **ret, size_t *ret_n,
                                              keel_error *err);

/* Path of an installed file of the serving version of `name`, into buf. */
KEEL_API KEEL_WUR int keel_store_file_path(keel_store *s, const char *name, const char *path,
                                           char *buf, size_t n, keel_error *err);

/* --- revocation: re-checking what is installed against the trust ------------------ */

/* One change a re-check made. */
typedef struct keel_revocation {
    char name[KEEL_NAME_MAX];
    char version[KEEL_VERSION_MAX];
    char digest[72];
    bool revoked;                    /* true: newly revoked; false: no longer revoked */
    char reason[KEEL_ERROR_MSG_MAX]; /* why it is revoked; "" when lifted */
} keel_revocation;

/*
 * Re-checks every installed version's recorded keel.json and keel.sig
 * against trust (borrowed; required), as an install would: a revoked
 * digest, or signatures that no longer reach the threshold of the rule for
 * the name (revoked keys, a rotation that dropped the signers or the rule)
 * mark the version revoked, durably, with the reason. A revoked version
 * never serves (keel_store_resolve skips it) and activate, rollback and
 * mark-good refuse it (KEEL_EUNTRUSTED). A marked version that passes again
 * is un-marked only when trust is newer than every trust that refused it
 * (root version and revocation serial both at least the highest recorded
 * with the mark, one of them higher): a trust dir put back to an older
 * state (a deleted revocation list, an older root.json) lifts nothing. One transaction; afterwards
 * the names that changed are resolved again, so what serves never names a revoked version. *ret
 * (malloc'd, caller frees; NULL when nothing changed) lists the changes; ret and ret_n may be NULL.
 */
KEEL_API KEEL_WUR int keel_store_recheck(keel_store *s, const keel_trust *trust,
                                         keel_revocation **ret, size_t *ret_n, keel_error *err);
/* Whether name@version is marked revoked; its reason into why (n bytes; may
 * be NULL) when it is. */
KEEL_API KEEL_WUR int keel_store_revoked(keel_store *s, const char *name, const char *version,
                                         bool *ret_revoked, char *why, size_t n, keel_error *err);

/* Status of every package: slots, versions, digests, last verification,
 * serving choice, revoked versions and why. malloc'd JSON (caller frees). */
KEEL_API KEEL_WUR int keel_store_status_json(keel_store *s, char **ret_json, keel_error *err);
/* Installed packages (name, version, digest, size, slots, revoked and why).
 * malloc'd JSON. */
KEEL_API KEEL_WUR int keel_store_list_json(keel_store *s, char **ret_json, keel_error *err);

/* Removes blobs referenced by no installed version and versions in no slot. */
KEEL_API KEEL_WUR int keel_store_gc(keel_store *s, uint64_t *ret_freed_bytes, keel_error *err);

#endif
