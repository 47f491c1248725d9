/*
 * server.c - keeld's HTTP API on libmicrohttpd (thread pool, epoll).
 *
 *   GET  /healthz                         alive
 *   GET  /readyz                          200 ready / 503 and why
 *   GET  /api/status                      versions, slots, verification
 *   GET  /api/packages                    installed packages
 *   POST /api/packages[?activate=1]       body: a .keel file            (token)
 *   POST /api/packages/NAME/activate      body: {"version": "x"} or none (token)
 *   POST /api/packages/NAME/rollback                                     (token)
 *   POST /api/packages/NAME/mark-good                                    (token)
 *   POST /api/verify[?deep=1]                                            (token)
 *   POST /api/gc                     drop unused versions and blobs      (token)
 *   POST /api/events                 queue a message for the uplink      (token)
 *   GET  /api/queue                  queue depth, bytes, evictions per class
 *
 * Open Inference Protocol (KServe v2), open like the GETs:
 *   GET  /v2, /v2/health/live, /v2/health/ready
 *   GET  /v2/models/NAME[/versions/V], /v2/models/NAME[/versions/V]/ready
 *   POST /v2/models/NAME[/versions/V]/infer   JSON, binary tensors, or an image
 *   GET  /metrics                             Prometheus text
 *
 * GETs are open to whoever can reach the listen address (loopback by
 * default); every POST needs `Authorization: Bearer TOKEN`.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/json.h"
#include "http/events.h"
#include "http/oip.h"
#include "http/server.h"
#include "infer/infer.h"
#include "keel/queue.h"
#include "sync/uplink.h"
#include "sync/shadow.h"
#include "infer/router.h"

#define MOD "http"

struct keel__http {
    struct MHD_Daemon *tcp, *unix_d;
    keel_store *store;
    keel__infer *infer;
    keel_queue *queue;
    keel__uplink *uplink; /* NULL: uplink = none */
    keel__router *router; /* NULL: no upstream_url */
    keel__shadow *shadow;
    keel_queue *reprocess; /* escalations the upstream could not answer yet */
    pthread_t reproc_thread;
    bool reproc_running, stopping;
    pthread_cond_t reproc_cv;
    keel_msg *batch; /* the source's batch handed to the uplink */
    keel__sync_msg *sbatch;
    int64_t last_expire;  /* wall seconds of the last queue expiry sweep */
    pthread_mutex_t lock; /* guards cfg limits and readiness */
    keel_config cfg;
    char token[65];
    bool ready;
    char why[4096];
    uint64_t started_ns;
};

enum route {
    R_NONE,
    R_HEALTH,
    R_READY,
    R_STATUS,
    R_LIST,
    R_INSTALL,
    R_ACTIVATE,
    R_ROLLBACK,
    R_MARK_GOOD,
    R_VERIFY,
    R_GC,
    R_V2_SERVER,
    R_V2_LIVE,
    R_V2_READY,
    R_V2_MODEL,
    R_V2_MODEL_READY,
    R_V2_INFER,
    R_METRICS,
    R_EVENTS,
    R_QUEUE,
    R_SHADOW_GET,
    R_SHADOW_SET,
};

typedef struct req {
    enum route route;
    char name[KEEL_NAME_MAX];
    char version[KEEL_VERSION_MAX]; /* /v2/models/NAME/versions/V */
    keel_buf body;                  /* small JSON bodies */
    int fd;                         /* upload file */
    char upload[PATH_MAX];
    uint64_t got, limit;
    bool too_big;
    int write_errno; /* storing the upload failed (disk full, ...) */
} req;

/* --- responses ---------------------------------------------------------------- */

/* Queues body (malloc'd; taken) as JSON. hdr/val: one extra header, or NULL. */
static enum MHD_Result send_json_hdr(struct MHD_Connection *c, unsigned status, char *body,
                                     const char *hdr, const char *val)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"keel\"");
    if (hdr)
        MHD_add_response_header(r, hdr, val);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, char *body)
{
    return send_json_hdr(c, status, body, NULL, NULL);
}

/* HTTP status per error class. Package refusals (the bytes or their
 * signatures are wrong, or the version goes backwards) are 422; a malformed
 * request is 400; a missing/wrong token is 401 (sent by the auth check), a
 * PERM from below 403. */
static unsigned status_of(int code)
{
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

static enum MHD_Result send_error_hdr(struct MHD_Connection *c, unsigned status, int code,
                                      const char *msg, const char *hdr, const char *val)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    if (keel__buf_appendf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", keel_errname(code)) ||
        keel__json_quote(&b, msg) || keel__buf_append(&b, "}}\n", 3)) {
        keel__buf_done(&b);
        return MHD_NO;
    }
    return send_json_hdr(c, status, keel__buf_steal(&b), hdr, val);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, int code,
                                  const char *msg)
{
    return send_error_hdr(c, status, code, msg, NULL, NULL);
}

static enum MHD_Result send_keel_error(struct MHD_Connection *c, const keel_error *e)
{
    return send_error(c, status_of(e->code), e->code, e->msg);
}

/* --- readiness ----------------------------------------------------------------- */

static void refresh(keel__http *h, unsigned flags)
{
    bool ready = false;
    char why[sizeof(h->why)];
    keel_error e;
    if (keel_store_resolve_all(h->store, flags, &ready, why, sizeof(why), &e)) {
        ready = false;
        snprintf(why, sizeof(why), "cannot read the store: %s", e.msg);
    }
    if (h->infer) {
        char iwhy[1024];
        if (keel__infer_refresh(h->infer, &e))
            KEEL_LOG_E(MOD, "loading models: %s", e.msg);
        if (!keel__infer_ready(h->infer, iwhy, sizeof(iwhy))) {
            size_t o = strlen(why);
            ready = false;
            snprintf(why + o, sizeof(why) - o, "%s%s", o ? "; " : "", iwhy);
        }
    }
    pthread_mutex_lock(&h->lock);
    if (ready != h->ready || strcmp(why, h->why) != 0) {
        if (ready && !why[0])
            KEEL_LOG_I(MOD, "ready");
        else
            KEEL_LOG_W(MOD, "%s: %s", ready ? "ready, degraded" : "not ready", why);
    }
    h->ready = ready;
    keel__strlcpy(h->why, why, sizeof(h->why));
    pthread_mutex_unlock(&h->lock);
}

void keel__http_refresh(keel__http *h, unsigned verify_flags)
{
    refresh(h, verify_flags);
}

static char *readiness_json(keel__http *h, bool *ret_ready)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    pthread_mutex_lock(&h->lock);
    bool ready = h->ready;
    int rc = keel__buf_appendf(&b, "{\"ready\":%s,\"reason\":", ready ? "true" : "false");
    if (!rc)
        rc = keel__json_quote(&b, h->why);
    pthread_mutex_unlock(&h->lock);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    if (rc) {
        keel__buf_done(&b);
        return NULL;
    }
    *ret_ready = ready;
    return keel__buf_steal(&b);
}

/* --- handlers -------------------------------------------------------------------- */

