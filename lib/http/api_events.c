/*
 * api_events.c - producers' events into the durable queue, and the queue's
 * statistics.
 *
 * POST /api/events takes either a JSON envelope
 *   {"topic": "alerts/door", "priority": "high", "ttl_s": 3600,
 *    "idempotency_key": "door-17", "payload": <any JSON value>}
 * or any body with ?topic=&priority=&ttl_s=&idempotency_key= in the query
 * (the body is stored as is, with its Content-Type). The answer, 202, goes
 * out only once the message is durable; until then the connection is
 * suspended and no worker thread waits, so every producer waiting joins
 * the next group commit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "http/events.h"

/* The queue's committer says how the message fared (its thread). */
static void committed(void *ctx, int rc, uint64_t id, const keel_error *err)
{
    keel__hreq *q = ctx;
    if (rc) {
        keel__reply_keel_error(q, err);
        return;
    }
    char body[96];
    snprintf(body, sizeof(body), "{\"id\":%llu,\"durable\":true}\n", (unsigned long long)id);
    keel__reply_text(q, 202, body);
}

void keel__api_events_post(keel__hreq *q)
{
    keel_error e = {0};
    keel__event_req ev;
    size_t len;
    const char *body = keel__hreq_body(q, &len);
    int rc = keel__event_parse(body, len, keel__hreq_header(q, "Content-Type"),
                               keel__hreq_query(q, "topic"), keel__hreq_query(q, "priority"),
                               keel__hreq_query(q, "idempotency_key"), keel__hreq_query(q, "ttl_s"),
                               &ev, &e);
    keel_msg_in m = ev.m;
    if (!rc)
        rc = keel__runtime_submit(keel__hreq_runtime(q), &m, committed, q, &e);
    keel__event_done(&ev); /* idempotent: also after a parse error; the queue copied m */
    if (rc)
        keel__reply_keel_error(q, &e);
    /* else: committed() answers */
}

void keel__api_queue(keel__hreq *q)
{
    keel_error e = {0};
    char *json = NULL;
    if (keel__runtime_queue_json(keel__hreq_runtime(q), &json, &e))
        keel__reply_keel_error(q, &e);
    else
        keel__reply_json(q, 200, json);
}
