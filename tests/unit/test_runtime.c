/* test_runtime.c - the runtime without HTTP: the event bus, the jobs
 * thread, and a runtime opened on a temp state dir (a rules-only package
 * installed, activated, rolled back through it; events on the bus; an
 * asynchronous durable enqueue; the shadow; status). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "core/bus.h"
#include "core/json.h"
#include "runtime/jobs.h"
#include "http/server.h"
#include "runtime/runtime.h"

static const struct {
    const char *text;
    int rc;
    const char *msg;
} config_cases[] = {
    {"port = 9000\nthreads=4\n# comment\n\nlog_level = debug", 0, NULL},
    {"state_dir = \"/tmp/a b\"  \nmax_package = 2G\nrequest_timeout = 2m", 0, NULL},
    {"verify_interval = 0 # off", 0, NULL},
    {"x-local = whatever", 0, NULL},
    {"prot = 9000", KEEL_EINVALID, "unknown setting \"prot\""},
    {"port = 70000", KEEL_EINVALID, "cfg:1: port"},
    {"port 9000", KEEL_EINVALID, "expected \"key = value\""},
    {"threads = 0", KEEL_EINVALID, "threads"},
    {"max_body = 12Q", KEEL_EINVALID, "max_body"},
    {"syslog = maybe", KEEL_EINVALID, "true or false"},
    {"log_level = loud", KEEL_EINVALID, "one of error"},
    {"state_dir = \"unterminated", KEEL_EINVALID, "unterminated"},
    {"\n\nport = -1", KEEL_EINVALID, "cfg:3"},
};

/* keeld's settings: the runtime's modules and the HTTP server. */
static keel__conf *daemon_conf(void)
{
    const keel__option_set *sets[16];
    size_t n;
    const keel__option_set *const *rs = keel__runtime_option_sets(&n);
    memcpy(sets, rs, n * sizeof(*sets));
    sets[n++] = &keel__http_options;
    keel__conf *c = NULL;
    keel_error e = {0};
    if (keel__conf_new(sets, n, &c, &e))
        fail_msg("conf: %s", e.msg);
    return c;
}