static enum MHD_Result do_status(keel__http *h, struct MHD_Connection *c)
{
    char *store = NULL, *ready = NULL;
    keel_error e;
    bool r;
    keel_buf b;
    if (keel_store_status_json(h->store, &store, &e))
        return send_keel_error(c, &e);
    ready = readiness_json(h, &r);
    keel__buf_init(&b, 0);
    int rc = !ready;
    if (!rc)
        rc = keel__buf_appendf(
            &b, "{\"keel_version\":\"%s\",\"uptime_s\":%llu,\"state_dir\":", keel_version(),
            (unsigned long long)((keel__now_mono_ns() - h->started_ns) / 1000000000ull));
    if (!rc)
        rc = keel__json_quote(&b, h->cfg.state_dir);
    char *inf = h->infer ? keel__infer_status_json(h->infer) : NULL;
    char *up = h->uplink ? keel__uplink_status_json(h->uplink) : NULL;
    char *ro = h->router ? keel__router_status_json(h->router) : NULL;
    keel_queue_stats rs;
    keel_error rse;
    long long pending =
        h->reprocess && !keel_queue_stats_get(h->reprocess, &rs, &rse) ? (long long)rs.depth : 0;
    if (!rc)
        rc = keel__buf_appendf(&b,
                               ",\"readiness\":%s,\"store\":%s,\"inference\":%s,\"uplink\":%s,"
                               "\"upstream\":%s,\"reprocess_pending\":%lld}\n",
                               ready, store, inf ? inf : "{}", up ? up : "null", ro ? ro : "null",
                               pending);
    free(inf);
    free(up);
    free(ro);
    free(store);
    free(ready);
    if (rc) {
        keel__buf_done(&b);
        return MHD_NO;
    }
    return send_json(c, 200, keel__buf_steal(&b));
}

static enum MHD_Result do_install(keel__http *h, struct MHD_Connection *c, req *q)
{
    keel_error e = {0};
    keel_trust *t = NULL;
    keel_install_result r;
    char tdir[PATH_MAX];
    const char *act = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "activate");
    unsigned flags = act && (!strcmp(act, "1") || !strcmp(act, "true")) ? KEEL_INSTALL_ACTIVATE : 0;
    pthread_mutex_lock(&h->lock); /* SIGHUP may change trust_dir */
    keel_config_trust_dir(&h->cfg, tdir, sizeof(tdir));
    pthread_mutex_unlock(&h->lock);
    int rc = keel_trust_load(tdir, &t, &e);
    if (!rc)
        rc = keel_store_install(h->store, q->upload, t, flags, &r, &e);
    keel_trust_free(t);
    if (rc) {
        KEEL_LOG_W(MOD, "install refused: %s", e.msg);
        return send_keel_error(c, &e);
    }
    refresh(h, 0);
    keel_buf b;
    keel__buf_init(&b, 0);
    if (keel__buf_appendf(&b,
                          "{\"name\":\"%s\",\"version\":\"%s\",\"digest\":\"%s\",\"bytes\":%llu,"
                          "\"new_bytes\":%llu,\"already_installed\":%s,\"activated\":%s}\n",
                          r.name, r.version, r.digest, (unsigned long long)r.bytes,
                          (unsigned long long)r.new_bytes, r.already ? "true" : "false",
                          r.activated ? "true" : "false")) {
        keel__buf_done(&b);
        return MHD_NO;
    }
    return send_json(c, r.already ? 200 : 201, keel__buf_steal(&b));
}

static enum MHD_Result do_slot_action(keel__http *h, struct MHD_Connection *c, req *q)
{
    keel_error e = {0};
    const char *version = NULL;
    cJSON *body = NULL;
    int rc = KEEL_OK;
    if (q->route == R_ACTIVATE && q->body.len) {
        if ((rc = keel__json_parse(q->body.data, q->body.len, "request body", &body, &e)) ||
            (rc = keel__json_str(body, "version", false, KEEL_VERSION_MAX, &version, "request body",
                                 &e))) {
            cJSON_Delete(body);
            return send_keel_error(c, &e);
        }
    }
    switch (q->route) {
    case R_ACTIVATE:
        rc = keel_store_activate(h->store, q->name, version, &e);
        break;
    case R_ROLLBACK:
        rc = keel_store_rollback(h->store, q->name, &e);
        break;
    default:
        rc = keel_store_mark_good(h->store, q->name, &e);
        break;
    }
    cJSON_Delete(body);
    if (rc) {
        KEEL_LOG_W(MOD, "%s refused: %s", q->name, e.msg);
        return send_keel_error(c, &e);
    }
    refresh(h, 0);
    keel_serving sv;
    if (keel_store_resolve(h->store, q->name, 0, &sv, &e))
        return send_keel_error(c, &e);
    keel_buf b;
    keel__buf_init(&b, 0);
    if (keel__buf_appendf(&b, "{\"name\":\"%s\",\"serving\":\"%s\",\"slot\":\"%s\"}\n", sv.name,
                          sv.version, keel_slot_name(sv.slot))) {
        keel__buf_done(&b);
        return MHD_NO;
    }
    return send_json(c, 200, keel__buf_steal(&b));
}

/* --- Open Inference Protocol ------------------------------------------------------------ */

static enum MHD_Result send_body(struct MHD_Connection *c, unsigned status, char *body, size_t len,
                                 const char *ctype, const char *h1, const char *v1, const char *h2,
                                 const char *v2)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (h1)
        MHD_add_response_header(r, h1, v1);
    if (h2)
        MHD_add_response_header(r, h2, v2);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The model a /v2/models/NAME[/versions/V] path names, referenced; sends
 * 404 itself when there is none. */
static keel__model *v2_model(keel__http *h, struct MHD_Connection *c, req *q, enum MHD_Result *ret)
{
    keel__model *m = h->infer ? keel__infer_get(h->infer, q->name) : NULL;
    char msg[256];
    if (!m) {
        snprintf(msg, sizeof(msg),
                 "no model \"%s\" is served (GET /api/packages lists what is installed)", q->name);
        *ret = send_error(c, 404, KEEL_ENOTFOUND, msg);
        return NULL;
    }
    if (q->version[0] && strcmp(q->version, keel__model_version(m))) {
        snprintf(msg, sizeof(msg), "%s serves version %s, not %s", q->name, keel__model_version(m),
                 q->version);
        keel__model_unref(m);
        *ret = send_error(c, 404, KEEL_ENOTFOUND, msg);
        return NULL;
    }
    return m;
}

/* Sends an upstream answer as ours (its tier says "upstream"). Takes a. */
static enum MHD_Result send_upstream(struct MHD_Connection *c, keel__upstream_answer *a)
{
    char hlen[32];
    size_t len = a->body.len, jlen = a->json_len;
    char *body = keel__buf_steal(&a->body);
    if (!body)
        return MHD_NO;
    if (jlen != len) {
        snprintf(hlen, sizeof(hlen), "%zu", jlen);
        return send_body(c, 200, body, len, "application/octet-stream", "X-Keel-Tier", "upstream",
                         "Inference-Header-Content-Length", hlen);
    }
    return send_body(c, 200, body, len, "application/json", "X-Keel-Tier", "upstream", NULL, NULL);
}

/* The first result row's confidence, or -1. */
static double result_confidence(const char *result)
{
    const char *c = result ? strstr(result, "\"confidence\":") : NULL;
    return c ? strtod(c + 13, NULL) : -1;
}

/* Keeps an escalation the upstream could not take, for the re-processing
 * worker: the local result, a newline, then the request as received. */
static void queue_reprocess(keel__http *h, const char *model, const char *result, const req *q,
                            size_t json_len)
{
    keel_buf b;
    char ctype[64];
    keel_error e;
    keel__buf_init(&b, 0);
    snprintf(ctype, sizeof(ctype), "keel-hlen=%zu", json_len);
    if (keel__buf_appendf(&b, "%s\n", result ? result : "null") ||
        keel__buf_append(&b, q->body.data ? q->body.data : "", q->body.len)) {
        keel__buf_done(&b);
        return;
    }
    keel_msg_in m = {.topic = model,
                     .prio = KEEL_PRIO_NORMAL,
                     .payload = b.data,
                     .payload_len = b.len,
                     .content_type = ctype};
    if (keel_queue_enqueue(h->reprocess, &m, NULL, &e))
        KEEL_LOG_W(MOD, "cannot keep %s's escalation for later: %s", model, e.msg);
    keel__buf_done(&b);
}

