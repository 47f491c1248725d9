/*
 * fuzz_envelope.c - the uplink's batch envelope decoder; whatever it
 * accepts must encode again (stored and compressed) and decode to the same
 * messages.
 */
#include <string.h>

#include "sync/envelope.h"

static void same(const keel__envelope *a, const keel__envelope *b)
{
    if (strcmp(a->device, b->device) || a->seq != b->seq || a->n != b->n ||
        a->raw_len != b->raw_len)
        __builtin_trap();
    for (size_t i = 0; i < a->n; i++) {
        const keel__sync_msg *x = &a->msgs[i], *y = &b->msgs[i];
        if (x->id != y->id || x->priority != y->priority || x->created != y->created ||
            strcmp(x->topic, y->topic) || strcmp(x->content_type, y->content_type) ||
            x->len != y->len || (x->len && memcmp(x->payload, y->payload, x->len)))
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel__envelope_limits lim = {.max_raw = 1u << 20};
    keel__envelope *env = NULL, *again = NULL;
    keel_error e;
    if (keel__envelope_decode(data, size, &lim, &env, &e) != KEEL_OK)
        return 0;
    for (int compress = 0; compress < 2; compress++) {
        keel_buf b;
        keel__buf_init(&b, 0);
        if (keel__envelope_encode(env->device, env->seq, env->msgs, env->n, compress, &b, &e) ||
            keel__envelope_decode(b.data, b.len, &lim, &again, &e))
            __builtin_trap();
        same(env, again);
        keel__envelope_free(again);
        keel__buf_done(&b);
    }
    keel__envelope_free(env);
    return 0;
}
