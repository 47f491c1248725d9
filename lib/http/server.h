/*
 * server.h - keeld's HTTP layer on libmicrohttpd: routing, bearer-token auth,
 * request size limits, JSON responses. No microhttpd type leaves lib/http.
 * Business rules live in the store; this file only translates.
 */
#ifndef KEEL_HTTP_SERVER_H
#define KEEL_HTTP_SERVER_H

#include "core/core.h"

typedef struct keel__http keel__http;

/* Starts serving cfg (copied) over store (borrowed; must outlive the server).
 * Loads or creates STATE_DIR/token. */
KEEL_WUR int keel__http_start(const keel_config *cfg, keel_store *store, keel__http **ret,
                              keel_error *err);
/* Stops accepting, finishes requests in flight, frees. NULL is fine. */
void keel__http_stop(keel__http *h);
/* Applies limits and the log level of a re-read config; listen addresses
 * need a restart (logged). */
void keel__http_reload(keel__http *h, const keel_config *cfg);
/* Recomputes readiness (after a background re-check). */
void keel__http_refresh(keel__http *h, unsigned verify_flags);

/* Reads STATE_DIR/token, creating it (0600, 32 random bytes as hex) when absent. */
KEEL_WUR int keel__http_token(const char *state_dir, char out[65], keel_error *err);

#endif