static enum MHD_Result do_infer(keel__http *h, struct MHD_Connection *c, req *q)
{
    enum MHD_Result ret = MHD_NO;
    keel__model *m = v2_model(h, c, q, &ret);
    if (!m)
        return ret;
    keel_error e = {0};
    keel__oip_req r;
    keel__infer_resp resp;
    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    const char *hl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    int rc;
    bool image = ctype && (!strncmp(ctype, "image/", 6) ||
                           (!strncmp(ctype, "application/octet-stream", 24) && !hl));
    if (image) { /* the whole body is an encoded image; parameters in the query */
        memset(&r, 0, sizeof(r));
        const char *tier = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "tier");
        const char *sess = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "session");
        if (tier)
            keel__strlcpy(r.tier, tier, sizeof(r.tier));
        if (sess)
            keel__strlcpy(r.session, sess, sizeof(r.session));
        r.req.tier = tier ? r.tier : NULL;
        r.req.session = sess ? r.session : NULL;
        r.req.image = q->body.data;
        r.req.image_len = q->body.len;
        rc = keel__model_image_input(m)
                 ? KEEL_OK
                 : keel__err(&e, KEEL_EINVALID,
                             "%s takes no image input (its manifest has no image preprocess); "
                             "send JSON tensors",
                             q->name);
    } else {
        size_t json_len = q->body.len;
        if (hl) {
            char *end = NULL;
            unsigned long long v = strtoull(hl, &end, 10);
            if (!*hl || *end || v > q->body.len) {
                keel__model_unref(m);
                return send_error(c, 400, KEEL_EINVALID,
                                  "Inference-Header-Content-Length is not a length within the "
                                  "body");
            }
            json_len = (size_t)v;
        }
        rc = keel__oip_parse(q->body.data ? q->body.data : "", q->body.len, json_len,
                             keel__model_image_input(m), &r, &e);
    }
    /* hybrid routing (JSON and binary requests; image bodies stay local) */
    double below = 0;
    uint64_t up_ms = 0;
    int route = h->router && !image && !r.req.tier ? keel__model_route(m, &below, &up_ms)
                                                   : KEEL__ROUTE_LOCAL;
    size_t json_len = hl ? (size_t)strtoull(hl, NULL, 10) : q->body.len;
    char up_why[200] = "";
    if (!rc && route == KEEL__ROUTE_UPSTREAM_FIRST) {
        keel__upstream_answer a;
        keel_error ue = {0};
        if (!keel__router_allow(h->router))
            snprintf(up_why, sizeof(up_why), "upstream breaker open");
        else if (!keel__router_forward(h->router, q->name, q->body.data, q->body.len, json_len,
                                       up_ms, &a, &ue)) {
            keel__oip_done(&r);
            keel__model_unref(m);
            return send_upstream(c, &a);
        } else
            snprintf(up_why, sizeof(up_why), "%s", ue.msg);
    }
    if (!rc)
        rc = keel__model_run(m, &r.req, &resp, &e);
    if (!rc && up_why[0])
        snprintf(resp.escalation, sizeof(resp.escalation), "upstream first: %s", up_why);
    if (!rc && route == KEEL__ROUTE_ESCALATE) {
        double conf = result_confidence(resp.result);
        if (r.complex || (conf >= 0 && conf < below)) {
            keel__upstream_answer a;
            keel_error ue = {0};
            if (keel__router_allow(h->router) &&
                !keel__router_forward(h->router, q->name, q->body.data, q->body.len, json_len,
                                      up_ms, &a, &ue)) {
                keel__infer_resp_done(&resp);
                keel__oip_done(&r);
                keel__model_unref(m);
                return send_upstream(c, &a);
            }
            snprintf(resp.escalation, sizeof(resp.escalation),
                     "escalation failed (%s); local answer, queued for re-processing",
                     ue.msg[0] ? ue.msg : "upstream breaker open");
            queue_reprocess(h, q->name, resp.result, q, json_len);
            pthread_cond_signal(&h->reproc_cv);
        }
    }
    if (rc) {
        keel__model_unref(m);
        keel__oip_done(&r);
        if (rc == KEEL_ENOTREADY) { /* every tier failed: the service, not the request */
            KEEL_LOG_E(MOD, "%s", e.msg);
            return send_error(c, 503, rc, e.msg);
        }
        return send_keel_error(c, &e);
    }
    char *body = NULL, hlen[32];
    size_t len = 0, jlen = 0;
    rc = keel__oip_response(&r, &resp, &body, &len, &jlen, &e);
    char tier_hdr[64];
    snprintf(tier_hdr, sizeof(tier_hdr), "%s", resp.tier);
    keel__infer_resp_done(&resp);
    keel__oip_done(&r);
    keel__model_unref(m); /* only now: output names belong to the model */
    if (rc)
        return send_keel_error(c, &e);
    if (jlen != len) {
        snprintf(hlen, sizeof(hlen), "%zu", jlen);
        return send_body(c, 200, body, len, "application/octet-stream", "X-Keel-Tier", tier_hdr,
                         "Inference-Header-Content-Length", hlen);
    }
    return send_body(c, 200, body, len, "application/json", "X-Keel-Tier", tier_hdr, NULL, NULL);
}

static enum MHD_Result do_v2(keel__http *h, struct MHD_Connection *c, req *q)
{
    enum MHD_Result ret = MHD_NO;
    char buf[512];
    bool ready;
    switch (q->route) {
    case R_V2_SERVER:
        snprintf(buf, sizeof(buf),
                 "{\"name\":\"keel\",\"version\":\"%s\",\"extensions\":[\"binary_tensor_data\","
                 "\"keel_image\",\"keel_tiers\"]}\n",
                 keel_version());
        return send_json(c, 200, strdup(buf));
    case R_V2_LIVE:
        return send_json(c, 200, strdup("{\"live\":true}\n"));
    case R_V2_READY: {
        char *json = readiness_json(h, &ready);
        free(json);
        return send_json(c, ready ? 200 : 503,
                         strdup(ready ? "{\"ready\":true}\n" : "{\"ready\":false}\n"));
    }
    case R_V2_MODEL: {
        keel__model *m = v2_model(h, c, q, &ret);
        if (!m)
            return ret;
        char *json = keel__model_metadata_json(m);
        keel__model_unref(m);
        return json ? send_json(c, 200, json) : MHD_NO;
    }
    case R_V2_MODEL_READY: {
        keel__model *m = v2_model(h, c, q, &ret);
        if (!m)
            return ret;
        ready = keel__model_ready(m);
        keel__model_unref(m);
        snprintf(buf, sizeof(buf), "{\"name\":\"%s\",\"ready\":%s}\n", q->name,
                 ready ? "true" : "false");
        return send_json(c, ready ? 200 : 503, strdup(buf));
    }
    case R_METRICS: {
        keel_buf b;
        keel__buf_init(&b, 0);
        int rc = keel__buf_appendf(&b,
                                   "# HELP keel_up keeld is running.\n# TYPE keel_up gauge\n"
                                   "keel_up 1\n"
                                   "# HELP keel_ready Whether keeld is ready to serve.\n"
                                   "# TYPE keel_ready gauge\nkeel_ready %d\n",
                                   h->ready ? 1 : 0);
        if (!rc && h->infer)
            rc = keel__infer_metrics(h->infer, &b);
        keel_queue_stats st;
        keel_error qe;
        if (!rc && h->queue && !keel_queue_stats_get(h->queue, &st, &qe)) {
            static const char *const fam[][3] = {
                {"keel_queue_depth", "gauge", "Messages waiting, by priority class."},
                {"keel_queue_bytes", "gauge", "Bytes waiting, by priority class."},
                {"keel_queue_evicted_total", "counter", "Messages evicted to make room."},
                {"keel_queue_refused_total", "counter", "Enqueues refused (backpressure)."}};
            for (size_t f = 0; !rc && f < 4; f++) {
                rc = keel__buf_appendf(&b, "# HELP %s %s\n# TYPE %s %s\n", fam[f][0], fam[f][2],
                                       fam[f][0], fam[f][1]);
                for (int k = 0; !rc && k < KEEL_PRIO_COUNT; k++) {
                    const keel_queue_class_stats *cs = &st.cls[k];
                    uint64_t v = f == 0   ? cs->depth
                                 : f == 1 ? cs->bytes
                                 : f == 2 ? cs->evicted
                                          : cs->refused;
                    rc = keel__buf_appendf(&b, "%s{class=\"%s\"} %llu\n", fam[f][0],
                                           keel_prio_name((keel_prio)k), (unsigned long long)v);
                }
            }
        }
        if (!rc && h->uplink)
            rc = keel__uplink_metrics(h->uplink, &b);
        if (!rc && h->router)
            rc = keel__router_metrics(h->router, &b);
        if (rc) {
            keel__buf_done(&b);
            return MHD_NO;
        }
        size_t len = b.len;
        return send_body(c, 200, keel__buf_steal(&b), len, "text/plain; version=0.0.4", NULL, NULL,
                         NULL, NULL);
    }
    default:
        return do_infer(h, c, q);
    }
}

