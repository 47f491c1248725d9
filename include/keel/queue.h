/*
 * queue.h - the durable priority queue of store-and-forward: messages the
 * device produced that wait for a link to the far side.
 *
 * Owns: STATE_DIR/queue.db (SQLite, WAL, synchronous=FULL), a database of its
 * own so that queue write load never blocks package operations on keel.db.
 * Knows nothing of the network (the uplink pulls batches and acknowledges
 * them) nor of what a payload means.
 *
 * A message is acknowledged to its producer (keel_queue_enqueue returns
 * KEEL_OK) only once the transaction holding it has committed and been
 * fsynced; in both durability modes an acknowledged message survives kill -9
 * and power loss (docs/internals/queue.md says exactly what is promised and
 * what is not). Delivery is at-least-once: a message stays queued until
 * keel_queue_ack removes it.
 *
 * When a limit is reached the queue evicts, in this order: expired messages,
 * then bulk, then normal, oldest first. Critical and high messages are never
 * evicted: when they fill the queue, enqueue returns KEEL_ENOSPACE
 * (backpressure) and nothing already queued is lost.
 *
 * Thread safety: every function except keel_queue_close may be called from
 * any number of threads at once. A queue database has one owner: a second
 * open of the same file, in this or another process, fails with KEEL_EBUSY.
 */
#ifndef KEEL_QUEUE_H
#define KEEL_QUEUE_H

#include "keel/common.h"
#include "keel/error.h"

/* Priority classes, highest first. Delivery order is strict: every critical
 * message before any high one, and so on; FIFO by id within a class. */
typedef enum keel_prio {
    KEEL_PRIO_CRITICAL = 0,
    KEEL_PRIO_HIGH = 1,
    KEEL_PRIO_NORMAL = 2,
    KEEL_PRIO_BULK = 3,
    KEEL_PRIO_COUNT = 4,
} keel_prio;

/* "critical", "high", "normal", "bulk"; "unknown" otherwise. Static storage. */
KEEL_API const char *keel_prio_name(keel_prio p);
/* Parses one of the names above (exactly len bytes of s). */
KEEL_API KEEL_WUR int keel_prio_parse(const char *s, size_t len, keel_prio *ret, keel_error *err);

typedef enum keel_queue_durability {
    /* Each enqueue is its own transaction, committed and fsynced before the
     * call returns. One fsync per message. */
    KEEL_QUEUE_SYNC = 0,
    /* Group commit: a committer thread writes the messages of concurrent
     * producers in one transaction; each producer's call returns after the
     * transaction holding its message committed and was fsynced. Same
     * promise per acknowledged message as SYNC, fewer fsyncs under load. */
    KEEL_QUEUE_GROUP = 1,
} keel_queue_durability;

/* "sync", "group". Static storage. */
KEEL_API const char *keel_queue_durability_name(keel_queue_durability d);

/* Bounds on a message (bytes, not counting a terminating NUL). */
#define KEEL_QUEUE_TOPIC_MAX        256u
#define KEEL_QUEUE_CONTENT_TYPE_MAX 127u
#define KEEL_QUEUE_IDEM_KEY_MAX     128u
#define KEEL_QUEUE_PAYLOAD_DEFAULT  (16u * 1024 * 1024)
#define KEEL_QUEUE_PAYLOAD_LIMIT    (512u * 1024 * 1024) /* highest max_payload accepted */
#define KEEL_QUEUE_WINDOW_MAX_US    10000u               /* group_window_us at most 10 ms */

/* Reads wall-clock seconds; a test or simulation may replace the clock. */
typedef int64_t (*keel_queue_clock_fn)(void *ctx);

