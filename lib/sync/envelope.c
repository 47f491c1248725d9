/*
 * envelope.c - encoding and decoding batch envelopes (format in
 * envelope.h and docs/uplink.md). The decoder reads outside bytes: it
 * validates the whole body in a first pass, checking each length against
 * what remains, then allocates once and fills in a second pass that cannot
 * fail.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "sync/envelope.h"

#define STR_MAX 65535u

static const char *const prio_names[KEEL__NPRIO] = {"critical", "high", "normal", "bulk"};

const char *keel__prio_name(int prio)
{
    return prio >= 0 && prio < KEEL__NPRIO ? prio_names[prio] : NULL;
}

/* --- little-endian helpers ------------------------------------------------------ */

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* --- encoding --------------------------------------------------------------------- */

/* The bytes message m takes in the body. */
static size_t msg_bytes(const keel__sync_msg *m)
{
    size_t tl = m->topic ? strlen(m->topic) : 0, cl = m->content_type ? strlen(m->content_type) : 0;
    return KEEL__ENVELOPE_MSG_FIXED + tl + cl + m->len;
}

static int check_msg(const keel__sync_msg *m, size_t i, keel_error *err)
{
    size_t tl = m->topic ? strlen(m->topic) : 0, cl = m->content_type ? strlen(m->content_type) : 0;
    if (m->priority < 0 || m->priority >= KEEL__NPRIO)
        return keel__err(err, KEEL_EINVALID,
                         "envelope: message %zu (id %" PRIu64 "): priority %d out of range", i,
                         m->id, m->priority);
    if (tl > STR_MAX || cl > STR_MAX)
        return keel__err(err, KEEL_EINVALID,
                         "envelope: message %zu (id %" PRIu64
                         "): topic or content type over %u bytes",
                         i, m->id, STR_MAX);
    if (m->len && !m->payload)
        return keel__err(err, KEEL_EINVALID,
                         "envelope: message %zu (id %" PRIu64 "): %zu payload bytes without data",
                         i, m->id, m->len);
    if (m->len > KEEL__ENVELOPE_RAW_MAX)
        return keel__err(err, KEEL_ETOOBIG,
                         "envelope: message %zu (id %" PRIu64 "): payload of %zu bytes is over the "
                         "envelope limit of %u",
                         i, m->id, m->len, KEEL__ENVELOPE_RAW_MAX);
    return KEEL_OK;
}

static unsigned char *put_msg(unsigned char *p, const keel__sync_msg *m)
{
    size_t tl = m->topic ? strlen(m->topic) : 0, cl = m->content_type ? strlen(m->content_type) : 0;
    put64(p, m->id);
    p[8] = (unsigned char)m->priority;
    p[9] = 0;
    put16(p + 10, (uint16_t)tl);
    put16(p + 12, (uint16_t)cl);
    put64(p + 14, (uint64_t)m->created);
    put32(p + 22, (uint32_t)m->len);
    p += KEEL__ENVELOPE_MSG_FIXED;
    if (tl)
        memcpy(p, m->topic, tl);
    p += tl;
    if (cl)
        memcpy(p, m->content_type, cl);
    p += cl;
    if (m->len)
        memcpy(p, m->payload, m->len);
    return p + m->len;
}

static void put_header(unsigned char *h, unsigned flags, size_t raw_len, size_t body_len)
{
    memcpy(h, KEEL__ENVELOPE_MAGIC, 4);
    h[4] = (unsigned char)KEEL__ENVELOPE_VERSION;
    h[5] = (unsigned char)flags;
    put16(h + 6, 0);
    put32(h + 8, (uint32_t)raw_len);
    put32(h + 12, (uint32_t)body_len);
}

