/* pkg_internal.h - helpers shared by the files of lib/pkg. */
#ifndef KEEL_PKG_INTERNAL_H
#define KEEL_PKG_INTERNAL_H

#include "core/core.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "keel/pkg.h"

/* [a-z0-9][a-z0-9._-]*, shorter than KEEL_NAME_MAX. */
bool keel__pkg_name_valid(const char *s);
/* NULL when p (len bytes) is a safe relative member path, else why not. */
const char *keel__pkg_path_problem(const char *p, size_t len);
/* The manifest's cJSON tree (const cJSON *), for modules that read sections. */
const void *keel__manifest_json(const keel_manifest *m);

#endif
