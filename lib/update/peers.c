/* peers.c - the LAN peer table and the beacon datagram (peers.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "update/peers.h"

typedef struct peer {
    char url[KEEL__PEER_URL_MAX];
    char device[64];
    bool configured;
    uint64_t expires_ns; /* discovered: forgotten after */
    uint64_t seen_ns;
    uint64_t bad_until_ns;
    char why[160];
} peer;

struct keel__peers {
    pthread_mutex_t mu;
    peer t[KEEL__PEERS_MAX];
    size_t n;
    uint64_t backoff_ns;
};

keel__peers *keel__peers_new(void)
{
    keel__peers *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    pthread_mutex_init(&p->mu, NULL);
    p->backoff_ns = 600ull * 1000000000ull;
    return p;
}

void keel__peers_free(keel__peers *p)
{
    if (!p)
        return;
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void keel__peers_set_backoff(keel__peers *p, uint64_t seconds)
{
    pthread_mutex_lock(&p->mu);
    p->backoff_ns = seconds * 1000000000ull;
    pthread_mutex_unlock(&p->mu);
}

bool keel__peer_url_valid(const char *url)
{
    size_t n = strlen(url);
    if (n >= KEEL__PEER_URL_MAX || strncmp(url, "http://", 7))
        return false;
    const char *h = url + 7;
    if (!*h || *h == '/' || *h == ':')
        return false;
    const char *slash = strchr(h, '/');
    if (slash && slash[1])
        return false;                              /* a base URL: no path */
    for (const char *c = h; *c && c != slash; c++) /* host[:port], [v6]:port */
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr(".-:[]_", *c)))
            return false;
    return true;
}

/* url without a trailing slash */
static void norm(char out[KEEL__PEER_URL_MAX], const char *url)
{
    keel__strlcpy(out, url, KEEL__PEER_URL_MAX);
    size_t n = strlen(out);
    if (n > 7 && out[n - 1] == '/')
        out[n - 1] = '\0';
}

static peer *find(keel__peers *p, const char *url)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->t[i].url, url))
            return &p->t[i];
    return NULL;
}

int keel__peers_configure(keel__peers *p, const char *list, keel_error *err)
{
    char urls[KEEL__PEERS_MAX][KEEL__PEER_URL_MAX];
    size_t n = 0;
    for (const char *s = list ? list : ""; *s;) {
        while (*s == ' ' || *s == ',')
            s++;
        if (!*s)
            break;
        size_t len = strcspn(s, ", ");
        char u[KEEL__PEER_URL_MAX];
        if (len >= sizeof(u))
            return keel__err(err, KEEL_EINVALID, "peers: a URL is over %d bytes: %.40s...",
                             KEEL__PEER_URL_MAX - 1, s);
        memcpy(u, s, len);
        u[len] = '\0';
        if (!keel__peer_url_valid(u))
            return keel__err(err, KEEL_EINVALID,
                             "peers: \"%s\" is not a peer base URL (http://HOST:PORT, e.g. "
                             "http://10.0.0.7:8480)",
                             u);
        if (n == KEEL__PEERS_MAX)
            return keel__err(err, KEEL_EINVALID, "peers: more than %d URLs", KEEL__PEERS_MAX);
        norm(urls[n++], u);
        s += len;
    }
    pthread_mutex_lock(&p->mu);
    /* keep discovered peers and the state of configured ones that stay */
    peer keep[KEEL__PEERS_MAX];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        peer *old = find(p, urls[i]);
        bool dup = false;
        for (size_t j = 0; j < k; j++)
            dup |= !strcmp(keep[j].url, urls[i]);
        if (dup)
            continue;
        if (old)
            keep[k] = *old;
        else
            memset(&keep[k], 0, sizeof(keep[k]));
        keel__strlcpy(keep[k].url, urls[i], sizeof(keep[k].url));
        keep[k++].configured = true;
    }
    for (size_t i = 0; i < p->n && k < KEEL__PEERS_MAX; i++) {
        bool dup = false;
        for (size_t j = 0; j < k; j++)
            dup |= !strcmp(keep[j].url, p->t[i].url);
        if (!p->t[i].configured && !dup)
            keep[k++] = p->t[i];
    }
    memcpy(p->t, keep, k * sizeof(peer));
    p->n = k;
    pthread_mutex_unlock(&p->mu);
    return KEEL_OK;
}

bool keel__peers_seen(keel__peers *p, const char *url, const char *device, uint64_t ttl_s,
                      uint64_t now_ns)
{
    char u[KEEL__PEER_URL_MAX];
    bool added = false;
    if (!keel__peer_url_valid(url))
        return false;
    norm(u, url);
    pthread_mutex_lock(&p->mu);
    peer *e = find(p, u);
    if (!e) {
        if (p->n == KEEL__PEERS_MAX) { /* drop the discovered one seen longest ago */
            peer *old = NULL;
            for (size_t i = 0; i < p->n; i++)
                if (!p->t[i].configured && (!old || p->t[i].seen_ns < old->seen_ns))
                    old = &p->t[i];
            if (old) {
                *old = p->t[--p->n];
            }
        }
        if (p->n < KEEL__PEERS_MAX) {
            e = &p->t[p->n++];
            memset(e, 0, sizeof(*e));
            keel__strlcpy(e->url, u, sizeof(e->url));
            added = true;
        }
    }
    if (e) {
        keel__strlcpy(e->device, device ? device : "", sizeof(e->device));
        e->seen_ns = now_ns;
        if (!e->configured)
            e->expires_ns = now_ns + ttl_s * 1000000000ull;
    }
    pthread_mutex_unlock(&p->mu);
    return added;
}

