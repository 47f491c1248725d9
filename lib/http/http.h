/*
 * http.h - what a handler sees of an HTTP request, and how it answers.
 * No microhttpd type appears here: handlers (api_*.c, one file per API
 * family) read the request through keel__hreq_* and answer with
 * keel__reply_*; server.c owns the connection, the body, limits, auth and
 * the route table's dispatch (routes.c).
 *
 * Answering:
 *  - at once: a handler calls one keel__reply_* before it returns;
 *  - later: it returns without replying (after handing q to someone who
 *    will, e.g. the queue's committer); the connection is suspended and no
 *    worker thread waits. The later keel__reply_* may come from any thread,
 *    exactly once;
 *  - streamed: keel__reply_stream answers with a chunked body that a
 *    producer writes into from any thread (server-sent events helper
 *    included), with a bounded buffer (back-pressure) and a close callback
 *    that runs when the client goes away or the stream ends.
 */
#ifndef KEEL_HTTP_HTTP_H
#define KEEL_HTTP_HTTP_H

#include "core/core.h"
#include "runtime/runtime.h"

typedef struct keel__hreq keel__hreq;

/* Who may call a route. read: open unless read_auth is on in keeld.conf;
 * operator and admin: the bearer token in STATE_DIR/token (one token holds
 * every class today; the classes keep routes apart for when they differ). */
typedef enum keel__auth {
    KEEL__AUTH_OPEN,
    KEEL__AUTH_READ,
    KEEL__AUTH_OPERATOR,
    KEEL__AUTH_ADMIN
} keel__auth;
const char *keel__auth_name(keel__auth a);

/* What a route takes as a body, and under which limit of keeld.conf. */
typedef enum keel__body {
    KEEL__BODY_NONE,  /* anything sent is read and dropped, up to max_body */
    KEEL__BODY_JSON,  /* in memory, max_body */
    KEEL__BODY_INFER, /* in memory, max_infer_body */
    KEEL__BODY_FILE,  /* to a file under STATE_DIR/staging, max_package */
} keel__body;

enum {
    KEEL__ROUTE_AUDIT = 1u << 0,  /* completed requests go on the bus (KEEL__BUS_API) */
    KEEL__ROUTE_STREAM = 1u << 1, /* answers with a stream (no connection timeout) */
};

typedef void (*keel__handler_fn)(keel__hreq *q);

typedef struct keel__route {
    const char *method;  /* "GET" (HEAD too) or "POST" */
    const char *pattern; /* "/v2/models/{name}/versions/{version}/infer" */
    keel__handler_fn fn;
    keel__auth auth;
    keel__body body;
    unsigned flags;   /* KEEL__ROUTE_* */
    const char *name; /* "packages.install": logs, audit */
} keel__route;

/* The one route table (routes.c), and the matcher over it. */
extern const keel__route keel__routes[];
extern const size_t keel__nroutes;
#define KEEL__MAX_PARAMS 4
#define KEEL__PARAM_MAX  128
typedef struct keel__match {
    const keel__route *route; /* NULL: no route for this method */
    char params[KEEL__MAX_PARAMS][KEEL__PARAM_MAX];
    char names[KEEL__MAX_PARAMS][16]; /* their names in the pattern */
    size_t nparams;
    char allow[32]; /* when the path exists for other methods: "GET, HEAD, POST" */
} keel__match;
/* Finds the route for method + path. Returns true when one matched; else
 * m->allow says whether the path exists for other methods (405) or not
 * (404, allow empty). Parameters over their limit (name, version), or with
 * a byte that is not printable ASCII (a space, a control character, UTF-8),
 * do not match. */
bool keel__route_match(const char *method, const char *path, keel__match *m);

/* --- the request ---------------------------------------------------------------------- */

keel__runtime *keel__hreq_runtime(keel__hreq *q);
/* A path parameter by its name in the pattern ("name"), or NULL. */
const char *keel__hreq_param(keel__hreq *q, const char *name);
/* A query argument or a request header; NULL when absent. Valid until the reply. */
const char *keel__hreq_query(keel__hreq *q, const char *key);
const char *keel__hreq_header(keel__hreq *q, const char *key);
/* The body (KEEL__BODY_JSON / INFER): NUL-terminated; "" when none. */
const char *keel__hreq_body(keel__hreq *q, size_t *ret_len);
/* KEEL__BODY_FILE: the path of the stored upload. */
const char *keel__hreq_upload(keel__hreq *q);

/* --- answers (exactly one per request) ------------------------------------------------ */

/* body (malloc'd) is taken, also on failure. hdrs: NULL or name, value
 * pairs ending with NULL. */
void keel__reply(keel__hreq *q, unsigned status, const char *ctype, char *body, size_t len,
                 const char *const *hdrs);
void keel__reply_json(keel__hreq *q, unsigned status, char *body);
/* A copy of a constant JSON text. */
void keel__reply_text(keel__hreq *q, unsigned status, const char *json);
/* An error with status, in the shape of the route's API family: on keel's
 * own routes {"error":{"code":"NOTFOUND","message":msg}}; on /v2 (the Open
 * Inference Protocol) {"error":msg,"code":"NOTFOUND"}. Both carry the code
 * in a Keel-Error-Code header too. */
void keel__reply_error(keel__hreq *q, unsigned status, int code, const char *msg);
/* The same with the status of e's class (400, 404, 409, 413, 422, 503, 507...). */
void keel__reply_keel_error(keel__hreq *q, const keel_error *e);
unsigned keel__http_status_of(int code);

/* len bytes of the open file fd from offset, sent by the server as the
 * client reads (sendfile where it can: no worker waits on the disk or
 * holds the file in memory). fd is taken, also on failure (closed). */
void keel__reply_fd(keel__hreq *q, unsigned status, const char *ctype, int fd, uint64_t offset,
                    uint64_t len, const char *const *hdrs);

/* --- streams ---------------------------------------------------------------------------- */

typedef struct keel__stream keel__stream;
/* Answers with a chunked body of type ctype. on_close(ctx) runs once, on a
 * server thread, when the client went away or the response ended; after it
 * the producer must stop writing and call keel__stream_release. Returns
 * the stream with a reference for the producer, or NULL (a 500 was sent). */
keel__stream *keel__reply_stream(keel__hreq *q, const char *ctype, void (*on_close)(void *ctx),
                                 void *ctx);
/* Appends data. KEEL_EBUSY: the buffer (KEEL__STREAM_BUF) is full, the
 * client reads slower than we write: nothing was written, drop or retry.
 * KEEL_ENOCONN: the client is gone. */
#define KEEL__STREAM_BUF (256u * 1024)
KEEL_WUR int keel__stream_write(keel__stream *s, const void *data, size_t len);
/* One server-sent event: "event: EVENT\ndata: DATA\n\n" (event may be NULL;
 * data must not contain a newline). */
KEEL_WUR int keel__stream_sse(keel__stream *s, const char *event, const char *data, size_t len);
/* Ends the body after what was written (no more writes). */
void keel__stream_end(keel__stream *s);
/* Drops the producer's reference. */
void keel__stream_release(keel__stream *s);
/* Bytes written and not yet sent. (A client that went away shows as
 * KEEL_ENOCONN from the next write, and as the on_close call.) */
size_t keel__stream_pending(keel__stream *s);

#endif
