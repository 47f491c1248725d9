/*
 * routes.c - the one route table: every endpoint of keeld's API with its
 * method, path pattern, handler, auth class, body limit and flags; and the
 * matcher over it. A new API family adds its rows here and its handlers in
 * its own api_*.c file.
 */
#include <string.h>

#include "http/api.h"
#include "keel/store.h"

#define R(m, p, fn, auth, body, flags, name)                                                       \
    {                                                                                              \
        m, p, fn, KEEL__AUTH_##auth, KEEL__BODY_##body, flags, name                                \
    }
#define AUDIT  KEEL__ROUTE_AUDIT
#define STREAM KEEL__ROUTE_STREAM

const keel__route keel__routes[] = {
    /* health and the device (api_system.c) */
    R("GET", "/healthz", keel__api_health, OPEN, NONE, 0, "health"),
    R("GET", "/readyz", keel__api_ready, OPEN, NONE, 0, "ready"),
    R("GET", "/metrics", keel__api_metrics, OPEN, NONE, 0, "metrics"),
    R("GET", "/api/status", keel__api_status, READ, NONE, 0, "status"),
    R("GET", "/api/metrics", keel__api_metrics_json, READ, NONE, 0, "metrics.json"),
    R("POST", "/api/verify", keel__api_verify, OPERATOR, NONE, AUDIT, "verify"),
    R("GET", "/api/bus", keel__api_bus_stream, READ, NONE, STREAM, "bus.stream"),
    /* packages (api_packages.c) */
    R("GET", "/api/packages", keel__api_packages_list, READ, NONE, 0, "packages.list"),
    R("POST", "/api/packages", keel__api_packages_install, ADMIN, FILE, AUDIT, "packages.install"),
    R("POST", "/api/packages/{name}/activate", keel__api_packages_activate, OPERATOR, JSON, AUDIT,
      "packages.activate"),
    R("POST", "/api/packages/{name}/rollback", keel__api_packages_rollback, OPERATOR, NONE, AUDIT,
      "packages.rollback"),
    R("POST", "/api/packages/{name}/mark-good", keel__api_packages_mark_good, OPERATOR, NONE, AUDIT,
      "packages.mark_good"),
    R("POST", "/api/gc", keel__api_gc, ADMIN, NONE, AUDIT, "packages.gc"),
    /* USB / air-gap imports (api_import.c) and LAN peers (api_chunks.c) */
    R("POST", "/api/import", keel__api_import_post, ADMIN, JSON, AUDIT, "import.post"),
    R("GET", "/api/import/{id}", keel__api_import_get, READ, NONE, 0, "import.get"),
    R("GET", "/api/chunks/sha256/{hex}", keel__api_chunks_get, OPEN, NONE, 0, "chunks.get"),
    /* updates from repositories (api_updates.c) */
    R("GET", "/api/updates", keel__api_updates_get, READ, NONE, 0, "updates.get"),
    R("POST", "/api/updates/check", keel__api_updates_check, OPERATOR, NONE, AUDIT,
      "updates.check"),
    /* store-and-forward (api_events.c, api_shadow.c) */
    R("POST", "/api/events", keel__api_events_post, OPERATOR, JSON, 0, "events.post"),
    R("GET", "/api/queue", keel__api_queue, READ, NONE, 0, "queue"),
    R("GET", "/api/shadow", keel__api_shadow_get, READ, NONE, 0, "shadow.get"),
    R("POST", "/api/shadow", keel__api_shadow_set, OPERATOR, JSON, AUDIT, "shadow.set"),
    /* Open Inference Protocol, KServe v2 (api_v2.c) */
    R("GET", "/v2", keel__api_v2_server, OPEN, NONE, 0, "v2.server"),
    R("GET", "/v2/health/live", keel__api_v2_live, OPEN, NONE, 0, "v2.live"),
    R("GET", "/v2/health/ready", keel__api_v2_ready, OPEN, NONE, 0, "v2.ready"),
    R("GET", "/v2/models/{name}", keel__api_v2_model, OPEN, NONE, 0, "v2.model"),
    R("GET", "/v2/models/{name}/versions/{version}", keel__api_v2_model, OPEN, NONE, 0, "v2.model"),
    R("GET", "/v2/models/{name}/ready", keel__api_v2_model_ready, OPEN, NONE, 0, "v2.model_ready"),
    R("GET", "/v2/models/{name}/versions/{version}/ready", keel__api_v2_model_ready, OPEN, NONE, 0,
      "v2.model_ready"),
    R("POST", "/v2/models/{name}/infer", keel__api_v2_infer, OPEN, INFER, 0, "v2.infer"),
    R("POST", "/v2/models/{name}/versions/{version}/infer", keel__api_v2_infer, OPEN, INFER, 0,
      "v2.infer"),
};
const size_t keel__nroutes = KEEL_ARRAY_LEN(keel__routes);

/* The longest a parameter may be, by its name. */
static size_t param_max(const char *name, size_t n)
{
    if (n == 4 && !memcmp(name, "name", 4))
        return KEEL_NAME_MAX - 1;
    if (n == 7 && !memcmp(name, "version", 7))
        return KEEL_VERSION_MAX - 1;
    return KEEL__PARAM_MAX - 1;
}

/* Whether path fits pattern; fills m's parameters when it does. */
static bool path_match(const char *pattern, const char *path, keel__match *m)
{
    const char *p = pattern, *u = path;
    m->nparams = 0;
    while (*p && *u) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const char *slash = strchr(u, '/');
            size_t n = slash ? (size_t)(slash - u) : strlen(u);
            size_t nl = (size_t)(close - p - 1);
            if (!n || n > param_max(p + 1, nl) || m->nparams == KEEL__MAX_PARAMS ||
                nl >= sizeof(m->names[0]))
                return false;
            for (size_t i = 0; i < n; i++) /* names and versions are printable ASCII: */
                if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] >= 0x7f)
                    return false; /* anything else would reach messages and logs as is */
            memcpy(m->params[m->nparams], u, n);
            m->params[m->nparams][n] = '\0';
            memcpy(m->names[m->nparams], p + 1, nl);
            m->names[m->nparams++][nl] = '\0';
            p = close + 1;
            u += n;
            continue;
        }
        if (*p != *u)
            return false;
        p++;
        u++;
    }
    return !*p && !*u;
}

bool keel__route_match(const char *method, const char *path, keel__match *m)
{
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool post = !strcmp(method, "POST");
    bool takes_get = false, takes_post = false;
    keel__match tmp;
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < keel__nroutes; i++) {
        const keel__route *r = &keel__routes[i];
        if (!path_match(r->pattern, path, &tmp))
            continue;
        bool is_get = !strcmp(r->method, "GET");
        if (is_get ? get : post) {
            *m = tmp;
            m->route = r;
            return true;
        }
        takes_get |= is_get;
        takes_post |= !is_get;
    }
    if (takes_get || takes_post)
        strcpy(m->allow, takes_get && takes_post ? "GET, HEAD, POST"
                         : takes_get             ? "GET, HEAD"
                                                 : "POST");
    return false;
}