int keel__envelope_encode(const char *device, uint64_t seq, const keel__sync_msg *msgs, size_t n,
                          int compress, keel_buf *out, keel_error *err)
{
    size_t dl = device ? strlen(device) : 0, raw_len = 2 + dl + 8 + 4;
    unsigned char *raw = NULL, *zbuf = NULL;
    int rc;

    if (dl == 0 || dl > KEEL__ENVELOPE_DEVICE_MAX)
        return keel__err(err, KEEL_EINVALID, "envelope: device id must be 1..%u bytes, not %zu",
                         KEEL__ENVELOPE_DEVICE_MAX, dl);
    if (n > UINT32_MAX)
        return keel__err(err, KEEL_ETOOBIG, "envelope: %zu messages in one batch", n);
    for (size_t i = 0; i < n; i++) {
        if ((rc = check_msg(&msgs[i], i, err)))
            return rc;
        size_t b = msg_bytes(&msgs[i]); /* check_msg bounded its parts: no overflow */
        if (b > KEEL__ENVELOPE_RAW_MAX - raw_len)
            return keel__err(err, KEEL_ETOOBIG,
                             "envelope: %zu messages pass the %u-byte body limit at message %zu; "
                             "send fewer per batch",
                             n, KEEL__ENVELOPE_RAW_MAX, i);
        raw_len += b;
    }

    raw = malloc(raw_len);
    if (!raw)
        return keel__err(err, KEEL_ENOMEM, "envelope: allocating a %zu-byte body", raw_len);
    unsigned char *p = raw;
    put16(p, (uint16_t)dl);
    memcpy(p + 2, device, dl);
    p += 2 + dl;
    put64(p, seq);
    put32(p + 8, (uint32_t)n);
    p += 12;
    for (size_t i = 0; i < n; i++)
        p = put_msg(p, &msgs[i]);

    const unsigned char *body = raw;
    size_t body_len = raw_len;
    unsigned flags = 0;
    if (compress) {
        size_t cap = ZSTD_compressBound(raw_len);
        zbuf = malloc(cap);
        if (!zbuf) {
            rc = keel__err(err, KEEL_ENOMEM, "envelope: allocating %zu bytes for zstd", cap);
            goto out;
        }
        size_t z = ZSTD_compress(zbuf, cap, raw, raw_len, KEEL__ENVELOPE_ZSTD_LEVEL);
        if (ZSTD_isError(z)) {
            rc = keel__err(err, KEEL_EINTERNAL, "envelope: zstd: %s", ZSTD_getErrorName(z));
            goto out;
        }
        if (z < raw_len) {
            body = zbuf;
            body_len = z;
            flags |= KEEL__ENVELOPE_FLAG_ZSTD;
        }
    }

    unsigned char h[KEEL__ENVELOPE_HEADER];
    put_header(h, flags, raw_len, body_len);
    size_t old = out->len;
    rc = keel__buf_append(out, h, sizeof(h));
    if (!rc)
        rc = keel__buf_append(out, body, body_len);
    if (rc) {
        if (out->data) {
            out->len = old;
            out->data[old] = '\0';
        }
        rc = keel__err(err, rc, "envelope: %zu bytes do not fit the output buffer",
                       sizeof(h) + body_len);
    }
out:
    free(zbuf);
    free(raw);
    return rc;
}

/* --- decoding --------------------------------------------------------------------- */

/* What keel__envelope_decode allocates: the envelope, then its messages,
 * then their strings; the body (payloads point into it) separately. */
typedef struct block {
    keel__envelope pub; /* first: keel__envelope_free casts back */
    unsigned char *body;
} block;

/* A cursor over the body; every read checks the bytes left first. */
typedef struct rd {
    const unsigned char *p;
    size_t left;
} rd;

static bool has_nul(const unsigned char *s, size_t n)
{
    return n && memchr(s, 0, n) != NULL;
}

/* Walks the body. With env == NULL only validates and sums the string
 * bytes into *ret_strings; with env fills it (the body already passed). */