/* --- store-and-forward ------------------------------------------------------------------- */

/* Removes expired messages at most every 10 s (from whichever request comes). */
static void maybe_expire(keel__http *h)
{
    int64_t now = keel__now_wall_s();
    pthread_mutex_lock(&h->lock);
    bool due = now - h->last_expire >= 10;
    if (due)
        h->last_expire = now;
    pthread_mutex_unlock(&h->lock);
    keel_error e;
    uint64_t n = 0;
    if (due && keel_queue_expire(h->queue, now, &n, &e))
        KEEL_LOG_W(MOD, "queue expiry: %s", e.msg);
}

/*
 * POST /api/events. Either a JSON envelope
 *   {"topic": "alerts/door", "priority": "high", "ttl_s": 3600,
 *    "idempotency_key": "door-17", "payload": <any JSON value>}
 * or any body with ?topic=&priority=&ttl_s=&idempotency_key= in the query
 * (the body is stored as is, with its Content-Type). 202 once durable.
 */
static enum MHD_Result do_events(keel__http *h, struct MHD_Connection *c, req *q)
{
    keel_error e = {0};
    keel__event_req ev;
    maybe_expire(h);
    int rc = keel__event_parse(
        q->body.data, q->body.len, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type"),
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "topic"),
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "priority"),
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "idempotency_key"),
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "ttl_s"), &ev, &e);
    keel_msg_in m = ev.m;
    uint64_t id = 0;
    if (!rc)
        rc = keel_queue_enqueue(h->queue, &m, &id, &e);
    keel__event_done(&ev); /* idempotent: also after a parse error */
    if (rc) {
        if (rc == KEEL_ENOSPACE)
            KEEL_LOG_W(MOD, "event refused: %s", e.msg);
        return send_keel_error(c, &e);
    }
    if (h->uplink)
        keel__uplink_wake(h->uplink, m.prio == KEEL_PRIO_CRITICAL);
    char body[96];
    snprintf(body, sizeof(body), "{\"id\":%llu,\"durable\":true}\n", (unsigned long long)id);
    return send_json(c, 202, strdup(body));
}

static enum MHD_Result do_queue(keel__http *h, struct MHD_Connection *c)
{
    keel_queue_stats st;
    keel_error e;
    char *json = NULL;
    maybe_expire(h);
    if (keel_queue_stats_get(h->queue, &st, &e) || keel_queue_stats_json(&st, &json, &e))
        return send_keel_error(c, &e);
    return send_json(c, 200, json);
}

/* Engine events into the queue: tier transitions (high), requests no tier
 * could answer (critical, at most one per package every 10 s, with the
 * count of those folded in), inference records (bulk). */
static void on_infer_event(void *ctx, const keel__infer_event *ev)
{
    keel__http *h = ctx;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static struct {
        char name[KEEL_NAME_MAX];
        int64_t last;
        uint64_t folded;
    } recent[32];
    keel_buf b;
    keel_msg_in m = {0};
    char topic[KEEL_NAME_MAX + 16];
    uint64_t folded = 0;
    keel__buf_init(&b, 1u << 20);
    int rc = keel__buf_appendf(&b, "{\"device\":");
    if (!rc)
        rc = keel__json_quote(&b, h->cfg.device_id);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"at\":%lld,\"model\":\"%s\",\"version\":\"%s\",\"tier\":",
                               (long long)keel__now_wall_s(), ev->model, ev->version);
    if (!rc)
        rc = keel__json_quote(&b, ev->tier ? ev->tier : "");
    switch (ev->type) {
    case KEEL__EV_TRANSITION:
        m.prio = KEEL_PRIO_HIGH;
        snprintf(topic, sizeof(topic), "alerts/tier");
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"type\":\"tier_transition\",\"from\":");
        if (!rc)
            rc = keel__json_quote(&b, ev->from_tier ? ev->from_tier : "");
        break;
    case KEEL__EV_ALL_FAILED: {
        int64_t now = keel__now_wall_s();
        size_t slot = 0;
        bool send = true;
        pthread_mutex_lock(&mu);
        for (size_t i = 0; i < KEEL_ARRAY_LEN(recent); i++) {
            if (!strcmp(recent[i].name, ev->model)) {
                slot = i;
                break;
            }
            if (recent[i].last < recent[slot].last)
                slot = i;
        }
        if (!strcmp(recent[slot].name, ev->model) && now - recent[slot].last < 10) {
            recent[slot].folded++;
            send = false;
        } else {
            if (strcmp(recent[slot].name, ev->model))
                recent[slot].folded = 0;
            keel__strlcpy(recent[slot].name, ev->model, sizeof(recent[slot].name));
            recent[slot].last = now;
            folded = recent[slot].folded;
            recent[slot].folded = 0;
        }
        pthread_mutex_unlock(&mu);
        if (!send) {
            keel__buf_done(&b);
            return;
        }
        m.prio = KEEL_PRIO_CRITICAL;
        snprintf(topic, sizeof(topic), "alerts/inference");
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"type\":\"all_tiers_failed\",\"earlier_failures\":%llu",
                                   (unsigned long long)folded);
        break;
    }
    default:
        m.prio = KEEL_PRIO_BULK;
        snprintf(topic, sizeof(topic), "records/%s", ev->model);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"type\":\"record\",\"degraded\":%s,\"latency_us\":%.1f",
                                   ev->degraded ? "true" : "false", (double)ev->ns / 1e3);
        if (!rc && ev->result)
            rc = keel__buf_appendf(&b, ",\"result\":%s", ev->result);
        break;
    }
    if (!rc && ev->reason && ev->reason[0]) {
        rc = keel__buf_appendf(&b, ",\"reason\":");
        if (!rc)
            rc = keel__json_quote(&b, ev->reason);
    }
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    keel_error e;
    m.topic = topic;
    m.payload = b.data;
    m.payload_len = b.len;
    m.content_type = "application/json";
    if (rc || keel_queue_enqueue(h->queue, &m, NULL, &e))
        KEEL_LOG_W(MOD, "could not queue a %s event for %s: %s", topic, ev->model,
                   rc ? "out of memory" : e.msg);
    else if (h->uplink)
        keel__uplink_wake(h->uplink, m.prio == KEEL_PRIO_CRITICAL);
    keel__buf_done(&b);
}

