/*
 * server.h - keeld's HTTP API on libmicrohttpd, over a runtime. Routes,
 * their auth classes and body limits are in one table (routes.c); each API
 * family answers in its own file (api_packages.c, api_v2.c, api_events.c,
 * api_shadow.c, api_system.c). A new family (openai, dashboard) adds its
 * file and its rows to the table; this interface does not change.
 */
#ifndef KEEL_HTTP_SERVER_H
#define KEEL_HTTP_SERVER_H

#include <sys/socket.h>

#include "runtime/runtime.h"

typedef struct keel__http keel__http;

/* The server's settings (options.c): listen, port, unix_socket, threads,
 * limits on connections (per address, a loopback reserve) and bodies,
 * deadlines for a request's headers and body, read_auth. */
extern const keel__option_set keel__http_options;

/* The TCP address from the listen and port settings (listen.c). listen is
 * an address ("127.0.0.1", "::1", "[::1]", a host name such as "localhost")
 * with an optional port ("127.0.0.1:8080", "[::1]:8080"); without one the
 * port setting's applies. port_set: the port setting was given (file or
 * flag), so a different port in listen is an error rather than a choice. */
KEEL_WUR int keel__http_listen_addr(const char *listen, unsigned port, bool port_set,
                                    struct sockaddr_storage *ret, keel_error *err);
/* Splits listen into its address (host, n bytes) and port (0: none). */
KEEL_WUR int keel__http_listen_split(const char *listen, char *host, size_t n, unsigned *ret_port,
                                     keel_error *err);
/* "127.0.0.1:8480", "[::1]:8480". */
void keel__http_addr_str(const struct sockaddr_storage *a, char *buf, size_t n);

/* Listens where the runtime's config says (listen:port, unix_socket) and
 * serves it. rt is borrowed and must outlive the server. */
KEEL_WUR int keel__http_start(keel__runtime *rt, keel__http **ret, keel_error *err);
/* Ends open streams, lets answers in flight land, stops accepting and
 * frees. NULL is fine. */
void keel__http_stop(keel__http *h);

#endif
