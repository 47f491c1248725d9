/*
 * envelope.h - the batch envelope: the bytes the uplink puts on the wire
 * (one MQTT publish or one HTTP POST body) for a batch of queued messages.
 *
 * Owns the binary format (versioned, little-endian, zstd-compressed when
 * that shrinks it; docs/uplink.md describes it byte by byte) and nothing
 * else: it knows no transport, no queue and no meaning of a payload.
 *
 *   header (16 bytes, never compressed)
 *     0  magic "KENV"        4  version (1)       5  flags (bit 0: zstd)
 *     6  reserved u16 = 0    8  raw_len u32       12 body_len u32
 *   body (body_len bytes; raw_len bytes once decompressed)
 *     device_len u16, device, seq u64, count u32, then count messages:
 *     id u64, priority u8, reserved u8 = 0, topic_len u16, ctype_len u16,
 *     created i64, payload_len u32, topic, content type, payload
 *
 * Thread safety: every function is reentrant; there is no shared state.
 */
#ifndef KEEL_SYNC_ENVELOPE_H
#define KEEL_SYNC_ENVELOPE_H

#include "sync/sync.h"

#define KEEL__ENVELOPE_MAGIC      "KENV"
#define KEEL__ENVELOPE_VERSION    1u
#define KEEL__ENVELOPE_HEADER     16u
#define KEEL__ENVELOPE_FLAG_ZSTD  0x01u
#define KEEL__ENVELOPE_RAW_MAX    (64u * 1024 * 1024) /* decompressed body, hard limit */
#define KEEL__ENVELOPE_DEVICE_MAX 128u                /* device id bytes */
#define KEEL__ENVELOPE_ZSTD_LEVEL 3
#define KEEL__ENVELOPE_MSG_FIXED  26u /* fixed bytes per message before its strings */

/* Bounds a decoder enforces on outside bytes. 0 in a field: the default. */
typedef struct keel__envelope_limits {
    size_t max_raw;     /* decompressed body bytes; default and ceiling KEEL__ENVELOPE_RAW_MAX */
    size_t max_msgs;    /* messages in one envelope; default: as many as max_raw can hold */
    size_t max_payload; /* bytes of one payload; default: max_raw */
} keel__envelope_limits;

/* A decoded envelope: one allocation plus the body, freed together by
 * keel__envelope_free. Every pointer inside is valid until then; strings
 * are NUL-terminated (the format refuses NUL bytes inside them). */
typedef struct keel__envelope {
    unsigned version;   /* as read (1) */
    unsigned flags;     /* as read: KEEL__ENVELOPE_FLAG_* */
    size_t wire_len;    /* bytes decoded: header + body as sent */
    size_t raw_len;     /* body bytes after decompression */
    const char *device; /* device id, 1..KEEL__ENVELOPE_DEVICE_MAX bytes */
    uint64_t seq;       /* the sender's batch sequence number */
    size_t n;
    keel__sync_msg *msgs; /* n messages, in the order they were encoded */
} keel__envelope;

/*
 * Appends one envelope holding msgs[0..n) (n may be 0) from device to out.
 * Everything is copied. compress: 0 stores the body as is; non-zero
 * compresses it with zstd at level KEEL__ENVELOPE_ZSTD_LEVEL and keeps the
 * result only when it is smaller than the body. Errors: KEEL_EINVALID (an
 * empty or too long device id, a priority out of range, a string longer than
 * 65535 bytes, a payload without data), KEEL_ETOOBIG (the body would pass
 * KEEL__ENVELOPE_RAW_MAX, or out's max), KEEL_ENOMEM. On error out keeps
 * its previous length.
 */
KEEL_WUR int keel__envelope_encode(const char *device, uint64_t seq, const keel__sync_msg *msgs,
                                   size_t n, int compress, keel_buf *out, keel_error *err);

/*
 * Decodes exactly len bytes of data (borrowed for the call) into
 * *ret (free with keel__envelope_free). limits may be NULL for the defaults.
 * Every length is checked against the bytes that remain before it is used,
 * and nothing larger than the limits is allocated. Errors:
 * KEEL_ECORRUPT (not an envelope, truncated, inconsistent lengths, bad zstd
 * data, trailing bytes; the message names the field and the message index),
 * KEEL_EUNSUPPORTED (a version or flag this reader does not know),
 * KEEL_ETOOBIG (over a limit), KEEL_ENOMEM.
 */
KEEL_WUR int keel__envelope_decode(const void *data, size_t len,
                                   const keel__envelope_limits *limits, keel__envelope **ret,
                                   keel_error *err);
/* Accepts NULL. */
void keel__envelope_free(keel__envelope *env);

/* "critical", "high", "normal", "bulk"; NULL out of range. Static storage. */
const char *keel__prio_name(int prio);

#endif
