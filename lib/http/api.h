/*
 * api.h - the handlers of each API family, for the route table (routes.c).
 * One file per family: api_system.c (health, readiness, status, metrics,
 * the bus as server-sent events), api_packages.c, api_v2.c (the Open
 * Inference Protocol), api_events.c (events and the queue), api_shadow.c.
 */
#ifndef KEEL_HTTP_API_H
#define KEEL_HTTP_API_H

#include "http/http.h"

/* api_system.c */
void keel__api_health(keel__hreq *q);
void keel__api_ready(keel__hreq *q);
void keel__api_status(keel__hreq *q);
void keel__api_metrics(keel__hreq *q);      /* GET /metrics: Prometheus text */
void keel__api_metrics_json(keel__hreq *q); /* GET /api/metrics: the same as JSON */
void keel__api_verify(keel__hreq *q);
void keel__api_bus_stream(keel__hreq *q);

/* api_packages.c */
void keel__api_packages_list(keel__hreq *q);
void keel__api_packages_install(keel__hreq *q);
void keel__api_packages_activate(keel__hreq *q);
void keel__api_packages_rollback(keel__hreq *q);
void keel__api_packages_mark_good(keel__hreq *q);
void keel__api_gc(keel__hreq *q);

/* api_updates.c */
void keel__api_updates_get(keel__hreq *q);
void keel__api_updates_check(keel__hreq *q);

/* api_v2.c */
void keel__api_v2_server(keel__hreq *q);
void keel__api_v2_live(keel__hreq *q);
void keel__api_v2_ready(keel__hreq *q);
void keel__api_v2_model(keel__hreq *q);
void keel__api_v2_model_ready(keel__hreq *q);
void keel__api_v2_infer(keel__hreq *q);

/* api_events.c */
void keel__api_events_post(keel__hreq *q);
void keel__api_queue(keel__hreq *q);

/* api_shadow.c */
void keel__api_shadow_get(keel__hreq *q);
void keel__api_shadow_set(keel__hreq *q);

/* api_import.c */
void keel__api_import_post(keel__hreq *q);
void keel__api_import_get(keel__hreq *q);

/* api_chunks.c */
void keel__api_chunks_get(keel__hreq *q);

#endif
