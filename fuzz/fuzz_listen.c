/* fuzz_listen.c - the `listen` setting's parser (HOST, HOST:PORT, [V6],
 * [V6]:PORT), as keeld reads it from its config file and --listen. Only the
 * split is fuzzed: the address lookup that follows may ask the resolver. */
#include <stdlib.h>
#include <string.h>

#include "http/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char host[64], *s = malloc(size + 1);
    unsigned port = 77777;
    keel_error e = {0};
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = 0;
    if (keel__http_listen_split(s, host, sizeof(host), &port, &e) == KEEL_OK) {
        /* an address of the input's own bytes, and a port in range or none */
        if (!host[0] || strlen(host) >= sizeof(host) || strlen(host) > strlen(s) ||
            !strstr(s, host) || port > 65535)
            __builtin_trap();
    } else if (!e.msg[0]) {
        __builtin_trap(); /* every refusal says why */
    }
    free(s);
    return 0;
}
