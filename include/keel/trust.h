/*
 * trust.h - what this device trusts: pinned root keys, per-name signing
 * rules with thresholds, a signed revocation list, and root rotation.
 *
 * The trust dir holds:
 *   root.json      the pinned root document (see docs/security.md)
 *   root.sig       signatures over root.json (absent for the first, pinned one)
 *   revoked.json   optional revocation list, signed by a root threshold
 *   revoked.sig
 *
 * No decision here reads the wall clock: versions and serials only grow, so
 * a device offline for months with a drifting clock decides the same way.
 * Knows nothing of package files; it judges bytes and signature sets.
 */
#ifndef KEEL_TRUST_H
#define KEEL_TRUST_H

#include "keel/common.h"
#include "keel/crypto.h"
#include "keel/error.h"

typedef struct keel_trust keel_trust;

/* Loads and checks DIR/root.json (+ revocations). Not thread-safe to mutate;
 * a loaded keel_trust is read-only and may be shared between threads. */
KEEL_API KEEL_WUR int keel_trust_load(const char *dir, keel_trust **ret, keel_error *err);
/* Parses a root document from memory (no signature check: it is pinned). */
KEEL_API KEEL_WUR int keel_trust_from_root(const void *root_json, size_t len, keel_trust **ret,
                                           keel_error *err);
KEEL_API void keel_trust_free(keel_trust *t);

KEEL_API uint64_t keel_trust_root_version(const keel_trust *t);
KEEL_API uint64_t keel_trust_revocation_serial(const keel_trust *t);

/*
 * Decides whether `sigs` over the manifest bytes (CONTEXT keel-package-v1)
 * satisfy the rule that covers package `name`: enough distinct, valid,
 * unrevoked signatures from keys that rule allows. `digest` is the SHA-256 of
 * the manifest bytes, checked against revoked package digests. The message
 * says which keys signed, which were unknown/revoked/invalid, and how many
 * more are needed. Returns KEEL_EBADSIG or KEEL_EUNTRUSTED on refusal.
 */
KEEL_API KEEL_WUR int keel_trust_check_package(const keel_trust *t, const char *name,
                                               const void *manifest, size_t len,
                                               const keel_sigset *sigs, keel_error *err);

/* Roles that sign repository metadata (docs/update.md). root.json may name
 * a rule for each ("index", "timestamp"); absent, the index is signed by
 * the root rule, and the timestamp by the index rule (or the root rule). */
typedef enum keel_trust_role {
    KEEL_ROLE_INDEX = 1,     /* index.json, context keel-index-v1 */
    KEEL_ROLE_TIMESTAMP = 2, /* timestamp.json, context keel-timestamp-v1 */
} keel_trust_role;

/*
 * Decides whether `sigs` over doc (signed as CONTEXT || 0x00 || doc) satisfy
 * the rule of `role`: enough distinct, valid signatures by keys the rule
 * lists; revoked keys count for nothing. `what` names the document in the
 * message ("index.json"). Returns KEEL_EBADSIG or KEEL_EUNTRUSTED on
 * refusal, the message naming each uncounted key and why.
 */
KEEL_API KEEL_WUR int keel_trust_check_doc(const keel_trust *t, keel_trust_role role,
                                           const char *context, const char *what, const void *doc,
                                           size_t len, const keel_sigset *sigs, keel_error *err);
/* True when root.json names its own rule for role (not a fallback). */
KEEL_API bool keel_trust_has_role(const keel_trust *t, keel_trust_role role);

/*
 * Root rotation: accepts NEW_ROOT (bytes) with its signature set when its
 * version is higher and it is signed by the threshold of the current root
 * keys and by the threshold of its own root keys. Writes root.json/root.sig
 * into dir atomically.
 */
KEEL_API KEEL_WUR int keel_trust_rotate(const char *dir, const void *new_root, size_t len,
                                        const keel_sigset *sigs, keel_error *err);

/* Installs a signed revocation list whose serial is higher than the current. */
KEEL_API KEEL_WUR int keel_trust_revoke_install(const char *dir, const void *revoked_json,
                                                size_t len, const keel_sigset *sigs,
                                                keel_error *err);

/* Writes a fresh trust dir with root.json version 1 pinning `keys` (borrowed)
 * as root keys with `threshold`, and one rule "" (every name) with the same
 * keys and threshold. Refuses to overwrite an existing root.json. */
KEEL_API KEEL_WUR int keel_trust_init(const char *dir, const keel_key *const *keys, size_t nkeys,
                                      unsigned threshold, keel_error *err);
/* Same, and when nindex (ntimestamp) > 0 an "index" ("timestamp") rule
 * listing those keys (borrowed) with threshold 1; their public keys join
 * "keys". */
KEEL_API KEEL_WUR int keel_trust_init_roles(const char *dir, const keel_key *const *keys,
                                            size_t nkeys, unsigned threshold,
                                            const keel_key *const *index_keys, size_t nindex,
                                            const keel_key *const *timestamp_keys,
                                            size_t ntimestamp, keel_error *err);

#endif
