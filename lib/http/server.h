/*
 * server.h - keeld's HTTP API on libmicrohttpd, over a runtime. Routes,
 * their auth classes and body limits are in one table (routes.c); each API
 * family answers in its own file (api_packages.c, api_v2.c, api_events.c,
 * api_shadow.c, api_system.c). A new family (openai, dashboard) adds its
 * file and its rows to the table; this interface does not change.
 */
#ifndef KEEL_HTTP_SERVER_H
#define KEEL_HTTP_SERVER_H

#include "runtime/runtime.h"

typedef struct keel__http keel__http;

/* Listens where the runtime's config says (listen:port, unix_socket) and
 * serves it. rt is borrowed and must outlive the server. */
KEEL_WUR int keel__http_start(keel__runtime *rt, keel__http **ret, keel_error *err);
/* Ends open streams, lets answers in flight land, stops accepting and
 * frees. NULL is fine. */
void keel__http_stop(keel__http *h);

#endif