/* --- the queue as the uplink's source (called on the uplink's thread) ------------------ */

static void src_release(void *ctx)
{
    keel__http *h = ctx;
    keel_queue_batch_free(h->batch);
    free(h->sbatch);
    h->batch = NULL;
    h->sbatch = NULL;
}

static int src_next(void *ctx, size_t max, size_t max_bytes, keel__sync_msg **ret, size_t *n,
                    keel_error *err)
{
    keel__http *h = ctx;
    size_t got = 0;
    src_release(h);
    maybe_expire(h);
    int rc = keel_queue_peek_batch(h->queue, max, max_bytes, KEEL_QUEUE_PEEK_SAME_TOPIC, &h->batch,
                                   &got, err);
    if (rc || !got) {
        *ret = NULL;
        *n = 0;
        return rc;
    }
    if (!(h->sbatch = calloc(got, sizeof(*h->sbatch)))) {
        src_release(h);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < got; i++) {
        const keel_msg *m = &h->batch[i];
        h->sbatch[i] = (keel__sync_msg){.id = m->id,
                                        .priority = (int)m->prio,
                                        .created = m->created_at,
                                        .topic = m->topic,
                                        .content_type = m->content_type,
                                        .payload = m->payload,
                                        .len = m->payload_len};
    }
    *ret = h->sbatch;
    *n = got;
    return KEEL_OK;
}

static int src_ack(void *ctx, const uint64_t *ids, size_t n, keel_error *err)
{
    return keel_queue_ack(((keel__http *)ctx)->queue, ids, n, err);
}

static void src_synced(void *ctx, int64_t when)
{
    keel_error e;
    if (keel_queue_mark_synced(((keel__http *)ctx)->queue, when, &e))
        KEEL_LOG_W(MOD, "recording the sync time: %s", e.msg);
}

static void on_desired(void *ctx, const char *topic, const void *payload, size_t len);

/* Starts the uplink cfg asks for (none: nothing). */
static int start_uplink(keel__http *h, const keel_config *cfg, keel_error *err)
{
    keel__uplink_opts o;
    char *password = NULL;
    size_t plen = 0;
    if (!strcmp(cfg->uplink, "none"))
        return KEEL_OK;
    keel__uplink_opts_default(&o);
    if (!strcmp(cfg->uplink, "mqtt")) {
        o.transport = KEEL__UPLINK_MQTT;
        o.host = cfg->mqtt_host;
        o.port = cfg->mqtt_port;
    } else if (!strcmp(cfg->uplink, "http")) {
        o.transport = KEEL__UPLINK_HTTP;
        o.url = cfg->uplink_url;
    } else {
        return keel__err(err, KEEL_EINVALID, "uplink: \"%s\" is not none, mqtt or http",
                         cfg->uplink);
    }
    o.device_id = cfg->device_id;
    o.ca_file = cfg->uplink_ca[0] ? cfg->uplink_ca : NULL;
    o.cert_file = cfg->uplink_cert[0] ? cfg->uplink_cert : NULL;
    o.key_file = cfg->uplink_key[0] ? cfg->uplink_key : NULL;
    o.username = cfg->uplink_username[0] ? cfg->uplink_username : NULL;
    o.bandwidth_bps = cfg->uplink_bandwidth;
    int rc = keel__sync_window_parse(cfg->sync_window, &o.window, err);
    if (!rc && cfg->uplink_password_file[0] &&
        !(rc = keel__fs_read(cfg->uplink_password_file, 4096, &password, &plen, err))) {
        while (plen && (password[plen - 1] == '\n' || password[plen - 1] == '\r'))
            password[--plen] = 0;
        o.password = password;
    }
    char sub[160];
    snprintf(sub, sizeof(sub), "keel/%s/shadow/desired", cfg->device_id);
    if (o.transport == KEEL__UPLINK_MQTT) {
        o.subscribe = sub;
        o.on_message = on_desired;
        o.msg_ctx = h;
    }
    keel__sync_source src = {.ctx = h,
                             .next_batch = src_next,
                             .release = src_release,
                             .ack = src_ack,
                             .synced = src_synced};
    if (!rc)
        rc = keel__uplink_start(&o, &src, &h->uplink, err);
    if (password) {
        memset(password, 0, plen);
        free(password);
    }
    if (rc)
        return rc; /* the message names the uplink option already */
    KEEL_LOG_I(MOD, "uplink: %s to %s as %s, window %s", cfg->uplink,
               o.transport == KEEL__UPLINK_MQTT ? cfg->mqtt_host : cfg->uplink_url, cfg->device_id,
               cfg->sync_window);
    return KEEL_OK;
}

/* --- re-processing escalations ----------------------------------------------------------- */

/* Sends queued escalations to the upstream once it answers again; each
 * answer becomes a correction event (topic corrections/MODEL, high) with
 * the local and the upstream result side by side. */
