/* fuzz_config.c - keeld's config file parser, over every declared setting. */
#include <stdlib.h>
#include <string.h>

#include "http/server.h"
#include "runtime/runtime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const keel__option_set *sets[16];
    size_t n;
    const keel__option_set *const *rs = keel__runtime_option_sets(&n);
    keel__conf *c = NULL;
    keel_error e;
    memcpy(sets, rs, n * sizeof(*sets));
    sets[n++] = &keel__http_options;
    if (keel__conf_new(sets, n, &c, &e))
        __builtin_trap();
    if (keel__conf_parse(c, (const char *)data, size, "fuzz", &e) == KEEL_OK) {
        /* every accepted value is within its documented range */
        uint64_t threads = keel__conf_u64(c, "threads");
        if (threads < 1 || threads > 256 || keel__conf_u64(c, "max_connections") < 1 ||
            keel__conf_u64(c, "port") > 65535 || keel__conf_u64(c, "max_body") < 1024)
            __builtin_trap();
        char *json = keel__conf_json(c);
        if (!json)
            __builtin_trap();
        free(json);
    }
    keel__conf_free(c);
    return 0;
}
