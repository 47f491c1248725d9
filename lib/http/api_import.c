/*
 * api_import.c - USB / air-gap imports: POST /api/import {"path": "..."}
 * queues the import on the runtime's jobs thread and answers 202 with its
 * id at once (validation sets never run on an HTTP worker); GET
 * /api/import/ID answers its state and, once done, the outcome of every
 * item (lib/runtime/import.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "http/api.h"
#include "runtime/import.h"

void keel__api_import_post(keel__hreq *q)
{
    keel_error e = {0};
    cJSON *body = NULL;
    const char *path = NULL;
    size_t len;
    uint64_t id = 0;
    const char *data = keel__hreq_body(q, &len);
    if (keel__json_parse(data, len, "request body ({\"path\": \"/media/usb/bundle\"})", &body,
                         &e) ||
        keel__json_str(body, "path", true, 4095, &path, "request body", &e) ||
        keel__runtime_import_submit(keel__hreq_runtime(q), path, &id, &e)) {
        cJSON_Delete(body);
        keel__reply_keel_error(q, &e);
        return;
    }
    cJSON_Delete(body);
    char out[128];
    snprintf(out, sizeof(out),
             "{\"id\":%llu,\"state\":\"queued\",\"result\":\"/api/import/%llu\"}\n",
             (unsigned long long)id, (unsigned long long)id);
    keel__reply_text(q, 202, out);
}

void keel__api_import_get(keel__hreq *q)
{
    keel_error e = {0};
    const char *p = keel__hreq_param(q, "id");
    char *end = NULL, *json = NULL;
    unsigned long long id = strtoull(p ? p : "", &end, 10);
    if (!p || !*p || *end || p[0] == '-' || p[0] == '+') {
        keel__reply_error(q, 400, KEEL_EINVALID,
                          "an import id is a number (from POST /api/import)");
        return;
    }
    if (keel__runtime_import_result(keel__hreq_runtime(q), id, &json, &e))
        keel__reply_keel_error(q, &e);
    else
        keel__reply_json(q, 200, json);
}
