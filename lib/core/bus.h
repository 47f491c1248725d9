/*
 * bus.h - the in-process event bus: modules publish what happened, others
 * subscribe. (Mosquitto's plugin events, Greengrass-lite's core bus.)
 *
 * The mechanism lives in core so that every module may include it without
 * breaking the layering; the runtime (lib/runtime) creates the one bus of a
 * device and hands it to the modules it opens. A module below the runtime
 * publishes through the bus it was given, or through a callback the runtime
 * turns into a publish.
 *
 * Delivery is synchronous, on the publisher's thread, in subscription
 * order, after the state change it reports is durable. A subscriber must be
 * quick, must not publish into the same bus from inside its callback, and
 * must not unsubscribe itself there (hand that to another thread). Every
 * pointer in an event is borrowed for the duration of the callback: copy
 * what you keep.
 *
 * Thread safety: every function may be called from any thread; subscribe
 * and unsubscribe may run while events are being delivered (an
 * unsubscribed callback is not called after keel__bus_unsubscribe returns).
 */
#ifndef KEEL_CORE_BUS_H
#define KEEL_CORE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Event types, one bit each so a subscription takes a mask. */
typedef enum keel__bus_type {
    KEEL__BUS_INFER = 1u << 0,      /* one inference answered (records policy) */
    KEEL__BUS_TIER = 1u << 1,       /* the serving tier of a package changed */
    KEEL__BUS_ALL_FAILED = 1u << 2, /* a request no tier could answer */
    KEEL__BUS_ESCALATION = 1u << 3, /* an escalation the upstream did not take */
    KEEL__BUS_INSTALL = 1u << 4,    /* a package version was installed */
    KEEL__BUS_ACTIVATE = 1u << 5,   /* a version became active */
    KEEL__BUS_ROLLBACK = 1u << 6,   /* rolled back to the previous version */
    KEEL__BUS_MARK_GOOD = 1u << 7,  /* the active version became known-good */
    KEEL__BUS_GC = 1u << 8,         /* unused versions and blobs were removed */
    KEEL__BUS_TRUST = 1u << 9,      /* the trust store changed (reload) */
    KEEL__BUS_LINK_UP = 1u << 10,   /* the uplink holds a working connection */
    KEEL__BUS_LINK_DOWN = 1u << 11, /* ... and lost it */
    KEEL__BUS_SHADOW = 1u << 12,    /* the device shadow changed */
    KEEL__BUS_READY = 1u << 13,     /* readiness changed (ready flag or reason) */
    KEEL__BUS_API = 1u << 14,       /* an audited API request completed */
    KEEL__BUS_CONFIG = 1u << 15,    /* the configuration was reloaded */
    KEEL__BUS_UPDATE = 1u << 16,    /* an update step: found, downloaded, refused, activated,
                                       rolled back, promoted (detail: the step) */
    KEEL__BUS_REVOKED = 1u << 17,   /* an installed version is revoked by the trust in force */
    KEEL__BUS_OUTCOME = 1u << 18,   /* every answered or failed request: probation's input */
    KEEL__BUS_ALL = (1u << 19) - 1,
} keel__bus_type;

/* The name of one type bit ("infer", "tier", ...); "unknown" otherwise. */
const char *keel__bus_type_name(unsigned type);

/* One event. Fields a type does not use are NULL / 0. */
typedef struct keel__bus_event {
    unsigned type;       /* one KEEL__BUS_* bit */
    int64_t at;          /* wall-clock seconds, set by publish when 0 */
    uint64_t seq;        /* set by publish: 1, 2, ... per bus */
    const char *package; /* package name */
    const char *version;
    const char *tier;      /* INFER, TIER, ALL_FAILED: the tier that served / failed last */
    const char *from_tier; /* TIER: the tier that served before */
    const char *reason;    /* why (failures, transitions, refusals) */
    const char *detail;    /* free text: endpoint (LINK), route (API), key (SHADOW) */
    const char *result;    /* INFER, ESCALATION: the result rows (JSON) or NULL */
    double confidence;     /* INFER: first row's, or -1 */
    bool degraded, ok;     /* INFER: degraded; TIER: a fall back; READY, API: ok */
    uint64_t ns;           /* INFER: request time */
    int status;            /* API: HTTP status */
    const void *data;      /* ESCALATION: the request as received */
    size_t len, json_len;  /* its length, and the JSON part's length */
} keel__bus_event;

typedef void (*keel__bus_fn)(void *ctx, const keel__bus_event *ev);

typedef struct keel__bus keel__bus;

/* NULL when out of memory. */
keel__bus *keel__bus_new(void);
/* No publish or subscribe may run or follow. Accepts NULL. */
void keel__bus_free(keel__bus *b);
/* Calls fn for every event whose type is in mask. Returns a subscription id
 * (> 0), or 0 when out of memory. */
int keel__bus_subscribe(keel__bus *b, unsigned mask, keel__bus_fn fn, void *ctx);
/* After it returns, fn is not running and will not be called again. */
void keel__bus_unsubscribe(keel__bus *b, int id);
/* Delivers ev (its at and seq filled in) to the subscribers of its type.
 * NULL bus: nothing. */
void keel__bus_publish(keel__bus *b, keel__bus_event *ev);
/* Events published so far. */
uint64_t keel__bus_published(keel__bus *b);
/* Current subscriptions (status, tests). */
size_t keel__bus_subscribers(keel__bus *b);

#endif
