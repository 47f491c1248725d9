/*
 * chunk.c - content-defined chunking with a gear hash, FastCDC style:
 * no cut before KEEL_CHUNK_MIN, a harder mask below KEEL_CHUNK_AVG and an
 * easier one above it (normalized chunking keeps sizes near the average),
 * a forced cut at KEEL_CHUNK_MAX. The gear table comes from a fixed seed, so
 * every keel build cuts the same bytes at the same places: the chunk lists
 * in manifests are comparable across versions and builds.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "keel/pkg.h"

static uint64_t gear[256];
static pthread_once_t gear_once = PTHREAD_ONCE_INIT;

static void gear_init(void)
{
    uint64_t x = 0x6b65656c2d636463ull; /* "keel-cdc" */
    for (int i = 0; i < 256; i++) {
        /* splitmix64 */
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        gear[i] = z ^ (z >> 31);
    }
}

/* Masks on the high bits (the gear hash shifts left, so high bits mix the
 * most recent ~64 bytes). 18 bits below the average, 14 above: 2^16 average. */
#define MASK_S (((1ull << 18) - 1) << (64 - 18))
#define MASK_L (((1ull << 14) - 1) << (64 - 14))

struct keel_chunker {
    keel_chunk_cb cb;
    void *ud;
    keel_sha256 *sha;
    uint64_t offset; /* of the current chunk in the stream */
    uint32_t len;    /* bytes in the current chunk so far */
    uint64_t h;
};

keel_chunker *keel_chunker_new(keel_chunk_cb cb, void *ud)
{
    keel_chunker *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    pthread_once(&gear_once, gear_init);
    c->sha = keel_sha256_new();
    if (!c->sha) {
        free(c);
        return NULL;
    }
    c->cb = cb;
    c->ud = ud;
    return c;
}

static void emit(keel_chunker *c)
{
    keel_chunk ch;
    ch.offset = c->offset;
    ch.len = c->len;
    keel_sha256_final(c->sha, ch.sha256);
    c->cb(c->ud, &ch);
    c->offset += c->len;
    c->len = 0;
    c->h = 0;
}

void keel_chunker_update(keel_chunker *c, const void *data, size_t len)
{
    const uint8_t *p = data, *end = p + len;
    while (p < end) {
        const uint8_t *start = p;
        /* Bytes before the minimum are hashed but never cut. */
        if (c->len < KEEL_CHUNK_MIN) {
            size_t skip = KEEL_CHUNK_MIN - c->len;
            if (skip > (size_t)(end - p))
                skip = (size_t)(end - p);
            p += skip;
            c->len += (uint32_t)skip;
            if (c->len < KEEL_CHUNK_MIN) {
                keel_sha256_update(c->sha, start, (size_t)(p - start));
                break;
            }
        }
        uint64_t h = c->h;
        uint32_t n = c->len;
        bool cut = false;
        while (p < end) {
            h = (h << 1) + gear[*p++];
            n++;
            if ((h & (n < KEEL_CHUNK_AVG ? MASK_S : MASK_L)) == 0 || n >= KEEL_CHUNK_MAX) {
                cut = true;
                break;
            }
        }
        keel_sha256_update(c->sha, start, (size_t)(p - start));
        c->h = h;
        c->len = n;
        if (cut)
            emit(c);
    }
}

void keel_chunker_finish(keel_chunker *c)
{
    if (c->len)
        emit(c);
    c->offset = 0;
    c->h = 0;
}

void keel_chunker_free(keel_chunker *c)
{
    if (!c)
        return;
    keel_sha256_free(c->sha);
    free(c);
}