typedef struct keel_queue_opts {
    keel_queue_durability durability; /* default KEEL_QUEUE_GROUP */
    /* Group mode: how long the committer may wait for more producers when
     * the pending batch is less than half the size of the last one (never
     * while a producer is alone: it commits at once). 0: never wait. At most
     * KEEL_QUEUE_WINDOW_MAX_US. Default 1000. */
    uint32_t group_window_us;
    /* Limits; 0 means none. Message bytes are payload + topic + content
     * type + idempotency key. Defaults: 256 MiB, 1,000,000, 64 MiB. */
    uint64_t max_bytes;
    uint64_t max_rows;
    uint64_t min_free_disk; /* free bytes to leave on the queue's filesystem (statvfs) */
    /* Largest payload accepted; 0: KEEL_QUEUE_PAYLOAD_DEFAULT. At most
     * KEEL_QUEUE_PAYLOAD_LIMIT. */
    uint64_t max_payload;
    /* An idempotency key is remembered while its message is queued and
     * until this many seconds after it was enqueued. Default 3600. */
    uint32_t idem_retention_s;
    keel_queue_clock_fn clock; /* NULL: the wall clock */
    void *clock_ctx;
} keel_queue_opts;

KEEL_API void keel_queue_opts_default(keel_queue_opts *ret);

typedef struct keel_queue keel_queue;

/*
 * Opens (creating it and its directory when absent) the queue database at
 * path, usually STATE_DIR/queue.db. opts (may be NULL for defaults) is
 * copied. In group mode this starts the committer thread.
 */
KEEL_API KEEL_WUR int keel_queue_open(const char *path, const keel_queue_opts *opts,
                                      keel_queue **ret, keel_error *err);
/* Commits what producers already handed over, stops the committer, closes
 * the database. No other call on q may be running or start. Accepts NULL. */
KEEL_API void keel_queue_close(keel_queue *q);

/* --- producing --------------------------------------------------------------- */

/* A message to enqueue. Every pointer is borrowed for the duration of the
 * call; the queue copies what it keeps. */
typedef struct keel_msg_in {
    const char *topic;        /* required: 1..KEEL_QUEUE_TOPIC_MAX bytes, no control
                                 characters, no MQTT wildcards '+' '#' */
    keel_prio prio;           /* KEEL_PRIO_CRITICAL..KEEL_PRIO_BULK */
    const void *payload;      /* may be NULL when payload_len is 0 */
    size_t payload_len;       /* at most the queue's max_payload */
    const char *content_type; /* NULL: "application/octet-stream" */
    const char *idem_key;     /* NULL or "": none */
    int64_t ttl_s;            /* 0: never expires; else expires ttl_s after enqueue */
} keel_msg_in;

/*
 * Stores m and returns KEEL_OK once it is durable (see the modes above), with
 * its id in *ret_id (may be NULL). Ids increase monotonically and are never
 * reused. When m carries an idempotency key already known to the queue,
 * nothing is stored and *ret_id is the original message's id.
 * Errors: KEEL_EINVALID (bad message, the message says which field),
 * KEEL_ETOOBIG (payload over max_payload, or the message alone over
 * max_bytes), KEEL_ENOSPACE (the queue is full of messages this one may not
 * evict; nothing was stored or evicted beyond expired messages), KEEL_EIO and
 * others from the database.
 */
KEEL_API KEEL_WUR int keel_queue_enqueue(keel_queue *q, const keel_msg_in *m, uint64_t *ret_id,
                                         keel_error *err);

/*
 * The same promise without holding the caller: validates m and copies it
 * (every pointer in m is borrowed for this call only), then returns at once.
 * done(ctx, rc, id, err) is called exactly once when the transaction that
 * holds the message has committed (rc KEEL_OK, id set) or failed (rc and err
 * say why, err borrowed for the call); it runs on the queue's committer
 * thread in group mode (inside this call in sync mode), so it must be quick
 * and must not call back into q. A validation error is returned by this
 * call itself and done is not called. In group mode every message handed
 * over before keel_queue_close is committed and reported before it returns.
 */
typedef void (*keel_queue_done_fn)(void *ctx, int rc, uint64_t id, const keel_error *err);
KEEL_API KEEL_WUR int keel_queue_enqueue_async(keel_queue *q, const keel_msg_in *m,
                                               keel_queue_done_fn done, void *ctx, keel_error *err);

/* --- consuming --------------------------------------------------------------- */