static void test_config_table(void **state)
{
    for (size_t i = 0; i < KEEL_ARRAY_LEN(config_cases); i++) {
        keel__conf *c = daemon_conf();
        keel_error e = {0};
        int rc = keel__conf_parse(c, config_cases[i].text, strlen(config_cases[i].text), "cfg", &e);
        th_expect_err(rc, &e, config_cases[i].rc, config_cases[i].msg);
        keel__conf_free(c);
    }
    keel__conf *c = daemon_conf();
    keel_error e;
    const char *t = "port = 9000\nstate_dir = \"/tmp/a b\"\nmax_package = 2G\n"
                    "request_timeout = 2m\nverify_interval = 3d\nlog_level = debug";
    assert_int_equal(keel__conf_parse(c, t, strlen(t), "cfg", &e), 0);
    assert_int_equal(keel__conf_u64(c, "port"), 9000);
    assert_string_equal(keel__conf_str(c, "state_dir"), "/tmp/a b");
    assert_int_equal(keel__conf_u64(c, "max_package"), 2ull << 30);
    assert_int_equal(keel__conf_u64(c, "request_timeout"), 120);
    assert_int_equal(keel__conf_u64(c, "verify_interval"), 3 * 86400);
    assert_int_equal(keel__conf_u64(c, "log_level"), KEEL_LOG_DEBUG);
    /* defaults, as packaging/keeld.conf documents them */
    keel__conf *d = daemon_conf();
    assert_int_equal(keel__conf_u64(d, "max_body"), 1u << 20);
    assert_int_equal(keel__conf_u64(d, "queue_max_bytes"), 256u << 20);
    assert_string_equal(keel__conf_str(d, "uplink"), "none");
    assert_false(keel__conf_bool(d, "read_auth"));
    /* what changed, and what a reload keeps: port needs a restart */
    const keel__option *ch[8];
    assert_int_equal(keel__conf_changes(d, c, ch, 8), 6);
    keel__conf_keep_fixed(c, d);
    assert_int_equal(keel__conf_u64(c, "port"), 8480);                    /* kept */
    assert_string_equal(keel__conf_str(c, "state_dir"), "/var/lib/keel"); /* kept */
    assert_int_equal(keel__conf_u64(c, "max_package"), 2ull << 30);       /* reloadable */
    assert_int_equal(keel__conf_changes(d, c, ch, 8), 3);
    char *json = keel__conf_json(c);
    cJSON *j = cJSON_Parse(json);
    assert_non_null(j);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "http"), "port")->valueint, 8480);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "runtime"), "log_level")->valuestring, "debug");
    cJSON_Delete(j);
    free(json);
    /* a table that declares a name twice, or a default that does not parse */
    static const keel__option twice[] = {{"port", KEEL__OPT_UINT, "1", 0, 9, false, "a digit"}};
    static const keel__option_set twice_set = {"twice", twice, 1};
    static const keel__option bad[] = {{"zz", KEEL__OPT_UINT, "10", 0, 9, false, "a digit"}};
    static const keel__option_set bad_set = {"bad", bad, 1};
    const keel__option_set *s2[] = {&keel__http_options, &twice_set};
    keel__conf *x = NULL;
    th_expect_err(keel__conf_new(s2, 2, &x, &e), &e, KEEL_EINVALID, "declared twice");
    const keel__option_set *s3[] = {&bad_set};
    th_expect_err(keel__conf_new(s3, 1, &x, &e), &e, KEEL_EINVALID, "default of zz");
    keel__conf_free(c);
    keel__conf_free(d);
    /* the shipped example config parses, and documents every setting */
    keel__conf *pk = daemon_conf();
    const char *path = KEEL_TEST_DATA "/../../packaging/keeld.conf";
    if (keel__conf_load(pk, path, &e))
        fail_msg("%s", e.msg);
    char *text = NULL;
    size_t len;
    assert_int_equal(keel__fs_read(path, 1 << 20, &text, &len, &e), 0);
    json = keel__conf_json(pk);
    j = cJSON_Parse(json);
    cJSON *mod, *opt;
    cJSON_ArrayForEach(mod, j)
    {
        cJSON_ArrayForEach(opt, mod)
        {
            char line[96], commented[96];
            snprintf(line, sizeof(line), "\n%s =", opt->string);
            snprintf(commented, sizeof(commented), "\n#%s =", opt->string);
            if (!strstr(text, line) && !strstr(text, commented))
                fail_msg("packaging/keeld.conf does not document %s (%s)", opt->string,
                         mod->string);
        }
    }
    cJSON_Delete(j);
    free(json);
    free(text);
    keel__conf_free(pk);
}

/* --- the bus ------------------------------------------------------------------------------ */

typedef struct seen {
    atomic_uint n;
    unsigned types; /* or of the types seen */
    char last_pkg[64];
    uint64_t last_seq;
} seen;

static void count(void *ctx, const keel__bus_event *ev)
{
    seen *s = ctx;
    atomic_fetch_add(&s->n, 1);
    s->types |= ev->type;
    s->last_seq = ev->seq;
    if (ev->package)
        snprintf(s->last_pkg, sizeof(s->last_pkg), "%s", ev->package);
}

static void *publisher(void *arg)
{
    keel__bus *b = arg;
    for (int i = 0; i < 1000; i++) {
        keel__bus_event ev = {.type = KEEL__BUS_INFER, .package = "p"};
        keel__bus_publish(b, &ev);
    }
    return NULL;
}

