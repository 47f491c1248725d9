/*
 * repo.h - repository metadata (docs/update.md): the signed timestamp and
 * index documents, their freshness against what this device accepted
 * before, and what a channel offers this device (staged rollout).
 *
 * Pure: no I/O; the caller fetches the bytes and persists keel__repo_state.
 * Every parser is bounded and answers with what is wrong and what to do.
 */
#ifndef KEEL_UPDATE_REPO_H
#define KEEL_UPDATE_REPO_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "keel/config.h"
#include "keel/trust.h"

/* What this device accepted last (persisted by the caller). */
typedef struct keel__repo_state {
    uint64_t timestamp_version;
    uint64_t index_version;
    char index_sha256[65]; /* hex, "" before the first */
} keel__repo_state;

typedef struct keel__repo_timestamp {
    uint64_t version;
    int64_t expires; /* Unix seconds */
    uint64_t index_version, index_size;
    char index_sha256[65];
} keel__repo_timestamp;

/* Limits (docs/update.md, "Repository"). */
#define KEEL__REPO_TIMESTAMP_MAX (16u * 1024u)         /* timestamp.json bytes */
#define KEEL__REPO_INDEX_MAX     (16u * 1024u * 1024u) /* index.json bytes */
#define KEEL__REPO_SIG_MAX       (64u * 1024u)         /* *.sig bytes */
#define KEEL__REPO_PACKAGES_MAX  4096                  /* packages in an index */
#define KEEL__REPO_VERSIONS_MAX  1024                  /* versions of one package */
#define KEEL__REPO_CHANNELS_MAX  64                    /* channels of one package */
#define KEEL__REPO_PATCHES_MAX   10000                 /* patches of one version */
#define KEEL__REPO_CHANNEL_LEN   64                    /* channel name, NUL included */

/* Checks timestamp.json (doc) and timestamp.sig (sig) against the trust's
 * timestamp role, then freshness: a version below st's is DOWNGRADE
 * ("replayed"); when now > 0 and the document has expired, KEEL_EUNTRUSTED
 * with a message that says "stale". now == 0 skips expiry (offline
 * bundles). */
KEEL_WUR int keel__repo_check_timestamp(const keel_trust *t, const void *doc, size_t len,
                                        const void *sig, size_t sig_len, const keel__repo_state *st,
                                        int64_t now, keel__repo_timestamp *ret, keel_error *err);

typedef struct keel__repo_index keel__repo_index;

/* Parses index.json + index.sig, checks them against the trust's index
 * role; when ts is not NULL the document's size, SHA-256 and version must
 * be what ts says; version below st's is DOWNGRADE; expiry as above. */
KEEL_WUR int keel__repo_index_parse(const keel_trust *t, const void *doc, size_t len,
                                    const void *sig, size_t sig_len, const keel__repo_timestamp *ts,
                                    const keel__repo_state *st, int64_t now, keel__repo_index **ret,
                                    keel_error *err);
void keel__repo_index_free(keel__repo_index *ix);
uint64_t keel__repo_index_version(const keel__repo_index *ix);

/* The parsers alone, without signatures or freshness: for the publisher
 * (its own documents), fuzzing and tests. Same bounds and messages. */
KEEL_WUR int keel__repo_timestamp_parse_doc(const void *doc, size_t len, keel__repo_timestamp *ret,
                                            keel_error *err);
KEEL_WUR int keel__repo_index_parse_doc(const void *doc, size_t len, keel__repo_index **ret,
                                        keel_error *err);
int64_t keel__repo_index_expires(const keel__repo_index *ix);

/* Every version of every package in an index, in document order: i from 0
 * while it returns true. Strings and patches borrowed from ix. */
typedef struct keel__repo_entry {
    const char *name, *version, *digest;
    uint64_t manifest_size;
    bool pulled;
    const struct keel__repo_patch *patches;
    size_t npatches;
} keel__repo_entry;
bool keel__repo_index_entry(const keel__repo_index *ix, size_t i, keel__repo_entry *ret);

/* RFC 3339 UTC timestamps as the documents carry them
 * ("2026-12-05T00:00:00Z", exactly this form). */
KEEL_WUR int keel__repo_time_parse(const char *s, int64_t *ret);
void keel__repo_time_format(int64_t t, char out[21]);

typedef struct keel__repo_patch {
    char from[65], to[65]; /* FILE SHA-256s (hex): base and target */
    char sha256[65];       /* the patch file's own */
    uint64_t size;
    char codec[32];
} keel__repo_patch;

typedef struct keel__repo_offer {
    char name[128], version[64];
    char digest[72]; /* "sha256:HEX" of keel.json */
    uint64_t manifest_size;
    bool current_pulled;             /* the device's current version is pulled: roll back */
    const keel__repo_patch *patches; /* borrowed from the index */
    size_t npatches;
} keel__repo_offer;

/* What channel offers device_id for package name, given the version the
 * device runs now (current, may be NULL). 0 with *ret filled; KEEL_ENOTFOUND
 * with the reason in err (no such package or channel, halted, outside the
 * rollout share and no base, pulled); *ret->current_pulled is set in every
 * case where current is pulled. */
KEEL_WUR int keel__repo_offer_for(const keel__repo_index *ix, const char *name, const char *channel,
                                  const char *device_id, const char *current, keel__repo_offer *ret,
                                  keel_error *err);

/* The staged-rollout rule: SHA-256(device_id 0x00 name 0x00 version), first
 * 8 bytes big-endian, mod 10000. A device takes a version at rollout
 * percent r iff bucket < round(r * 100). */
unsigned keel__repo_bucket(const char *device_id, const char *name, const char *version);
bool keel__repo_takes(const char *device_id, const char *name, const char *version,
                      double rollout_percent);

#endif