typedef struct keel_msg {
    uint64_t id;
    keel_prio prio;
    int64_t created_at;       /* wall-clock seconds at enqueue */
    int64_t expires_at;       /* wall-clock seconds; 0: never */
    const char *topic;        /* NUL-terminated */
    const char *content_type; /* NUL-terminated */
    const char *idem_key;     /* NULL when none */
    const void *payload;      /* payload_len bytes (not NUL-terminated) */
    size_t payload_len;
} keel_msg;

/* Stop the batch before the first message whose priority class or topic
 * differs from the first one's (an uplink publishing per topic). */
#define KEEL_QUEUE_PEEK_SAME_TOPIC 0x1u

/*
 * Up to max_msgs of the next messages in strict priority order, skipping
 * expired ones, with at most max_bytes of payload in all (the first message
 * is returned even when it alone is larger). Messages stay queued until
 * acked; a second peek returns them again. Only committed (durable)
 * messages are returned. *ret is one allocation (strings and payloads
 * inside it), taken by the caller: free it with keel_queue_batch_free.
 * *ret is NULL and *ret_n 0 when nothing is deliverable.
 */
KEEL_API KEEL_WUR int keel_queue_peek_batch(keel_queue *q, size_t max_msgs, size_t max_bytes,
                                            unsigned flags, keel_msg **ret, size_t *ret_n,
                                            keel_error *err);
KEEL_API void keel_queue_batch_free(keel_msg *batch);

/* Removes delivered messages (ids borrowed). Unknown ids are ignored, so an
 * ack may be repeated. One transaction. */
KEEL_API KEEL_WUR int keel_queue_ack(keel_queue *q, const uint64_t *ids, size_t n, keel_error *err);

/* Removes every message expired at wall-clock second `now` (expires_at <=
 * now) and forgets idempotency keys past their retention. *ret_removed (may
 * be NULL): messages removed. keeld calls it periodically. */
KEEL_API KEEL_WUR int keel_queue_expire(keel_queue *q, int64_t now, uint64_t *ret_removed,
                                        keel_error *err);

/* Records the time of the last successful sync with the far side (durable). */
KEEL_API KEEL_WUR int keel_queue_mark_synced(keel_queue *q, int64_t when, keel_error *err);

/* --- observing ----------------------------------------------------------------- */

typedef struct keel_queue_class_stats {
    uint64_t depth;       /* messages queued (expired ones included until removed) */
    uint64_t bytes;       /* their accounted bytes */
    int64_t oldest_age_s; /* now - created_at of the oldest; -1 when empty */
    uint64_t evicted;     /* removed to make room, ever (persisted) */
    uint64_t refused;     /* enqueues refused with KEEL_ENOSPACE since open */
} keel_queue_class_stats;

typedef struct keel_queue_stats {
    keel_queue_durability durability;
    keel_queue_class_stats cls[KEEL_PRIO_COUNT]; /* indexed by keel_prio */
    uint64_t depth, bytes;                       /* sums over the classes */
    uint64_t expired;                            /* removed because expired, ever (persisted) */
    int64_t last_sync;                           /* keel_queue_mark_synced; 0: never */
    int64_t now;                                 /* when these were taken */
    uint64_t max_bytes, max_rows, min_free_disk, max_payload;
    uint64_t enqueued; /* messages stored since open (duplicates not counted) */
    uint64_t commits;  /* enqueue transactions since open: enqueued/commits = batch size */
} keel_queue_stats;

KEEL_API KEEL_WUR int keel_queue_stats_get(keel_queue *q, keel_queue_stats *ret, keel_error *err);

/*
 * Renders stats as the JSON document of GET /api/queue (malloc'd,
 * NUL-terminated, taken by the caller):
 * {"format":1,"durability":"group","depth":N,"bytes":N,"expired":N,
 *  "last_sync":"RFC 3339"|null,"limits":{...},"enqueued":N,"commits":N,
 *  "classes":{"critical":{"depth":N,"bytes":N,"oldest_age_s":N|null,
 *  "evicted":N,"refused":N},"high":{...},"normal":{...},"bulk":{...}}}
 */
KEEL_API KEEL_WUR int keel_queue_stats_json(const keel_queue_stats *st, char **ret_json,
                                            keel_error *err);

#endif
