/*
 * router.c - forwarding inference requests to an upstream endpoint
 * (router.h). libcurl is loaded when the first router is made
 * (core/curl_dl.h). One libcurl easy handle per call (keep-alive through a shared
 * connection cache), a breaker of its own: open after 3 consecutive
 * failures, one probe after 10 s.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/curl_dl.h"
#include "core/json.h"
#include "infer/router.h"

#define MOD              "router"
#define BREAKER_FAILURES 3
#define BREAKER_COOL_NS  10000000000ull

struct keel__router {
    char url[1024];
    pthread_mutex_t mu;
    CURLSH *share; /* connection cache shared by the calls */
    pthread_mutex_t share_mu;
    int state; /* 0 closed, 1 open, 2 half-open (probe in flight) */
    unsigned consecutive;
    uint64_t open_until;
    uint64_t forwarded, failed, trips;
    char last_error[256];
    keel__metrics *reg; /* keel__router_metrics_register; NULL: none */
    keel__metric_family *fam[3];
    keel__metric_series *series[4];
};

static void metrics_unregister(keel__router *r);

static void share_lock(CURL *h, curl_lock_data d, curl_lock_access a, void *u)
{
    pthread_mutex_lock(&((keel__router *)u)->share_mu);
}

static void share_unlock(CURL *h, curl_lock_data d, void *u)
{
    pthread_mutex_unlock(&((keel__router *)u)->share_mu);
}

int keel__router_new(const char *url, keel__router **ret, keel_error *err)
{
    if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
        return keel__err(err, KEEL_EINVALID, "upstream_url: \"%s\" is not an http(s):// URL", url);
    int rc = keel__curl_load(err);
    if (rc)
        return keel__err_prefix(err, "upstream_url %s", url);
    keel__router *r = calloc(1, sizeof(*r));
    if (!r)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    keel__strlcpy(r->url, url, sizeof(r->url));
    size_t n = strlen(r->url);
    while (n && r->url[n - 1] == '/')
        r->url[--n] = 0;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->share_mu, NULL);
    if ((r->share = curl_share_init())) {
        curl_share_setopt(r->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
        curl_share_setopt(r->share, CURLSHOPT_LOCKFUNC, share_lock);
        curl_share_setopt(r->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
        curl_share_setopt(r->share, CURLSHOPT_USERDATA, r);
    }
    *ret = r;
    return KEEL_OK;
}

void keel__router_free(keel__router *r)
{
    if (!r)
        return;
    metrics_unregister(r);
    if (r->share)
        curl_share_cleanup(r->share);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->share_mu);
    free(r);
}

