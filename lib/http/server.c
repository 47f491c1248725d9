/*
 * server.c - the HTTP server glue on libmicrohttpd: connections (who gets
 * in, and deadlines for slow requests), request bodies and their limits,
 * auth classes, dispatch through the one route table (routes.c), answers
 * that come later (suspend/resume) and streamed answers (chunked,
 * server-sent events). What each route does is in its
 * API family's file (api_*.c); what the device does is in lib/runtime.
 * No microhttpd type leaves this file.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/json.h"
#include "http/http.h"
#include "http/server.h"

#define MOD         "http"
#define PEND_MAX    64            /* admitted connections not yet started */
#define PEND_TTL_NS 1000000000ull /* one MHD never started is forgotten */

struct keel__http {
    struct MHD_Daemon *tcp, *unix_d;
    keel__runtime *rt;
    /* as started (a restart changes them); limits and read_auth are read
     * from the runtime per request, a reload changes them */
    char listen[KEEL__CONF_STR_MAX], unix_socket[KEEL__CONF_PATH_MAX];
    unsigned port, threads, max_connections, request_timeout_s;
    pthread_mutex_t smu;
    keel__stream *streams; /* open streams (keep-alive pings, stop) */
    /* connections and the limits on them (see "connections" below) */
    pthread_mutex_t cmu;
    pthread_cond_t cwake;
    pthread_t reaper;
    bool reaper_on, stopping; /* stopping: under cmu */
    struct conn *conns;       /* every open connection, TCP and unix */
    unsigned ntcp;            /* TCP connections not being closed */
    /* admitted by admit() but not yet started (MHD adds a connection after
     * its accept policy returns, and pool threads accept concurrently: two
     * admits could both see room for one); under cmu */
    struct pending {
        struct sockaddr_storage addr;
        uint64_t at;
    } pend[PEND_MAX];
    unsigned npend;
    unsigned per_ip, reserve, header_timeout_s;
    uint64_t min_body_rate;
    atomic_ullong slow_closed, refused;
    int job_ping;
    atomic_int deferred; /* requests suspended until a later answer */
    atomic_int inflight; /* requests begun and not completed */
};

/* One connection, from accept to close (MHD's socket context). */
typedef enum conn_phase {
    C_HEADERS, /* connected, or its request begun: the request's headers are due */
    C_BODY,    /* headers in, the body arriving */
    C_ANSWER,  /* the request is in, being answered (or streamed): no deadline here */
    C_IDLE,    /* kept alive between requests */
} conn_phase;

typedef struct conn {
    struct conn *next, *prev;
    int fd;
    bool tcp;     /* else the unix socket */
    bool closing; /* shut down by us; MHD closes it next */
    struct sockaddr_storage addr;
    conn_phase phase; /* phase, since, got: under h->cmu */
    uint64_t since;   /* monotonic ns: when the phase began */
    uint64_t got;     /* body bytes in C_BODY */
} conn;

struct keel__hreq {
    keel__http *h;
    conn *conn; /* NULL when MHD gave none */
    struct MHD_Connection *c;
    keel__match m;
    keel_buf body;
    int fd; /* KEEL__BODY_FILE */
    char upload[PATH_MAX];
    uint64_t got, limit;
    bool too_big, dispatched, queued;
    bool oip;        /* a /v2 path: errors in the Open Inference Protocol's shape */
    int write_errno; /* storing the upload failed (disk full, ...) */
    pthread_mutex_t mu;
    pthread_cond_t answered;   /* signalled when a later answer is set */
    struct MHD_Response *resp; /* the answer, once there is one (under mu) */
    unsigned status;
    bool suspended; /* waiting for a later answer (under mu) */
    keel__stream *stream;
};

struct keel__stream {
    pthread_mutex_t mu;
    atomic_uint refs; /* producer, request, response */
    keel__http *h;
    struct MHD_Connection *c;
    char *buf;
    size_t off, len; /* unsent bytes are buf[off, off + len) */
    bool ended, gone, waiting, closed;
    void (*on_close)(void *ctx);
    void *ctx;
    keel__stream *next;
};

/* --- the request, for handlers ------------------------------------------------------------- */

keel__runtime *keel__hreq_runtime(keel__hreq *q)
{
    return q->h->rt;
}

const char *keel__hreq_param(keel__hreq *q, const char *name)
{
    for (size_t i = 0; i < q->m.nparams; i++)
        if (!strcmp(q->m.names[i], name))
            return q->m.params[i];
    return NULL;
}

const char *keel__hreq_query(keel__hreq *q, const char *key)
{
    return MHD_lookup_connection_value(q->c, MHD_GET_ARGUMENT_KIND, key);
}

const char *keel__hreq_header(keel__hreq *q, const char *key)
{
    return MHD_lookup_connection_value(q->c, MHD_HEADER_KIND, key);
}

const char *keel__hreq_body(keel__hreq *q, size_t *ret_len)
{
    *ret_len = q->body.len;
    return q->body.data ? q->body.data : "";
}

const char *keel__hreq_upload(keel__hreq *q)
{
    return q->upload;
}

const char *keel__auth_name(keel__auth a)
{
    static const char *const n[] = {"open", "read", "operator", "admin"};
    return (unsigned)a < KEEL_ARRAY_LEN(n) ? n[a] : "unknown";
}

/* --- answers ---------------------------------------------------------------------------------- */

