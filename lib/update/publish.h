/*
 * publish.h - the publisher's side of a repository (docs/update.md,
 * "Repository"): add a package version to a folder any static HTTP server
 * can serve, move channels and rollouts, re-sign the timestamp, and check a
 * whole repository as a device would.
 *
 * Every file is written atomically (temporary file, fsync, rename, fsync of
 * the folder) and in an order that keeps what a reader sees consistent:
 * files and packages first, then index.json/index.sig, then
 * timestamp.json/timestamp.sig last, so no timestamp names an index whose
 * files are not there. One writer at a time: REPO/.lock (flock) is held
 * while writing; a second publisher gets BUSY.
 */
#ifndef KEEL_UPDATE_PUBLISH_H
#define KEEL_UPDATE_PUBLISH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "update/repo.h"

#define KEEL__PUBLISH_INDEX_EXPIRES     (30 * 86400) /* default index lifetime, seconds */
#define KEEL__PUBLISH_TIMESTAMP_EXPIRES 86400        /* default timestamp lifetime */
#define KEEL__PUBLISH_PATCH_FROM        2            /* previous versions patched from */

typedef struct keel__publish_opts {
    const char *repo;                      /* the repository folder */
    const keel_key *const *index_keys;     /* sign index.json (borrowed) */
    size_t nindex_keys;                    /* may be 0 for keel__publish_timestamp only */
    const keel_key *const *timestamp_keys; /* sign timestamp.json; 0 keys: the index keys */
    size_t ntimestamp_keys;
    int64_t now;               /* Unix seconds; 0: the wall clock */
    int64_t index_expires;     /* seconds; 0: KEEL__PUBLISH_INDEX_EXPIRES */
    int64_t timestamp_expires; /* seconds; 0: KEEL__PUBLISH_TIMESTAMP_EXPIRES */
} keel__publish_opts;

typedef struct keel__publish_args {
    const char *channel;     /* NULL: the version is added, no channel moves */
    double rollout;          /* percent 0..100 (two decimals) for the channel; < 0: 100
                              * for a new version, unchanged when the channel has it */
    unsigned patch_from;     /* how many previous versions to patch from */
    bool force;              /* allow a version below the channel's */
    const char *reason;      /* why, with force; logged (optional) */
    const keel_trust *trust; /* optional: refuse what devices trusting it would refuse
                              * (the package's signatures, the index/timestamp keys) */
} keel__publish_args;

typedef struct keel__publish_result {
    char name[128], version[64], digest[72];
    char base[64];  /* the channel's base after the change ("" when none) */
    double rollout; /* the channel's rollout after the change */
    bool kept;      /* the channel had this version: left as it was */
    size_t files_new, files_reused, patches;
    uint64_t patch_bytes, chunk_bytes; /* offered patches vs the chunks they replace */
    uint64_t index_version, timestamp_version;
    bool already; /* the same version and digest was there already */
} keel__publish_result;

/* Adds the package at pkg_path (checked byte by byte against its manifest;
 * it must carry at least one signature) to the repository, creating it
 * when empty. CONFLICT: the version is published with another digest;
 * DOWNGRADE: below the channel's version without force. */
KEEL_WUR int keel__publish_package(const keel__publish_opts *o, const char *pkg_path,
                                   const keel__publish_args *a, keel__publish_result *ret,
                                   keel_error *err);

typedef enum keel__rollout_action {
    KEEL__ROLLOUT_SET,     /* rollout = percent */
    KEEL__ROLLOUT_HALT,    /* no new takers */
    KEEL__ROLLOUT_RESUME,  /* lift a halt */
    KEEL__ROLLOUT_PULL,    /* version pulled: never offered; devices on it roll back */
    KEEL__ROLLOUT_PROMOTE, /* rollout 100, no halt, base dropped */
} keel__rollout_action;

/* Changes channel (or, for PULL, the version) of package name, then
 * re-signs the index and the timestamp. */
KEEL_WUR int keel__publish_rollout(const keel__publish_opts *o, const char *name,
                                   const char *channel, keel__rollout_action act, double percent,
                                   const char *version, keel_error *err);

/* Signs a new timestamp.json (version + 1) naming the current index.json.
 * Only the timestamp keys (opts.timestamp_keys, else index_keys) are used. */
KEEL_WUR int keel__publish_timestamp(const keel__publish_opts *o, uint64_t *ret_version,
                                     keel_error *err);

/* Checks a whole repository as a device would: timestamp and index against
 * trust (and st, when not NULL: replays are DOWNGRADE; on success st is
 * advanced), expiry when now > 0, then every version's keel.json, keel.sig
 * (against the trust's package rules), .keel, files and patches by size and
 * SHA-256. Findings go to report (one line each). */
KEEL_WUR int keel__publish_verify(const char *repo, const keel_trust *t, keel__repo_state *st,
                                  int64_t now, keel_buf *report, keel_error *err);

/* Whether this build has the patch codec (lib/update/patch.c): without it
 * publishing offers no patches, only chunks. */
bool keel__publish_can_patch(void);

/* "30d", "12h", "15m", "90s" or plain seconds; 0 and above 10 years are refused. */
KEEL_WUR int keel__publish_duration(const char *s, int64_t *ret);

#endif
