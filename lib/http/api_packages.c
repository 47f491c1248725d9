/*
 * api_packages.c - installed packages: list, install (the body is a .keel
 * file, stored under STATE_DIR/staging by the server), activate, rollback,
 * mark-good, gc. The runtime does the work and publishes the events.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "http/api.h"

void keel__api_packages_list(keel__hreq *q)
{
    keel_error e = {0};
    char *json = NULL;
    if (keel_store_list_json(keel__runtime_store(keel__hreq_runtime(q)), &json, &e))
        keel__reply_keel_error(q, &e);
    else
        keel__reply_json(q, 200, json);
}

/* Installs and activations run the package's checks (hashing every byte,
 * the validation set through every tier): they run on the runtime's
 * actions thread and answer from there, so no HTTP worker waits. */
static void defer(keel__hreq *q, void (*fn)(void *ctx), void *ctx)
{
    keel_error e = {0};
    if (keel__runtime_defer(keel__hreq_runtime(q), fn, ctx, &e)) {
        if (ctx != q)
            free(ctx);
        keel__reply_keel_error(q, &e);
    }
}

static void do_install(void *ctx)
{
    keel__hreq *q = ctx;
    keel_error e = {0};
    keel_install_result r;
    const char *act = keel__hreq_query(q, "activate");
    unsigned flags = act && (!strcmp(act, "1") || !strcmp(act, "true")) ? KEEL_INSTALL_ACTIVATE : 0;
    if (keel__runtime_install(keel__hreq_runtime(q), keel__hreq_upload(q), flags, &r, &e)) {
        keel__reply_keel_error(q, &e);
        return;
    }
    keel_buf b;
    keel__buf_init(&b, 0);
    if (keel__buf_appendf(&b,
                          "{\"name\":\"%s\",\"version\":\"%s\",\"digest\":\"%s\",\"bytes\":%llu,"
                          "\"new_bytes\":%llu,\"already_installed\":%s,\"activated\":%s}\n",
                          r.name, r.version, r.digest, (unsigned long long)r.bytes,
                          (unsigned long long)r.new_bytes, r.already ? "true" : "false",
                          r.activated ? "true" : "false")) {
        keel__buf_done(&b);
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
        return;
    }
    keel__reply_json(q, r.already ? 200 : 201, keel__buf_steal(&b));
}

void keel__api_packages_install(keel__hreq *q)
{
    defer(q, do_install, q);
}

typedef struct slot_req {
    keel__hreq *q;
    unsigned type;
    bool has_version;
    char version[KEEL_VERSION_MAX];
} slot_req;

static void do_slot_action(void *ctx)
{
    slot_req *r = ctx;
    keel__hreq *q = r->q;
    keel_error e = {0};
    keel_serving sv;
    int rc = keel__runtime_slot_action(keel__hreq_runtime(q), r->type, keel__hreq_param(q, "name"),
                                       r->has_version ? r->version : NULL, &sv, &e);
    free(r);
    if (rc) {
        keel__reply_keel_error(q, &e);
        return;
    }
    char out[KEEL_NAME_MAX + KEEL_VERSION_MAX + 96];
    snprintf(out, sizeof(out), "{\"name\":\"%s\",\"serving\":\"%s\",\"slot\":\"%s\"}\n", sv.name,
             sv.version, keel_slot_name(sv.slot));
    keel__reply_text(q, 200, out);
}

static void slot_action(keel__hreq *q, unsigned type)
{
    keel_error e = {0};
    const char *version = NULL;
    cJSON *body = NULL;
    size_t len;
    const char *data = keel__hreq_body(q, &len);
    if (type == KEEL__BUS_ACTIVATE && len &&
        (keel__json_parse(data, len, "request body", &body, &e) ||
         keel__json_str(body, "version", false, KEEL_VERSION_MAX, &version, "request body", &e))) {
        cJSON_Delete(body);
        keel__reply_keel_error(q, &e);
        return;
    }
    slot_req *r = calloc(1, sizeof(*r));
    if (!r) {
        cJSON_Delete(body);
        keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
        return;
    }
    r->q = q;
    r->type = type;
    if (version) {
        r->has_version = true;
        keel__strlcpy(r->version, version, sizeof(r->version));
    }
    cJSON_Delete(body);
    defer(q, do_slot_action, r);
}

void keel__api_packages_activate(keel__hreq *q)
{
    slot_action(q, KEEL__BUS_ACTIVATE);
}

void keel__api_packages_rollback(keel__hreq *q)
{
    slot_action(q, KEEL__BUS_ROLLBACK);
}

void keel__api_packages_mark_good(keel__hreq *q)
{
    slot_action(q, KEEL__BUS_MARK_GOOD);
}

void keel__api_gc(keel__hreq *q)
{
    keel_error e = {0};
    uint64_t freed = 0;
    char body[64];
    if (keel__runtime_gc(keel__hreq_runtime(q), &freed, &e)) {
        keel__reply_keel_error(q, &e);
        return;
    }
    snprintf(body, sizeof(body), "{\"freed_bytes\":%llu}\n", (unsigned long long)freed);
    keel__reply_text(q, 200, body);
}