/* Puts r in as q's answer: queued at once when the handler is still
 * running (the server queues it when it returns), or the suspended
 * connection is resumed and the handler entry queues it. */
static void set_answer(keel__hreq *q, unsigned status, struct MHD_Response *r)
{
    pthread_mutex_lock(&q->mu);
    if (q->resp || q->queued) { /* a second answer: a bug in a handler */
        pthread_mutex_unlock(&q->mu);
        KEEL_LOG_E(MOD, "%s answered twice; the second answer is dropped", q->m.route->name);
        if (r)
            MHD_destroy_response(r);
        return;
    }
    q->resp = r;
    q->status = status;
    pthread_cond_signal(&q->answered);
    if (q->suspended) {
        q->suspended = false;
        MHD_resume_connection(q->c);
        atomic_fetch_sub(&q->h->deferred, 1);
    }
    pthread_mutex_unlock(&q->mu);
}

unsigned keel__http_status_of(int code)
{
    /* Package refusals (the bytes or their signatures are wrong, or the
     * version goes backwards) are 422; a malformed request 400; a PERM
     * from below 403. */
    switch (code) {
    case KEEL_EINVALID:
        return 400;
    case KEEL_ECORRUPT:
    case KEEL_EBADSIG:
    case KEEL_EUNTRUSTED:
    case KEEL_EUNSUPPORTED:
    case KEEL_EDOWNGRADE:
        return 422;
    case KEEL_ENOTFOUND:
        return 404;
    case KEEL_ETOOBIG:
        return 413;
    case KEEL_EPERM:
        return 403;
    case KEEL_EEXISTS:
    case KEEL_ECONFLICT:
        return 409;
    case KEEL_EBUSY:
    case KEEL_ENOTREADY:
        return 503;
    case KEEL_ENOSPACE:
        return 507;
    default:
        return 500;
    }
}

void keel__reply(keel__hreq *q, unsigned status, const char *ctype, char *body, size_t len,
                 const char *const *hdrs)
{
    struct MHD_Response *r =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!r) {
        free(body);
        set_answer(q, 500, NULL); /* the connection is closed */
        return;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"keel\"");
    for (size_t i = 0; hdrs && hdrs[i]; i += 2)
        MHD_add_response_header(r, hdrs[i], hdrs[i + 1]);
    set_answer(q, status, r);
}

void keel__reply_fd(keel__hreq *q, unsigned status, const char *ctype, int fd, uint64_t offset,
                    uint64_t len, const char *const *hdrs)
{
    struct MHD_Response *r = MHD_create_response_from_fd_at_offset64(len, fd, offset);
    if (!r) {
        close(fd);
        keel__reply_error(q, 500, KEEL_ENOMEM, "cannot answer with the file");
        return;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    for (size_t i = 0; hdrs && hdrs[i]; i += 2)
        MHD_add_response_header(r, hdrs[i], hdrs[i + 1]);
    set_answer(q, status, r);
}

void keel__reply_json(keel__hreq *q, unsigned status, char *body)
{
    keel__reply(q, status, "application/json", body, body ? strlen(body) : 0, NULL);
}

void keel__reply_text(keel__hreq *q, unsigned status, const char *json)
{
    keel__reply_json(q, status, strdup(json));
}

/* Errors take the shape of the API family that answers them. keel's own
 * routes (/api, /healthz, ...): {"error":{"code":"NOTFOUND","message":"..."}}.
 * The Open Inference Protocol (/v2): {"error":"...","code":"NOTFOUND"}, as
 * KServe and Triton clients read it (they take "error" as the message and
 * tolerate other members); the code also goes out as Keel-Error-Code. */
static void reply_error_hdr(keel__hreq *q, unsigned status, int code, const char *msg,
                            const char *const *hdrs)
{
    const char *all[8] = {"Keel-Error-Code", keel_errname(code)};
    size_t n = 2;
    for (size_t i = 0; hdrs && hdrs[i] && n + 2 < KEEL_ARRAY_LEN(all); i += 2) {
        all[n++] = hdrs[i];
        all[n++] = hdrs[i + 1];
    }
    all[n] = NULL;
    keel_buf b;
    keel__buf_init(&b, 0);
    int rc =
        q->oip
            ? keel__buf_append(&b, "{\"error\":", 9)
            : keel__buf_appendf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", keel_errname(code));
    if (!rc)
        rc = keel__json_quote(&b, msg);
    if (!rc)
        rc = q->oip ? keel__buf_appendf(&b, ",\"code\":\"%s\"}\n", keel_errname(code))
                    : keel__buf_append(&b, "}}\n", 3);
    if (rc) {
        keel__buf_done(&b);
        keel__reply(q, 500, "application/json", NULL, 0, NULL);
        return;
    }
    size_t len = b.len;
    keel__reply(q, status, "application/json", keel__buf_steal(&b), len, all);
}

void keel__reply_error(keel__hreq *q, unsigned status, int code, const char *msg)
{
    reply_error_hdr(q, status, code, msg, NULL);
}

void keel__reply_keel_error(keel__hreq *q, const keel_error *e)
{
    keel__reply_error(q, keel__http_status_of(e->code), e->code, e->msg);
}

/* --- streams -----------------------------------------------------------------------------------
 */

static void stream_unref(keel__stream *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s->buf);
    free(s);
}

/* MHD asks for more of the body: what was written, the end, or (nothing
 * yet) suspend until the producer writes. */
