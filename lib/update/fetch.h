/*
 * fetch.h - resumable, verified download of one package version from
 * untrusted mirrors (LAN peers, then origin repositories).
 *
 * Every byte is checked against the signed manifest's chunk hashes as it
 * arrives; files already in the store are not fetched, chunks held by any
 * installed version are copied locally, a patch is used when offered and
 * smaller (falling back to chunks when it fails to apply or verify).
 * Partial state lives in work_dir; a later call resumes without fetching
 * verified bytes again.
 */
#ifndef KEEL_UPDATE_FETCH_H
#define KEEL_UPDATE_FETCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "keel/store.h"
#include "update/repo.h"

typedef struct keel__fetch_opts {
    const char *work_dir;       /* STATE_DIR/update/downloads/<digest hex> */
    const char *const *origins; /* repository base URLs */
    size_t norigins;
    const char *const *peers; /* peer base URLs (http://host:port), tried first */
    size_t npeers;
    void (*peer_bad)(void *ctx, const char *peer, const char *why); /* skip it a while */
    void *ctx;
    const keel__repo_patch *patches; /* offered for this version (may be NULL) */
    size_t npatches;
    keel_store *store;         /* blobs and chunks to reuse */
    uint64_t max_bytes_per_s;  /* 0: no cap */
    unsigned timeout_s;        /* per transfer without progress */
    const atomic_bool *cancel; /* may be NULL */
} keel__fetch_opts;

typedef struct keel__fetch_stats {
    uint64_t needed; /* bytes of files not already in the store */
    uint64_t from_origin, from_peers, from_local, from_patches;
    uint64_t wasted; /* bytes received and thrown away (bad chunks, cut transfers) */
    unsigned resumes, bad_chunks, patch_failures;
} keel__fetch_stats;

/* Fetches packages/NAME/VERSION/keel.json and keel.sig (keel.json must hash
 * to digest), then every file into work_dir, verified. On success work_dir
 * holds keel.json, keel.sig and one file per missing blob named by its
 * SHA-256 hex, ready for keel__store_install_dir. */
KEEL_WUR int keel__fetch_package(const keel__fetch_opts *o, const char *name, const char *version,
                                 const char *digest, keel__fetch_stats *st, keel_error *err);

#endif
