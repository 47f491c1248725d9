/*
 * uplink.h - the uplink: one background thread that pulls batches from a
 * keel__sync_source, wraps each in a batch envelope (envelope.h) and
 * delivers it over MQTT (QoS 1, libmosquitto) or HTTP (POST, libcurl),
 * acknowledging to the source only what the far side confirmed (PUBACK,
 * or a 2xx answer). Delivery is at least once: receivers dedupe by
 * message id.
 *
 * Owns: the connection, sync windows, the bandwidth cap, adaptive batch
 * size, backoff with jitter, the circuit breaker, heartbeats, and their
 * status and metrics. It does not own the messages (the source does), nor
 * their order: the source hands out the highest class first and the
 * uplink sends batches in the order it gets them.
 *
 * Topic layout (MQTT): keel/DEVICE_ID/PRIORITY/TOPIC, PRIORITY one of
 * critical|high|normal|bulk; every batch holds one priority and one topic.
 * docs/uplink.md describes the policies and the wire format.
 *
 * Thread safety: wake, status_json and a metrics scrape may run on any
 * thread while the uplink runs; start and stop from one owner. The source's
 * functions are called only from the uplink's thread.
 */
#ifndef KEEL_SYNC_UPLINK_H
#define KEEL_SYNC_UPLINK_H

#include "core/conf.h"
#include "obs/metrics.h"
#include "sync/sync.h"

typedef enum keel__uplink_transport {
    KEEL__UPLINK_MQTT = 0,
    KEEL__UPLINK_HTTP = 1,
} keel__uplink_transport;

/*
 * When messages below critical may go. Critical messages go at once,
 * whatever the window says.
 *  - Neither part set: always (continuous sync).
 *  - every_s: a window opens every every_s seconds (the first at start) and
 *    stays open until the source has nothing left to send.
 *  - from_min/to_min: only while local time is in [from, to) (minutes
 *    since local midnight; to < from wraps past midnight).
 *  - Both: an interval window opens only inside the daily range.
 */
typedef struct keel__sync_window {
    uint32_t every_s; /* 0: no interval */
    int32_t from_min; /* -1: no daily range */
    int32_t to_min;   /* -1: no daily range */
} keel__sync_window;

/* Parses "always", "every 15m" (s, m, h units), "02:00-04:00", or both
 * separated by a comma: "every 1h, 22:00-06:00". */
KEEL_WUR int keel__sync_window_parse(const char *s, keel__sync_window *ret, keel_error *err);
/* Whether the daily range (if any) admits wall-clock second t in local time. */
bool keel__sync_window_in_range(const keel__sync_window *w, int64_t t);

/* The uplink's settings (options.c). */
extern const keel__option_set keel__sync_options;

typedef struct keel__uplink_opts {
    keel__uplink_transport transport;
    /* Required: MQTT client id and topic level; 1..128 bytes of
     * [A-Za-z0-9._-]. */
    const char *device_id;

    /* MQTT: host (required) and port (default 1883, 8883 with TLS). */
    const char *host;
    int port;
    unsigned keepalive_s; /* MQTT PINGREQ interval; default 60 */
    /* HTTP: the URL envelopes are POSTed to (required). */
    const char *url;
    unsigned heartbeat_s; /* HTTP: HEAD probe after this long idle; 0 never; default 60 */

    /* TLS and credentials, both transports (all optional). ca_file turns
     * TLS on for MQTT; for HTTP an https URL does. */
    const char *ca_file;
    const char *cert_file; /* client certificate (PEM), with key_file */
    const char *key_file;
    const char *username;
    const char *password;

    keel__sync_window window; /* default: always */
    uint64_t bandwidth_bps;   /* wire bytes per second; 0: no cap */

    /* Adaptive batching: a batch starts at batch_start messages, doubles
     * (up to batch_max) while acks come back within ack_target_ms, halves
     * (down to 1) on a failure or timeout. batch_max_bytes bounds the
     * payload bytes asked of the source per batch. */
    uint32_t batch_start;        /* default 32 */
    uint32_t batch_max;          /* default 1024 */
    size_t batch_max_bytes;      /* default 1 MiB */
    uint32_t ack_target_ms;      /* default 1000 */
    uint32_t ack_timeout_ms;     /* PUBACK or HTTP answer; default 10000 */
    uint32_t connect_timeout_ms; /* default 10000 */
    bool compress;               /* zstd envelopes; default true */

    /* Backoff between failed attempts: full jitter, a random delay in
     * [0, min(cap, base * 2^(failures-1))]. Defaults 1 s, 5 min. */
    uint32_t backoff_base_ms;
    uint32_t backoff_cap_ms;
    /* Circuit breaker: open after breaker_failures consecutive failures,
     * one half-open probe after breaker_cooldown_ms. Defaults 5, 30 s. */
    uint32_t breaker_failures;
    uint32_t breaker_cooldown_ms;

    /* How often the source is looked at without a wake; default 1000. */
    uint32_t poll_ms;
    /* MQTT: a topic filter subscribed (QoS 1) on every connect, e.g. the
     * device shadow's desired document; on_message is called on the
     * uplink's thread for each message (retained ones on connect too). */
    const char *subscribe;
    void (*on_message)(void *ctx, const char *topic, const void *payload, size_t len);
    void *msg_ctx;
    /* Called on the uplink's thread when a working connection is made
     * (up) or lost; endpoint is borrowed for the call. May be NULL. */
    void (*on_link)(void *ctx, bool up, const char *endpoint);
    void *link_ctx;
    /* Wall-clock seconds for the daily range (tests move time); NULL: the
     * system clock. */
    int64_t (*clock)(void *ctx);
    void *clock_ctx;
    /* Where batch numbers are reserved so that they keep rising across
     * restarts (keeld: STATE_DIR/uplink.seq, written 0600); NULL: in memory
     * only, from the clock at each start. */
    const char *seq_path;
    /* Where the uplink registers its keel_uplink_* families while it runs
     * (borrowed; must outlive the uplink); NULL: no metrics. */
    keel__metrics *metrics;
} keel__uplink_opts;

void keel__uplink_opts_default(keel__uplink_opts *ret);

typedef struct keel__uplink keel__uplink;

/*
 * Checks o (strings are copied), then starts the uplink's thread. src is
 * copied; src->ctx is borrowed and must outlive the uplink. Nothing is
 * connected until there is something to send. Errors: KEEL_EINVALID (the
 * message names the option), KEEL_ENOMEM, KEEL_EIO (no thread).
 */
KEEL_WUR int keel__uplink_start(const keel__uplink_opts *o, const keel__sync_source *src,
                                keel__uplink **ret, keel_error *err);
/* Stops the thread (promptly: an attempt in flight is abandoned, its
 * messages stay in the source), disconnects and frees. Accepts NULL. */
void keel__uplink_stop(keel__uplink *u);
/* New messages wait in the source. critical: one of them is critical, so
 * look now, whatever the window (backoff and an open breaker still hold). */
void keel__uplink_wake(keel__uplink *u, bool critical);
/* A JSON object (malloc'd): transport, endpoint, connected, breaker,
 * window, batch size, counters, last error. NULL on allocation failure. */
char *keel__uplink_status_json(keel__uplink *u);

/* Breaker states, as in status and metrics. */
enum { KEEL__UPLINK_CLOSED, KEEL__UPLINK_OPEN, KEEL__UPLINK_HALF_OPEN };

#endif