static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    keel__stream *s = cls;
    ssize_t n;
    pthread_mutex_lock(&s->mu);
    if (s->len) {
        size_t k = s->len < max ? s->len : max;
        memcpy(out, s->buf + s->off, k);
        s->off += k;
        s->len -= k;
        if (!s->len)
            s->off = 0;
        n = (ssize_t)k;
    } else if (s->ended || s->gone) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        s->waiting = true;
        MHD_suspend_connection(s->c);
        n = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void stream_response_free(void *cls)
{
    stream_unref(cls);
}

/* The request is over (sent, or the client went away): tell the producer. */
static void stream_finish(keel__stream *s)
{
    keel__http *h = s->h;
    pthread_mutex_lock(&h->smu);
    for (keel__stream **p = &h->streams; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    pthread_mutex_unlock(&h->smu);
    pthread_mutex_lock(&s->mu);
    bool run = !s->closed;
    s->closed = s->gone = true;
    pthread_mutex_unlock(&s->mu);
    if (run && s->on_close)
        s->on_close(s->ctx);
    stream_unref(s); /* the request's reference */
}

keel__stream *keel__reply_stream(keel__hreq *q, const char *ctype, void (*on_close)(void *ctx),
                                 void *ctx)
{
    keel__stream *s = calloc(1, sizeof(*s));
    struct MHD_Response *r = NULL;
    if (!s || !(s->buf = malloc(KEEL__STREAM_BUF)))
        goto fail;
    pthread_mutex_init(&s->mu, NULL);
    atomic_init(&s->refs, 3);
    s->h = q->h;
    s->c = q->c;
    s->on_close = on_close;
    s->ctx = ctx;
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, s,
                                          stream_response_free);
    if (!r) {
        pthread_mutex_destroy(&s->mu);
        goto fail;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    q->stream = s;
    pthread_mutex_lock(&q->h->smu);
    s->next = q->h->streams;
    q->h->streams = s;
    pthread_mutex_unlock(&q->h->smu);
    set_answer(q, 200, r);
    return s;
fail:
    if (s)
        free(s->buf);
    free(s);
    keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory starting a stream");
    return NULL;
}

int keel__stream_write(keel__stream *s, const void *data, size_t len)
{
    int rc = KEEL_OK;
    pthread_mutex_lock(&s->mu);
    if (s->gone) {
        rc = KEEL_ENOCONN;
    } else if (s->ended) {
        rc = KEEL_EINVALID;
    } else if (s->len + len > KEEL__STREAM_BUF) {
        rc = KEEL_EBUSY;
    } else {
        if (s->off + s->len + len > KEEL__STREAM_BUF) {
            memmove(s->buf, s->buf + s->off, s->len);
            s->off = 0;
        }
        memcpy(s->buf + s->off + s->len, data, len);
        s->len += len;
        if (s->waiting) {
            s->waiting = false;
            MHD_resume_connection(s->c);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int keel__stream_sse(keel__stream *s, const char *event, const char *data, size_t len)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    int rc = event ? keel__buf_appendf(&b, "event: %s\n", event) : 0;
    if (!rc)
        rc = keel__buf_append(&b, "data: ", 6);
    if (!rc)
        rc = keel__buf_append(&b, data, len);
    if (!rc)
        rc = keel__buf_append(&b, "\n\n", 2);
    if (!rc)
        rc = keel__stream_write(s, b.data, b.len);
    keel__buf_done(&b);
    return rc;
}

void keel__stream_end(keel__stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->ended = true;
    if (s->waiting) {
        s->waiting = false;
        MHD_resume_connection(s->c);
    }
    pthread_mutex_unlock(&s->mu);
}

void keel__stream_release(keel__stream *s)
{
    if (s)
        stream_unref(s);
}

size_t keel__stream_pending(keel__stream *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->len;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Every 15 s an SSE comment on each open stream: proxies keep the
 * connection, and a client that went away is noticed (its write fails). */
static void ping_streams(void *ctx)
{
    keel__http *h = ctx;
    pthread_mutex_lock(&h->smu);
    for (keel__stream *s = h->streams; s; s = s->next)
        if (keel__stream_write(s, ": ping\n\n", 8) == KEEL_EBUSY)
            KEEL_LOG_D(MOD, "a stream's client is %zu bytes behind", keel__stream_pending(s));
    pthread_mutex_unlock(&h->smu);
}

/* --- auth and limits -----------------------------------------------------------------------------
 */

static bool token_ok(keel__http *h, struct MHD_Connection *c)
{
    const char *tok = keel__runtime_token(h->rt);
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    size_t n = strlen(a);
    unsigned char diff = n != 64;
    for (size_t i = 0; i < 64; i++)
        diff |= (unsigned char)((i < n ? a[i] : 0) ^ tok[i]);
    return diff == 0;
}

static bool allowed(keel__http *h, struct MHD_Connection *c, keel__auth a)
{
    switch (a) {
    case KEEL__AUTH_OPEN:
        return true;
    case KEEL__AUTH_READ:
        return !keel__runtime_setting_bool(h->rt, "read_auth") || token_ok(h, c);
    default:
        return token_ok(h, c);
    }
}

static const char *limit_name(keel__body b)
{
    return b == KEEL__BODY_FILE    ? "max_package in keeld.conf"
           : b == KEEL__BODY_INFER ? "max_infer_body in keeld.conf"
                                   : "max_body in keeld.conf";
}

/* --- connections ---------------------------------------------------------------------------
 *
 * libmicrohttpd's connection timeout counts idle time: a client that sends
 * a header line every few seconds keeps its connection for ever, and a
 * hundred such clients (slowloris) fill max_connections so that nobody
 * else, health checks included, gets in. keel bounds each phase of a
 * request itself, and admits connections by a policy of its own.
 *
 * Deadlines, checked twice a second by a reaper thread that shuts late
 * sockets down (MHD then closes them):
 *  - headers: a request's headers must be in within header_timeout of the
 *    connection being accepted;
 *  - body: once header_timeout has passed since the headers, the body must
 *    have come at min_body_rate bytes a second on average (0: no bound);
 *  - kept alive between requests: request_timeout + header_timeout;
 *  - being answered (a later answer, a stream): no bound here.
 * MHD's CLOSED notice comes before it closes the socket and removes the
 * connection from the list under cmu, which is held while a socket is shut
 * down: the fd shut down is never one reused by another connection.
 *
 * Who gets in over TCP (admit, before MHD takes the connection):
 *  - a client address other than 127.0.0.1 and ::1 holds at most
 *    max_connections_per_ip connections (0: no bound);
 *  - all clients together max_connections, and 127.0.0.1 / ::1 (health
 *    checks, local operators and producers) connection_reserve more;
 *  - over a bound, the connection that has waited longest for its headers
 *    or idled longest (at least EVICT_AGE_NS; from the same address when
 *    the address is over its bound) is closed to make room, so slow
 *    clients cannot keep a new request out; only when there is none is the
 *    new connection refused.
 * The unix socket is a daemon of its own, outside these counts.
 */
#define EVICT_AGE_NS 1000000000ull

static bool addr_local(const struct sockaddr *a)
{
    if (!a || a->sa_family == AF_UNIX)
        return true;
    if (a->sa_family == AF_INET)
        return ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) == INADDR_LOOPBACK;
    if (a->sa_family == AF_INET6) {
        const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
        static const unsigned char v4lo[] = {0, 0, 0,    0,    0,   0, 0, 0,
                                             0, 0, 0xff, 0xff, 127, 0, 0, 1};
        return IN6_IS_ADDR_LOOPBACK(x) || !memcmp(x->s6_addr, v4lo, 16);
    }
    return false;
}

static bool addr_same(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return false;
    if (b->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (b->sa_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return false;
}

/* Shuts c down (under cmu); MHD closes it on its next look. */
static void conn_close(keel__http *h, conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    c->closing = true;
    h->ntcp -= c->tcp;
}

/* The TCP connection waiting longest for its headers, or idle longest, for
 * at least EVICT_AGE_NS; from address `from` only when given (under cmu). */
static conn *conn_victim(keel__http *h, const struct sockaddr *from, uint64_t now)
{
    conn *v = NULL;
    for (conn *c = h->conns; c; c = c->next)
        if (c->tcp && !c->closing && (c->phase == C_HEADERS || c->phase == C_IDLE) &&
            c->since <= now && now - c->since >= EVICT_AGE_NS &&
            (!from || addr_same(&c->addr, from)) && (!v || c->since < v->since))
            v = c;
    return v;
}

/* Pending admissions (under cmu): added by admit, taken by the connection's
 * start, forgotten after PEND_TTL_NS (MHD refused it after admit said yes). */
static void pend_expire(keel__http *h, uint64_t now)
{
    unsigned k = 0;
    for (unsigned i = 0; i < h->npend; i++)
        if (now - h->pend[i].at < PEND_TTL_NS)
            h->pend[k++] = h->pend[i];
    h->npend = k;
}

static void pend_add(keel__http *h, const struct sockaddr *a, uint64_t now)
{
    size_t n = a->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (h->npend == PEND_MAX) /* drop the oldest: the bound is then off by one, not stuck */
        memmove(h->pend, h->pend + 1, --h->npend * sizeof(h->pend[0]));
    memset(&h->pend[h->npend].addr, 0, sizeof(h->pend[0].addr));
    memcpy(&h->pend[h->npend].addr, a, n);
    h->pend[h->npend++].at = now;
}

static void pend_take(keel__http *h, const struct sockaddr *a)
{
    for (unsigned i = 0; i < h->npend; i++)
        if (addr_same(&h->pend[i].addr, a)) {
            memmove(h->pend + i, h->pend + i + 1, (--h->npend - i) * sizeof(h->pend[0]));
            return;
        }
}

/* The accept policy (TCP): MHD_NO refuses the connection before it is one. */
static enum MHD_Result admit(void *cls, const struct sockaddr *addr, socklen_t len)
{
    keel__http *h = cls;
    bool local = addr_local(addr), over_ip = false, over_all;
    uint64_t now = keel__now_mono_ns();
    conn *v = NULL;
    (void)len;
    pthread_mutex_lock(&h->cmu);
    pend_expire(h, now);
    if (!local && h->per_ip) {
        unsigned same = 0;
        for (conn *c = h->conns; c; c = c->next)
            same += c->tcp && !c->closing && addr_same(&c->addr, addr);
        for (unsigned i = 0; i < h->npend; i++)
            same += addr_same(&h->pend[i].addr, addr);
        over_ip = same >= h->per_ip;
    }
    over_all = h->ntcp + h->npend >= h->max_connections + (local ? h->reserve : 0);
    if (over_ip || over_all)
        v = conn_victim(h, over_ip ? addr : NULL, now);
    if (v)
        conn_close(h, v);
    if (!(over_ip || over_all) || v)
        pend_add(h, addr, now);
    pthread_mutex_unlock(&h->cmu);
    if (v)
        atomic_fetch_add(&h->slow_closed, 1);
    else if (over_ip || over_all)
        atomic_fetch_add(&h->refused, 1);
    return over_ip || over_all ? (v ? MHD_YES : MHD_NO) : MHD_YES;
}

static conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void conn_phase_set(keel__http *h, conn *c, conn_phase p)
{
    if (!c)
        return;
    pthread_mutex_lock(&h->cmu);
    if (c->phase != p) {
        c->phase = p;
        c->since = keel__now_mono_ns();
        c->got = 0;
    }
    pthread_mutex_unlock(&h->cmu);
}

static void conn_got(keel__http *h, conn *c, size_t n)
{
    if (!c)
        return;
    pthread_mutex_lock(&h->cmu);
    c->got += n;
    pthread_mutex_unlock(&h->cmu);
}

static void notify_conn(void *cls, struct MHD_Connection *mc, void **ctx,
                        enum MHD_ConnectionNotificationCode toe)
{
    keel__http *h = cls;
    conn *c = *ctx;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        const struct sockaddr *a = ad ? ad->client_addr : NULL;
        if (!fd || !(c = calloc(1, sizeof(*c))))
            return; /* untracked: MHD's idle timeout still applies */
        c->fd = fd->connect_fd;
        c->tcp = a && (a->sa_family == AF_INET || a->sa_family == AF_INET6);
        if (c->tcp)
            memcpy(&c->addr, a,
                   a->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                           : sizeof(struct sockaddr_in6));
        c->phase = C_HEADERS;
        c->since = keel__now_mono_ns();
        pthread_mutex_lock(&h->cmu);
        c->next = h->conns;
        if (h->conns)
            h->conns->prev = c;
        h->conns = c;
        h->ntcp += c->tcp;
        if (c->tcp)
            pend_take(h, a);
        pthread_mutex_unlock(&h->cmu);
        *ctx = c;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && c) {
        pthread_mutex_lock(&h->cmu);
        if (c->prev)
            c->prev->next = c->next;
        else
            h->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        h->ntcp -= c->tcp && !c->closing;
        pthread_mutex_unlock(&h->cmu);
        free(c);
        *ctx = NULL;
    }
}

/* Whether c is past its phase's deadline at now (under cmu). */
static bool conn_late(const keel__http *h, const conn *c, uint64_t now)
{
    const uint64_t s = 1000000000ull;
    uint64_t age = now > c->since ? now - c->since : 0, grace = h->header_timeout_s * s;
    switch (c->phase) {
    case C_HEADERS:
        return age > grace;
    case C_BODY: /* after the grace, min_body_rate on average since the headers */
        return h->min_body_rate && age > grace &&
               (double)c->got < (double)h->min_body_rate * (double)(age - grace) / 1e9;
    case C_IDLE:
        return age > (uint64_t)(h->request_timeout_s + h->header_timeout_s) * s;
    default:
        return false;
    }
}

static void *reaper(void *arg)
{
    keel__http *h = arg;
    uint64_t last_log = 0, logged_closed = 0, logged_refused = 0;
    pthread_mutex_lock(&h->cmu);
    while (!h->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 500000000;
        until.tv_sec += until.tv_nsec / 1000000000;
        until.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&h->cwake, &h->cmu, &until);
        if (h->stopping)
            break;
        uint64_t now = keel__now_mono_ns();
        for (conn *c = h->conns; c; c = c->next) {
            if (c->closing || !conn_late(h, c, now))
                continue;
            KEEL_LOG_D(MOD, "closing a connection that is too slow sending its request (%s)",
                       c->phase == C_HEADERS ? "headers"
                       : c->phase == C_BODY  ? "body"
                                             : "idle");
            conn_close(h, c);
            atomic_fetch_add(&h->slow_closed, 1);
        }
        uint64_t closed = atomic_load(&h->slow_closed), refused = atomic_load(&h->refused);
        if ((closed != logged_closed || refused != logged_refused) &&
            now - last_log >= 10000000000ull) {
            KEEL_LOG_W(MOD,
                       "%llu connections closed as too slow sending their request, or to make "
                       "room (header_timeout %us, min_body_rate %llu B/s), and %llu refused over "
                       "max_connections_per_ip %u or max_connections %u, since start",
                       (unsigned long long)closed, h->header_timeout_s,
                       (unsigned long long)h->min_body_rate, (unsigned long long)refused, h->per_ip,
                       h->max_connections);
            logged_closed = closed;
            logged_refused = refused;
            last_log = now;
        }
    }
    pthread_mutex_unlock(&h->cmu);
    return NULL;
}

/* --- dispatch
 * ----------------------------------------------------------------------------------------- */

/* Queues q's answer if there is one; otherwise suspends the connection
 * until a later keel__reply_* resumes it. */
/* A later answer that comes within this long is waited for on the worker
 * when this is the only request in flight: alone, a suspend and resume (two
 * epoll_ctl calls and a wake-up) cost more than the short wait, and nobody
 * else needs the worker. With company, requests suspend at once and join
 * the next commit together. */
#define ALONE_WAIT_NS 2000000

static enum MHD_Result flush(keel__hreq *q)
{
    enum MHD_Result ret = MHD_YES;
    pthread_mutex_lock(&q->mu);
    if (!q->resp && !q->status && !q->stream && atomic_load(&q->h->inflight) == 1) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += ALONE_WAIT_NS;
        until.tv_sec += until.tv_nsec / 1000000000;
        until.tv_nsec %= 1000000000;
        while (!q->resp && !q->status && pthread_cond_timedwait(&q->answered, &q->mu, &until) == 0)
            ;
    }
    if (q->resp || q->status) {
        struct MHD_Response *r = q->resp;
        q->resp = NULL;
        q->queued = true;
        ret = r ? MHD_queue_response(q->c, q->status, r) : MHD_NO;
        if (r)
            MHD_destroy_response(r);
        if (q->m.route && (q->m.route->flags & KEEL__ROUTE_AUDIT)) {
            char detail[KEEL__PARAM_MAX + 64];
            const char *name = keel__hreq_param(q, "name");
            snprintf(detail, sizeof(detail), "%s%s%s", q->m.route->name, name ? " " : "",
                     name ? name : "");
            keel__bus_event ev = {.type = KEEL__BUS_API,
                                  .detail = detail,
                                  .package = name,
                                  .status = (int)q->status,
                                  .ok = q->status < 400};
            keel__bus_publish(keel__runtime_bus(q->h->rt), &ev);
        }
    } else {
        q->suspended = true;
        atomic_fetch_add(&q->h->deferred, 1);
        MHD_suspend_connection(q->c);
    }
    pthread_mutex_unlock(&q->mu);
    return ret;
}

/* A query argument whose value holds a NUL (%00): every reader of the
 * C string would see it cut there. Records the first one's name. */
static enum MHD_Result find_nul_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                    size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    if ((value && strlen(value) != value_size) || (key && strlen(key) != key_size)) {
        if (key && *key)
            keel__escape(cls, 64, key, strlen(key));
        else
            strcpy(cls, "(no name)");
        return MHD_NO;
    }
    return MHD_YES;
}

static enum MHD_Result begin(keel__http *h, keel__hreq *q, struct MHD_Connection *c,
                             const char *url, const char *method)
{
    char shown[160], arg[64] = "";
    /* the path and method are the client's bytes: escaped in logs */
    keel__escape(shown, sizeof(shown), url, strlen(url));
    if (!keel__route_match(method, url, &q->m)) {
        if (q->m.allow[0]) {
            char msg[160];
            const char *hdrs[] = {"Allow", q->m.allow, NULL};
            char m[40];
            snprintf(msg, sizeof(msg), "method %s is not allowed here; use %s",
                     keel__escape(m, sizeof(m), method, strlen(method)), q->m.allow);
            reply_error_hdr(q, 405, KEEL_EINVALID, msg, hdrs);
        } else {
            keel__reply_error(q, 404, KEEL_ENOTFOUND,
                              q->oip ? "no such endpoint (docs/inference.md lists the /v2 API)"
                                     : "no such endpoint (README.md and docs/ list keel's API)");
        }
        return flush(q);
    }
    const keel__route *rt = q->m.route;
    if (MHD_get_connection_values_n(c, MHD_GET_ARGUMENT_KIND, find_nul_arg, arg) >= 0 && arg[0]) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "query argument \"%s\" holds a NUL character (%%00); keel refuses NUL in "
                 "names and values",
                 arg);
        keel__reply_error(q, 400, KEEL_EINVALID, msg);
        return flush(q);
    }
    if (!allowed(h, c, rt->auth)) {
        KEEL_LOG_W(MOD, "%s %s refused: missing or wrong bearer token", rt->method, shown);
        keel__reply_error(q, 401, KEEL_EPERM,
                          "missing or wrong bearer token (it is in STATE_DIR/token)");
        return flush(q);
    }
    q->limit = keel__runtime_setting_u64(h->rt, rt->body == KEEL__BODY_FILE    ? "max_package"
                                                : rt->body == KEEL__BODY_INFER ? "max_infer_body"
                                                                               : "max_body");
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > q->limit) {
        char msg[160];
        q->too_big = true;
        snprintf(msg, sizeof(msg),
                 "request body of %.24s bytes is over the limit of %llu bytes (%s)", cl,
                 (unsigned long long)q->limit, limit_name(rt->body));
        KEEL_LOG_W(MOD, "%s %s refused: %s", rt->method, shown, msg);
        keel__reply_error(q, 413, KEEL_ETOOBIG, msg);
        return flush(q);
    }
    if (rt->body == KEEL__BODY_FILE) {
        keel_error e;
        if (keel__runtime_upload_file(h->rt, q->upload, sizeof(q->upload), &q->fd, &e)) {
            KEEL_LOG_E(MOD, "%s", e.msg);
            keel__reply_keel_error(q, &e);
            return flush(q);
        }
    }
    keel__buf_init(&q->body, (size_t)q->limit);
    return MHD_YES;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls)
{
    keel__http *h = cls;
    keel__hreq *q = *con_cls;
    if (!q) {
        if (!(q = calloc(1, sizeof(*q))))
            return MHD_NO;
        q->h = h;
        q->c = c;
        q->fd = -1;
        q->oip = !strncmp(url, "/v2", 3) && (url[3] == '\0' || url[3] == '/');
        q->conn = conn_of(c);
        conn_phase_set(h, q->conn, C_BODY);
        pthread_mutex_init(&q->mu, NULL);
        pthread_cond_init(&q->answered, NULL);
        atomic_fetch_add(&h->inflight, 1);
        *con_cls = q;
        return begin(h, q, c, url, method);
    }
    if (q->queued)
        return MHD_YES; /* an early answer is out; the rest of the body is dropped */
    if (*data_size) {
        size_t n = *data_size;
        *data_size = 0;
        conn_got(h, q->conn, n);
        if (q->too_big || q->write_errno)
            return MHD_YES;
        q->got += n;
        if (q->got > q->limit) {
            q->too_big = true;
            return MHD_YES;
        }
        if (q->m.route->body == KEEL__BODY_NONE)
            return MHD_YES;
        if (q->fd >= 0 ? keel__fs_write_all(q->fd, data, n) != 0
                       : keel__buf_append(&q->body, data, n) != 0)
            q->write_errno = q->fd >= 0 ? (errno ? errno : EIO) : ENOMEM; /* reported below */
        return MHD_YES;
    }
    if (q->dispatched)
        return flush(q); /* resumed: the later answer is there */
    q->dispatched = true;
    conn_phase_set(h, q->conn, C_ANSWER); /* the request is in (an early answer's body is
                                             still read under the body's bound) */
    if (q->too_big) {
        char msg[160];
        snprintf(msg, sizeof(msg), "request body is over the limit of %llu bytes (%s)",
                 (unsigned long long)q->limit, limit_name(q->m.route->body));
        KEEL_LOG_W(MOD, "%s %s refused: %s", q->m.route->method, q->m.route->pattern, msg);
        keel__reply_error(q, 413, KEEL_ETOOBIG, msg);
    } else if (q->write_errno) {
        keel_error e;
        keel__err_errno(&e, keel__err_from_errno(q->write_errno), q->write_errno,
                        "cannot store the request body in the staging directory (free some "
                        "space: `keel gc`)");
        KEEL_LOG_E(MOD, "%s", e.msg);
        keel__reply_keel_error(q, &e);
    } else {
        if (q->fd >= 0) {
            close(q->fd);
            q->fd = -1;
        }
        q->m.route->fn(q);
    }
    return flush(q);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    keel__hreq *q = *con_cls;
    (void)toe;
    conn_phase_set(cls, conn_of(c), C_IDLE);
    if (!q)
        return;
    if (q->stream)
        stream_finish(q->stream);
    if (q->fd >= 0)
        close(q->fd);
    if (q->upload[0])
        unlink(q->upload);
    if (q->resp) /* answered after the client went away */
        MHD_destroy_response(q->resp);
    keel__buf_done(&q->body);
    atomic_fetch_sub(&q->h->inflight, 1);
    pthread_cond_destroy(&q->answered);
    pthread_mutex_destroy(&q->mu);
    free(q);
    *con_cls = NULL;
}

