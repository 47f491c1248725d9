/*
 * topic.h - what a message must be for the uplink to ever send it. The
 * uplink publishes a message to keel/DEVICE/PRIORITY/TOPIC, an MQTT topic
 * name whatever the transport, in an envelope of bounded size. Producers
 * check a message here before acknowledging it (POST /api/events answers
 * 400 rather than 202), so that no acknowledged message is dropped later as
 * unsendable; the uplink checks the topic it builds with the same rules.
 * Knows nothing of the queue or of HTTP.
 */
#ifndef KEEL_SYNC_TOPIC_H
#define KEEL_SYNC_TOPIC_H

#include "core/core.h"

/* The levels keel/DEVICE/PRIORITY/ put before a producer's topic (device
 * ids have no '/'), and the most an MQTT topic may have in all (counted
 * as '/' separators, as mosquitto does). */
#define KEEL__TOPIC_PREFIX_LEVELS 3
#define KEEL__TOPIC_MAX_LEVELS    200

/* Whether s (len bytes) is an MQTT topic name one may publish to (the
 * rules of mosquitto_pub_topic_check and mosquitto_validate_utf8): no
 * wildcards, at most KEEL__TOPIC_MAX_LEVELS levels, well-formed UTF-8
 * without surrogates, overlong forms, non-characters or control
 * characters. */
bool keel__topic_ok(const char *s, size_t len);

/* Whether a producer's message can go out: its topic (topic_len bytes,
 * which may hold a NUL: refused) by the rules above once prefixed, and the
 * message in one envelope. The message says what is wrong, where, with the
 * client's bytes escaped. */
KEEL_WUR int keel__topic_check_msg(const char *topic, size_t topic_len, size_t content_type_len,
                                   size_t payload_len, keel_error *err);

#endif
