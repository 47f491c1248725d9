/*
 * api_v2.c - the Open Inference Protocol (KServe v2 REST): server and model
 * metadata, readiness, and inference with JSON tensors, the binary tensor
 * extension, or an encoded image as the body. Decoding and encoding are in
 * oip.c; what serves a request is the engine's business (lib/infer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "http/oip.h"

#define MOD "http"

void keel__api_v2_server(keel__hreq *q)
{
    char buf[256];
    snprintf(buf, sizeof(buf),
             "{\"name\":\"keel\",\"version\":\"%s\",\"extensions\":[\"binary_tensor_data\","
             "\"keel_image\",\"keel_tiers\"]}\n",
             keel_version());
    keel__reply_text(q, 200, buf);
}

void keel__api_v2_live(keel__hreq *q)
{
    keel__reply_text(q, 200, "{\"live\":true}\n");
}

void keel__api_v2_ready(keel__hreq *q)
{
    bool ready = keel__runtime_ready(keel__hreq_runtime(q));
    keel__reply_text(q, ready ? 200 : 503, ready ? "{\"ready\":true}\n" : "{\"ready\":false}\n");
}

/* The model a /v2/models/NAME[/versions/V] path names, referenced; answers
 * 404 itself when there is none. */
static keel__model *v2_model(keel__hreq *q)
{
    keel__infer *inf = keel__runtime_infer(keel__hreq_runtime(q));
    const char *name = keel__hreq_param(q, "name"), *version = keel__hreq_param(q, "version");
    keel__model *m = inf ? keel__infer_get(inf, name) : NULL;
    char msg[256];
    if (!m) {
        snprintf(msg, sizeof(msg),
                 "no model \"%s\" is served (GET /api/packages lists what is installed)", name);
        keel__reply_error(q, 404, KEEL_ENOTFOUND, msg);
        return NULL;
    }
    if (version && strcmp(version, keel__model_version(m))) {
        snprintf(msg, sizeof(msg), "%s serves version %s, not %s", name, keel__model_version(m),
                 version);
        keel__model_unref(m);
        keel__reply_error(q, 404, KEEL_ENOTFOUND, msg);
        return NULL;
    }
    return m;
}

void keel__api_v2_model(keel__hreq *q)
{
    keel__model *m = v2_model(q);
    if (!m)
        return;
    char *json = keel__model_metadata_json(m);
    keel__model_unref(m);
    if (!json)
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
    else
        keel__reply_json(q, 200, json);
}

void keel__api_v2_model_ready(keel__hreq *q)
{
    char buf[KEEL_NAME_MAX + 48];
    keel__model *m = v2_model(q);
    if (!m)
        return;
    bool ready = keel__model_ready(m);
    keel__model_unref(m);
    snprintf(buf, sizeof(buf), "{\"name\":\"%s\",\"ready\":%s}\n", keel__hreq_param(q, "name"),
             ready ? "true" : "false");
    keel__reply_text(q, ready ? 200 : 503, buf);
}

/* Answers body (taken): JSON, or JSON + binary tensors when jlen < len. */
static void reply_infer(keel__hreq *q, char *body, size_t len, size_t jlen, const char *tier)
{
    char hlen[32];
    if (jlen != len) {
        snprintf(hlen, sizeof(hlen), "%zu", jlen);
        const char *hdrs[] = {"X-Keel-Tier", tier, "Inference-Header-Content-Length", hlen, NULL};
        keel__reply(q, 200, "application/octet-stream", body, len, hdrs);
    } else {
        const char *hdrs[] = {"X-Keel-Tier", tier, NULL};
        keel__reply(q, 200, "application/json", body, len, hdrs);
    }
}

void keel__api_v2_infer(keel__hreq *q)
{
    keel__model *m = v2_model(q);
    if (!m)
        return;
    const char *name = keel__hreq_param(q, "name");
    keel_error e = {0};
    keel__oip_req r;
    keel__infer_resp resp;
    size_t blen;
    const char *body = keel__hreq_body(q, &blen);
    const char *ctype = keel__hreq_header(q, "Content-Type");
    const char *hl = keel__hreq_header(q, "Inference-Header-Content-Length");
    size_t json_len = blen;
    int rc;
    bool image = ctype && (!strncmp(ctype, "image/", 6) ||
                           (!strncmp(ctype, "application/octet-stream", 24) && !hl));
    if (image) { /* the whole body is an encoded image; parameters in the query */
        memset(&r, 0, sizeof(r));
        const char *tier = keel__hreq_query(q, "tier");
        const char *sess = keel__hreq_query(q, "session");
        if (tier)
            keel__strlcpy(r.tier, tier, sizeof(r.tier));
        if (sess)
            keel__strlcpy(r.session, sess, sizeof(r.session));
        r.req.tier = tier ? r.tier : NULL;
        r.req.session = sess ? r.session : NULL;
        r.req.image = body;
        r.req.image_len = blen;
        rc = keel__model_image_input(m)
                 ? KEEL_OK
                 : keel__err(&e, KEEL_EINVALID,
                             "%s takes no image input (its manifest has no image preprocess); "
                             "send JSON tensors",
                             name);
    } else {
        if (hl) {
            char *end = NULL;
            unsigned long long v = strtoull(hl, &end, 10);
            if (!*hl || *end || v > blen) {
                keel__model_unref(m);
                keel__reply_error(q, 400, KEEL_EINVALID,
                                  "Inference-Header-Content-Length is not a length within the "
                                  "body");
                return;
            }
            json_len = (size_t)v;
        }
        rc = keel__oip_parse(body, blen, json_len, keel__model_image_input(m), &r, &e);
    }
    if (!rc && !image) { /* hybrid routing forwards the request as received */
        r.req.raw = body;
        r.req.raw_len = blen;
        r.req.raw_json_len = json_len;
        r.req.complex = r.complex;
    }
    if (!rc)
        rc = keel__model_infer(m, &r.req, &resp, &e);
    if (rc) {
        keel__model_unref(m);
        keel__oip_done(&r);
        if (rc == KEEL_ENOTREADY) { /* every tier failed: the service, not the request */
            KEEL_LOG_E(MOD, "%s", e.msg);
            keel__reply_error(q, 503, rc, e.msg);
            return;
        }
        keel__reply_keel_error(q, &e);
        return;
    }
    char *out = NULL;
    size_t len = 0, jlen = 0;
    if (resp.upstream) { /* the upstream's answer, as ours (its tier says "upstream") */
        len = resp.answer.body.len;
        jlen = resp.answer.json_len;
        out = keel__buf_steal(&resp.answer.body);
        rc = out ? KEEL_OK : keel__err(&e, KEEL_ENOMEM, "out of memory");
    } else {
        rc = keel__oip_response(&r, &resp, &out, &len, &jlen, &e);
    }
    char tier_hdr[64];
    snprintf(tier_hdr, sizeof(tier_hdr), "%s", resp.tier);
    keel__infer_resp_done(&resp);
    keel__oip_done(&r);
    keel__model_unref(m); /* only now: output names belong to the model */
    if (rc)
        keel__reply_keel_error(q, &e);
    else
        reply_infer(q, out, len, jlen, tier_hdr);
}