static void test_bus(void **state)
{
    keel__bus *b = keel__bus_new();
    seen all = {0}, pkg = {0};
    assert_non_null(b);
    int a = keel__bus_subscribe(b, KEEL__BUS_ALL, count, &all);
    int p = keel__bus_subscribe(b, KEEL__BUS_INSTALL | KEEL__BUS_ACTIVATE, count, &pkg);
    assert_true(a > 0 && p > 0 && a != p);
    assert_int_equal(keel__bus_subscribers(b), 2);
    keel__bus_event ev = {.type = KEEL__BUS_ACTIVATE, .package = "iris"};
    keel__bus_publish(b, &ev);
    assert_int_equal(ev.seq, 1);
    assert_true(ev.at > 0);
    ev = (keel__bus_event){.type = KEEL__BUS_TIER, .package = "vad"};
    keel__bus_publish(b, &ev);
    assert_int_equal(atomic_load(&all.n), 2);
    assert_int_equal(atomic_load(&pkg.n), 1); /* the mask keeps TIER out */
    assert_string_equal(pkg.last_pkg, "iris");
    assert_int_equal(all.types, KEEL__BUS_ACTIVATE | KEEL__BUS_TIER);
    /* four publishers at once: every event delivered exactly once */
    keel__bus_unsubscribe(b, p);
    assert_int_equal(keel__bus_subscribers(b), 1);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, publisher, b), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&all.n), 4002);
    assert_int_equal(keel__bus_published(b), 4002);
    assert_int_equal(atomic_load(&pkg.n), 1); /* unsubscribed: nothing more */
    assert_string_equal(keel__bus_type_name(KEEL__BUS_LINK_DOWN), "link_down");
    assert_string_equal(keel__bus_type_name(3), "unknown");
    keel__bus_free(b);
}

/* --- jobs ----------------------------------------------------------------------------------- */

typedef struct tick {
    atomic_uint runs;
    unsigned sleep_ms;
} tick;

static void on_tick(void *ctx)
{
    tick *t = ctx;
    if (t->sleep_ms)
        usleep(t->sleep_ms * 1000);
    atomic_fetch_add(&t->runs, 1);
}

static void wait_runs(tick *t, unsigned want)
{
    for (int i = 0; i < 300 && atomic_load(&t->runs) < want; i++)
        usleep(10000);
    assert_true(atomic_load(&t->runs) >= want);
}

static void test_jobs(void **state)
{
    keel__jobs *j = keel__jobs_start();
    tick kicked = {0}, periodic = {0}, slow = {.sleep_ms = 200};
    assert_non_null(j);
    int k = keel__jobs_add(j, "kicked", 0, on_tick, &kicked);
    int p = keel__jobs_add(j, "periodic", 1, on_tick, &periodic);
    int s = keel__jobs_add(j, "slow", 0, on_tick, &slow);
    assert_true(k > 0 && p > 0 && s > 0);
    usleep(100000);
    assert_int_equal(atomic_load(&kicked.runs), 0); /* period 0: only when kicked */
    keel__jobs_kick(j, k);
    wait_runs(&kicked, 1);
    wait_runs(&periodic, 1); /* after one period */
    /* remove waits for a run in progress */
    keel__jobs_kick(j, s);
    usleep(50000);
    keel__jobs_remove(j, s);
    assert_int_equal(atomic_load(&slow.runs), 1);
    keel__jobs_kick(j, s); /* removed: never runs again */
    usleep(100000);
    assert_int_equal(atomic_load(&slow.runs), 1);
    char *st = keel__jobs_status_json(j);
    assert_non_null(strstr(st, "\"periodic\":{\"period_s\":1"));
    assert_null(strstr(st, "\"slow\""));
    free(st);
    keel__jobs_set_period(j, p, 0);
    unsigned n = atomic_load(&periodic.runs);
    usleep(1200000);
    assert_int_equal(atomic_load(&periodic.runs), n); /* period 0 now */
    keel__jobs_stop(j);
}

/* --- the runtime ------------------------------------------------------------------------------ */

