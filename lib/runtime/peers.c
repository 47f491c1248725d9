/*
 * peers.c - LAN peers on the runtime (peers.h): the table in step with the
 * settings, the keel_peers gauge, and the beacon thread (UDP multicast,
 * IPv4): it announces {"keel":1,"device":ID,"url":URL} every
 * peer_beacon_interval while peer_serve is on, and adds the peers it hears
 * (their own announcements are ignored). A wildcard host in an announced
 * URL (listen = 0.0.0.0) is replaced by the datagram's source address.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/peers.h"
#include "runtime/rt.h"
#include "update/fetch.h"

#define MOD "peers"

struct keel__rt_peers {
    keel__peers *table;
    pthread_mutex_t mu;
    char applied[KEEL__CONF_PATH_MAX]; /* the peers setting the table holds */
    char refused[KEEL__CONF_PATH_MAX]; /* a reloaded value that did not parse (logged once) */
    uint64_t applied_backoff;
    keel__metric_family *gauge;
    /* the beacon */
    int sock;
    pthread_t thread;
    bool running;
    atomic_bool stop;
    struct sockaddr_in group;
    uint64_t interval_s;
    char url[KEEL__PEER_URL_MAX]; /* what this keeld announces ("" when nothing) */
};

/* Applies peers / peer_backoff when a reload changed them. */
static void sync_settings(keel__runtime *rt)
{
    struct keel__rt_peers *ps = rt->peers;
    keel__conf *c = keel__runtime_conf(rt);
    if (!c)
        return;
    const char *list = keel__conf_str(c, "peers");
    uint64_t backoff = keel__conf_u64(c, "peer_backoff");
    pthread_mutex_lock(&ps->mu);
    if (strcmp(list, ps->applied) && strcmp(list, ps->refused)) {
        keel_error e;
        if (keel__peers_configure(ps->table, list, &e)) {
            KEEL_LOG_E(MOD, "%s; keeping the peers in force", e.msg);
            keel__strlcpy(ps->refused, list, sizeof(ps->refused));
        } else {
            keel__strlcpy(ps->applied, list, sizeof(ps->applied));
        }
    }
    if (backoff != ps->applied_backoff) {
        keel__peers_set_backoff(ps->table, backoff);
        ps->applied_backoff = backoff;
    }
    pthread_mutex_unlock(&ps->mu);
    keel__conf_free(c);
}

size_t keel__runtime_peers_usable(keel__runtime *rt, char (*out)[KEEL__PEER_URL_MAX], size_t max)
{
    if (!rt->peers)
        return 0;
    sync_settings(rt);
    return keel__peers_usable(rt->peers->table, keel__now_mono_ns(), out, max);
}

void keel__runtime_peer_bad(keel__runtime *rt, const char *url, const char *why)
{
    if (!rt->peers)
        return;
    KEEL_LOG_W(MOD, "skipping peer %s for a while: %s", url, why ? why : "");
    keel__peers_bad(rt->peers->table, url, why, keel__now_mono_ns());
}

char *keel__runtime_peers_json(keel__runtime *rt)
{
    if (!rt->peers)
        return strdup("[]");
    sync_settings(rt);
    return keel__peers_json(rt->peers->table, keel__now_mono_ns());
}

/* The update pipeline's fetch (update_job.c): the peers usable now, and
 * a peer_bad that backs one off. */
static void fetch_peer_bad(void *ctx, const char *peer, const char *why)
{
    keel__runtime_peer_bad(ctx, peer, why);
}

void keel__rt_peers_for_fetch(keel__runtime *rt, struct keel__fetch_opts *fo)
{
    typedef char url[KEEL__PEER_URL_MAX];
    const char **ptrs = malloc(KEEL__PEERS_MAX * (sizeof(char *) + sizeof(url)));
    fo->peers = NULL;
    fo->npeers = 0;
    if (!ptrs)
        return; /* the origins alone */
    url *urls = (url *)(ptrs + KEEL__PEERS_MAX);
    size_t n = keel__runtime_peers_usable(rt, urls, KEEL__PEERS_MAX);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = urls[i];
    fo->peers = ptrs;
    fo->npeers = n;
    fo->peer_bad = fetch_peer_bad;
    fo->ctx = rt;
}

void keel__rt_peers_done(keel__runtime *rt, struct keel__fetch_opts *fo)
{
    (void)rt;
    free((void *)(uintptr_t)fo->peers); /* ours: keel__rt_peers_for_fetch allocated it */
    fo->peers = NULL;
    fo->npeers = 0;
}

