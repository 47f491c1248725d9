/*
 * api_updates.c - updates from repositories (docs/update.md): the update
 * module's state, and a check on demand. The check runs on the runtime's
 * update thread; with ?wait=1 the request is answered when it ends (the
 * connection is suspended meanwhile, no worker waits).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"

void keel__api_updates_get(keel__hreq *q)
{
    char *json = keel__runtime_update_json(keel__hreq_runtime(q));
    if (!json)
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
    else
        keel__reply_json(q, 200, json);
}

static bool flag(keel__hreq *q, const char *key)
{
    const char *v = keel__hreq_query(q, key);
    return v && (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes"));
}

static void check_done(void *ctx, const char *json)
{
    char *copy = strdup(json);
    if (!copy)
        keel__reply_error(ctx, 500, KEEL_ENOMEM, "out of memory");
    else
        keel__reply_json(ctx, 200, copy);
}

void keel__api_updates_check(keel__hreq *q)
{
    keel__runtime *rt = keel__hreq_runtime(q);
    bool apply = flag(q, "apply");
    if (flag(q, "wait")) {
        (void)keel__runtime_update_check(rt, apply, check_done, q); /* answered later */
        return;
    }
    uint64_t seq = keel__runtime_update_check(rt, apply, NULL, NULL);
    char out[128];
    snprintf(out, sizeof(out), "{\"check\":%llu,\"apply\":%s,\"status\":\"/api/updates\"}\n",
             (unsigned long long)seq, apply ? "true" : "false");
    keel__reply_text(q, 202, out);
}
