/*
 * sync.h - the uplink: moves queued messages to a broker or an HTTP
 * endpoint when a link is there. It knows nothing of what a message means,
 * and nothing of how the queue stores it: it pulls batches from a source
 * and acknowledges what the far side accepted.
 */
#ifndef KEEL_SYNC_SYNC_H
#define KEEL_SYNC_SYNC_H

#include "core/core.h"

enum { KEEL__PRIO_CRITICAL, KEEL__PRIO_HIGH, KEEL__PRIO_NORMAL, KEEL__PRIO_BULK, KEEL__NPRIO };

/* One message as the uplink sees it (borrowed from the source until ack). */
typedef struct keel__sync_msg {
    uint64_t id;
    int priority; /* KEEL__PRIO_* */
    int64_t created;
    const char *topic;
    const char *content_type;
    const void *payload;
    size_t len;
} keel__sync_msg;

/* Where messages come from (the durable queue, in keeld). */
typedef struct keel__sync_source {
    void *ctx;
    /* The next batch in strict priority order (all critical before any
     * high, ...; FIFO within a class), at most max messages and max_bytes of
     * payload, all of one priority and topic. Messages stay in the source
     * until acked. *ret points into a buffer the source owns until the next
     * call or release. When any message waits, at least one is returned,
     * even if it alone is over max_bytes; *n == 0 means nothing waits. The
     * uplink has at most one batch out at a time: a later call may return
     * the same (still unacked) messages again. Called only from the
     * uplink's thread. */
    KEEL_WUR int (*next_batch)(void *ctx, size_t max, size_t max_bytes, keel__sync_msg **ret,
                               size_t *n, keel_error *err);
    void (*release)(void *ctx);
    /* The far side accepted these; remove them (idempotent). */
    KEEL_WUR int (*ack)(void *ctx, const uint64_t *ids, size_t n, keel_error *err);
    /* Tells the source the time of the last successful sync. */
    void (*synced)(void *ctx, int64_t when);
} keel__sync_source;

#endif
