/*
 * patch_format.h - the inside of a "keel-tpatch-1" patch (docs/update.md,
 * "Patches"): the fixed header, the region and segment table, the tensor
 * transforms, and the in-memory entry points that patch.c's file functions,
 * the unit tests and fuzz/fuzz_patch.c share. Callers outside lib/update
 * use patch.h.
 */
#ifndef KEEL_UPDATE_PATCH_FORMAT_H
#define KEEL_UPDATE_PATCH_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#define KEEL__PATCH_MAGIC       "KEELPTCH"
#define KEEL__PATCH_VERSION     1u
#define KEEL__PATCH_HEADER_SIZE 104u
/* Limits on what a patch may declare (checked before any allocation). */
#define KEEL__PATCH_MAX_BASE    ((uint64_t)3 << 29) /* 1.5 GiB: base + segment fits a 2 GiB window */
#define KEEL__PATCH_MAX_TARGET  ((uint64_t)64 << 30)
#define KEEL__PATCH_MAX_TABLE   ((uint32_t)16 << 20)
#define KEEL__PATCH_MAX_REGIONS ((uint32_t)1 << 20)
#define KEEL__PATCH_SEGMENT     ((uint32_t)16 << 20) /* what keel__patch_make writes */
#define KEEL__PATCH_MAX_SEGMENT ((uint32_t)64 << 20)
#define KEEL__PATCH_BLOCK       ((uint32_t)1 << 20) /* tensor bytes transformed together */

/* Transforms (header field "transform"). */
enum {
    KEEL__PATCH_PLAIN = 0,  /* zstd with the base as prefix */
    KEEL__PATCH_PLANES = 1, /* tensors: rotate left 1 bit, split into byte planes */
    KEEL__PATCH_SUB = 2,    /* tensors: minus the paired base tensor, byte planes */
    KEEL__PATCH_XOR = 3,    /* tensors: xor the paired base tensor, byte planes */
    KEEL__PATCH_NTRANSFORMS
};

typedef struct keel__patch_region {
    uint64_t off, len; /* bytes in the file; len a multiple of width */
    uint32_t width;    /* element bytes: 1, 2 or 4 */
    uint32_t pair;     /* target regions: base region index + 1, 0 = none */
} keel__patch_region;

typedef struct keel__patch_segment {
    uint64_t usize, csize; /* transformed target bytes, zstd frame bytes */
} keel__patch_segment;

typedef struct keel__patch_info {
    uint32_t version, transform, segment_max, table_len;
    uint64_t base_size, target_size;
    uint8_t base_sha256[32], target_sha256[32];
    uint32_t nbase, ntarget, nsegments;
    keel__patch_region *base, *target; /* owned; keel__patch_info_done */
    keel__patch_segment *segments;
    uint64_t payload_size; /* sum of csize */
} keel__patch_info;

/* Parses the fixed header (KEEL__PATCH_HEADER_SIZE bytes at p) into info:
 * the fields only, no table. */
KEEL_WUR int keel__patch_parse_header(const uint8_t *p, size_t n, keel__patch_info *info,
                                      keel_error *err);
/* Parses the table (info->table_len bytes at p) into info's arrays. */
KEEL_WUR int keel__patch_parse_table(const uint8_t *p, size_t n, keel__patch_info *info,
                                     keel_error *err);
void keel__patch_info_done(keel__patch_info *info);
/* Header and table of the patch at path (the payload is not read). */
KEEL_WUR int keel__patch_read_info(const char *path, keel__patch_info *info, keel_error *err);

/* Where applied bytes go. Returns KEEL_OK or sets err. */
typedef int (*keel__patch_sink)(void *ctx, const uint8_t *p, size_t n, keel_error *err);

/* Applies the patch held in memory to base (base_len bytes, borrowed; not
 * modified), handing the target's bytes to sink in order, and its SHA-256
 * to ret_sha256 (computed, not the header's: the caller compares). With
 * check_base false, the base's hash is not compared (fuzzing). */
KEEL_WUR int keel__patch_apply_mem(const uint8_t *base, size_t base_len, const uint8_t *patch,
                                   size_t patch_len, bool check_base, keel__patch_sink sink,
                                   void *ctx, uint8_t ret_sha256[32], keel_error *err);

/* Makes a patch in memory (malloc'd into *ret, *ret_len). transform < 0:
 * try each transform that applies and keep the smallest; else that one
 * (tests). */
KEEL_WUR int keel__patch_make_mem(const uint8_t *base, size_t base_len, const uint8_t *target,
                                  size_t target_len, int transform, uint8_t **ret, size_t *ret_len,
                                  keel_error *err);

/* The tensor payloads of an ONNX file (raw_data of TensorProto in the
 * model's graphs, at any nesting of subgraphs), found by a bounded
 * protobuf walk; anything else (or a malformed file) has none. Returns
 * the count (at most max) written to out. */
size_t keel__patch_onnx_regions(const uint8_t *p, size_t n, keel__patch_region *out, size_t max);

/* Name of a transform ("plain", "planes", "sub", "xor"). */
const char *keel__patch_transform_name(uint32_t t);

#endif
