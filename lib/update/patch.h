/*
 * patch.h - per-file binary patches (codec "keel-tpatch-1"): a target file
 * expressed against a base file the device already holds, with
 * tensor-aware transforms for model weights, exact bytes restored and
 * hash-checked. The reader is bounded and fuzzed (fuzz/fuzz_patch.c).
 */
#ifndef KEEL_UPDATE_PATCH_H
#define KEEL_UPDATE_PATCH_H

#include <stdint.h>

#include "core/core.h"

#define KEEL__PATCH_CODEC "keel-tpatch-1"

/* Writes a patch turning base_path into target_path to out_path
 * (atomically). */
KEEL_WUR int keel__patch_make(const char *base_path, const char *target_path, const char *out_path,
                              keel_error *err);

/* Applies patch_path to base_path, writing out_path (atomically); the result
 * must hash to expect_sha256 (32 bytes) or nothing is left at out_path and
 * the error says so (CORRUPT). Peak memory bounded: see docs/update.md. */
KEEL_WUR int keel__patch_apply(const char *base_path, const char *patch_path, const char *out_path,
                               const uint8_t expect_sha256[32], keel_error *err);

#endif
