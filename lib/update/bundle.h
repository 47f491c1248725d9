/*
 * bundle.h - USB / air-gap bundles (docs/update.md, "USB and air-gapped
 * sites"): a folder, or one .keel file, carrying packages, a revocation
 * list, a root rotation and repository metadata. This module reads what a
 * bundle holds and plans the order it is applied in (root rotation, then
 * revocation, then packages by name and semver); it also writes bundles for
 * publishers (`keel bundle create`).
 *
 * It decides nothing about trust: every package and trust document in a
 * bundle is checked by the store and the trust code when the runtime
 * applies the plan (lib/runtime/import.c). bundle.json, when present, only
 * guards against a damaged copy (it is not signed).
 *
 * Bounded: at most KEEL__BUNDLE_MAX_ENTRIES names in the folder, trust
 * documents at most 1 MiB, repository documents at most 16 MiB, packages
 * at most the caller's max_package. Symbolic links and special files are
 * refused by name.
 */
#ifndef KEEL_UPDATE_BUNDLE_H
#define KEEL_UPDATE_BUNDLE_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "keel/pkg.h"

#define KEEL__BUNDLE_FORMAT      1
#define KEEL__BUNDLE_MAX_ENTRIES 1024
#define KEEL__BUNDLE_DOC_MAX     (1u << 20)  /* root.json, revoked.json, their .sig */
#define KEEL__BUNDLE_REPO_MAX    (16u << 20) /* repo/ documents */
#define KEEL__BUNDLE_JSON_MAX    (1u << 20)  /* bundle.json */

typedef enum keel__bundle_kind {
    KEEL__BUNDLE_ROOT,    /* root.json + root.json.sig: a root rotation */
    KEEL__BUNDLE_REVOKED, /* revoked.json + revoked.json.sig: a revocation list */
    KEEL__BUNDLE_PACKAGE, /* NAME.keel */
    KEEL__BUNDLE_REPO,    /* repo/timestamp.json, .sig, index.json, .sig: recorded */
} keel__bundle_kind;

/* "root", "revocations", "package", "repository". */
const char *keel__bundle_kind_name(keel__bundle_kind k);

typedef struct keel__bundle_item {
    keel__bundle_kind kind;
    char entry[256];         /* the name inside the bundle: "iris-1.0.0.keel", "repo/index.json" */
    char path[PATH_MAX];     /* the file */
    char sig_path[PATH_MAX]; /* ROOT, REVOKED: the signatures file ("" when missing) */
    uint64_t size;
    /* PACKAGE: from its keel.json (read, not yet trusted) */
    char name[KEEL_NAME_MAX], version[KEEL_VERSION_MAX], digest[72];
    bool newest;  /* PACKAGE: the newest usable version of its name in this bundle */
    bool refused; /* malformed: not to be applied; why says what is wrong */
    char why[512];
} keel__bundle_item;

typedef struct keel__bundle {
    char path[PATH_MAX];      /* as scanned */
    bool single;              /* one .keel file, not a folder */
    bool manifest;            /* bundle.json was present (and checked) */
    keel__bundle_item *items; /* in the order to apply */
    size_t n;
    size_t ignored; /* names that are not part of the format (README, ...) */
} keel__bundle;

/* Reads what path holds and plans it: root, revocations, packages sorted by
 * name then semver (ascending: the newest of a name goes last), then
 * repository documents. Malformed items are in the plan with refused set
 * and the reason in why; a bundle that cannot be read at all (missing,
 * empty, too many entries, bundle.json malformed) is an error.
 * max_package bounds each .keel file. */
KEEL_WUR int keel__bundle_scan(const char *path, uint64_t max_package, keel__bundle **ret,
                               keel_error *err);
void keel__bundle_free(keel__bundle *b);

/* Writes a bundle into out_dir (created when absent; must not hold a
 * bundle.json yet): each package as NAME-VERSION.keel, revoked (with
 * revoked + ".sig") as revoked.json/revoked.json.sig, root (with its .sig)
 * as root.json/root.json.sig, and bundle.json listing the SHA-256 and size
 * of each. revoked and root may be NULL. Every input is checked for shape
 * (a package must open, a document must be at most 1 MiB with its .sig
 * present), not for trust. */
KEEL_WUR int keel__bundle_create(const char *out_dir, const char *const *pkgs, size_t npkgs,
                                 const char *revoked, const char *root, keel_error *err);

#endif
