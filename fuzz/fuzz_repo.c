/* fuzz_repo.c - repository metadata: timestamp.json and index.json parsers
 * (lib/update/repo.c), the offers an index makes, and the signature check
 * (an unsigned document must never pass). */
#include <stdlib.h>
#include <string.h>

#include "update/repo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char root[] =
        "{\"format\":1,\"type\":\"keel-root\",\"version\":1,\"keys\":{"
        "\"ee44797566423c884af801276645149f37c6f7291c903362703ac4634c5d9995\":{\"alg\":"
        "\"ed25519\",\"public\":"
        "\"e1d137b08f9d7978b36520210994120b461b12aefc762e9c01afc065b014069a\"}"
        "},\"root\":{\"keys\":["
        "\"ee44797566423c884af801276645149f37c6f7291c903362703ac4634c5d9995\"]"
        ",\"threshold\":1},\"packages\":[]}";
    static keel_trust *t;
    static bool tried;
    keel_error e;
    keel__repo_timestamp ts;
    keel__repo_index *ix = NULL;
    keel__repo_state st = {0};
    static const char nosig[] = "{\"format\":1,\"signatures\":[]}";
    if (!tried) {
        tried = true;
        if (keel_trust_from_root(root, sizeof(root) - 1, &t, &e))
            __builtin_trap(); /* the fixed root must load */
    }
    if (keel__repo_timestamp_parse_doc(data, size, &ts, &e) == KEEL_OK) {
        if (ts.version < 1 || ts.index_size > KEEL__REPO_INDEX_MAX || strlen(ts.index_sha256) != 64)
            __builtin_trap();
    }
    if (keel__repo_index_parse_doc(data, size, &ix, &e) == KEEL_OK) {
        keel__repo_entry en;
        keel__repo_offer o;
        for (size_t i = 0; keel__repo_index_entry(ix, i, &en); i++) {
            if (strncmp(en.digest, "sha256:", 7) != 0)
                __builtin_trap();
            if (keel__repo_offer_for(ix, en.name, "stable", "device-1", en.version, &o, &e) ==
                    KEEL_OK &&
                !o.version[0])
                __builtin_trap(); /* an offer names a version */
            if (keel__repo_offer_for(ix, en.name, "beta", "device-2", NULL, &o, &e) == KEEL_OK &&
                strncmp(o.digest, "sha256:", 7) != 0)
                __builtin_trap();
        }
        keel__repo_index_free(ix);
        ix = NULL;
    }
    if (t) {
        if (keel__repo_check_timestamp(t, data, size, nosig, sizeof(nosig) - 1, &st, 0, &ts, &e) ==
            KEEL_OK)
            __builtin_trap(); /* an unsigned timestamp must never pass */
        if (keel__repo_index_parse(t, data, size, nosig, sizeof(nosig) - 1, NULL, &st, 0, &ix,
                                   &e) == KEEL_OK)
            __builtin_trap();
        keel__repo_index_free(ix);
    }
    return 0;
}
