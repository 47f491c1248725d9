/* test_routes.c - the route table and its matcher: every route answers
 * its own method and pattern, parameters come out bounded, wrong methods
 * say what is allowed, and the table itself is consistent. */
#include <stdio.h>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <string.h>

#include "helpers.h"
#include "http/http.h"

static void test_match(void **state)
{
    static const struct {
        const char *method, *path, *route; /* route NULL: no match */
        const char *p1, *v1, *p2, *v2, *allow;
    } cases[] = {
        {"GET", "/healthz", "health"},
        {"HEAD", "/healthz", "health"},
        {"DELETE", "/healthz", NULL, .allow = "GET, HEAD"},
        {"GET", "/api/packages", "packages.list"},
        {"POST", "/api/packages", "packages.install"},
        {"PUT", "/api/packages", NULL, .allow = "GET, HEAD, POST"},
        {"POST", "/api/packages/iris/activate", "packages.activate", "name", "iris"},
        {"POST", "/api/packages/iris/mark-good", "packages.mark_good", "name", "iris"},
        {"GET", "/api/packages/iris/rollback", NULL, .allow = "POST"},
        {"POST", "/api/packages/iris/explode", NULL, .allow = ""},
        {"POST", "/api/packages//activate", NULL, .allow = ""},
        {"GET", "/v2/models/mnist", "v2.model", "name", "mnist"},
        {"GET", "/v2/models/mnist/versions/1.2.0", "v2.model", "name", "mnist", "version", "1.2.0"},
        {"GET", "/v2/models/mnist/versions/1.2.0/ready", "v2.model_ready", "name", "mnist",
         "version", "1.2.0"},
        {"POST", "/v2/models/mnist/infer", "v2.infer", "name", "mnist"},
        {"POST", "/v2/models/mnist/versions/2/infer", "v2.infer", "name", "mnist", "version", "2"},
        {"GET", "/v2/models/mnist/infer", NULL, .allow = "POST"},
        {"POST", "/v2/models/mnist", NULL, .allow = "GET, HEAD"},
        {"POST", "/v2/models/mnist/infer/", NULL, .allow = ""},
        {"GET", "/v2/models/", NULL, .allow = ""},
        {"GET", "/v2/models/a\nb", NULL, .allow = ""}, /* not printable ASCII */
        {"POST", "/api/packages/x\xff/rollback", NULL, .allow = ""},
        {"GET", "/v2/models/a b/ready", NULL, .allow = ""},
        {"GET", "/v2/models/a~b!/ready", "v2.model_ready", "name", "a~b!"},
        {"POST", "/api/events", "events.post"},
        {"GET", "/api/events", NULL, .allow = "POST"},
        {"GET", "/api/bus", "bus.stream"},
        {"GET", "/api/metrics", "metrics.json"},
        {"POST", "/api/metrics", NULL, .allow = "GET, HEAD"},
        {"GET", "/metrics", "metrics"},
        {"GET", "/api/shadow", "shadow.get"},
        {"POST", "/api/shadow", "shadow.set"},
        {"POST", "/api/import", "import.post"},
        {"GET", "/api/import", NULL, .allow = "POST"},
        {"GET", "/api/import/7", "import.get", "id", "7"},
        {"GET", "/api/chunks/sha256/ab12", "chunks.get", "hex", "ab12"},
        {"POST", "/api/chunks/sha256/ab12", NULL, .allow = "GET, HEAD"},
        {"GET", "/nope", NULL, .allow = ""},
        {"GET", "", NULL, .allow = ""},
        {"GET", "/healthz/", NULL, .allow = ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        keel__match m;
        bool ok = keel__route_match(cases[i].method, cases[i].path, &m);
        if (ok != (cases[i].route != NULL))
            fail_msg("%s %s: matched %d", cases[i].method, cases[i].path, ok);
        if (!ok) {
            if (strcmp(m.allow, cases[i].allow))
                fail_msg("%s %s: allow \"%s\", want \"%s\"", cases[i].method, cases[i].path,
                         m.allow, cases[i].allow);
            continue;
        }
        assert_string_equal(m.route->name, cases[i].route);
        if (cases[i].p1) {
            assert_string_equal(m.names[0], cases[i].p1);
            assert_string_equal(m.params[0], cases[i].v1);
        }
        if (cases[i].p2) {
            assert_int_equal(m.nparams, 2);
            assert_string_equal(m.names[1], cases[i].p2);
            assert_string_equal(m.params[1], cases[i].v2);
        } else {
            assert_int_equal(m.nparams, cases[i].p1 ? 1 : 0);
        }
    }
}

static void test_bounds(void **state)
{
    char path[1024];
    keel__match m;
    char name[KEEL_NAME_MAX + 1];
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    /* a name one byte over KEEL_NAME_MAX - 1: no route */
    snprintf(path, sizeof(path), "/v2/models/%s/infer", name);
    assert_false(keel__route_match("POST", path, &m));
    name[KEEL_NAME_MAX - 1] = '\0'; /* exactly the longest allowed */
    snprintf(path, sizeof(path), "/v2/models/%s/infer", name);
    assert_true(keel__route_match("POST", path, &m));
    assert_int_equal(strlen(m.params[0]), KEEL_NAME_MAX - 1);
}

/* The table: every pattern starts with '/', braces close, no two routes
 * share method and pattern, every mutating route needs a token, and every
 * route has a handler and a name. */
static void test_table(void **state)
{
    for (size_t i = 0; i < keel__nroutes; i++) {
        const keel__route *r = &keel__routes[i];
        assert_non_null(r->fn);
        assert_non_null(r->name);
        assert_int_equal(r->pattern[0], '/');
        int depth = 0;
        for (const char *p = r->pattern; *p; p++) {
            depth += *p == '{';
            depth -= *p == '}';
            assert_true(depth == 0 || depth == 1);
        }
        assert_int_equal(depth, 0);
        assert_true(!strcmp(r->method, "GET") || !strcmp(r->method, "POST"));
        if (!strcmp(r->method, "POST") && strncmp(r->pattern, "/v2/", 4))
            assert_true(r->auth >= KEEL__AUTH_OPERATOR);
        if (!strcmp(r->method, "GET"))
            assert_int_equal(r->body, KEEL__BODY_NONE);
        for (size_t j = i + 1; j < keel__nroutes; j++)
            assert_false(!strcmp(r->method, keel__routes[j].method) &&
                         !strcmp(r->pattern, keel__routes[j].pattern));
    }
    /* the metrics registry as JSON is guarded as the status is (read_auth);
     * the Prometheus text stays open for scrapers */
    keel__match m;
    assert_true(keel__route_match("GET", "/api/metrics", &m));
    assert_int_equal(m.route->auth, KEEL__AUTH_READ);
    assert_true(keel__route_match("GET", "/metrics", &m));
    assert_int_equal(m.route->auth, KEEL__AUTH_OPEN);
    assert_string_equal(keel__auth_name(KEEL__AUTH_OPERATOR), "operator");
    assert_int_equal(keel__http_status_of(KEEL_EDOWNGRADE), 422);
    assert_int_equal(keel__http_status_of(KEEL_ENOSPACE), 507);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_table),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