bool keel__router_allow(keel__router *r)
{
    pthread_mutex_lock(&r->mu);
    bool ok = r->state == 0;
    if (r->state == 1 && keel__now_mono_ns() >= r->open_until) {
        r->state = 2; /* this caller is the probe */
        ok = true;
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static void record(keel__router *r, bool ok, const char *why)
{
    pthread_mutex_lock(&r->mu);
    if (ok) {
        if (r->state)
            KEEL_LOG_I(MOD, "upstream %s answers again", r->url);
        r->state = 0;
        r->consecutive = 0;
        r->forwarded++;
    } else {
        r->failed++;
        keel__strlcpy(r->last_error, why, sizeof(r->last_error));
        if (r->state == 2 || ++r->consecutive >= BREAKER_FAILURES) {
            if (r->state != 1)
                KEEL_LOG_W(MOD, "upstream %s: breaker open (%s)", r->url, why);
            r->state = 1;
            r->trips++;
            r->open_until = keel__now_mono_ns() + BREAKER_COOL_NS;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    return keel__buf_append(ud, p, sz * n) ? 0 : sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    static const char h[] = "inference-header-content-length:";
    size_t len = sz * n;
    if (len > sizeof(h) && !strncasecmp(p, h, sizeof(h) - 1))
        *(size_t *)ud = (size_t)strtoull(p + sizeof(h) - 1, NULL, 10);
    return len;
}

/* Marks the answer as the upstream's: parameters.tier = "upstream", the
 * upstream's own tier kept as upstream_tier. */
static int rewrite(keel__upstream_answer *a, keel_error *err)
{
    cJSON *j = NULL;
    int rc = keel__json_parse(a->body.data, a->json_len, "upstream answer", &j, err);
    if (rc)
        return rc;
    cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "parameters");
    if (!cJSON_IsObject(p)) {
        cJSON_DeleteItemFromObjectCaseSensitive(j, "parameters");
        p = cJSON_AddObjectToObject(j, "parameters");
    }
    cJSON *t = cJSON_DetachItemFromObjectCaseSensitive(p, "tier");
    if (cJSON_IsString(t))
        cJSON_AddStringToObject(p, "upstream_tier", t->valuestring);
    cJSON_Delete(t);
    cJSON_AddStringToObject(p, "tier", "upstream");
    cJSON_DeleteItemFromObjectCaseSensitive(p, "backend");
    cJSON_AddStringToObject(p, "backend", "upstream");
    char *s = keel__json_print(j);
    cJSON_Delete(j);
    if (!s)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    keel_buf nb;
    keel__buf_init(&nb, 0);
    size_t sl = strlen(s);
    rc = keel__buf_append(&nb, s, sl);
    if (!rc && a->body.len > a->json_len)
        rc = keel__buf_append(&nb, a->body.data + a->json_len, a->body.len - a->json_len);
    free(s);
    if (rc) {
        keel__buf_done(&nb);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    keel__buf_done(&a->body);
    a->body = nb;
    a->json_len = sl;
    return KEEL_OK;
}

int keel__router_forward(keel__router *r, const char *model, const void *body, size_t len,
                         size_t json_len, uint64_t deadline_ms, keel__upstream_answer *out,
                         keel_error *err)
{
    char url[1400], hl[64];
    size_t resp_hlen = 0;
    struct curl_slist *hdr = NULL;
    keel__buf_init(&out->body, 256u << 20);
    out->json_len = 0;
    out->status = 0;
    CURL *c = curl_easy_init();
    char *esc = c ? curl_easy_escape(c, model, 0) : NULL;
    if (!c || !esc) {
        curl_easy_cleanup(c);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    snprintf(url, sizeof(url), "%s/v2/models/%s/infer", r->url, esc);
    curl_free(esc);
    if (json_len != len) {
        snprintf(hl, sizeof(hl), "Inference-Header-Content-Length: %zu", json_len);
        hdr = curl_slist_append(hdr, hl);
        hdr = curl_slist_append(hdr, "Content-Type: application/octet-stream");
    } else {
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
    }
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &resp_hlen);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(deadline_ms ? deadline_ms : 1000));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(deadline_ms ? deadline_ms : 1000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (r->share)
        curl_easy_setopt(c, CURLOPT_SHARE, r->share);
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    int rc = KEEL_OK;
    if (cc == CURLE_OPERATION_TIMEDOUT)
        rc = keel__err(err, KEEL_ETIMEOUT, "upstream %s: no answer within %llu ms", r->url,
                       (unsigned long long)deadline_ms);
    else if (cc != CURLE_OK)
        rc = keel__err(err, KEEL_ENOCONN, "upstream %s: %s", r->url, curl_easy_strerror(cc));
    else if (out->status < 200 || out->status > 299)
        rc = keel__err(err, KEEL_EIO, "upstream %s answered %ld: %.200s", r->url, out->status,
                       out->body.data ? out->body.data : "");
    if (!rc) {
        out->json_len = resp_hlen && resp_hlen <= out->body.len ? resp_hlen : out->body.len;
        rc = rewrite(out, err);
    }
    record(r, rc == KEEL_OK, rc ? (err ? err->msg : "failed") : "");
    if (rc)
        keel__buf_done(&out->body);
    return rc;
}

/* --- metrics: the counters above, copied into the registry at every scrape ------------- */

enum { F_STATE, F_TRIPS, F_REQUESTS, NFAMILIES };
enum { S_STATE, S_TRIPS, S_OK, S_ERROR, NSERIES };
_Static_assert(NFAMILIES == KEEL_ARRAY_LEN(((keel__router *)0)->fam) &&
                   NSERIES == KEEL_ARRAY_LEN(((keel__router *)0)->series),
               "the router's metric arrays");

static const keel__metric_desc families[NFAMILIES] = {
    [F_STATE] = {.name = "keel_upstream_breaker_state",
                 .help = "Upstream breaker: 0 closed, 1 open, 2 half-open.",
                 .type = KEEL_METRIC_GAUGE},
    [F_TRIPS] = {.name = "keel_upstream_breaker_trips_total",
                 .help = "Times the upstream breaker opened.",
                 .type = KEEL_METRIC_COUNTER},
    [F_REQUESTS] = {.name = "keel_upstream_requests_total",
                    .help = "Requests forwarded upstream, by outcome.",
                    .type = KEEL_METRIC_COUNTER,
                    .nlabels = 1,
                    .labels = {"outcome"}},
};

static void collect(void *ctx)
{
    keel__router *r = ctx;
    pthread_mutex_lock(&r->mu);
    int st = r->state == 1 && keel__now_mono_ns() >= r->open_until ? 2 : r->state;
    keel__metric_gauge_set(r->series[S_STATE], st);
    keel__metric_counter_set(r->series[S_TRIPS], r->trips);
    keel__metric_counter_set(r->series[S_OK], r->forwarded);
    keel__metric_counter_set(r->series[S_ERROR], r->failed);
    pthread_mutex_unlock(&r->mu);
}

int keel__router_metrics_register(keel__router *r, keel__metrics *reg, keel_error *err)
{
    static const char *const ok[] = {"ok"}, *const error[] = {"error"};
    int rc = KEEL_OK;
    KEEL_ASSERT(!r->reg, "the router's metrics registered twice");
    r->reg = reg;
    for (size_t f = 0; !rc && f < NFAMILIES; f++)
        rc = keel__metrics_register(reg, &families[f], &r->fam[f], err);
    if (!rc)
        rc = keel__metrics_series(r->fam[F_STATE], NULL, &r->series[S_STATE], err);
    if (!rc)
        rc = keel__metrics_series(r->fam[F_TRIPS], NULL, &r->series[S_TRIPS], err);
    if (!rc)
        rc = keel__metrics_series(r->fam[F_REQUESTS], ok, &r->series[S_OK], err);
    if (!rc)
        rc = keel__metrics_series(r->fam[F_REQUESTS], error, &r->series[S_ERROR], err);
    if (!rc)
        rc = keel__metrics_collector_add(reg, collect, r, err);
    if (rc)
        metrics_unregister(r);
    return rc;
}

static void metrics_unregister(keel__router *r)
{
    if (!r->reg)
        return;
    keel__metrics_collector_remove(r->reg, collect, r);
    for (size_t i = 0; i < NSERIES; i++) {
        keel__metric_series_unref(r->series[i]);
        r->series[i] = NULL;
    }
    for (size_t f = 0; f < NFAMILIES; f++) {
        keel__metrics_unregister(r->reg, r->fam[f]);
        r->fam[f] = NULL;
    }
    r->reg = NULL;
}

char *keel__router_status_json(keel__router *r)
{
    static const char *const states[] = {"closed", "open", "half_open"};
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&r->mu);
    int st = r->state == 1 && keel__now_mono_ns() >= r->open_until ? 2 : r->state;
    cJSON_AddStringToObject(o, "url", r->url);
    cJSON_AddStringToObject(o, "breaker", states[st]);
    cJSON_AddNumberToObject(o, "consecutive_failures", r->consecutive);
    cJSON_AddNumberToObject(o, "breaker_trips", (double)r->trips);
    cJSON_AddNumberToObject(o, "forwarded", (double)r->forwarded);
    cJSON_AddNumberToObject(o, "failed", (double)r->failed);
    cJSON_AddStringToObject(o, "last_error", r->last_error);
    pthread_mutex_unlock(&r->mu);
    char *s = keel__json_print(o);
    cJSON_Delete(o);
    return s;
}
