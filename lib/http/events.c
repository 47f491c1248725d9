/* events.c - POST /api/events request parsing (events.h). */
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "http/events.h"
#include "sync/topic.h"

int keel__event_parse(const char *body, size_t len, const char *content_type, const char *q_topic,
                      const char *q_prio, const char *q_key, const char *q_ttl, keel__event_req *r,
                      keel_error *err)
{
    const char *prio = NULL;
    int rc = KEEL_OK;
    memset(r, 0, sizeof(*r));
    r->m.prio = KEEL_PRIO_NORMAL;
    if (q_topic) { /* raw body */
        r->m.topic = q_topic;
        r->m.payload = body;
        r->m.payload_len = len;
        r->m.content_type = content_type;
        r->m.idem_key = q_key;
        prio = q_prio;
        if (q_ttl) {
            char *end = NULL;
            long long v = strtoll(q_ttl, &end, 10);
            if (!*q_ttl || *end || v < 0)
                return keel__err(err, KEEL_EINVALID, "ttl_s: \"%.32s\" is not a number of seconds",
                                 q_ttl);
            r->m.ttl_s = v;
        }
    } else {
        uint64_t ttl_s = 0;
        const cJSON *pl;
        if ((rc = keel__json_parse(body ? body : "", len,
                                   "event (a JSON object, or any body with ?topic=)", &r->json,
                                   err)))
            return rc;
        if (!cJSON_IsObject(r->json)) {
            keel__event_done(r);
            return keel__err(err, KEEL_EINVALID,
                             "event: expected a JSON object like {\"topic\": \"alerts/door\", "
                             "\"priority\": \"high\", \"payload\": {...}}");
        }
        if ((rc = keel__json_str(r->json, "topic", true, KEEL_QUEUE_TOPIC_MAX, &r->m.topic, "event",
                                 err)) ||
            (rc = keel__json_str(r->json, "priority", false, 16, &prio, "event", err)) ||
            (rc = keel__json_str(r->json, "idempotency_key", false, KEEL_QUEUE_IDEM_KEY_MAX,
                                 &r->m.idem_key, "event", err)) ||
            (rc = keel__json_str(r->json, "content_type", false, KEEL_QUEUE_CONTENT_TYPE_MAX,
                                 &r->m.content_type, "event", err)) ||
            (rc = keel__json_u64(r->json, "ttl_s", false, &ttl_s, "event", err))) {
            keel__event_done(r);
            return rc;
        }
        if (ttl_s > (uint64_t)100 * 365 * 86400) {
            keel__event_done(r);
            return keel__err(err, KEEL_EINVALID, "event.ttl_s: at most 100 years");
        }
        r->m.ttl_s = (int64_t)ttl_s;
        pl = cJSON_GetObjectItemCaseSensitive(r->json, "payload");
        if (cJSON_IsString(pl)) {
            r->m.payload = pl->valuestring;
            r->m.payload_len = strlen(pl->valuestring);
            if (!r->m.content_type)
                r->m.content_type = "text/plain";
        } else if (pl) {
            if (!(r->payload_text = keel__json_print(pl))) {
                keel__event_done(r);
                return keel__err(err, KEEL_ENOMEM, "out of memory");
            }
            r->m.payload = r->payload_text;
            r->m.payload_len = strlen(r->payload_text);
            if (!r->m.content_type)
                r->m.content_type = "application/json";
        }
    }
    if (prio && (rc = keel_prio_parse(prio, strlen(prio), &r->m.prio, err))) {
        keel__err_prefix(err, "priority");
        keel__event_done(r);
        return rc;
    }
    /* What the uplink will require, now: a 202 promises the message goes out. */
    const char *ctype = r->m.content_type ? r->m.content_type : "application/octet-stream";
    if ((rc = keel__topic_check_msg(r->m.topic, r->m.topic ? strlen(r->m.topic) : 0, strlen(ctype),
                                    r->m.payload_len, err))) {
        keel__event_done(r);
        return rc;
    }
    return KEEL_OK;
}

void keel__event_done(keel__event_req *r)
{
    cJSON_Delete(r->json);
    free(r->payload_text);
    r->json = NULL;
    r->payload_text = NULL;
}
