/* fuzz_sigset.c - keel.sig parsing and re-formatting. */
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel_sigset s, back;
    keel_error e;
    char *json = NULL;
    if (keel_sigset_parse(data, size, &s, &e) == KEEL_OK &&
        keel_sigset_format(&s, &json, &e) == KEEL_OK) {
        /* what we write, we read back the same */
        if (keel_sigset_parse(json, strlen(json), &back, &e) != KEEL_OK || back.count != s.count)
            abort();
        free(json);
    }
    return 0;
}