/* --- lifecycle
 * ------------------------------------------------------------------------------------------ */

/* Binds and listens on the unix socket at path (mode 0660). A socket file
 * left by a keeld that died is replaced; a live one, or anything that is not
 * a socket, is refused rather than removed. */
static int listen_unix(const char *path, int *ret_fd, keel_error *err)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd = -1, rc;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path))
        return keel__err(err, KEEL_ETOOBIG, "unix socket path too long (max %zu bytes): %s",
                         sizeof(sa.sun_path) - 1, path);
    keel__strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return keel__err_errno(err, KEEL_EIO, errno, "cannot create a unix socket");
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            rc = keel__err(err, KEEL_EEXISTS,
                           "%s exists and is not a socket: remove it or set another unix_socket",
                           path);
            goto fail;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            rc = keel__err(err, KEEL_EBUSY,
                           "another server is listening on %s (is another keeld running?)", path);
            goto fail;
        }
        close(fd);
        if (unlink(path) != 0 && errno != ENOENT)
            return keel__err_errno(err, keel__err_from_errno(errno), errno,
                                   "cannot remove the stale socket %s", path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return keel__err_errno(err, KEEL_EIO, errno, "cannot create a unix socket");
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot bind %s", path);
        goto fail;
    }
    if (chmod(path, 0660) != 0 || listen(fd, 64) != 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot listen on %s", path);
        unlink(path);
        goto fail;
    }
    *ret_fd = fd;
    return KEEL_OK;
