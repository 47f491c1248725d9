/* fuzz_trust.c - root documents (root.json). */
#include "keel/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel_trust *t = NULL;
    keel_error e;
    keel_sigset none = {0};
    if (keel_trust_from_root(data, size, &t, &e) == KEEL_OK) {
        if (keel_trust_check_package(t, "fuzz", data, size, &none, &e) == KEEL_OK)
            __builtin_trap(); /* an unsigned manifest must never pass */
    }
    keel_trust_free(t);
    return 0;
}
