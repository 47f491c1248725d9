/* api_shadow.c - the device shadow: GET the document, POST local changes. */
#include <stdlib.h>

#include "http/api.h"

void keel__api_shadow_get(keel__hreq *q)
{
    char *sh = keel__runtime_shadow_json(keel__hreq_runtime(q));
    if (!sh)
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
    else
        keel__reply_json(q, 200, sh);
}

/* POST /api/shadow {"set": {"key": value, ...}} */
void keel__api_shadow_set(keel__hreq *q)
{
    keel_error e = {0};
    size_t len;
    const char *body = keel__hreq_body(q, &len);
    keel__runtime *rt = keel__hreq_runtime(q);
    if (keel__runtime_shadow_set(rt, body, len, &e)) {
        keel__reply_keel_error(q, &e);
        return;
    }
    keel__api_shadow_get(q);
}
