/* fuzz_config.c - keeld's config file parser. */
#include "keel/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel_config c;
    keel_error e;
    keel_config_default(&c);
    if (keel_config_parse(&c, (const char *)data, size, "fuzz", &e) == KEEL_OK) {
        /* every accepted value is within its documented range */
        if (c.threads < 1 || c.threads > 256 || c.max_connections < 1)
            __builtin_trap();
    }
    return 0;
}
