/* layout.c - the state directory's file names (keel/layout.h), in one table. */
#include <stdio.h>

#include "core/core.h"
#include "keel/layout.h"

static const char *const names[KEEL_STATE_COUNT] = {
    [KEEL_STATE_STORE_DB] = "keel.db",
    [KEEL_STATE_LOCK] = "lock",
    [KEEL_STATE_BLOBS] = "blobs/sha256",
    [KEEL_STATE_STAGING] = "staging",
    [KEEL_STATE_STAGING_BLOBS] = "staging/blobs",
    [KEEL_STATE_TRUST] = "trust",
    [KEEL_STATE_QUEUE_DB] = "queue.db",
    [KEEL_STATE_REPROCESS_DB] = "reprocess.db",
    [KEEL_STATE_SHADOW] = "shadow.json",
    [KEEL_STATE_TOKEN] = "token",
    [KEEL_STATE_CACHE_ONNX] = "cache/onnx",
    [KEEL_STATE_UPLINK_SEQ] = "uplink.seq",
    [KEEL_STATE_UPDATE_DIR] = "update",
    [KEEL_STATE_UPDATE_VERDICTS] = "update/verdicts.json",
    [KEEL_STATE_UPDATE_PROBATION] = "update/probation.json",
};

const char *keel_state_name(keel_state_file f)
{
    return (unsigned)f < KEEL_STATE_COUNT ? names[f] : "";
}

int keel_state_path(const char *state_dir, keel_state_file f, char *buf, size_t n)
{
    if ((unsigned)f >= KEEL_STATE_COUNT || keel__snprintf(buf, n, "%s/%s", state_dir, names[f])) {
        if (n)
            buf[0] = '\0';
        return -1;
    }
    return 0;
}