static const keel__metric_desc gauge_desc = {
    .name = "keel_peers",
    .help = "LAN peers usable now (configured and discovered, not backed off).",
    .type = KEEL_METRIC_GAUGE};

static void collect(void *ctx)
{
    keel__runtime *rt = ctx;
    char urls[KEEL__PEERS_MAX][KEEL__PEER_URL_MAX];
    keel_error e;
    size_t n = keel__runtime_peers_usable(rt, urls, KEEL__PEERS_MAX);
    if (keel__metrics_set(rt->peers->gauge, NULL, (double)n, &e))
        KEEL_LOG_D(MOD, "keel_peers: %s", e.msg);
}

/* --- the beacon ---------------------------------------------------------------------------- */

/* The URL to announce: peer_url, else http://LISTEN:PORT from the HTTP
 * settings (when this conf has them). */
static void announced_url(const keel__conf *c, char *out, size_t n)
{
    out[0] = '\0';
    const char *u = keel__conf_str(c, "peer_url");
    if (u[0]) {
        keel__strlcpy(out, u, n);
        return;
    }
    if (!keel__conf_option(c, "listen") || !keel__conf_option(c, "port"))
        return;
    const char *l = keel__conf_str(c, "listen");
    unsigned port = (unsigned)keel__conf_u64(c, "port");
    char host[128];
    if (l[0] == '[') { /* [v6]:port */
        const char *close = strchr(l, ']');
        if (!close || (size_t)(close - l + 1) >= sizeof(host))
            return;
        memcpy(host, l, (size_t)(close - l + 1));
        host[close - l + 1] = '\0';
        if (close[1] == ':')
            port = (unsigned)strtoul(close + 2, NULL, 10);
    } else {
        const char *colon = strchr(l, ':');
        if (colon && strchr(colon + 1, ':'))
            return; /* a bare IPv6 address: give peer_url */
        size_t hl = colon ? (size_t)(colon - l) : strlen(l);
        if (hl >= sizeof(host))
            return;
        memcpy(host, l, hl);
        host[hl] = '\0';
        if (colon)
            port = (unsigned)strtoul(colon + 1, NULL, 10);
    }
    if (!host[0] || !strcmp(host, "[::]"))
        keel__strlcpy(host, "0.0.0.0", sizeof(host));
    snprintf(out, n, "http://%s:%u", host, port);
}

static void on_datagram(keel__runtime *rt, const char *buf, size_t len,
                        const struct sockaddr_in *from)
{
    keel__beacon bc;
    keel_error e;
    char src[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &from->sin_addr, src, sizeof(src));
    if (keel__beacon_parse(buf, len, &bc, &e)) {
        KEEL_LOG_D(MOD, "ignoring a beacon from %s: %s", src, e.msg);
        return;
    }
    if (!strcmp(bc.device, keel__runtime_device_id(rt)))
        return;                                    /* our own */
    if (!strncmp(bc.url, "http://0.0.0.0:", 15)) { /* a wildcard listen address */
        char u[KEEL__PEER_URL_MAX];
        snprintf(u, sizeof(u), "http://%s:%s", src, bc.url + 15);
        keel__strlcpy(bc.url, u, sizeof(bc.url));
    }
    if (keel__peers_seen(rt->peers->table, bc.url, bc.device, 3 * rt->peers->interval_s,
                         keel__now_mono_ns()))
        KEEL_LOG_I(MOD, "found peer %s (%s) by its beacon", bc.url, bc.device);
}

static void announce(keel__runtime *rt)
{
    struct keel__rt_peers *ps = rt->peers;
    char buf[KEEL__BEACON_MAX];
    if (!ps->url[0] || !keel__runtime_setting_bool(rt, "peer_serve"))
        return;
    size_t n = keel__beacon_format(keel__runtime_device_id(rt), ps->url, buf, sizeof(buf));
    if (n &&
        sendto(ps->sock, buf, n, 0, (const struct sockaddr *)&ps->group, sizeof(ps->group)) < 0)
        KEEL_LOG_D(MOD, "beacon not sent: %s", strerror(errno));
}

