/* listen.c - the TCP address keeld listens on, from the listen and port
 * settings (server.h). */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/server.h"

/* "8080" -> 8080; 0 when it is not a port 1..65535. */
static unsigned parse_port(const char *s)
{
    char *end = NULL;
    if (!*s || *s == '+' || *s == '-' || strlen(s) > 5)
        return 0;
    unsigned long v = strtoul(s, &end, 10);
    return *end || v == 0 || v > 65535 ? 0 : (unsigned)v;
}

int keel__http_listen_split(const char *listen, char *host, size_t n, unsigned *ret_port,
                            keel_error *err)
{
    const char *ps = NULL; /* the port part, when there is one */
    const char *colon = strchr(listen, ':');
    size_t hl;
    if (listen[0] == '[') { /* [V6] or [V6]:PORT */
        const char *close = strchr(listen, ']');
        if (!close || (close[1] && close[1] != ':'))
            return keel__err(err, KEEL_EINVALID,
                             "listen: \"%.64s\" is not [IPv6] or [IPv6]:PORT, e.g. [::1]:8480",
                             listen);
        listen++;
        hl = (size_t)(close - listen);
        ps = close[1] ? close + 2 : NULL;
    } else if (colon && !strchr(colon + 1, ':')) { /* one colon: HOST:PORT */
        hl = (size_t)(colon - listen);
        ps = colon + 1;
    } else { /* an address alone; two colons or more: an IPv6 literal */
        hl = strlen(listen);
    }
    if (hl >= n)
        return keel__err(err, KEEL_EINVALID, "listen: \"%.64s\" is too long", listen);
    memcpy(host, listen, hl);
    host[hl] = '\0';
    if (!hl)
        return keel__err(err, KEEL_EINVALID,
                         "listen: \"%.64s\" has no address; write one, e.g. 127.0.0.1:8480, or "
                         "0.0.0.0:8480 for every interface",
                         listen);
    *ret_port = 0;
    if (ps && !(*ret_port = parse_port(ps)))
        return keel__err(err, KEEL_EINVALID,
                         "listen: \"%.64s\" has no valid port after the address (1..65535)",
                         listen);
    return KEEL_OK;
}

int keel__http_listen_addr(const char *listen, unsigned port, bool port_set,
                           struct sockaddr_storage *ret, keel_error *err)
{
    char host[KEEL__CONF_STR_MAX];
    unsigned lp;
    struct sockaddr_storage ss;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    int rc = keel__http_listen_split(listen, host, sizeof(host), &lp, err);
    if (rc)
        return rc;
    if (lp) {
        if (port_set && port != lp)
            return keel__err(err, KEEL_EINVALID,
                             "listen \"%s\" says port %u but port is set to %u: give the port "
                             "once (in listen, or with port / --port)",
                             listen, lp, port);
        port = lp;
    }
    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
    } else { /* a host name: its first address ("localhost" from /etc/hosts) */
        struct addrinfo hints = {.ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM}, *ai = NULL;
        int g = getaddrinfo(host, NULL, &hints, &ai);
        if (g || !ai || ai->ai_addrlen > sizeof(ss)) {
            if (ai)
                freeaddrinfo(ai);
            return keel__err(err, KEEL_EINVALID,
                             "listen: \"%s\" is not an IPv4 or IPv6 address, and as a host name: "
                             "%s (write e.g. 127.0.0.1, [::1]:8480 or 0.0.0.0:8480)",
                             host, g ? gai_strerror(g) : "no address");
        }
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        freeaddrinfo(ai);
        if (ss.ss_family == AF_INET)
            a4->sin_port = htons((uint16_t)port);
        else
            a6->sin6_port = htons((uint16_t)port);
    }
    *ret = ss;
    return KEEL_OK;
}

void keel__http_addr_str(const struct sockaddr_storage *a, char *buf, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
    if (a->ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, n, "[%s]:%u", ip, ntohs(a6->sin6_port));
    } else {
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof(ip));
        snprintf(buf, n, "%s:%u", ip, ntohs(a4->sin_port));
    }
}