static int walk(const unsigned char *body, size_t len, const keel__envelope_limits *lim,
                keel__envelope *env, char *strings, size_t *ret_n, size_t *ret_strings,
                keel_error *err)
{
    rd r = {body, len};
    size_t strbytes = 0;
    if (r.left < 2)
        return keel__err(err, KEEL_ECORRUPT,
                         "envelope: body of %zu bytes ends before the device id", len);
    size_t dl = get16(r.p);
    r.p += 2;
    r.left -= 2;
    if (dl == 0 || dl > KEEL__ENVELOPE_DEVICE_MAX)
        return keel__err(err, KEEL_ECORRUPT, "envelope: device id of %zu bytes (1..%u allowed)", dl,
                         KEEL__ENVELOPE_DEVICE_MAX);
    if (dl + 12 > r.left)
        return keel__err(err, KEEL_ECORRUPT,
                         "envelope: device id (%zu bytes), seq and count need %zu bytes, %zu left",
                         dl, dl + 12, r.left);
    if (has_nul(r.p, dl))
        return keel__err(err, KEEL_ECORRUPT, "envelope: device id contains a NUL byte");
    if (env) {
        memcpy(strings, r.p, dl);
        strings[dl] = '\0';
        env->device = strings;
        strings += dl + 1;
    }
    strbytes += dl + 1;
    r.p += dl;
    uint64_t seq = get64(r.p);
    size_t n = get32(r.p + 8);
    r.p += 12;
    r.left -= dl + 12;
    if (n > r.left / KEEL__ENVELOPE_MSG_FIXED)
        return keel__err(err, KEEL_ECORRUPT,
                         "envelope: count says %zu messages, the %zu bytes left hold at most %zu",
                         n, r.left, r.left / KEEL__ENVELOPE_MSG_FIXED);
    if (n > lim->max_msgs)
        return keel__err(err, KEEL_ETOOBIG, "envelope: %zu messages, the limit is %zu", n,
                         lim->max_msgs);
    if (env)
        env->seq = seq;

    for (size_t i = 0; i < n; i++) {
        if (r.left < KEEL__ENVELOPE_MSG_FIXED)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: message %zu: %zu bytes left, its header needs %u", i,
                             r.left, KEEL__ENVELOPE_MSG_FIXED);
        const unsigned char *h = r.p;
        unsigned prio = h[8];
        size_t tl = get16(h + 10), cl = get16(h + 12), pl = get32(h + 22);
        r.p += KEEL__ENVELOPE_MSG_FIXED;
        r.left -= KEEL__ENVELOPE_MSG_FIXED;
        if (prio >= KEEL__NPRIO)
            return keel__err(err, KEEL_ECORRUPT, "envelope: message %zu: priority %u out of range",
                             i, prio);
        if (h[9] != 0)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: message %zu: reserved byte is 0x%02x, not 0", i, h[9]);
        if (tl > r.left)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: message %zu: topic length %zu exceeds the %zu bytes left",
                             i, tl, r.left);
        if (cl > r.left - tl)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: message %zu: content type length %zu exceeds the %zu bytes "
                             "left",
                             i, cl, r.left - tl);
        if (pl > r.left - tl - cl)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: message %zu: payload length %zu exceeds the %zu bytes left",
                             i, pl, r.left - tl - cl);
        if (pl > lim->max_payload)
            return keel__err(err, KEEL_ETOOBIG,
                             "envelope: message %zu: payload of %zu bytes, the limit is %zu", i, pl,
                             lim->max_payload);
        if (has_nul(r.p, tl) || has_nul(r.p + tl, cl))
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: message %zu: topic or content type contains a NUL byte", i);
        if (env) {
            keel__sync_msg *m = &env->msgs[i];
            m->id = get64(h);
            m->priority = (int)prio;
            m->created = (int64_t)get64(h + 14);
            memcpy(strings, r.p, tl);
            strings[tl] = '\0';
            m->topic = strings;
            strings += tl + 1;
            memcpy(strings, r.p + tl, cl);
            strings[cl] = '\0';
            m->content_type = strings;
            strings += cl + 1;
            m->payload = r.p + tl + cl;
            m->len = pl;
        }
        strbytes += tl + cl + 2;
        r.p += tl + cl + pl;
        r.left -= tl + cl + pl;
    }
    if (r.left)
        return keel__err(err, KEEL_ECORRUPT, "envelope: %zu bytes after the last of %zu messages",
                         r.left, n);
    *ret_n = n;
    *ret_strings = strbytes;
    return KEEL_OK;
}

