/* fuzz_manifest.c - keel_manifest_parse on arbitrary bytes. */
#include <stdlib.h>

#include "keel/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel_manifest *m = NULL;
    keel_error e;
    char *json = NULL;
    keel_log_set_stderr(false);
    if (keel_manifest_parse(data, size, NULL, &m, &e) == KEEL_OK) {
        for (size_t i = 0; i < keel_manifest_nfiles(m); i++)
            (void)keel_manifest_find(m, keel_manifest_file(m, i)->path);
        if (keel_manifest_summary_json(m, &json, &e) == KEEL_OK)
            free(json);
    }
    keel_manifest_free(m);
    return 0;
}
