/* fuzz_events.c - the POST /api/events request parser. Byte 0 picks the
 * form: even = JSON envelope (the rest is the body); odd = raw body with
 * query values: the rest split at NUL bytes into topic, priority, key,
 * ttl_s and the body. Accepted messages must be well formed for the queue,
 * and their topic, as the uplink publishes it (keel/DEVICE/PRIORITY/TOPIC),
 * must pass libmosquitto's own checks: an event answered 202 is never
 * dropped later as unsendable. */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/events.h"

/* What libmosquitto (and so the broker) would refuse to publish. */
static void mosquitto_would_send(const char *topic)
{
    size_t size = strlen(topic) + 32;
    char *full = malloc(size);
    if (!full)
        return;
    int n = snprintf(full, size, "keel/dev-1/normal/%s", topic);
    if (n < 0 || (size_t)n >= size)
        __builtin_trap();
    if (mosquitto_validate_utf8(full, n) != MOSQ_ERR_SUCCESS ||
        mosquitto_pub_topic_check2(full, (size_t)n) != MOSQ_ERR_SUCCESS)
        __builtin_trap();
    free(full);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel__event_req r;
    keel_error e;
    if (!size)
        return 0;
    char *copy = malloc(size);
    if (!copy)
        return 0;
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = 0;
    int rc;
    if (!(data[0] & 1)) {
        rc = keel__event_parse(copy, size - 1, "application/json", NULL, NULL, NULL, NULL, &r, &e);
    } else {
        const char *f[5] = {NULL, NULL, NULL, NULL, NULL};
        char *p = copy, *end = copy + size - 1;
        for (int i = 0; i < 4 && p < end; i++) {
            f[i] = p;
            p += strlen(p) + 1;
        }
        f[4] = p < end ? p : "";
        rc = keel__event_parse(f[4], strlen(f[4]), "text/plain", f[0] ? f[0] : "t", f[1], f[2],
                               f[3], &r, &e);
    }
    if (rc == KEEL_OK) {
        if (!r.m.topic || r.m.prio < KEEL_PRIO_CRITICAL || r.m.prio > KEEL_PRIO_BULK ||
            r.m.ttl_s < 0 || (r.m.payload_len && !r.m.payload))
            __builtin_trap();
        mosquitto_would_send(r.m.topic);
        keel__event_done(&r);
    } else if (!e.msg[0]) {
        __builtin_trap(); /* every refusal says why */
    }
    free(copy);
    return 0;
}
