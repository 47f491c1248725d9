/* topic.c - what the uplink can send (topic.h). */
#include <string.h>

#include "sync/envelope.h"
#include "sync/topic.h"

/* The first byte of s that breaks the MQTT topic rules, or len when none
 * does; *why says which rule, *levels counts the '/'s seen. */
static size_t topic_scan(const char *topic, size_t len, const char **why, unsigned *levels)
{
    const unsigned char *s = (const unsigned char *)topic;
    *levels = 0;
    for (size_t i = 0; i < len;) {
        unsigned c = s[i], n;
        uint32_t cp;
        if (c == '+' || c == '#') {
            *why = "is an MQTT wildcard ('+' and '#' may not appear in a topic one publishes to)";
            return i;
        }
        *levels += c == '/';
        if (c < 0x80) {
            n = 1, cp = c;
        } else if ((c & 0xe0) == 0xc0 && c >= 0xc2) {
            n = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0 && c <= 0xf4) {
            n = 4, cp = c & 0x07;
        } else { /* a stray continuation byte, or 0xc0, 0xc1, 0xf5.. */
            *why = "is not valid UTF-8";
            return i;
        }
        bool ok = len - i >= n;
        for (unsigned k = 1; ok && k < n; k++) {
            ok = (s[i + k] & 0xc0) == 0x80;
            cp = cp << 6 | (s[i + k] & 0x3fu);
        }
        if (!ok || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            *why = "is not valid UTF-8";
            return i;
        }
        if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f)) {
            *why = "is a control character";
            return i;
        }
        if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe) {
            *why = "is a Unicode non-character";
            return i;
        }
        i += n;
    }
    return len;
}

bool keel__topic_ok(const char *topic, size_t len)
{
    const char *why;
    unsigned levels;
    return len <= 65535 && topic_scan(topic, len, &why, &levels) == len &&
           levels <= KEEL__TOPIC_MAX_LEVELS;
}

int keel__topic_check_msg(const char *topic, size_t topic_len, size_t content_type_len,
                          size_t payload_len, keel_error *err)
{
    char shown[160];
    const char *why = NULL;
    unsigned levels;
    if (!topic_len)
        return keel__err(err, KEEL_EINVALID, "topic: empty; give one such as \"alerts/door\"");
    size_t at = topic_scan(topic, topic_len, &why, &levels);
    if (at < topic_len) {
        size_t show = topic_len - at < 4 ? topic_len - at : 4;
        char bad[24];
        return keel__err(err, KEEL_EINVALID, "topic \"%s\": byte %zu (\"%s\") %s",
                         keel__escape(shown, sizeof(shown), topic, topic_len), at,
                         keel__escape(bad, sizeof(bad), topic + at, show), why);
    }
    if (levels > KEEL__TOPIC_MAX_LEVELS - KEEL__TOPIC_PREFIX_LEVELS)
        return keel__err(err, KEEL_EINVALID,
                         "topic \"%s\": %u '/' separators; at most %u (the uplink publishes it "
                         "under keel/DEVICE/PRIORITY/, and an MQTT topic has at most %u)",
                         keel__escape(shown, sizeof(shown), topic, topic_len), levels,
                         KEEL__TOPIC_MAX_LEVELS - KEEL__TOPIC_PREFIX_LEVELS,
                         KEEL__TOPIC_MAX_LEVELS);
    size_t fixed = KEEL__ENVELOPE_MSG_FIXED + topic_len + content_type_len;
    if (payload_len > KEEL__ENVELOPE_RAW_MAX - fixed)
        return keel__err(err, KEEL_ETOOBIG,
                         "payload of %zu bytes: the uplink sends at most %zu bytes in one message "
                         "(its envelope holds %u with the topic and content type)",
                         payload_len, (size_t)(KEEL__ENVELOPE_RAW_MAX - fixed),
                         KEEL__ENVELOPE_RAW_MAX);
    return KEEL_OK;
}
