/*
 * events.h - the request format of POST /api/events, parsed into a queue
 * message. Either a JSON envelope
 *   {"topic": "alerts/door", "priority": "high", "ttl_s": 3600,
 *    "idempotency_key": "door-17", "content_type": "...", "payload": <any JSON>}
 * or any body with the fields in the query string (?topic=&priority=&ttl_s=
 * &idempotency_key=), stored as is with its Content-Type.
 */
#ifndef KEEL_HTTP_EVENTS_H
#define KEEL_HTTP_EVENTS_H

#include <cjson/cJSON.h>

#include "core/core.h"
#include "keel/queue.h"

typedef struct keel__event_req {
    keel_msg_in m;      /* points into the body, the query strings and what follows */
    cJSON *json;        /* owned */
    char *payload_text; /* owned: a JSON payload printed compactly */
} keel__event_req;

/* q_*: the query string's values (NULL when absent). With q_topic set the
 * body is the payload; else the body is the JSON envelope. A message the
 * uplink could never send (a topic that is not a valid MQTT topic name
 * once prefixed, a payload over an envelope) is refused here, before it is
 * acknowledged (sync/topic.h). */
KEEL_WUR int keel__event_parse(const char *body, size_t len, const char *content_type,
                               const char *q_topic, const char *q_prio, const char *q_key,
                               const char *q_ttl, keel__event_req *r, keel_error *err);
void keel__event_done(keel__event_req *r);

#endif
