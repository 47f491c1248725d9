/*
 * layout.h - the state directory's layout: every file and folder keel keeps
 * under STATE_DIR, named in one table (lib/core/layout.c). Modules, the CLI
 * and tools build paths only through keel_state_path; a new module that
 * keeps durable state adds its entry here.
 *
 *   STATE_DIR/keel.db          the store: packages, slots, stamps, journal
 *   STATE_DIR/lock             the store's single-writer lock
 *   STATE_DIR/blobs/sha256/    verified, read-only content
 *   STATE_DIR/staging/         uploads and blobs being written
 *   STATE_DIR/trust/           pinned keys, revocations (unless trust_dir)
 *   STATE_DIR/queue.db         the store-and-forward queue
 *   STATE_DIR/reprocess.db     escalations waiting for the upstream
 *   STATE_DIR/shadow.json      the device shadow
 *   STATE_DIR/uplink.seq       the uplink's batch numbers reserved so far
 *   STATE_DIR/token            the API bearer token (0600)
 *   STATE_DIR/cache/onnx/      derived files: optimized ONNX graphs
 *   STATE_DIR/update/verdicts.json   versions not to retry, versions promoted
 *   STATE_DIR/update/probation.json  versions on probation and their statistics
 */
#ifndef KEEL_LAYOUT_H
#define KEEL_LAYOUT_H

#include <stddef.h>

#include "keel/common.h"

typedef enum keel_state_file {
    KEEL_STATE_STORE_DB = 0,
    KEEL_STATE_LOCK,
    KEEL_STATE_BLOBS,
    KEEL_STATE_STAGING,
    KEEL_STATE_STAGING_BLOBS,
    KEEL_STATE_TRUST,
    KEEL_STATE_QUEUE_DB,
    KEEL_STATE_REPROCESS_DB,
    KEEL_STATE_SHADOW,
    KEEL_STATE_TOKEN,
    KEEL_STATE_CACHE_ONNX,
    KEEL_STATE_UPLINK_SEQ,
    KEEL_STATE_UPDATE_DIR,
    KEEL_STATE_UPDATE_VERDICTS,
    KEEL_STATE_UPDATE_PROBATION,
    KEEL_STATE_COUNT
} keel_state_file;

/* The entry's name relative to STATE_DIR ("queue.db"); static storage. */
KEEL_API const char *keel_state_name(keel_state_file f);
/* Writes STATE_DIR/NAME into buf (n bytes). Returns 0, or -1 when it does
 * not fit or f is out of range (buf is then ""). */
KEEL_API int keel_state_path(const char *state_dir, keel_state_file f, char *buf, size_t n);

#endif