#define RULES_PKG(version)                                                                         \
    "{\"format\":1,\"name\":\"flower\",\"version\":\"" version "\",\"task\":\"classification\","   \
    "\"inputs\":[{\"name\":\"x\",\"dtype\":\"float32\",\"shape\":[-1,4]}],"                        \
    "\"outputs\":[{\"name\":\"label\",\"dtype\":\"int64\",\"shape\":[-1]}],"                       \
    "\"tiers\":[{\"name\":\"rules\",\"backend\":\"rules\",\"model\":\"rules.json\"}]}"

static const char rules[] =
    "{\"format\":1,\"input\":\"x\",\"features\":{\"pl\":{\"fn\":\"value\",\"index\":2}},"
    "\"rules\":[{\"if\":[[\"pl\",\"<\",2.45]],\"label\":\"setosa\",\"confidence\":1.0,"
    "\"outputs\":{\"label\":[0]}},{\"label\":\"other\",\"confidence\":0.8,"
    "\"outputs\":{\"label\":[1]}}]}";

typedef struct done {
    atomic_int calls, rc;
    _Atomic uint64_t id;
} done;

static void on_done(void *ctx, int rc, uint64_t id, const keel_error *err)
{
    done *d = ctx;
    atomic_store(&d->rc, rc);
    atomic_store(&d->id, id);
    atomic_fetch_add(&d->calls, 1);
}

static void make_pkg(const char *dir, const char *version, const char *out, keel_key *k)
{
    char man[1024];
    snprintf(man, sizeof(man), RULES_PKG("%s"), version);
    th_write_str(dir, "keel.json", man);
    th_write_str(dir, "rules.json", rules);
    th_pack(dir, out, k);
}

/* The runtime's registry as Prometheus text (malloc'd). */
static char *prom(keel__runtime *rt)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__metrics_prometheus(keel__runtime_metrics_registry(rt), &b), 0);
    return keel__buf_steal(&b);
}

/* How often needle occurs in /metrics, and its value at the last one (-1: absent). */
static int metric_lines(keel__runtime *rt, const char *needle, long long *ret_value)
{
    char *t = prom(rt);
    int n = 0;
    *ret_value = -1;
    for (const char *p = t; (p = strstr(p, needle)); p += strlen(needle), n++)
        *ret_value = strtoll(p + strlen(needle), NULL, 10);
    free(t);
    return n;
}

static void run_flower(keel__runtime *rt)
{
    float x[4] = {5.1f, 3.5f, 1.4f, 0.2f};
    keel__tensor in = {.name = "x",
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 2,
                       .shape = {1, 4},
                       .data = x,
                       .nbytes = sizeof(x)};
    keel__infer_req req = {.inputs = &in, .ninputs = 1};
    keel__infer_resp resp;
    keel_error e = {0};
    keel__model *m = keel__infer_get(keel__runtime_infer(rt), "flower");
    assert_non_null(m);
    if (keel__model_run(m, &req, &resp, &e))
        fail_msg("run: %s", e.msg);
    keel__infer_resp_done(&resp);
    keel__model_unref(m);
}

#define FLOWER_OK "keel_infer_requests_total{model=\"flower\",tier=\"rules\",outcome=\"ok\"} "