static void *reprocess_loop(void *arg)
{
    keel__http *h = arg;
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 2;
        pthread_cond_timedwait(&h->reproc_cv, &h->lock, &ts);
        if (h->stopping)
            break;
        pthread_mutex_unlock(&h->lock);
        keel_msg *batch = NULL;
        size_t n = 0;
        keel_error e = {0};
        if (keel__router_allow(h->router) &&
            !keel_queue_peek_batch(h->reprocess, 16, 16u << 20, 0, &batch, &n, &e)) {
            for (size_t i = 0; i < n; i++) {
                const keel_msg *m = &batch[i];
                const char *nl = memchr(m->payload, '\n', m->payload_len);
                size_t hlen = (size_t)strtoull(m->content_type + 10, NULL, 10);
                keel__upstream_answer a;
                keel_error ue = {0};
                if (!nl) { /* not ours: drop it */
                    if (keel_queue_ack(h->reprocess, &m->id, 1, &e)) {
                    }
                    continue;
                }
                size_t head = (size_t)(nl + 1 - (const char *)m->payload);
                if (keel__router_forward(h->router, m->topic, nl + 1, m->payload_len - head, hlen,
                                         5000, &a, &ue))
                    break; /* still away: try again later */
                keel_buf ev;
                keel__buf_init(&ev, 0);
                int rc = keel__buf_appendf(&ev, "{\"type\":\"correction\",\"device\":");
                if (!rc)
                    rc = keel__json_quote(&ev, h->cfg.device_id);
                if (!rc)
                    rc = keel__buf_appendf(&ev,
                                           ",\"model\":\"%s\",\"queued_at\":%lld,"
                                           "\"local_result\":%.*s,\"upstream\":%.*s}",
                                           m->topic, (long long)m->created_at, (int)(head - 1),
                                           (const char *)m->payload, (int)a.json_len, a.body.data);
                char topic[KEEL_NAME_MAX + 16];
                snprintf(topic, sizeof(topic), "corrections/%s", m->topic);
                keel_msg_in cm = {.topic = topic,
                                  .prio = KEEL_PRIO_HIGH,
                                  .payload = ev.data,
                                  .payload_len = ev.len,
                                  .content_type = "application/json"};
                if (!rc && !keel_queue_enqueue(h->queue, &cm, NULL, &e)) {
                    if (keel_queue_ack(h->reprocess, &m->id, 1, &e))
                        KEEL_LOG_W(MOD, "re-processing: %s", e.msg);
                    if (h->uplink)
                        keel__uplink_wake(h->uplink, false);
                }
                keel__buf_done(&ev);
                keel__buf_done(&a.body);
            }
            keel_queue_batch_free(batch);
        }
        pthread_mutex_lock(&h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static int start_router(keel__http *h, const keel_config *cfg, keel_error *err)
{
    char path[PATH_MAX];
    keel_queue_opts qo;
    if (!cfg->upstream_url[0])
        return KEEL_OK;
    int rc = keel__router_new(cfg->upstream_url, &h->router, err);
    if (rc)
        return rc;
    keel_queue_opts_default(&qo);
    snprintf(path, sizeof(path), "%s/reprocess.db", cfg->state_dir);
    if ((rc = keel_queue_open(path, &qo, &h->reprocess, err)))
        return rc;
    if (pthread_create(&h->reproc_thread, NULL, reprocess_loop, h))
        return keel__err(err, KEEL_EIO, "cannot start the re-processing thread");
    h->reproc_running = true;
    KEEL_LOG_I(MOD, "upstream for routed packages: %s", cfg->upstream_url);
    return KEEL_OK;
}

/* --- the device shadow ------------------------------------------------------------------- */

/* Settings the shadow may change at run time; the others are kept and
 * reported for the application. */
static void apply_shadow(keel__http *h)
{
    char *lv = keel__shadow_get(h->shadow, "log_level");
    static const char *const levels[] = {"\"error\"", "\"warn\"", "\"info\"", "\"debug\""};
    for (int i = 0; lv && i < 4; i++)
        if (!strcmp(lv, levels[i]))
            keel_log_set_level((keel_log_level)i);
    free(lv);
}

/* Queues the reported state (topic shadow/reported, high): the shadow,
 * what each package serves, the queue's depth. */
static void report_shadow(keel__http *h)
{
    keel_buf b;
    keel_error e;
    keel_serving *sv = NULL;
    size_t n = 0;
    keel_queue_stats st;
    char *sh = keel__shadow_json(h->shadow);
    keel__buf_init(&b, 0);
    int rc = !sh || keel__buf_appendf(&b, "{\"type\":\"shadow_reported\",\"device\":");
    if (!rc)
        rc = keel__json_quote(&b, h->cfg.device_id);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"at\":%lld,\"shadow\":%s,\"packages\":{",
                               (long long)keel__now_wall_s(), sh);
    if (!rc && !keel_store_serving_list(h->store, &sv, &n, &e))
        for (size_t i = 0; !rc && i < n; i++)
            rc =
                keel__buf_appendf(&b, "%s\"%s\":{\"version\":\"%s\",\"slot\":\"%s\"}", i ? "," : "",
                                  sv[i].name, sv[i].version, keel_slot_name(sv[i].slot));
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    if (!rc && !keel_queue_stats_get(h->queue, &st, &e))
        rc = keel__buf_appendf(&b, ",\"queue_depth\":%llu", (unsigned long long)st.depth);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    keel_msg_in m = {.topic = "shadow/reported",
                     .prio = KEEL_PRIO_HIGH,
                     .payload = b.data,
                     .payload_len = b.len,
                     .content_type = "application/json"};
    if (rc || keel_queue_enqueue(h->queue, &m, NULL, &e))
        KEEL_LOG_W(MOD, "could not queue the reported shadow: %s", rc ? "out of memory" : e.msg);
    else if (h->uplink)
        keel__uplink_wake(h->uplink, false);
    free(sv);
    free(sh);
    keel__buf_done(&b);
}

/* A desired document from keel/DEVICE/shadow/desired (the uplink's thread). */
static void on_desired(void *ctx, const char *topic, const void *payload, size_t len)
{
    keel__http *h = ctx;
    unsigned applied = 0, conflicts = 0;
    keel_error e;
    if (!len) /* a cleared retained message */
        return;
    if (keel__shadow_apply_desired(h->shadow, payload, len, &applied, &conflicts, &e)) {
        KEEL_LOG_W(MOD, "desired shadow from %s refused: %s", topic, e.msg);
        return;
    }
    if (!applied && !conflicts)
        return;
    KEEL_LOG_I(MOD, "desired shadow: %u keys applied, %u conflicts", applied, conflicts);
    apply_shadow(h);
    report_shadow(h);
}

/* POST /api/shadow {"set": {"key": value, ...}}: local changes. */
static enum MHD_Result do_shadow_set(keel__http *h, struct MHD_Connection *c, req *q)
{
    keel_error e = {0};
    cJSON *j = NULL;
    const cJSON *set = NULL, *it;
    int rc = keel__json_parse(q->body.data ? q->body.data : "", q->body.len,
                              "shadow change ({\"set\": {\"key\": value}})", &j, &e);
    if (!rc)
        rc = keel__json_member(j, "set", cJSON_Object, true, &set, "shadow change", &e);
    cJSON_ArrayForEach(it, set)
    {
        char *v = keel__json_print(it);
        if (!rc)
            rc = v ? keel__shadow_set_local(h->shadow, it->string, v, &e)
                   : keel__err(&e, KEEL_ENOMEM, "out of memory");
        free(v);
    }
    cJSON_Delete(j);
    if (rc)
        return send_keel_error(c, &e);
    apply_shadow(h);
    report_shadow(h);
    char *out = keel__shadow_json(h->shadow);
    return out ? send_json(c, 200, out) : MHD_NO;
}

/* --- routing --------------------------------------------------------------------- */

/* The route for method+url. When the path exists but not for this method,
 * returns R_NONE with *ret_allow set to the methods it takes (for 405). */
/* /v2/models/NAME[/versions/V][/ready|/infer] */
static enum route route_v2(const char *p, bool post, bool get, char *name, char *version,
                           const char **ret_allow)
{
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (!n || n >= KEEL_NAME_MAX)
        return R_NONE;
    memcpy(name, p, n);
    name[n] = '\0';
    p += n;
    if (!strncmp(p, "/versions/", 10)) {
        p += 10;
        slash = strchr(p, '/');
        n = slash ? (size_t)(slash - p) : strlen(p);
        if (!n || n >= KEEL_VERSION_MAX)
            return R_NONE;
        memcpy(version, p, n);
        version[n] = '\0';
        p += n;
    }
    if (!*p) {
        *ret_allow = "GET, HEAD";
        return get ? R_V2_MODEL : R_NONE;
    }
    if (!strcmp(p, "/ready")) {
        *ret_allow = "GET, HEAD";
        return get ? R_V2_MODEL_READY : R_NONE;
    }
    if (!strcmp(p, "/infer")) {
        *ret_allow = "POST";
        return post ? R_V2_INFER : R_NONE;
    }
    return R_NONE;
}

static enum route route_of(const char *method, const char *url, char *name, char *version,
                           bool *ret_post, const char **ret_allow)
{
    static const struct {
        const char *path;
        bool post;
        enum route r;
    } fixed[] = {
        {"/healthz", false, R_HEALTH},
        {"/readyz", false, R_READY},
        {"/api/status", false, R_STATUS},
        {"/api/packages", false, R_LIST},
        {"/api/packages", true, R_INSTALL},
        {"/api/verify", true, R_VERIFY},
        {"/api/gc", true, R_GC},
        {"/v2", false, R_V2_SERVER},
        {"/v2/health/live", false, R_V2_LIVE},
        {"/v2/health/ready", false, R_V2_READY},
        {"/metrics", false, R_METRICS},
        {"/api/events", true, R_EVENTS},
        {"/api/queue", false, R_QUEUE},
        {"/api/shadow", false, R_SHADOW_GET},
        {"/api/shadow", true, R_SHADOW_SET},
    };
    bool post = !strcmp(method, "POST");
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool takes_get = false, takes_post = false;
    *ret_post = post;
    *ret_allow = NULL;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(fixed); i++) {
        if (strcmp(url, fixed[i].path))
            continue;
        if (fixed[i].post ? post : get)
            return fixed[i].r;
        takes_post |= fixed[i].post;
        takes_get |= !fixed[i].post;
    }
    if (takes_get || takes_post) {
        *ret_allow = takes_get && takes_post ? "GET, HEAD, POST" : takes_get ? "GET, HEAD" : "POST";
        return R_NONE;
    }
    const char *p = url;
    if (strncmp(p, "/v2/models/", 11) == 0) {
        enum route r = route_v2(p + 11, post, get, name, version, ret_allow);
        if (r != R_NONE || *ret_allow)
            return r;
    }
    if (strncmp(p, "/api/packages/", 14) == 0) {
        p += 14;
        const char *slash = strchr(p, '/');
        if (slash && (size_t)(slash - p) < KEEL_NAME_MAX && slash > p) {
            static const struct {
                const char *verb;
                enum route r;
            } verbs[] = {
                {"activate", R_ACTIVATE}, {"rollback", R_ROLLBACK}, {"mark-good", R_MARK_GOOD}};
            for (size_t i = 0; i < KEEL_ARRAY_LEN(verbs); i++) {
                if (strcmp(slash + 1, verbs[i].verb))
                    continue;
                *ret_allow = "POST";
                memcpy(name, p, (size_t)(slash - p));
                name[slash - p] = '\0';
                return post ? verbs[i].r : R_NONE;
            }
        }
    }
    return R_NONE;
}

