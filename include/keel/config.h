/*
 * config.h - the limits every parser of package bytes is bounded by. (The
 * daemon's settings are declared by the modules that own them and parsed
 * by the runtime: no settings struct is part of the public API.)
 */
#ifndef KEEL_CONFIG_H
#define KEEL_CONFIG_H

#include "keel/common.h"
#include "keel/error.h"
#include "keel/log.h"

/* Bounds on what a package (or anything read from outside) may make us do. */
typedef struct keel_limits {
    uint64_t max_package_bytes;  /* whole .keel file / upload */
    uint64_t max_file_bytes;     /* one member */
    uint32_t max_manifest_bytes; /* keel.json */
    uint32_t max_sig_bytes;      /* keel.sig */
    uint32_t max_files;          /* members listed in a manifest */
} keel_limits;

KEEL_API void keel_limits_default(keel_limits *ret);

#endif