int keel__envelope_decode(const void *data, size_t len, const keel__envelope_limits *limits,
                          keel__envelope **ret, keel_error *err)
{
    const unsigned char *d = data;
    keel__envelope_limits lim = {0};
    unsigned char *body = NULL;
    block *blk = NULL;
    int rc;

    if (limits)
        lim = *limits;
    if (!lim.max_raw || lim.max_raw > KEEL__ENVELOPE_RAW_MAX)
        lim.max_raw = KEEL__ENVELOPE_RAW_MAX;
    if (!lim.max_msgs)
        lim.max_msgs = SIZE_MAX;
    if (!lim.max_payload)
        lim.max_payload = lim.max_raw;

    if (len < KEEL__ENVELOPE_HEADER)
        return keel__err(err, KEEL_ECORRUPT, "envelope: %zu bytes, shorter than the %u-byte header",
                         len, KEEL__ENVELOPE_HEADER);
    if (memcmp(d, KEEL__ENVELOPE_MAGIC, 4) != 0)
        return keel__err(err, KEEL_ECORRUPT, "envelope: bad magic: not a keel batch envelope");
    if (d[4] != KEEL__ENVELOPE_VERSION)
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "envelope: version %u is not supported (this reader knows %u)", d[4],
                         KEEL__ENVELOPE_VERSION);
    unsigned flags = d[5];
    if (flags & ~KEEL__ENVELOPE_FLAG_ZSTD)
        return keel__err(err, KEEL_EUNSUPPORTED, "envelope: unknown flags 0x%02x", flags);
    if (get16(d + 6) != 0)
        return keel__err(err, KEEL_ECORRUPT, "envelope: reserved header field is %u, not 0",
                         get16(d + 6));
    size_t raw_len = get32(d + 8), body_len = get32(d + 12);
    if (body_len != len - KEEL__ENVELOPE_HEADER)
        return keel__err(err, KEEL_ECORRUPT, "envelope: header says %zu body bytes, %zu follow",
                         body_len, len - KEEL__ENVELOPE_HEADER);
    if (raw_len > lim.max_raw)
        return keel__err(err, KEEL_ETOOBIG,
                         "envelope: body of %zu bytes decompressed exceeds the limit of %zu",
                         raw_len, lim.max_raw);
    const unsigned char *src = d + KEEL__ENVELOPE_HEADER;
    if (!(flags & KEEL__ENVELOPE_FLAG_ZSTD) && raw_len != body_len)
        return keel__err(err, KEEL_ECORRUPT,
                         "envelope: uncompressed body of %zu bytes, header says %zu", body_len,
                         raw_len);
    if (flags & KEEL__ENVELOPE_FLAG_ZSTD) {
        unsigned long long fcs = ZSTD_getFrameContentSize(src, body_len);
        if (fcs == ZSTD_CONTENTSIZE_ERROR)
            return keel__err(err, KEEL_ECORRUPT, "envelope: body is not a zstd frame");
        if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != raw_len)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: zstd frame holds %llu bytes, header says %zu", fcs,
                             raw_len);
        size_t fsz = ZSTD_findFrameCompressedSize(src, body_len);
        if (ZSTD_isError(fsz) || fsz != body_len)
            return keel__err(err, KEEL_ECORRUPT,
                             "envelope: zstd body of %zu bytes is not exactly one complete frame",
                             body_len);
    }
    body = malloc(raw_len ? raw_len : 1);
    if (!body)
        return keel__err(err, KEEL_ENOMEM, "envelope: allocating a %zu-byte body", raw_len);
    if (flags & KEEL__ENVELOPE_FLAG_ZSTD) {
        size_t z = ZSTD_decompress(body, raw_len, src, body_len);
        if (ZSTD_isError(z)) {
            rc = keel__err(err, KEEL_ECORRUPT, "envelope: zstd: %s", ZSTD_getErrorName(z));
            goto out;
        }
        if (z != raw_len) {
            rc = keel__err(err, KEEL_ECORRUPT, "envelope: decompressed %zu bytes, header says %zu",
                           z, raw_len);
            goto out;
        }
    } else if (raw_len) {
        memcpy(body, src, raw_len);
    }

    size_t n = 0, strbytes = 0;
    if ((rc = walk(body, raw_len, &lim, NULL, NULL, &n, &strbytes, err)))
        goto out;
    size_t head = sizeof(block) + n * sizeof(keel__sync_msg);
    blk = calloc(1, head + strbytes);
    if (!blk) {
        rc = keel__err(err, KEEL_ENOMEM, "envelope: allocating %zu messages", n);
        goto out;
    }
    keel__envelope *env = &blk->pub;
    env->msgs = (keel__sync_msg *)(blk + 1);
    rc = walk(body, raw_len, &lim, env, (char *)blk + head, &n, &strbytes, err);
    if (rc)
        goto out;
    env->version = d[4];
    env->flags = flags;
    env->wire_len = len;
    env->raw_len = raw_len;
    env->n = n;
    blk->body = body; /* the payloads point into it */
    *ret = env;
    return KEEL_OK;
out:
    free(blk);
    free(body);
    return rc;
}

void keel__envelope_free(keel__envelope *env)
{
    if (!env)
        return;
    block *blk = (block *)env;
    free(blk->body);
    free(blk);
}