static bool token_ok(keel__http *h, struct MHD_Connection *c)
{
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    size_t n = strlen(a);
    unsigned char diff = n != 64;
    for (size_t i = 0; i < 64; i++)
        diff |= (unsigned char)((i < n ? a[i] : 0) ^ h->token[i]);
    return diff == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls)
{
    keel__http *h = cls;
    req *q = *con_cls;
    if (!q) {
        bool post;
        const char *allow;
        q = calloc(1, sizeof(*q));
        if (!q)
            return MHD_NO;
        q->fd = -1;
        *con_cls = q;
        q->route = route_of(method, url, q->name, q->version, &post, &allow);
        if (q->route == R_NONE) {
            if (allow) {
                char msg[160];
                snprintf(msg, sizeof(msg), "method %.16s is not allowed here; use %s", method,
                         allow);
                return send_error_hdr(c, 405, KEEL_EINVALID, msg, "Allow", allow);
            }
            return send_error(c, 404, KEEL_ENOTFOUND, "no such endpoint (see README: API)");
        }
        if (post && q->route != R_V2_INFER && !token_ok(h, c)) {
            KEEL_LOG_W(MOD, "POST %s refused: missing or wrong bearer token", url);
            return send_error(c, 401, KEEL_EPERM,
                              "missing or wrong bearer token (it is in STATE_DIR/token)");
        }
        pthread_mutex_lock(&h->lock);
        q->limit = q->route == R_INSTALL    ? h->cfg.limits.max_package_bytes
                   : q->route == R_V2_INFER ? h->cfg.max_infer_body_bytes
                                            : h->cfg.max_body_bytes;
        pthread_mutex_unlock(&h->lock);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > q->limit) {
            char msg[160];
            q->too_big = true;
            snprintf(msg, sizeof(msg),
                     "request body of %.24s bytes is over the limit of %llu bytes (%s)", cl,
                     (unsigned long long)q->limit,
                     q->route == R_INSTALL    ? "max_package in keeld.conf"
                     : q->route == R_V2_INFER ? "max_infer_body in keeld.conf"
                                              : "max_body in keeld.conf");
            KEEL_LOG_W(MOD, "%s %s refused: %s", method, url, msg);
            return send_error(c, 413, KEEL_ETOOBIG, msg);
        }
        if (q->route == R_INSTALL) {
            snprintf(q->upload, sizeof(q->upload), "%s/staging/upload-XXXXXX", h->cfg.state_dir);
            q->fd = mkostemp(q->upload, O_CLOEXEC);
            if (q->fd < 0) {
                keel_error e;
                keel__err_errno(&e, keel__err_from_errno(errno), errno,
                                "cannot create an upload file in %s/staging", h->cfg.state_dir);
                KEEL_LOG_E(MOD, "%s", e.msg);
                q->upload[0] = '\0';
                return send_keel_error(c, &e);
            }
        }
        keel__buf_init(&q->body, (size_t)q->limit);
        return MHD_YES;
    }
    if (*data_size) {
        size_t n = *data_size;
        *data_size = 0;
        if (q->too_big || q->write_errno)
            return MHD_YES;
        q->got += n;
        if (q->got > q->limit) {
            q->too_big = true;
            return MHD_YES;
        }
        if (q->fd >= 0 ? keel__fs_write_all(q->fd, data, n) != 0
                       : keel__buf_append(&q->body, data, n) != 0)
            q->write_errno = q->fd >= 0 ? (errno ? errno : EIO) : ENOMEM; /* reported below */
        return MHD_YES;
    }
    if (q->too_big) {
        char msg[160];
        snprintf(msg, sizeof(msg), "request body is over the limit of %llu bytes (%s)",
                 (unsigned long long)q->limit,
                 q->route == R_INSTALL    ? "max_package in keeld.conf"
                 : q->route == R_V2_INFER ? "max_infer_body in keeld.conf"
                                          : "max_body in keeld.conf");
        KEEL_LOG_W(MOD, "%s %s refused: %s", method, url, msg);
        return send_error(c, 413, KEEL_ETOOBIG, msg);
    }
    if (q->write_errno) {
        keel_error e;
        keel__err_errno(&e, keel__err_from_errno(q->write_errno), q->write_errno,
                        "cannot store the request body in %s/staging (free some space: `keel gc`)",
                        h->cfg.state_dir);
        KEEL_LOG_E(MOD, "%s", e.msg);
        return send_keel_error(c, &e);
    }
    keel_error e = {0};
    bool ready;
    char *json = NULL;
    switch (q->route) {
    case R_HEALTH:
        return send_json(c, 200, strdup("{\"status\":\"alive\"}\n"));
    case R_READY:
        json = readiness_json(h, &ready);
        return json ? send_json(c, ready ? 200 : 503, json) : MHD_NO;
    case R_STATUS:
        return do_status(h, c);
    case R_LIST:
        if (keel_store_list_json(h->store, &json, &e))
            return send_keel_error(c, &e);
        return send_json(c, 200, json);
    case R_INSTALL:
        return do_install(h, c, q);
    case R_VERIFY: {
        const char *deep = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "deep");
        refresh(h, deep && strcmp(deep, "0") ? KEEL_VERIFY_DEEP : 0);
        json = readiness_json(h, &ready);
        return json ? send_json(c, 200, json) : MHD_NO;
    }
    case R_GC: {
        uint64_t freed = 0;
        char body[64];
        if (keel_store_gc(h->store, &freed, &e))
            return send_keel_error(c, &e);
        snprintf(body, sizeof(body), "{\"freed_bytes\":%llu}\n", (unsigned long long)freed);
        return send_json(c, 200, strdup(body));
    }
    case R_ACTIVATE:
    case R_ROLLBACK:
    case R_MARK_GOOD:
        return do_slot_action(h, c, q);
    case R_EVENTS:
        return do_events(h, c, q);
    case R_SHADOW_GET: {
        char *sh = keel__shadow_json(h->shadow);
        return sh ? send_json(c, 200, sh) : MHD_NO;
    }
    case R_SHADOW_SET:
        return do_shadow_set(h, c, q);
    case R_QUEUE:
        return do_queue(h, c);
    default:
        return do_v2(h, c, q);
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    req *q = *con_cls;
    if (!q)
        return;
    if (q->fd >= 0)
        close(q->fd);
    if (q->upload[0])
        unlink(q->upload);
    keel__buf_done(&q->body);
    free(q);
    *con_cls = NULL;
}