fail:
    close(fd);
    return rc;
}

static struct MHD_Daemon *start_daemon(keel__http *h, const struct sockaddr *addr, int listen_fd,
                                       keel_error *err)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
        flags |= MHD_USE_EPOLL;
    if (addr && addr->sa_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d;
    if (listen_fd >= 0) {
        d = MHD_start_daemon(flags, 0, NULL, NULL, handler, h, MHD_OPTION_LISTEN_SOCKET, listen_fd,
                             MHD_OPTION_THREAD_POOL_SIZE, (unsigned)1,
                             MHD_OPTION_CONNECTION_TIMEOUT, h->request_timeout_s,
                             MHD_OPTION_CONNECTION_LIMIT, h->max_connections,
                             MHD_OPTION_NOTIFY_CONNECTION, notify_conn, h,
                             MHD_OPTION_NOTIFY_COMPLETED, completed, h, MHD_OPTION_END);
    } else {
        /* admit() enforces the limits; MHD's own, per worker thread, is
         * only a backstop that must not get in its way */
        unsigned backstop = (2 * (h->max_connections + h->reserve) + 16) * h->threads;
        d = MHD_start_daemon(flags, 0, admit, h, handler, h, MHD_OPTION_SOCK_ADDR, addr,
                             MHD_OPTION_THREAD_POOL_SIZE, h->threads, MHD_OPTION_CONNECTION_TIMEOUT,
                             h->request_timeout_s, MHD_OPTION_CONNECTION_LIMIT, backstop,
                             MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)128,
                             MHD_OPTION_NOTIFY_CONNECTION, notify_conn, h,
                             MHD_OPTION_NOTIFY_COMPLETED, completed, h, MHD_OPTION_END);
    }
    if (!d)
        keel__err(err, KEEL_EIO,
                  "cannot listen on %s (is another keeld running, or the port taken?)",
                  listen_fd >= 0 ? h->unix_socket : h->listen);
    return d;
}