void keel__peers_bad(keel__peers *p, const char *url, const char *why, uint64_t now_ns)
{
    char u[KEEL__PEER_URL_MAX];
    norm(u, url);
    pthread_mutex_lock(&p->mu);
    peer *e = find(p, u);
    if (e) {
        e->bad_until_ns = now_ns + p->backoff_ns;
        keel__strlcpy(e->why, why ? why : "", sizeof(e->why));
    }
    pthread_mutex_unlock(&p->mu);
}

static bool expired(const peer *e, uint64_t now)
{
    return !e->configured && e->expires_ns <= now;
}

/* Forgets discovered peers whose TTL passed. Lock held. */
static void sweep(keel__peers *p, uint64_t now)
{
    for (size_t i = 0; i < p->n;)
        if (expired(&p->t[i], now))
            p->t[i] = p->t[--p->n];
        else
            i++;
}

size_t keel__peers_usable(keel__peers *p, uint64_t now_ns, char (*out)[KEEL__PEER_URL_MAX],
                          size_t max)
{
    size_t k = 0;
    pthread_mutex_lock(&p->mu);
    sweep(p, now_ns);
    for (size_t i = 0; i < p->n && k < max; i++) /* configured, in their order */
        if (p->t[i].configured && p->t[i].bad_until_ns <= now_ns)
            keel__strlcpy(out[k++], p->t[i].url, KEEL__PEER_URL_MAX);
    bool used[KEEL__PEERS_MAX] = {0};
    while (k < max) { /* discovered, most recently seen first */
        peer *best = NULL;
        size_t bi = 0;
        for (size_t i = 0; i < p->n; i++) {
            peer *e = &p->t[i];
            if (e->configured || used[i] || e->bad_until_ns > now_ns)
                continue;
            if (!best || e->seen_ns > best->seen_ns) {
                best = e;
                bi = i;
            }
        }
        if (!best)
            break;
        used[bi] = true;
        keel__strlcpy(out[k++], best->url, KEEL__PEER_URL_MAX);
    }
    pthread_mutex_unlock(&p->mu);
    return k;
}

char *keel__peers_json(keel__peers *p, uint64_t now_ns)
{
    cJSON *a = cJSON_CreateArray();
    if (!a)
        return NULL;
    pthread_mutex_lock(&p->mu);
    sweep(p, now_ns);
    for (size_t i = 0; i < p->n; i++) {
        const peer *e = &p->t[i];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddItemToArray(a, o);
        bool bad = e->bad_until_ns > now_ns;
        cJSON_AddStringToObject(o, "url", e->url);
        cJSON_AddStringToObject(o, "source", e->configured ? "configured" : "discovered");
        if (e->device[0])
            cJSON_AddStringToObject(o, "device", e->device);
        cJSON_AddBoolToObject(o, "usable", !bad);
        if (bad) {
            cJSON_AddNumberToObject(o, "backoff_s",
                                    (double)((e->bad_until_ns - now_ns) / 1000000000ull));
            cJSON_AddStringToObject(o, "why", e->why);
        }
        if (!e->configured)
            cJSON_AddNumberToObject(o, "expires_s",
                                    (double)((e->expires_ns - now_ns) / 1000000000ull));
    }
    pthread_mutex_unlock(&p->mu);
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return s;
}

/* --- the beacon ------------------------------------------------------------------------ */

int keel__beacon_parse(const void *data, size_t len, keel__beacon *ret, keel_error *err)
{
    cJSON *j = NULL;
    uint64_t v = 0;
    const char *dev = NULL, *url = NULL;
    if (len > KEEL__BEACON_MAX)
        return keel__err(err, KEEL_ETOOBIG, "beacon of %zu bytes, over %d", len, KEEL__BEACON_MAX);
    int rc = keel__json_parse(data, len, "beacon", &j, err);
    if (!rc)
        rc = keel__json_u64(j, "keel", true, &v, "beacon", err);
    if (!rc && v != 1)
        rc = keel__err(err, KEEL_EUNSUPPORTED, "beacon version %llu (this keel reads 1)",
                       (unsigned long long)v);
    if (!rc)
        rc = keel__json_str(j, "device", true, sizeof(ret->device) - 1, &dev, "beacon", err);
    if (!rc)
        rc = keel__json_str(j, "url", true, KEEL__PEER_URL_MAX - 1, &url, "beacon", err);
    if (!rc && !keel__peer_url_valid(url))
        rc = keel__err(err, KEEL_EINVALID, "beacon: url is not http://HOST:PORT");
    if (!rc) {
        memset(ret, 0, sizeof(*ret));
        keel__strlcpy(ret->device, dev, sizeof(ret->device));
        norm(ret->url, url);
    }
    cJSON_Delete(j);
    return rc;
}

size_t keel__beacon_format(const char *device, const char *url, char *buf, size_t n)
{
    keel_buf b;
    keel__buf_init(&b, KEEL__BEACON_MAX);
    int rc = keel__buf_append(&b, "{\"keel\":1,\"device\":", 19);
    if (!rc)
        rc = keel__json_quote(&b, device);
    if (!rc)
        rc = keel__buf_append(&b, ",\"url\":", 7);
    if (!rc)
        rc = keel__json_quote(&b, url);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    size_t len = b.len;
    if (rc || len >= n) {
        keel__buf_done(&b);
        return 0;
    }
    memcpy(buf, b.data, len);
    buf[len] = '\0';
    keel__buf_done(&b);
    return len;
}
