/*
 * router.h - hybrid routing: asks an upstream Open Inference Protocol
 * endpoint (another keeld acting as a fog node, or any KServe v2 server)
 * when a package's routing policy says so, under a deadline and a circuit
 * breaker. The policy itself (local, escalate, upstream_first) is the
 * package's ("routing" in keel.json); the endpoint is the device's
 * (upstream_url in keeld.conf).
 */
#ifndef KEEL_INFER_ROUTER_H
#define KEEL_INFER_ROUTER_H

#include "core/core.h"
#include "obs/metrics.h"

enum { KEEL__ROUTE_LOCAL, KEEL__ROUTE_ESCALATE, KEEL__ROUTE_UPSTREAM_FIRST };

typedef struct keel__router keel__router;

/* url: "http://host:port" (the /v2/... path is added). */
KEEL_WUR int keel__router_new(const char *url, keel__router **ret, keel_error *err);
void keel__router_free(keel__router *r);

typedef struct keel__upstream_answer {
    keel_buf body;   /* the upstream's answer, rewritten: parameters.tier = "upstream" */
    size_t json_len; /* == body.len unless binary outputs follow the JSON */
    long status;
} keel__upstream_answer;

/* Whether the breaker lets a request through now (a half-open probe counts). */
bool keel__router_allow(keel__router *r);

/* POSTs body (json_len bytes of JSON, binary after) for model to the
 * upstream within deadline_ms, and records the outcome on the breaker.
 * KEEL_OK with a 2xx answer; KEEL_ENOCONN / KEEL_ETIMEOUT / KEEL_EIO
 * otherwise (the message says what happened). out->body is initialized
 * here and freed with keel__buf_done. */
KEEL_WUR int keel__router_forward(keel__router *r, const char *model, const void *body, size_t len,
                                  size_t json_len, uint64_t deadline_ms, keel__upstream_answer *out,
                                  keel_error *err);

/* Registers keel_upstream_* (breaker state and trips, requests by
 * outcome) in reg (borrowed; must outlive r), filled at every scrape from
 * the router's counters. Once per router; without it r keeps no metrics. */
KEEL_WUR int keel__router_metrics_register(keel__router *r, keel__metrics *reg, keel_error *err);

/* {"url", "breaker", "consecutive_failures", "forwarded", "failed", ...} (malloc'd). */
char *keel__router_status_json(keel__router *r);

#endif
