/* fuzz_routes.c - the HTTP route matcher (lib/http/routes.c) on any method
 * and path: the first byte picks the method, the rest is the path. Every
 * match must name a route of that method whose parameters are non-empty,
 * within their limits and free of '/'; a miss must say 404 or a valid Allow. */
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE"};
    keel__match m;
    char path[4097];
    if (!size)
        return 0;
    const char *method = methods[data[0] % 5];
    size_t n = size - 1 < sizeof(path) - 1 ? size - 1 : sizeof(path) - 1;
    memcpy(path, data + 1, n);
    path[n] = '\0'; /* what libmicrohttpd hands over: a C string */
    if (keel__route_match(method, path, &m)) {
        bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        if (!m.route || strcmp(m.route->method, get ? "GET" : "POST") ||
            m.nparams > KEEL__MAX_PARAMS)
            __builtin_trap();
        for (size_t i = 0; i < m.nparams; i++) {
            size_t len = strlen(m.params[i]);
            size_t max = !strcmp(m.names[i], "name")      ? KEEL_NAME_MAX - 1
                         : !strcmp(m.names[i], "version") ? KEEL_VERSION_MAX - 1
                                                          : KEEL__PARAM_MAX - 1;
            if (!len || len > max || strchr(m.params[i], '/') || !strstr(path, m.params[i]))
                __builtin_trap();
        }
    } else if (m.route || (m.allow[0] && strcmp(m.allow, "GET, HEAD") && strcmp(m.allow, "POST") &&
                           strcmp(m.allow, "GET, HEAD, POST"))) {
        __builtin_trap();
    }
    return 0;
}
