/*
 * api_system.c - health, readiness, status, metrics (Prometheus text at
 * /metrics, the same registry as JSON at /api/metrics), re-verification, and
 * the runtime's event bus as server-sent events (GET /api/bus).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "http/api.h"

#define MOD "http"

void keel__api_health(keel__hreq *q)
{
    keel__reply_text(q, 200, "{\"status\":\"alive\"}\n");
}

void keel__api_ready(keel__hreq *q)
{
    bool ready = false;
    char *json = keel__runtime_readiness_json(keel__hreq_runtime(q), &ready);
    keel__reply_json(q, ready ? 200 : 503, json);
}

void keel__api_status(keel__hreq *q)
{
    keel_error e = {0};
    char *json = keel__runtime_status_json(keel__hreq_runtime(q), &e);
    if (!json)
        keel__reply_keel_error(q, &e);
    else
        keel__reply_json(q, 200, json);
}

/* The runtime's metrics registry, rendered by render into one answer. */
static void reply_metrics(keel__hreq *q, int (*render)(keel__metrics *, keel_buf *),
                          const char *ctype)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    if (render(keel__runtime_metrics_registry(keel__hreq_runtime(q)), &b)) {
        keel__buf_done(&b);
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory rendering metrics");
        return;
    }
    size_t len = b.len;
    keel__reply(q, 200, ctype, keel__buf_steal(&b), len, NULL);
}

void keel__api_metrics(keel__hreq *q)
{
    reply_metrics(q, keel__metrics_prometheus, "text/plain; version=0.0.4");
}

void keel__api_metrics_json(keel__hreq *q)
{
    reply_metrics(q, keel__metrics_json, "application/json");
}

void keel__api_verify(keel__hreq *q)
{
    const char *deep = keel__hreq_query(q, "deep");
    bool ready = false;
    keel__runtime *rt = keel__hreq_runtime(q);
    keel__runtime_refresh(rt, deep && strcmp(deep, "0") ? KEEL_VERIFY_DEEP : 0);
    keel__reply_json(q, 200, keel__runtime_readiness_json(rt, &ready));
}

/* --- GET /api/bus: each bus event as one server-sent event ------------------------------------ */

typedef struct bus_stream {
    keel__stream *s;
    keel__bus *bus;
    int sub;
    uint64_t dropped; /* events the client was too slow for */
} bus_stream;

static int quote_field(keel_buf *b, const char *key, const char *v)
{
    if (!v)
        return 0;
    int rc = keel__buf_appendf(b, ",\"%s\":", key);
    return rc ? rc : keel__json_quote(b, v);
}

/* An event as a JSON object (one line). */
static int event_json(const keel__bus_event *ev, keel_buf *b)
{
    int rc = keel__buf_appendf(b, "{\"seq\":%llu,\"at\":%lld,\"type\":\"%s\"",
                               (unsigned long long)ev->seq, (long long)ev->at,
                               keel__bus_type_name(ev->type));
    if (!rc)
        rc = quote_field(b, "package", ev->package);
    if (!rc)
        rc = quote_field(b, "version", ev->version);
    if (!rc)
        rc = quote_field(b, "tier", ev->tier);
    if (!rc)
        rc = quote_field(b, "from_tier", ev->from_tier);
    if (!rc)
        rc = quote_field(b, "reason", ev->reason);
    if (!rc)
        rc = quote_field(b, "detail", ev->detail);
    if (!rc && ev->type == KEEL__BUS_INFER)
        rc = keel__buf_appendf(b, ",\"degraded\":%s,\"latency_us\":%.1f",
                               ev->degraded ? "true" : "false", (double)ev->ns / 1e3);
    if (!rc && (ev->type & (KEEL__BUS_READY | KEEL__BUS_API | KEEL__BUS_SHADOW | KEEL__BUS_LINK_UP |
                            KEEL__BUS_LINK_DOWN)))
        rc = keel__buf_appendf(b, ",\"ok\":%s", ev->ok ? "true" : "false");
    if (!rc && ev->type == KEEL__BUS_API)
        rc = keel__buf_appendf(b, ",\"status\":%d", ev->status);
    if (!rc)
        rc = keel__buf_append(b, "}", 1);
    return rc;
}

static void on_bus(void *ctx, const keel__bus_event *ev)
{
    bus_stream *bs = ctx;
    keel_buf b;
    keel__buf_init(&b, 64 * 1024);
    if (!event_json(ev, &b) &&
        keel__stream_sse(bs->s, keel__bus_type_name(ev->type), b.data, b.len) == KEEL_EBUSY)
        bs->dropped++; /* the client reads slower than the device acts */
    keel__buf_done(&b);
}

/* The client went away or the server stops: unsubscribe (waits for a
 * delivery in progress), then let the stream go. */
static void on_close(void *ctx)
{
    bus_stream *bs = ctx;
    keel__bus_unsubscribe(bs->bus, bs->sub);
    if (bs->dropped)
        KEEL_LOG_I(MOD, "bus stream closed; %llu events were dropped for a slow client",
                   (unsigned long long)bs->dropped);
    keel__stream_release(bs->s);
    free(bs);
}

void keel__api_bus_stream(keel__hreq *q)
{
    const char *types = keel__hreq_query(q, "types");
    unsigned mask = 0;
    if (types) { /* ?types=activate,tier,... */
        for (const char *p = types; *p;) {
            size_t n = strcspn(p, ",");
            unsigned bit = 0;
            for (unsigned t = 1; t < KEEL__BUS_ALL; t <<= 1)
                if (strlen(keel__bus_type_name(t)) == n && !strncmp(keel__bus_type_name(t), p, n))
                    bit = t;
            if (!bit) {
                char msg[200];
                snprintf(msg, sizeof(msg),
                         "unknown event type \"%.*s\" in types= (e.g. install,activate,rollback,"
                         "tier,all_failed,link_up,link_down,ready,api)",
                         (int)(n > 40 ? 40 : n), p);
                keel__reply_error(q, 400, KEEL_EINVALID, msg);
                return;
            }
            mask |= bit;
            p += n + (p[n] == ',');
        }
    }
    bus_stream *bs = calloc(1, sizeof(*bs));
    if (!bs) {
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
        return;
    }
    bs->bus = keel__runtime_bus(keel__hreq_runtime(q));
    if (!(bs->s = keel__reply_stream(q, "text/event-stream", on_close, bs))) {
        free(bs);
        return;
    }
    /* A comment first: the client sees the stream open before any event. */
    if (keel__stream_write(bs->s, ": keel bus\n\n", 12) ||
        !(bs->sub = keel__bus_subscribe(bs->bus, mask ? mask : KEEL__BUS_ALL, on_bus, bs)))
        keel__stream_end(bs->s);
}
