/*
 * bus.c - the in-process event bus (bus.h). A subscriber table under a
 * read-write lock: publishers deliver under the read lock, so any number
 * publish at once and an unsubscribe (write lock) waits for deliveries in
 * progress. The lock prefers writers: under a steady stream of events an
 * unsubscribe (a client that left) still gets in, at the price that a
 * callback must not publish into the same bus (a nested read lock would
 * wait behind a queued writer).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "core/bus.h"
#include "core/core.h"

typedef struct sub {
    int id;
    unsigned mask;
    keel__bus_fn fn;
    void *ctx;
} sub;

struct keel__bus {
    pthread_rwlock_t lock;
    sub *subs;
    size_t n, cap;
    int next_id;
    atomic_uint_fast64_t seq;
};

static const char *const type_names[] = {
    "infer",     "tier",   "all_failed", "escalation", "install",   "activate", "rollback",
    "mark_good", "gc",     "trust",      "link_up",    "link_down", "shadow",   "ready",
    "api",       "config", "update",     "revoked",    "outcome"};

const char *keel__bus_type_name(unsigned type)
{
    for (size_t i = 0; i < KEEL_ARRAY_LEN(type_names); i++)
        if (type == 1u << i)
            return type_names[i];
    return "unknown";
}

keel__bus *keel__bus_new(void)
{
    keel__bus *b = calloc(1, sizeof(*b));
    pthread_rwlockattr_t a;
    if (!b)
        return NULL;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&b->lock, &a);
    pthread_rwlockattr_destroy(&a);
    return b;
}

void keel__bus_free(keel__bus *b)
{
    if (!b)
        return;
    pthread_rwlock_destroy(&b->lock);
    free(b->subs);
    free(b);
}

int keel__bus_subscribe(keel__bus *b, unsigned mask, keel__bus_fn fn, void *ctx)
{
    int id = 0;
    pthread_rwlock_wrlock(&b->lock);
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        sub *s = realloc(b->subs, cap * sizeof(*s));
        if (!s)
            goto out;
        b->subs = s;
        b->cap = cap;
    }
    id = ++b->next_id;
    b->subs[b->n++] = (sub){.id = id, .mask = mask, .fn = fn, .ctx = ctx};
out:
    pthread_rwlock_unlock(&b->lock);
    return id;
}

void keel__bus_unsubscribe(keel__bus *b, int id)
{
    if (!b || id <= 0)
        return;
    pthread_rwlock_wrlock(&b->lock);
    for (size_t i = 0; i < b->n; i++) {
        if (b->subs[i].id != id)
            continue;
        for (size_t j = i + 1; j < b->n; j++)
            b->subs[j - 1] = b->subs[j];
        b->n--;
        break;
    }
    pthread_rwlock_unlock(&b->lock);
}

void keel__bus_publish(keel__bus *b, keel__bus_event *ev)
{
    if (!b)
        return;
    if (!ev->at)
        ev->at = keel__now_wall_s();
    ev->seq = atomic_fetch_add(&b->seq, 1) + 1;
    pthread_rwlock_rdlock(&b->lock);
    for (size_t i = 0; i < b->n; i++)
        if (b->subs[i].mask & ev->type)
            b->subs[i].fn(b->subs[i].ctx, ev);
    pthread_rwlock_unlock(&b->lock);
}

uint64_t keel__bus_published(keel__bus *b)
{
    return b ? (uint64_t)atomic_load(&b->seq) : 0;
}

size_t keel__bus_subscribers(keel__bus *b)
{
    pthread_rwlock_rdlock(&b->lock);
    size_t n = b->n;
    pthread_rwlock_unlock(&b->lock);
    return n;
}
