/*
 * config.h - keeld's configuration: defaults, the config file parser, and
 * the limits every parser of outside bytes is bounded by.
 *
 * The file format is deliberately small: one `key = value` per line, `#`
 * starts a comment, blank lines ignored, values may be "double quoted".
 * Unknown keys are an error (a typo must not silently change nothing), unless
 * they start with `x-` (reserved for local tooling). Sizes accept K/M/G
 * suffixes (powers of 1024), durations s/m/h/d suffixes.
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

#define KEEL_CONFIG_PATH_MAX 1024

typedef struct keel_config {
    char state_dir[KEEL_CONFIG_PATH_MAX];   /* default /var/lib/keel */
    char trust_dir[KEEL_CONFIG_PATH_MAX];   /* default STATE_DIR/trust when empty */
    char listen[64];                        /* address, default 127.0.0.1 */
    uint16_t port;                          /* default 8480; 0 disables TCP */
    char unix_socket[KEEL_CONFIG_PATH_MAX]; /* empty: none */
    unsigned threads;                       /* HTTP worker threads, default 2 */
    uint64_t max_body_bytes;                /* JSON request bodies, default 1 MiB */
    uint64_t max_infer_body_bytes;          /* inference request bodies, default 64 MiB */
    uint64_t max_sessions;                  /* stateful sessions per package, default 1024 */
    uint64_t session_idle_s;                /* session idle expiry, default 300 */
    char device_id[64];                     /* this device's name upstream; default hostname */
    bool queue_sync;                        /* queue durability: true sync, false group */
    uint64_t queue_max_bytes;               /* default 256 MiB */
    uint64_t queue_max_rows;                /* default 1,000,000 */
    uint64_t queue_min_free;                /* free disk to leave, default 64 MiB */
    char uplink[64];                        /* none (default), mqtt, http */
    char mqtt_host[KEEL_CONFIG_PATH_MAX];   /* broker host */
    uint16_t mqtt_port;                     /* 0: 1883, or 8883 with TLS */
    char uplink_url[KEEL_CONFIG_PATH_MAX];  /* http: where envelopes are POSTed */
    char uplink_ca[KEEL_CONFIG_PATH_MAX];   /* CA file: turns TLS on for MQTT */
    char uplink_cert[KEEL_CONFIG_PATH_MAX]; /* client certificate (PEM) */
    char uplink_key[KEEL_CONFIG_PATH_MAX];  /* its key */
    char uplink_username[64];
    char uplink_password_file[KEEL_CONFIG_PATH_MAX]; /* the password, in a file of its own */
    char sync_window[64];                    /* "always", "every 15m", "02:00-04:00", both */
    uint64_t uplink_bandwidth;               /* bytes per second on the wire; 0: no cap */
    char upstream_url[KEEL_CONFIG_PATH_MAX]; /* hybrid routing: an OIP endpoint; "" none */
    bool read_auth;                          /* GET /api/... needs the token; default false */
    uint64_t request_timeout_s;              /* idle connection timeout, default 30 */
    unsigned max_connections;                /* default 64 */
    uint64_t verify_interval_s;              /* background deep re-check, default 1 day; 0 off */
    keel_log_level log_level;                /* default info */
    bool syslog;                             /* default false */
    keel_limits limits;
} keel_config;

KEEL_API void keel_config_default(keel_config *ret);

/*
 * Parses config text (data, len; need not be NUL-terminated) over the values
 * already in *cfg. `origin` (borrowed) names the source in messages. On error
 * *cfg may be partly updated: parse into a copy when that matters.
 */
KEEL_API KEEL_WUR int keel_config_parse(keel_config *cfg, const char *data, size_t len,
                                        const char *origin, keel_error *err);
/* Reads and parses a file (at most 1 MiB). */
KEEL_API KEEL_WUR int keel_config_load(keel_config *cfg, const char *path, keel_error *err);
/* Sets one key from a string, e.g. from a command-line flag. */
KEEL_API KEEL_WUR int keel_config_set(keel_config *cfg, const char *key, const char *value,
                                      keel_error *err);
/* The effective trust dir: trust_dir, or STATE_DIR/trust. Writes at most n bytes. */
KEEL_API void keel_config_trust_dir(const keel_config *cfg, char *buf, size_t n);

#endif