int keel__http_start(keel__runtime *rt, keel__http **ret, keel_error *err)
{
    keel__http *h = calloc(1, sizeof(*h));
    int rc = KEEL_OK, ufd = -1;
    if (!h)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_mutex_init(&h->smu, NULL);
    pthread_mutex_init(&h->cmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cwake, &ca);
    pthread_condattr_destroy(&ca);
    h->rt = rt;
    keel__conf *conf = keel__runtime_conf(rt);
    if (!conf) {
        free(h);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    keel__strlcpy(h->listen, keel__conf_str(conf, "listen"), sizeof(h->listen));
    keel__strlcpy(h->unix_socket, keel__conf_str(conf, "unix_socket"), sizeof(h->unix_socket));
    h->port = (unsigned)keel__conf_u64(conf, "port");
    h->threads = (unsigned)keel__conf_u64(conf, "threads");
    h->max_connections = (unsigned)keel__conf_u64(conf, "max_connections");
    h->request_timeout_s = (unsigned)keel__conf_u64(conf, "request_timeout");
    h->per_ip = (unsigned)keel__conf_u64(conf, "max_connections_per_ip");
    h->reserve = (unsigned)keel__conf_u64(conf, "connection_reserve");
    h->header_timeout_s = (unsigned)keel__conf_u64(conf, "header_timeout");
    h->min_body_rate = keel__conf_u64(conf, "min_body_rate");
    h->job_ping = keel__runtime_every(rt, "stream-ping", 15, ping_streams, h);
    struct sockaddr_storage ss;
    rc = keel__http_listen_addr(h->listen, h->port, keel__conf_is_set(conf, "port"), &ss, err);
    keel__conf_free(conf);
    if (rc)
        goto fail;
    h->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    if (pthread_create(&h->reaper, NULL, reaper, h) != 0) {
        rc = keel__err(err, KEEL_ENOMEM, "cannot start the HTTP connection reaper thread");
        goto fail;
    }
    h->reaper_on = true;
    if (h->port) {
        keel__http_addr_str(&ss, h->listen, sizeof(h->listen));
        if (!(h->tcp = start_daemon(h, (struct sockaddr *)&ss, -1, err))) {
            rc = KEEL_EIO;
            goto fail;
        }
        KEEL_LOG_I(MOD, "listening on http://%s", h->listen);
    }
    if (h->unix_socket[0]) {
        if ((rc = listen_unix(h->unix_socket, &ufd, err)))
            goto fail;
        if (!(h->unix_d = start_daemon(h, NULL, ufd, err))) {
            unlink(h->unix_socket);
            rc = KEEL_EIO;
            goto fail;
        }
        ufd = -1;
        KEEL_LOG_I(MOD, "listening on unix:%s", h->unix_socket);
    }
    if (!h->tcp && !h->unix_d) {
        rc = keel__err(err, KEEL_EINVALID, "nothing to listen on: set port or unix_socket");
        goto fail;
    }
    *ret = h;
    return KEEL_OK;
fail:
    if (ufd >= 0)
        close(ufd);
    keel__http_stop(h);
    return rc;
}

void keel__http_stop(keel__http *h)
{
    if (!h)
        return;
    keel__runtime_cancel(h->rt, h->job_ping);
    /* Streams end first: a suspended connection must be resumed before
     * the daemon can stop. */
    pthread_mutex_lock(&h->smu);
    for (keel__stream *s = h->streams; s; s = s->next)
        keel__stream_end(s);
    pthread_mutex_unlock(&h->smu);
    /* Later answers (a commit in flight) hold a pointer to their request:
     * let them land before the daemon frees the requests (bounded). */
    for (int i = 0; i < 500 && atomic_load(&h->deferred) > 0; i++)
        usleep(10000);
    if (atomic_load(&h->deferred) > 0)
        KEEL_LOG_W(MOD, "stopping with %d requests still waiting for an answer",
                   atomic_load(&h->deferred));
    if (h->reaper_on) { /* before MHD closes the sockets it may shut down */
        pthread_mutex_lock(&h->cmu);
        h->stopping = true;
        pthread_cond_signal(&h->cwake);
        pthread_mutex_unlock(&h->cmu);
        pthread_join(h->reaper, NULL);
    }
    if (h->tcp)
        MHD_stop_daemon(h->tcp);
    if (h->unix_d) {
        MHD_stop_daemon(h->unix_d);
        unlink(h->unix_socket);
    }
    pthread_mutex_destroy(&h->smu);
    pthread_cond_destroy(&h->cwake);
    pthread_mutex_destroy(&h->cmu);
    free(h);
}