/* --- lifecycle --------------------------------------------------------------------- */

int keel__http_token(const char *state_dir, char out[65], keel_error *err)
{
    char path[PATH_MAX], *data = NULL;
    size_t len;
    snprintf(path, sizeof(path), "%s/token", state_dir);
    if (keel__fs_read(path, 256, &data, &len, NULL) == KEEL_OK) {
        while (len && (data[len - 1] == '\n' || data[len - 1] == ' '))
            len--;
        uint8_t raw[32];
        bool ok = len == 64 && keel_hex_decode(data, 64, raw, sizeof(raw)) == KEEL_OK;
        if (ok)
            memcpy(out, data, 64);
        out[64] = '\0';
        free(data);
        if (ok)
            return KEEL_OK;
        KEEL_LOG_W(MOD, "%s is not 64 hex digits; writing a new token", path);
    }
    uint8_t raw[32];
    int rc = keel__random_bytes(raw, sizeof(raw), err);
    if (rc)
        return rc;
    keel_hex_encode(raw, sizeof(raw), out);
    char line[66];
    snprintf(line, sizeof(line), "%s\n", out);
    if ((rc = keel__fs_write_atomic(path, line, 65, 0600, err)))
        return rc;
    KEEL_LOG_I(MOD, "wrote a new API token to %s (readable by this user only)", path);
    return KEEL_OK;
}

static void clean_uploads(const char *state_dir)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/staging", state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, "upload-", 7)) {
            char p[PATH_MAX];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
}

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
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
        flags |= MHD_USE_EPOLL;
    if (addr && addr->sa_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d;
    if (listen_fd >= 0)
        d = MHD_start_daemon(flags, 0, NULL, NULL, handler, h, MHD_OPTION_LISTEN_SOCKET, listen_fd,
                             MHD_OPTION_THREAD_POOL_SIZE, (unsigned)1,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)h->cfg.request_timeout_s,
                             MHD_OPTION_CONNECTION_LIMIT, h->cfg.max_connections,
                             MHD_OPTION_NOTIFY_COMPLETED, completed, h, MHD_OPTION_END);
    else
        d = MHD_start_daemon(flags, 0, NULL, NULL, handler, h, MHD_OPTION_SOCK_ADDR, addr,
                             MHD_OPTION_THREAD_POOL_SIZE, h->cfg.threads,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)h->cfg.request_timeout_s,
                             MHD_OPTION_CONNECTION_LIMIT, h->cfg.max_connections,
                             MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)128,
                             MHD_OPTION_NOTIFY_COMPLETED, completed, h, MHD_OPTION_END);
    if (!d)
        keel__err(err, KEEL_EIO,
                  "cannot listen on %s%s%u (is another keeld running, or the port taken?)",
                  listen_fd >= 0 ? h->cfg.unix_socket : h->cfg.listen, listen_fd >= 0 ? "" : ":",
                  listen_fd >= 0 ? 0u : h->cfg.port);
    return d;
}

int keel__http_start(const keel_config *cfg, keel_store *store, keel__http **ret, keel_error *err)
{
    keel__http *h = calloc(1, sizeof(*h));
    int rc = KEEL_OK, ufd = -1;
    if (!h)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_mutex_init(&h->lock, NULL);
    h->cfg = *cfg;
    h->store = store;
    h->started_ns = keel__now_mono_ns();
    clean_uploads(cfg->state_dir);
    if ((rc = keel__http_token(cfg->state_dir, h->token, err)))
        goto fail;
    char cache[PATH_MAX];
    snprintf(cache, sizeof(cache), "%s/cache/onnx", cfg->state_dir);
    char qpath[PATH_MAX];
    keel_queue_opts qo;
    keel_queue_opts_default(&qo);
    qo.durability = cfg->queue_sync ? KEEL_QUEUE_SYNC : KEEL_QUEUE_GROUP;
    qo.max_bytes = cfg->queue_max_bytes;
    qo.max_rows = cfg->queue_max_rows;
    qo.min_free_disk = cfg->queue_min_free;
    snprintf(qpath, sizeof(qpath), "%s/queue.db", cfg->state_dir);
    pthread_cond_init(&h->reproc_cv, NULL);
    char spath[PATH_MAX];
    snprintf(spath, sizeof(spath), "%s/shadow.json", cfg->state_dir);
    if ((rc = keel__shadow_open(spath, &h->shadow, err)))
        goto fail;
    if ((rc = keel_queue_open(qpath, &qo, &h->queue, err)) || (rc = start_uplink(h, cfg, err)) ||
        (rc = start_router(h, cfg, err)))
        goto fail;
    keel__infer_opts io = {.event = on_infer_event,
                           .event_ctx = h,
                           .cache_dir = cache,
                           .max_sessions = (size_t)cfg->max_sessions,
                           .session_idle_s = cfg->session_idle_s};
    if ((rc = keel__infer_new(store, &io, &h->infer, err)))
        goto fail;
    keel_store_set_validator(store, keel__infer_validator, h->infer);
    refresh(h, 0);
    if (cfg->port) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, cfg->listen, &a4->sin_addr) == 1) {
            a4->sin_family = AF_INET;
            a4->sin_port = htons(cfg->port);
        } else if (inet_pton(AF_INET6, cfg->listen, &a6->sin6_addr) == 1) {
            a6->sin6_family = AF_INET6;
            a6->sin6_port = htons(cfg->port);
        } else {
            rc = keel__err(err, KEEL_EINVALID,
                           "listen address \"%s\" is not an IPv4 or IPv6 literal", cfg->listen);
            goto fail;
        }
        if (!(h->tcp = start_daemon(h, (struct sockaddr *)&ss, -1, err))) {
            rc = KEEL_EIO;
            goto fail;
        }
    }
    if (cfg->unix_socket[0]) {
        if ((rc = listen_unix(cfg->unix_socket, &ufd, err)))
            goto fail;
        if (!(h->unix_d = start_daemon(h, NULL, ufd, err))) {
            unlink(cfg->unix_socket);
            rc = KEEL_EIO;
            goto fail;
        }
        ufd = -1;
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
    if (h->tcp)
        MHD_stop_daemon(h->tcp);
    if (h->unix_d) {
        MHD_stop_daemon(h->unix_d);
        unlink(h->cfg.unix_socket);
    }
    if (h->infer)
        keel_store_set_validator(h->store, NULL, NULL);
    keel__infer_free(h->infer);
    if (h->reproc_running) {
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        pthread_cond_signal(&h->reproc_cv);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->reproc_thread, NULL);
    }
    keel_queue_close(h->reprocess);
    keel__router_free(h->router);
    keel__uplink_stop(h->uplink); /* before the queue: it reads from it */
    src_release(h);
    keel_queue_close(h->queue);    /* after the engine: it produces into the queue */
    keel__shadow_close(h->shadow); /* after the uplink: it applies desired documents */
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void keel__http_reload(keel__http *h, const keel_config *cfg)
{
    pthread_mutex_lock(&h->lock);
    if (strcmp(cfg->listen, h->cfg.listen) || cfg->port != h->cfg.port ||
        strcmp(cfg->unix_socket, h->cfg.unix_socket) || cfg->threads != h->cfg.threads)
        KEEL_LOG_W(MOD, "listen address, socket and threads change only on restart");
    h->cfg.limits = cfg->limits;
    keel_store_set_limits(h->store, &cfg->limits);
    h->cfg.max_body_bytes = cfg->max_body_bytes;
    keel__strlcpy(h->cfg.trust_dir, cfg->trust_dir, sizeof(h->cfg.trust_dir));
    pthread_mutex_unlock(&h->lock);
}
