/*
 * lint.h - a package's manifest checked as activation would check it,
 * before the package exists: for `keel pack` (which refuses to write a
 * package that activation would refuse) and `keel lint` (CI pipelines).
 *
 * Owns: listing every problem in one pass. The checks themselves are the
 * device's own: lib/pkg's keel_manifest_parse (format, name, version,
 * files and their paths, tensors, tiers) and the inference engine's
 * keel__model_check (contract, tiers and backends, pre/post-processing,
 * policy, records, routing), plus every file the manifest names being in
 * the package. It does not load models or run the validation set: that
 * needs the models' runtime and happens at activation (or `keel selftest`).
 */
#ifndef KEEL_INFER_LINT_H
#define KEEL_INFER_LINT_H

#include "core/core.h"

typedef struct keel__lint {
    char **problems; /* malloc'd messages, "keel.json: FIELD: what is wrong" */
    size_t n;
} keel__lint;

/* path: a package source directory (keel.json and the files, as `keel pack`
 * takes it), a keel.json (its directory holds the files it names, unless it
 * lists them in "files" already), or a packed .keel file. Problems go to
 * *ret (to free with keel__lint_done, also on failure); the return value is
 * an error only when the checks could not run (path unreadable, no memory). */
KEEL_WUR int keel__lint_package(const char *path, keel__lint *ret, keel_error *err);
void keel__lint_done(keel__lint *l);

#endif