static void *beacon_main(void *arg)
{
    keel__runtime *rt = arg;
    struct keel__rt_peers *ps = rt->peers;
    uint64_t next = 0;
    char buf[KEEL__BEACON_MAX + 1];
    while (!atomic_load(&ps->stop)) {
        uint64_t now = keel__now_mono_ns();
        if (now >= next) {
            announce(rt);
            next = now + ps->interval_s * 1000000000ull;
        }
        struct pollfd pfd = {.fd = ps->sock, .events = POLLIN};
        if (poll(&pfd, 1, 250) <= 0)
            continue;
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ssize_t r =
            recvfrom(ps->sock, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (r > 0)
            on_datagram(rt, buf, (size_t)r, &from);
    }
    return NULL;
}

static int beacon_open(keel__runtime *rt, const keel__conf *c, keel_error *err)
{
    struct keel__rt_peers *ps = rt->peers;
    const char *grp = keel__conf_str(c, "peer_beacon_group");
    const char *ifa = keel__conf_str(c, "peer_beacon_if");
    unsigned port = (unsigned)keel__conf_u64(c, "peer_beacon_port");
    struct in_addr ga, ia = {.s_addr = htonl(INADDR_ANY)};
    int one = 1, rc = KEEL_OK;
    unsigned char ttl = 1, loop = 1;
    if (inet_pton(AF_INET, grp, &ga) != 1 || (ntohl(ga.s_addr) >> 28) != 14)
        return keel__err(err, KEEL_EINVALID,
                         "peer_beacon_group %s is not an IPv4 multicast address (224.0.0.0/4, "
                         "e.g. 239.255.84.80)",
                         grp);
    if (strcmp(ifa, "any") && inet_pton(AF_INET, ifa, &ia) != 1)
        return keel__err(err, KEEL_EINVALID, "peer_beacon_if %s is not an IPv4 address (or any)",
                         ifa);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno,
                               "cannot open the peer beacon socket");
    struct sockaddr_in any = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_ANY)};
    struct ip_mreq mr = {.imr_multiaddr = ga, .imr_interface = ia};
    if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
        bind(s, (struct sockaddr *)&any, sizeof(any)) ||
        setsockopt(s, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof(mr)) ||
        setsockopt(s, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof(ttl)) ||
        setsockopt(s, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof(loop)) ||
        (ia.s_addr != htonl(INADDR_ANY) &&
         setsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &ia, sizeof(ia)))) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno,
                             "cannot join the peer beacon group %s:%u on %s", grp, port, ifa);
        close(s);
        return rc;
    }
    ps->sock = s;
    ps->group = (struct sockaddr_in){
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = ga};
    ps->interval_s = keel__conf_u64(c, "peer_beacon_interval");
    announced_url(c, ps->url, sizeof(ps->url));
    return KEEL_OK;
}

/* --- open / close ------------------------------------------------------------------------------
 */

int keel__rt_peers_start(keel__runtime *rt, keel_error *err)
{
    struct keel__rt_peers *ps = calloc(1, sizeof(*ps));
    int rc;
    if (!ps || !(ps->table = keel__peers_new())) {
        free(ps);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&ps->mu, NULL);
    ps->sock = -1;
    rt->peers = ps;
    keel__conf *c = keel__runtime_conf(rt);
    if (!c)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    const char *list = keel__conf_str(c, "peers");
    if ((rc = keel__peers_configure(ps->table, list, err)))
        goto out;
    keel__strlcpy(ps->applied, list, sizeof(ps->applied));
    ps->applied_backoff = keel__conf_u64(c, "peer_backoff");
    keel__peers_set_backoff(ps->table, ps->applied_backoff);
    if ((rc = keel__metrics_register(rt->metrics, &gauge_desc, &ps->gauge, err)) ||
        (rc = keel__metrics_collector_add(rt->metrics, collect, rt, err)))
        goto out;
    if (keel__conf_bool(c, "peer_beacon")) {
        keel_error be;
        if (beacon_open(rt, c, &be)) {
            /* a device without multicast still serves and uses configured peers */
            KEEL_LOG_W(MOD, "peer beacon off: %s", be.msg);
        } else if (pthread_create(&ps->thread, NULL, beacon_main, rt) == 0) {
            ps->running = true;
            KEEL_LOG_I(MOD, "peer beacon on %s:%llu%s%s", keel__conf_str(c, "peer_beacon_group"),
                       (unsigned long long)keel__conf_u64(c, "peer_beacon_port"),
                       ps->url[0] ? ", announcing " : "", ps->url);
        }
    }
out:
    keel__conf_free(c);
    return rc;
}

void keel__rt_peers_stop(keel__runtime *rt)
{
    struct keel__rt_peers *ps = rt->peers;
    if (!ps)
        return;
    if (ps->running) {
        atomic_store(&ps->stop, true);
        pthread_join(ps->thread, NULL);
    }
    if (ps->sock >= 0)
        close(ps->sock);
    if (rt->metrics)
        keel__metrics_collector_remove(rt->metrics, collect, rt);
    keel__peers_free(ps->table);
    pthread_mutex_destroy(&ps->mu);
    free(ps);
    rt->peers = NULL;
}