static void test_runtime(void **state)
{
    keel_error e = {0};
    keel_key *k = NULL;
    keel__conf *cfg = daemon_conf();
    keel__runtime *rt = NULL;
    const char *sd = th_tmpdir(), *src = th_tmpdir();
    char p1[1024], p2[1024];
    assert_int_equal(keel_key_generate(&k, &e), 0);
    th_trust(th_path(sd, "trust"), k);
    make_pkg(th_path(src, "v1"), "1.0.0", strcpy(p1, th_path(src, "v1.keel")), k);
    make_pkg(th_path(src, "v2"), "2.0.0", strcpy(p2, th_path(src, "v2.keel")), k);

    assert_int_equal(keel__conf_set(cfg, "state_dir", sd, &e), 0);
    assert_int_equal(keel__conf_set(cfg, "device_id", "unit-1", &e), 0);
    if (keel__runtime_open(cfg, &rt, &e))
        fail_msg("open: %s", e.msg);
    assert_int_equal(strlen(keel__runtime_token(rt)), 64);
    assert_true(access(th_path(sd, "token"), R_OK) == 0);
    assert_false(keel__runtime_ready(rt)); /* nothing active */

    seen pk = {0}, ready = {0};
    keel__bus *bus = keel__runtime_bus(rt);
    int s1 = keel__bus_subscribe(bus,
                                 KEEL__BUS_INSTALL | KEEL__BUS_ACTIVATE | KEEL__BUS_ROLLBACK |
                                     KEEL__BUS_MARK_GOOD | KEEL__BUS_SHADOW,
                                 count, &pk);
    int s2 = keel__bus_subscribe(bus, KEEL__BUS_READY, count, &ready);

    keel_install_result ir;
    if (keel__runtime_install(rt, p1, KEEL_INSTALL_ACTIVATE, &ir, &e))
        fail_msg("install: %s", e.msg);
    assert_true(ir.activated);
    assert_int_equal(atomic_load(&pk.n), 2); /* install, activate */
    assert_true(keel__runtime_ready(rt));
    assert_true(atomic_load(&ready.n) >= 1);
    keel__model *m = keel__infer_get(keel__runtime_infer(rt), "flower");
    assert_non_null(m);
    assert_string_equal(keel__model_version(m), "1.0.0");
    keel__model_unref(m);

    /* the registry: the runtime's families first, the served model's series counted */
    char *t = prom(rt);
    assert_true(
        !strncmp(t, "# HELP keel_up keeld is running.\n# TYPE keel_up gauge\nkeel_up 1\n", 62));
    assert_non_null(strstr(t, "\nkeel_ready 1\n"));
    assert_non_null(strstr(t, "\nkeel_queue_depth{class=\"critical\"} 0\n"));
    assert_non_null(strstr(t, "\nkeel_infer_breaker_state{model=\"flower\",tier=\"rules\"} 0\n"));
    assert_non_null(strstr(t, "\nkeel_infer_sessions{model=\"flower\"} 0\n"));
    free(t);
    long long v;
    assert_int_equal(metric_lines(rt, FLOWER_OK, &v), 1);
    assert_int_equal(v, 0);
    run_flower(rt);
    run_flower(rt);
    assert_int_equal(metric_lines(rt, FLOWER_OK, &v), 1);
    assert_int_equal(v, 2);
    assert_int_equal(metric_lines(rt, "_seconds_count{model=\"flower\",tier=\"rules\"} ", &v), 1);
    assert_int_equal(v, 2);
    keel_buf jb;
    keel__buf_init(&jb, 0);
    assert_int_equal(keel__metrics_json(keel__runtime_metrics_registry(rt), &jb), 0);
    cJSON *mj = cJSON_Parse(jb.data);
    assert_non_null(mj);
    assert_int_equal(cJSON_GetObjectItem(mj, "format")->valueint, 1);
    cJSON_Delete(mj);
    keel__buf_done(&jb);

    if (keel__runtime_install(rt, p2, 0, &ir, &e))
        fail_msg("install v2: %s", e.msg);
    keel_serving sv;
    assert_int_equal(keel__runtime_slot_action(rt, KEEL__BUS_ACTIVATE, "flower", "2.0.0", &sv, &e),
                     0);
    assert_string_equal(sv.version, "2.0.0");
    m = keel__infer_get(keel__runtime_infer(rt), "flower");
    assert_string_equal(keel__model_version(m), "2.0.0"); /* the engine followed */
    keel__model_unref(m);
    /* the swapped-out version's series went with it: one series, from 0 */
    assert_int_equal(metric_lines(rt, FLOWER_OK, &v), 1);
    assert_int_equal(v, 0);
    run_flower(rt);
    assert_int_equal(metric_lines(rt, FLOWER_OK, &v), 1);
    assert_int_equal(v, 1);
    assert_int_equal(keel__runtime_slot_action(rt, KEEL__BUS_ROLLBACK, "flower", NULL, &sv, &e), 0);
    assert_string_equal(sv.version, "1.0.0");
    assert_int_equal(pk.types & KEEL__BUS_ROLLBACK, KEEL__BUS_ROLLBACK);
    th_expect_err(keel__runtime_slot_action(rt, KEEL__BUS_ACTIVATE, "nope", NULL, &sv, &e), &e,
                  KEEL_ENOTFOUND, "nope");

    /* an asynchronous durable enqueue: done once, with an id */
    done d = {0};
    keel_msg_in msg = {
        .topic = "alerts/door", .prio = KEEL_PRIO_CRITICAL, .payload = "{}", .payload_len = 2};
    assert_int_equal(keel__runtime_submit(rt, &msg, on_done, &d, &e), 0);
    for (int i = 0; i < 300 && !atomic_load(&d.calls); i++)
        usleep(10000);
    assert_int_equal(atomic_load(&d.calls), 1);
    assert_int_equal(atomic_load(&d.rc), 0);
    assert_true(atomic_load(&d.id) > 0);
    msg.topic = "bad+topic";
    th_expect_err(keel__runtime_submit(rt, &msg, on_done, &d, &e), &e, KEEL_EINVALID, "wildcard");
    char *qj = NULL;
    assert_int_equal(keel__runtime_queue_json(rt, &qj, &e), 0);
    assert_non_null(strstr(qj, "\"critical\":{\"depth\":1"));
    free(qj);

    /* the shadow: a local change is applied, published and reported */
    const char *set = "{\"set\":{\"log_level\":\"debug\"}}";
    assert_int_equal(keel__runtime_shadow_set(rt, set, strlen(set), &e), 0);
    assert_int_equal(keel_log_get_level(), KEEL_LOG_DEBUG);
    keel_log_set_level(KEEL_LOG_WARN);
    assert_int_equal(pk.types & KEEL__BUS_SHADOW, KEEL__BUS_SHADOW);
    th_expect_err(keel__runtime_shadow_set(rt, "{\"x\":1}", 7, &e), &e, KEEL_EINVALID, "set");

    /* status names the parts */
    char *st = keel__runtime_status_json(rt, &e);
    assert_non_null(st);
    cJSON *j = cJSON_Parse(st);
    assert_non_null(j);
    assert_non_null(cJSON_GetObjectItem(j, "jobs"));
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "jobs"), "expire"));
    assert_true(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "bus"), "published")->valuedouble > 5);
    cJSON_Delete(j);
    free(st);

    keel__bus_unsubscribe(bus, s1);
    keel__bus_unsubscribe(bus, s2);
    keel__runtime_close(rt);

    /* reopened: what was active and what was queued are still there */
    assert_int_equal(keel__runtime_open(cfg, &rt, &e), 0);
    assert_string_equal(keel__runtime_device_id(rt), "unit-1");
    /* a reload applies what may change at run time and keeps the rest */
    keel__conf *next = keel__conf_copy(cfg);
    assert_int_equal(keel__conf_set(next, "max_body", "2M", &e), 0);
    assert_int_equal(keel__conf_set(next, "queue_max_rows", "5", &e), 0);
    keel__runtime_reload(rt, next);
    assert_int_equal(keel__runtime_setting_u64(rt, "max_body"), 2u << 20);
    assert_int_equal(keel__runtime_setting_u64(rt, "queue_max_rows"), 1000000);
    keel__conf_free(next);
    assert_true(keel__runtime_ready(rt));
    assert_int_equal(keel__runtime_queue_json(rt, &qj, &e), 0);
    assert_non_null(strstr(qj, "\"critical\":{\"depth\":1"));
    free(qj);
    keel__runtime_close(rt);
    keel__conf_free(cfg);
    keel_key_free(k);
    th_cleanup();
}

int main(void)
{
    keel_log_set_level(KEEL_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_table),
        cmocka_unit_test(test_bus),
        cmocka_unit_test(test_jobs),
        cmocka_unit_test(test_runtime),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
