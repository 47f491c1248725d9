/* test_uplink.c - the uplink against a real mosquitto broker started here
 * on a free loopback port, and against a small HTTP server in a thread:
 * offline accumulation then drain in priority order, a broker killed while
 * a publish waits for its PUBACK (no loss), the bandwidth cap, sync windows
 * (critical goes at once, the rest waits), HTTP with a 500 then success,
 * breaker open/half-open/close, heartbeats, and drain throughput. The
 * source is an in-memory array with acked flags. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "sync/envelope.h"
#include "sync/topic.h"
#include "sync/uplink.h"

#define MAXMSG 25000

static uint64_t now_ns(void)
{
    return keel__now_mono_ns();
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* --- the in-memory source ----------------------------------------------------------------- */

typedef struct tmsg {
    uint64_t id;
    int prio;
    int64_t created;
    char topic[32];
    unsigned char *payload;
    size_t len;
    bool acked;
} tmsg;

static struct {
    pthread_mutex_t mu;
    tmsg *m;
    size_t n, nacked;
    keel__sync_msg out[2048];
    unsigned calls;
    void (*hook)(unsigned call); /* in next_batch, on the uplink's thread */
    int64_t synced;
} src = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int src_next(void *ctx, size_t max, size_t max_bytes, keel__sync_msg **ret, size_t *n,
                    keel_error *err)
{
    unsigned call = ++src.calls;
    if (src.hook)
        src.hook(call);
    pthread_mutex_lock(&src.mu);
    int best = KEEL__NPRIO;
    size_t first = 0;
    for (size_t i = 0; i < src.n; i++)
        if (!src.m[i].acked && src.m[i].prio < best) {
            best = src.m[i].prio;
            first = i;
        }
    size_t k = 0, bytes = 0;
    if (max > KEEL_ARRAY_LEN(src.out))
        max = KEEL_ARRAY_LEN(src.out);
    for (size_t i = first; best < KEEL__NPRIO && i < src.n && k < max; i++) {
        tmsg *t = &src.m[i];
        if (t->acked || t->prio != best || strcmp(t->topic, src.m[first].topic))
            continue;
        if (k && bytes + t->len > max_bytes)
            break;
        src.out[k++] = (keel__sync_msg){
            t->id, t->prio, t->created, t->topic, "application/json", t->payload, t->len};
        bytes += t->len;
    }
    pthread_mutex_unlock(&src.mu);
    *ret = src.out;
    *n = k;
    return KEEL_OK;
}

static void src_release(void *ctx)
{
}

static int src_ack(void *ctx, const uint64_t *ids, size_t n, keel_error *err)
{
    pthread_mutex_lock(&src.mu);
    for (size_t i = 0; i < n; i++) {
        assert_true(ids[i] >= 1 && ids[i] <= src.n);
        tmsg *t = &src.m[ids[i] - 1];
        if (!t->acked)
            src.nacked++;
        t->acked = true;
    }
    pthread_mutex_unlock(&src.mu);
    return KEEL_OK;
}

static void src_synced(void *ctx, int64_t when)
{
    src.synced = when;
}

static const keel__sync_source source = {NULL, src_next, src_release, src_ack, src_synced};

static uint64_t src_add(int prio, const char *topic, const void *payload, size_t len)
{
    pthread_mutex_lock(&src.mu);
    assert_true(src.n < MAXMSG);
    tmsg *t = &src.m[src.n];
    t->id = src.n + 1;
    t->prio = prio;
    t->created = 1700000000 + (int64_t)src.n;
    snprintf(t->topic, sizeof(t->topic), "%s", topic);
    t->payload = malloc(len ? len : 1);
    memcpy(t->payload, payload, len);
    t->len = len;
    src.n++;
    pthread_mutex_unlock(&src.mu);
    return t->id;
}

static size_t src_acked(void)
{
    pthread_mutex_lock(&src.mu);
    size_t n = src.nacked;
    pthread_mutex_unlock(&src.mu);
    return n;
}

static size_t record(char *out, size_t n, unsigned i)
{
    return (size_t)snprintf(out, n,
                            "{\"model\":\"mnist\",\"version\":\"1.2.%u\",\"tier\":\"ort-cpu\","
                            "\"request_id\":\"req-%08x\",\"latency_ms\":%u.%03u,\"outputs\":{"
                            "\"label\":%u,\"scores\":[0.%04u,0.%04u]},\"confidence\":0.%04u}",
                            i % 7, i * 2654435761u, 3 + i % 9, (i * 37) % 1000, i % 10,
                            (i * 13) % 10000, (i * 17) % 10000, 9000 + i % 1000);
}

/* --- the broker ------------------------------------------------------------------------------ */

static struct {
    pid_t pid;
    int port;
    const char *dir;
    char bin[256];
    int tls_port; /* 0: none; else a second listener configured by tls_conf */
    char tls_conf[1024];
} broker;

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &l), 0);
    close(s);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(s);
    return ok;
}

static bool find_broker(void)
{
    const char *env = getenv("KEEL_MOSQUITTO"); /* a broker elsewhere, or none: /nonexistent */
    if (env && env[0]) {
        snprintf(broker.bin, sizeof(broker.bin), "%s", env);
        return access(env, X_OK) == 0;
    }
    const char *cands[] = {"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto",
                           "/usr/local/bin/mosquitto"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cands); i++)
        if (access(cands[i], X_OK) == 0) {
            snprintf(broker.bin, sizeof(broker.bin), "%s", cands[i]);
            return true;
        }
    return false;
}

static void broker_start(void)
{
    char conf[600], log[600], text[2048];
    snprintf(conf, sizeof(conf), "%s/mosquitto.conf", broker.dir);
    snprintf(log, sizeof(log), "%s/mosquitto.log", broker.dir);
    snprintf(text, sizeof(text),
             "per_listener_settings true\npersistence false\nlog_dest stderr\n"
             "listener %d 127.0.0.1\nallow_anonymous true\n%s",
             broker.port, broker.tls_port ? broker.tls_conf : "");
    th_write_str(broker.dir, "mosquitto.conf", text);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(broker.bin, "mosquitto", "-c", conf, (char *)NULL);
        _exit(127);
    }
    broker.pid = pid;
    for (int i = 0; i < 500 && !port_open(broker.port); i++)
        sleep_ms(10);
    assert_true(port_open(broker.port));
    for (int i = 0; broker.tls_port && i < 500 && !port_open(broker.tls_port); i++)
        sleep_ms(10);
    assert_true(!broker.tls_port || port_open(broker.tls_port));
}

static void broker_kill(int sig)
{
    if (broker.pid <= 0)
        return;
    kill(broker.pid, sig);
    if (sig == SIGKILL || sig == SIGTERM) {
        waitpid(broker.pid, NULL, 0);
        broker.pid = 0;
    }
}

/* --- a subscriber that decodes envelopes ------------------------------------------------------ */

static struct {
    pthread_mutex_t mu;
    struct mosquitto *m;
    pthread_t thread;
    atomic_bool stop;
    atomic_bool subscribed;
    char dev[64];
    unsigned count[MAXMSG + 1];
    uint64_t first_ns[MAXMSG + 1];
    uint64_t order[MAXMSG];
    size_t norder, nenv;
    uint64_t env_bytes;
    uint64_t env_ns[4096], env_len[4096]; /* arrival time and size of each envelope */
    uint64_t env_seq[4096];               /* and its batch number */
    char bad[512];                        /* the first inconsistency seen */
} sub = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Checks one envelope as a receiver would and records its messages. */
static void receive(const char *topic, const void *data, size_t len)
{
    keel__envelope *env = NULL;
    keel_error e;
    char want[256];
    pthread_mutex_lock(&sub.mu);
    if (keel__envelope_decode(data, len, NULL, &env, &e)) {
        snprintf(sub.bad, sizeof(sub.bad), "undecodable envelope: %.400s", e.msg);
        goto out;
    }
    if (sub.nenv < KEEL_ARRAY_LEN(sub.env_ns)) {
        sub.env_ns[sub.nenv] = now_ns();
        sub.env_len[sub.nenv] = len;
        sub.env_seq[sub.nenv] = env->seq;
    }
    sub.nenv++;
    sub.env_bytes += len;
    for (size_t i = 0; i < env->n; i++) {
        const keel__sync_msg *m = &env->msgs[i];
        snprintf(want, sizeof(want), "keel/%s/%s/%s", sub.dev, keel__prio_name(m->priority),
                 m->topic);
        if (topic && strcmp(topic, want) && !sub.bad[0])
            snprintf(sub.bad, sizeof(sub.bad), "message %" PRIu64 " on %.200s, expected %.200s",
                     m->id, topic, want);
        if (strcmp(env->device, sub.dev) && !sub.bad[0])
            snprintf(sub.bad, sizeof(sub.bad), "device %s", env->device);
        if (m->id < 1 || m->id > MAXMSG) {
            snprintf(sub.bad, sizeof(sub.bad), "id %" PRIu64 " out of range", m->id);
            continue;
        }
        if (sub.count[m->id]++ == 0) {
            sub.first_ns[m->id] = now_ns();
            sub.order[sub.norder++] = m->id;
        }
    }
out:
    pthread_mutex_unlock(&sub.mu);
    keel__envelope_free(env);
}

static void on_message(struct mosquitto *m, void *ctx, const struct mosquitto_message *msg)
{
    receive(msg->topic, msg->payload, (size_t)msg->payloadlen);
}

static void on_subscribe(struct mosquitto *m, void *ctx, int mid, int n, const int *q)
{
    atomic_store(&sub.subscribed, true);
}

static void *sub_run(void *arg)
{
    while (!atomic_load(&sub.stop))
        if (mosquitto_loop(sub.m, 50, 1) != MOSQ_ERR_SUCCESS)
            sleep_ms(20);
    return arg;
}

static void sub_reset(const char *dev)
{
    pthread_mutex_lock(&sub.mu);
    memset(sub.count, 0, sizeof(sub.count));
    sub.norder = sub.nenv = 0;
    sub.env_bytes = 0;
    sub.bad[0] = '\0';
    snprintf(sub.dev, sizeof(sub.dev), "%s", dev);
    pthread_mutex_unlock(&sub.mu);
}

static void sub_start(void)
{
    char filter[128];
    atomic_store(&sub.stop, false);
    atomic_store(&sub.subscribed, false);
    sub.m = mosquitto_new(NULL, true, NULL);
    assert_non_null(sub.m);
    mosquitto_message_callback_set(sub.m, on_message);
    mosquitto_subscribe_callback_set(sub.m, on_subscribe);
    assert_int_equal(mosquitto_connect(sub.m, "127.0.0.1", broker.port, 30), MOSQ_ERR_SUCCESS);
    snprintf(filter, sizeof(filter), "keel/%s/#", sub.dev);
    assert_int_equal(mosquitto_subscribe(sub.m, NULL, filter, 1), MOSQ_ERR_SUCCESS);
    assert_int_equal(pthread_create(&sub.thread, NULL, sub_run, NULL), 0);
    for (int i = 0; i < 500 && !atomic_load(&sub.subscribed); i++)
        sleep_ms(10);
    assert_true(atomic_load(&sub.subscribed));
}

static void sub_stop(void)
{
    if (!sub.m)
        return;
    atomic_store(&sub.stop, true);
    pthread_join(sub.thread, NULL);
    (void)mosquitto_disconnect(sub.m);
    mosquitto_destroy(sub.m);
    sub.m = NULL;
}

static size_t sub_distinct(void)
{
    pthread_mutex_lock(&sub.mu);
    size_t n = sub.norder;
    pthread_mutex_unlock(&sub.mu);
    return n;
}

static void expect_clean(void)
{
    pthread_mutex_lock(&sub.mu);
    if (sub.bad[0])
        fail_msg("subscriber: %s", sub.bad);
    pthread_mutex_unlock(&sub.mu);
}

/* Waits until cond() or ms pass; returns cond(). */
static bool wait_for(bool (*cond)(void), unsigned ms)
{
    uint64_t end = now_ns() + (uint64_t)ms * 1000000u;
    while (!cond() && now_ns() < end)
        sleep_ms(5);
    return cond();
}

static bool all_acked(void)
{
    return src_acked() == src.n;
}

static bool all_received(void)
{
    return sub_distinct() == src.n;
}

/* --- status helpers ------------------------------------------------------------------------- */

static keel__uplink *cur;   /* the uplink under test */
static keel__metrics *mreg; /* where it registers its metrics (setup, teardown) */

static bool status_has(const char *needle)
{
    char *s = keel__uplink_status_json(cur);
    bool r = s && strstr(s, needle);
    free(s);
    return r;
}

static bool breaker_open(void)
{
    return status_has("\"breaker\":\"open\"");
}

static uint64_t metric(const char *name)
{
    keel_buf b;
    uint64_t v = 0;
    char key[128];
    keel__buf_init(&b, 0);
    assert_int_equal(keel__metrics_prometheus(mreg, &b), 0);
    snprintf(key, sizeof(key), "\n%s ", name);
    const char *p = strstr(b.data, key);
    if (p)
        v = strtoull(p + strlen(key), NULL, 10);
    keel__buf_done(&b);
    return v;
}

static void mqtt_opts(keel__uplink_opts *o, const char *dev)
{
    keel__uplink_opts_default(o);
    o->metrics = mreg;
    o->device_id = dev;
    o->host = "127.0.0.1";
    o->port = broker.port;
    o->backoff_base_ms = 50;
    o->backoff_cap_ms = 200;
    o->ack_timeout_ms = 5000;
    o->connect_timeout_ms = 2000;
    o->poll_ms = 100;
}

/* --- fixtures ----------------------------------------------------------------------------------
 */

static bool have_broker;

static int setup(void **state)
{
    have_broker = find_broker();
    broker.dir = th_tmpdir();
    broker.port = free_port();
    broker.pid = 0;
    broker.tls_port = 0;
    src.m = calloc(MAXMSG, sizeof(tmsg));
    src.n = src.nacked = 0;
    src.calls = 0;
    src.hook = NULL;
    cur = NULL;
    keel_error e;
    assert_int_equal(keel__metrics_new(&mreg, &e), 0);
    return 0;
}

static int teardown(void **state)
{
    keel__uplink_stop(cur);
    cur = NULL;
    keel__metrics_free(mreg); /* after the uplink: it registered there */
    mreg = NULL;
    sub_stop();
    broker_kill(SIGKILL);
    for (size_t i = 0; i < src.n; i++)
        free(src.m[i].payload);
    free(src.m);
    src.m = NULL;
    src.hook = NULL;
    th_cleanup();
    return 0;
}

/* --- (a) offline accumulation ----------------------------------------------------------------- */

static void test_offline_then_drain_in_priority_order(void **state)
{
    if (!have_broker)
        th_skip("no mosquitto broker (apt install mosquitto)");
    keel__uplink_opts o;
    keel_error e;
    char p[256];
    mqtt_opts(&o, "dev-a");
    o.breaker_failures = 3;
    o.breaker_cooldown_ms = 1500;
    o.batch_start = 4;
    sub_reset("dev-a");
    /* queued with no broker: bulk first, critical last, several topics */
    static const int order[] = {KEEL__PRIO_BULK, KEEL__PRIO_NORMAL, KEEL__PRIO_HIGH,
                                KEEL__PRIO_CRITICAL};
    for (unsigned r = 0; r < 40; r++)
        for (size_t c = 0; c < 4; c++) {
            size_t len = record(p, sizeof(p), r);
            src_add(order[c], r % 3 ? "inference" : "events/tier", p, len);
        }
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    /* it fails, backs off, and opens its breaker */
    assert_true(wait_for(breaker_open, 5000));
    assert_int_equal(src_acked(), 0);
    assert_true(metric("keel_uplink_failures_total") >= 3);
    assert_int_equal(metric("keel_uplink_connected"), 0);

    broker_start();
    sub_start();
    assert_true(wait_for(all_acked, 10000));
    assert_true(wait_for(all_received, 5000));
    expect_clean();
    /* every message once, and no class before a higher one */
    pthread_mutex_lock(&sub.mu);
    for (size_t i = 1; i <= src.n; i++)
        assert_int_equal(sub.count[i], 1);
    for (size_t i = 1; i < sub.norder; i++)
        if (src.m[sub.order[i] - 1].prio < src.m[sub.order[i - 1] - 1].prio)
            fail_msg("message %" PRIu64 " (%s) arrived after %" PRIu64 " (%s)", sub.order[i],
                     keel__prio_name(src.m[sub.order[i] - 1].prio), sub.order[i - 1],
                     keel__prio_name(src.m[sub.order[i - 1] - 1].prio));
    pthread_mutex_unlock(&sub.mu);
    assert_true(status_has("\"breaker\":\"closed\""));
    assert_true(status_has("\"connected\":true"));
    assert_true(status_has("\"breaker_transitions\":{\"closed\":1,\"open\":1,\"half_open\":1}"));
    assert_int_equal(metric("keel_uplink_messages_total"), src.n);
    assert_true(src.synced > 0);

    /* stop is prompt even with the broker gone and a backoff running */
    broker_kill(SIGKILL);
    src_add(KEEL__PRIO_CRITICAL, "x", "{}", 2);
    keel__uplink_wake(cur, true);
    sleep_ms(300);
    uint64_t t0 = now_ns();
    keel__uplink_stop(cur);
    cur = NULL;
    assert_true(now_ns() - t0 < 500 * 1000000ull);
}

/* --- (b) the broker dies mid-drain ------------------------------------------------------------ */

static atomic_int b_state; /* 1: broker stopped by the hook */

static bool sub_has_all_acked(void)
{
    bool ok = true;
    pthread_mutex_lock(&src.mu);
    pthread_mutex_lock(&sub.mu);
    for (size_t i = 0; i < src.n && ok; i++)
        if (src.m[i].acked && !sub.count[i + 1])
            ok = false;
    pthread_mutex_unlock(&sub.mu);
    pthread_mutex_unlock(&src.mu);
    return ok;
}

static void kill_hook(unsigned call)
{
    if (call != 8 || atomic_load(&b_state))
        return;
    /* everything the broker acked has reached the subscriber (the broker
     * keeps nothing on disk: what it acked and then lost is its loss, not
     * the uplink's), then freeze it: the next publish waits for a PUBACK
     * that never comes, and the broker dies under it */
    if (!wait_for(sub_has_all_acked, 3000)) {
        atomic_store(&b_state, 2); /* the test fails on it */
        return;
    }
    kill(broker.pid, SIGSTOP);
    atomic_store(&b_state, 1);
}

static bool b_stopped(void)
{
    return atomic_load(&b_state) != 0;
}

static void test_broker_killed_mid_drain(void **state)
{
    if (!have_broker)
        th_skip("no mosquitto broker (apt install mosquitto)");
    keel__uplink_opts o;
    keel_error e;
    char p[256];
    mqtt_opts(&o, "dev-b");
    o.breaker_failures = 1;
    o.breaker_cooldown_ms = 1500;
    o.batch_start = 8;
    o.batch_max = 64;
    sub_reset("dev-b");
    for (unsigned i = 0; i < 3000; i++) {
        size_t len = record(p, sizeof(p), i);
        src_add(KEEL__PRIO_NORMAL, "inference", p, len);
    }
    broker_start();
    sub_start();
    atomic_store(&b_state, 0);
    src.hook = kill_hook;
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(b_stopped, 10000));
    assert_int_equal(atomic_load(&b_state), 1);
    size_t before = src_acked();
    sleep_ms(200); /* the publish is out, no PUBACK */
    assert_int_equal(src_acked(), before);
    assert_true(before > 0 && before < src.n);
    broker_kill(SIGKILL);
    sub_stop();
    assert_true(wait_for(breaker_open, 3000));
    broker_start();
    sub_start();
    assert_true(wait_for(all_acked, 15000));
    assert_true(wait_for(all_received, 5000));
    expect_clean();
    assert_true(metric("keel_uplink_failures_total") >= 1);
    assert_true(metric("keel_uplink_connects_total") >= 2);
    assert_true(metric("keel_uplink_disconnects_total") >= 1);
    printf("broker killed after %zu of %zu acked: all %zu delivered, %" PRIu64
           " failure(s), %zu envelopes\n",
           before, src.n, sub_distinct(), metric("keel_uplink_failures_total"), sub.nenv);
}

/* --- (c) bandwidth cap ----------------------------------------------------------------------- */

static void test_bandwidth_cap(void **state)
{
    if (!have_broker)
        th_skip("no mosquitto broker (apt install mosquitto)");
    keel__uplink_opts o;
    keel_error e;
    unsigned char noise[2000];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    mqtt_opts(&o, "dev-c");
    o.bandwidth_bps = 40000;
    sub_reset("dev-c");
    for (unsigned i = 0; i < 60; i++) {
        for (size_t k = 0; k < sizeof(noise); k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            noise[k] = (unsigned char)x;
        }
        src_add(KEEL__PRIO_BULK, "blobs", noise, sizeof(noise));
    }
    broker_start();
    sub_start();
    uint64_t t0 = now_ns();
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(all_acked, 15000));
    double secs = (double)(now_ns() - t0) / 1e9;
    uint64_t wire = metric("keel_uplink_wire_bytes_total");
    assert_true(wait_for(all_received, 5000));
    expect_clean();
    double rate = (double)wire / secs;
    /* steady state: the first two envelopes go at once (the full bucket,
     * then the overdraft of one batch); from the second's arrival to the
     * last one's, the bytes after the second */
    pthread_mutex_lock(&sub.mu);
    size_t ne = sub.nenv;
    uint64_t later = 0;
    assert_true(ne >= 6);
    for (size_t i = 2; i < ne; i++)
        later += sub.env_len[i];
    double steady = (double)later / ((double)(sub.env_ns[ne - 1] - sub.env_ns[1]) / 1e9);
    pthread_mutex_unlock(&sub.mu);
    printf("bandwidth cap 40000 B/s: %" PRIu64 " wire bytes in %.2f s from start = %.0f B/s "
           "(with the initial burst), %.0f B/s steady over %zu envelopes\n",
           wire, secs, rate, steady, ne);
    /* at most rate * (T + 1/4 s) plus one batch overall; the cap when steady */
    assert_true((double)wire <= 40000.0 * (secs + 0.25) + 12000);
    assert_true(steady <= 40000 * 1.05);
    assert_true(steady >= 40000 * 0.8);
    assert_true(wire >= 120000);
}

/* --- (d) sync windows ------------------------------------------------------------------------ */

static _Atomic int64_t fake_now;

static int64_t fake_clock(void *ctx)
{
    return atomic_load(&fake_now);
}

static bool received(uint64_t id)
{
    pthread_mutex_lock(&sub.mu);
    bool r = sub.count[id] > 0;
    pthread_mutex_unlock(&sub.mu);
    return r;
}

static uint64_t crit_id; /* the message the next wait looks for */

static bool crit_received(void)
{
    return received(crit_id);
}

static void test_sync_window(void **state)
{
    if (!have_broker)
        th_skip("no mosquitto broker (apt install mosquitto)");
    keel__uplink_opts o;
    keel_error e;
    setenv("TZ", "UTC0", 1);
    tzset();
    mqtt_opts(&o, "dev-d");
    o.poll_ms = 5000; /* only wakes and windows move it */
    o.clock = fake_clock;
    assert_int_equal(keel__sync_window_parse("02:00-04:00", &o.window, &e), 0);
    atomic_store(&fake_now, (int64_t)1735725600); /* 2025-01-01T10:00:00Z */
    sub_reset("dev-d");
    broker_start();
    sub_start();
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    uint64_t n1 = src_add(KEEL__PRIO_NORMAL, "t", "{\"n\":1}", 7);
    uint64_t h1 = src_add(KEEL__PRIO_HIGH, "t", "{\"h\":1}", 7);
    keel__uplink_wake(cur, false);
    sleep_ms(600);
    assert_false(received(n1));
    assert_false(received(h1));
    assert_true(status_has("\"window_open\":false"));

    /* critical goes at once */
    crit_id = src_add(KEEL__PRIO_CRITICAL, "alarm", "{\"c\":1}", 7);
    uint64_t t0 = now_ns();
    keel__uplink_wake(cur, true);
    assert_true(wait_for(crit_received, 2000));
    pthread_mutex_lock(&sub.mu);
    double ms = (double)(sub.first_ns[crit_id] - t0) / 1e6;
    pthread_mutex_unlock(&sub.mu);
    printf("critical outside the window delivered in %.1f ms\n", ms);
    assert_true(ms < 500);
    sleep_ms(300);
    assert_false(received(n1));
    assert_false(received(h1));

    /* into the window: high, then normal */
    atomic_store(&fake_now, (int64_t)1735725600 - 8 * 3600 + 1800); /* 02:30 */
    keel__uplink_wake(cur, false);
    assert_true(wait_for(all_received, 3000));
    assert_true(received(h1) && received(n1));
    pthread_mutex_lock(&sub.mu);
    assert_true(sub.first_ns[h1] <= sub.first_ns[n1]);
    pthread_mutex_unlock(&sub.mu);
    keel__uplink_stop(cur);
    cur = NULL;

    /* an interval window: one at start, the next every_s later */
    sub_stop();
    sub_reset("dev-d2");
    sub_start();
    mqtt_opts(&o, "dev-d2");
    o.poll_ms = 100;
    assert_int_equal(keel__sync_window_parse("every 2s", &o.window, &e), 0);
    for (size_t i = 0; i < src.n; i++)
        src.m[i].acked = true;
    src.nacked = src.n;
    uint64_t start = now_ns();
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    sleep_ms(300); /* the first window found nothing and closed */
    uint64_t n2 = src_add(KEEL__PRIO_NORMAL, "t", "{\"n\":2}", 7);
    keel__uplink_wake(cur, false);
    assert_true(wait_for(all_acked, 4000));
    crit_id = n2;
    assert_true(wait_for(crit_received, 2000));
    pthread_mutex_lock(&sub.mu);
    double at = (double)sub.first_ns[n2] - (double)start;
    pthread_mutex_unlock(&sub.mu);
    printf("interval window 2 s: normal message delivered %.0f ms after start\n", at / 1e6);
    assert_true(at >= 1.8e9 && at < 3.0e9);
    unsetenv("TZ");
    tzset();
}

/* --- (e) HTTP
 * -------------------------------------------------------------------------------------- */

static struct {
    int fd, port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    int script[16]; /* status codes for the next POSTs; then 200 */
    size_t nscript, next;
    unsigned posts, heads;
    uint64_t post_ns[64];
    char bad[256];
} hs = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void http_serve(int c)
{
    static char buf[1 << 20];
    size_t have = 0;
    char *end = NULL;
    while (have < sizeof(buf) - 1 && !end) {
        ssize_t r = read(c, buf + have, sizeof(buf) - 1 - have);
        if (r <= 0)
            return;
        have += (size_t)r;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (!end)
        return;
    size_t head = (size_t)(end - buf) + 4, clen = 0;
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (cl && cl < end)
        clen = strtoul(cl + 17, NULL, 10);
    while (have < head + clen && have < sizeof(buf) - 1) {
        ssize_t r = read(c, buf + have, sizeof(buf) - 1 - have);
        if (r <= 0)
            return;
        have += (size_t)r;
    }
    int code = 200;
    pthread_mutex_lock(&hs.mu);
    if (!strncmp(buf, "HEAD ", 5)) {
        hs.heads++;
    } else if (!strncmp(buf, "POST /ingest ", 13)) {
        const char *ct = strcasestr(buf, "\r\ncontent-type: application/vnd.keel.envelope\r\n");
        const char *kt = strcasestr(buf, "\r\nkeel-topic: keel/dev-e/normal/t\r\n");
        if ((!ct || ct > end || !kt || kt > end) && !hs.bad[0])
            snprintf(hs.bad, sizeof(hs.bad), "headers: %.*s", (int)head, buf);
        if (hs.posts < KEEL_ARRAY_LEN(hs.post_ns))
            hs.post_ns[hs.posts] = now_ns();
        hs.posts++;
        if (hs.next < hs.nscript)
            code = hs.script[hs.next++];
    } else {
        code = 404;
    }
    pthread_mutex_unlock(&hs.mu);
    if (code / 100 == 2 && clen)
        receive(NULL, buf + head, clen); /* the receiver keeps it only when it says 2xx */
    char resp[128];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", code);
    ssize_t w = write(c, resp, (size_t)n);
    (void)w;
}

static void *http_run(void *arg)
{
    while (!atomic_load(&hs.stop)) {
        struct pollfd p = {.fd = hs.fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int c = accept(hs.fd, NULL, NULL);
        if (c < 0)
            continue;
        http_serve(c);
        close(c);
    }
    return arg;
}

static void http_start(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    hs.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(hs.fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(hs.fd, 16), 0);
    assert_int_equal(getsockname(hs.fd, (struct sockaddr *)&a, &l), 0);
    hs.port = ntohs(a.sin_port);
    atomic_store(&hs.stop, false);
    assert_int_equal(pthread_create(&hs.thread, NULL, http_run, NULL), 0);
}

static void http_stop(void)
{
    atomic_store(&hs.stop, true);
    pthread_join(hs.thread, NULL);
    close(hs.fd);
}

static void http_script(const int *codes, size_t n)
{
    pthread_mutex_lock(&hs.mu);
    memcpy(hs.script, codes, n * sizeof(*codes));
    hs.nscript = n;
    hs.next = 0;
    hs.posts = 0;
    pthread_mutex_unlock(&hs.mu);
}

static unsigned heads(void)
{
    pthread_mutex_lock(&hs.mu);
    unsigned n = hs.heads;
    pthread_mutex_unlock(&hs.mu);
    return n;
}

static bool one_head(void)
{
    return heads() >= 1;
}

static void test_http(void **state)
{
    keel__uplink_opts o;
    keel_error e;
    char url[128], p[256];
    http_start();
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/ingest", hs.port);
    keel__uplink_opts_default(&o);
    o.metrics = mreg;
    o.transport = KEEL__UPLINK_HTTP;
    o.device_id = "dev-e";
    o.url = url;
    o.backoff_base_ms = 200;
    o.backoff_cap_ms = 400;
    o.breaker_failures = 2;
    o.breaker_cooldown_ms = 800;
    o.poll_ms = 100;
    o.heartbeat_s = 1;
    sub_reset("dev-e");

    /* a 500, then success after a backoff */
    static const int one500[] = {500};
    http_script(one500, 1);
    for (unsigned i = 0; i < 10; i++) {
        size_t len = record(p, sizeof(p), i);
        src_add(KEEL__PRIO_NORMAL, "t", p, len);
    }
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(all_acked, 5000));
    assert_true(all_received());
    assert_int_equal(hs.posts, 2);
    assert_int_equal(metric("keel_uplink_failures_total"), 1);
    assert_true(status_has("\"breaker\":\"closed\""));
    assert_true(status_has("answered 500"));
    assert_int_equal(metric("keel_uplink_breaker_transitions_total{to=\"open\"}"), 0);

    /* the breaker opens after two failures, a half-open probe fails and it
     * opens again, the next probe succeeds and it closes */
    static const int three500[] = {500, 500, 500};
    http_script(three500, 3);
    for (unsigned i = 10; i < 20; i++) {
        size_t len = record(p, sizeof(p), i);
        src_add(KEEL__PRIO_NORMAL, "t", p, len);
    }
    keel__uplink_wake(cur, false);
    assert_true(wait_for(breaker_open, 3000));
    assert_true(wait_for(all_acked, 6000));
    assert_true(all_received());
    expect_clean();
    pthread_mutex_lock(&hs.mu);
    if (hs.bad[0])
        fail_msg("server: %s", hs.bad);
    assert_true(hs.posts >= 4); /* three 500s, then the batch (halved three times) in parts */
    /* no request while open: each probe waited for the cool-down */
    assert_true(hs.post_ns[2] - hs.post_ns[1] >= 780 * 1000000ull);
    assert_true(hs.post_ns[3] - hs.post_ns[2] >= 780 * 1000000ull);
    pthread_mutex_unlock(&hs.mu);
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__metrics_prometheus(mreg, &b), 0);
    assert_non_null(strstr(b.data, "keel_uplink_breaker_transitions_total{to=\"open\"} 2\n"));
    assert_non_null(strstr(b.data, "keel_uplink_breaker_transitions_total{to=\"half_open\"} 2\n"));
    assert_non_null(strstr(b.data, "keel_uplink_breaker_transitions_total{to=\"closed\"} 1\n"));
    assert_non_null(strstr(b.data, "keel_uplink_breaker_state 0\n"));
    keel__buf_done(&b);
    assert_int_equal(metric("keel_uplink_failures_total"), 4);

    /* idle and up: a heartbeat probe */
    assert_true(wait_for(one_head, 2500));
    assert_true(metric("keel_uplink_heartbeats_total") >= 1);
    keel__uplink_stop(cur);
    cur = NULL;
    http_stop();
}

/* Batch numbers rise across restarts, also when the uplink starts twice
 * within one wall-clock second (they once restarted from the clock, so two
 * envelopes shared a number): three starts, one batch each, over HTTP. */
static void test_seq_across_restarts(void **state)
{
    keel__uplink_opts o;
    keel_error e;
    char url[128], seq_path[512], p[256];
    struct timespec ts;
    http_start();
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/ingest", hs.port);
    snprintf(seq_path, sizeof(seq_path), "%s/uplink.seq", broker.dir);
    keel__uplink_opts_default(&o);
    o.metrics = mreg;
    o.transport = KEEL__UPLINK_HTTP;
    o.device_id = "dev-e";
    o.url = url;
    o.poll_ms = 50;
    o.seq_path = seq_path;
    sub_reset("dev-e");
    /* start early in a second: the three starts then share it */
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_nsec > 200000000)
        sleep_ms((unsigned)((1000000000 - ts.tv_nsec) / 1000000) + 5);
    clock_gettime(CLOCK_REALTIME, &ts);
    time_t first = ts.tv_sec;
    for (unsigned i = 0; i < 3; i++) {
        size_t len = record(p, sizeof(p), i);
        src_add(KEEL__PRIO_NORMAL, "t", p, len);
        assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
        assert_true(wait_for(all_acked, 5000));
        keel__uplink_stop(cur);
        cur = NULL;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("3 uplink starts within %s wall-clock second\n",
           ts.tv_sec == first ? "one" : "more than one");
    pthread_mutex_lock(&sub.mu);
    assert_int_equal(sub.nenv, 3);
    for (size_t i = 1; i < 3; i++)
        if (sub.env_seq[i] <= sub.env_seq[i - 1])
            fail_msg("envelope %zu has seq %" PRIu64 ", not above the %" PRIu64 " before it", i,
                     sub.env_seq[i], sub.env_seq[i - 1]);
    uint64_t last = sub.env_seq[2];
    pthread_mutex_unlock(&sub.mu);
    /* the record: one line, owner only, beyond every number used */
    char *text = NULL;
    size_t tlen;
    uint64_t next = 0;
    struct stat st;
    assert_int_equal(keel__fs_read(seq_path, 256, &text, &tlen, &e), 0);
    assert_int_equal(sscanf(text, "keel-uplink-seq 1 %" SCNu64, &next), 1);
    assert_true(next > last);
    free(text);
    assert_int_equal(stat(seq_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* an unreadable record is reported and numbering goes on from the clock */
    FILE *f = fopen(seq_path, "w");
    assert_non_null(f);
    fputs("garbage\n", f);
    fclose(f);
    src_add(KEEL__PRIO_NORMAL, "t", p, record(p, sizeof(p), 3));
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(all_acked, 5000));
    keel__uplink_stop(cur);
    cur = NULL;
    pthread_mutex_lock(&sub.mu);
    assert_int_equal(sub.nenv, 4);
    assert_true(sub.env_seq[3] >= (uint64_t)first << 20);
    pthread_mutex_unlock(&sub.mu);
    http_stop();
}

/* --- (f) TLS, a client certificate and a password ------------------------------------------ */

static bool refused_auth(void)
{
    return status_has("not authorised");
}

static void test_mqtt_tls(void **state)
{
    keel__uplink_opts o;
    keel_error e;
    char cmd[2048], ca[600], crt[600], key[600];
    if (!have_broker ||
        system("(command -v openssl && command -v mosquitto_passwd) >/dev/null 2>&1") != 0)
        th_skip("openssl or mosquitto_passwd missing (apt install openssl mosquitto)");
    const char *d = broker.dir;
    /* the broker may drop privileges before it reads the password file */
    assert_int_equal(chmod(d, 0755), 0);
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && (K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
             "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=keel-test-ca && "
             "openssl req $K -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 && "
             "printf 'subjectAltName=IP:127.0.0.1\\n' > ext && "
             "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "-out srv.crt -days 2 -extfile ext && "
             "openssl req $K -keyout cli.key -out cli.csr -subj /CN=dev-f && "
             "openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "-out cli.crt -days 2 && touch pw && mosquitto_passwd -b pw dev-f s3cret && "
             "chmod 644 *) >tls.log 2>&1",
             d);
    assert_int_equal(system(cmd), 0);
    broker.tls_port = free_port();
    snprintf(broker.tls_conf, sizeof(broker.tls_conf),
             "listener %d 127.0.0.1\ncafile %s/ca.crt\ncertfile %s/srv.crt\nkeyfile "
             "%s/srv.key\nrequire_certificate true\npassword_file %s/pw\nallow_anonymous false\n",
             broker.tls_port, d, d, d, d);
    snprintf(ca, sizeof(ca), "%s/ca.crt", d);
    snprintf(crt, sizeof(crt), "%s/cli.crt", d);
    snprintf(key, sizeof(key), "%s/cli.key", d);
    sub_reset("dev-f");
    broker_start();
    sub_start();

    mqtt_opts(&o, "dev-f");
    o.port = broker.tls_port;
    o.ca_file = ca;
    o.cert_file = crt;
    o.key_file = key;
    o.username = "dev-f";
    o.password = "s3cret";
    for (int i = 0; i < 3; i++)
        src_add(KEEL__PRIO_HIGH, "secure", "{\"tls\":true}", 12);
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(all_acked, 5000));
    assert_true(wait_for(all_received, 2000));
    expect_clean();
    assert_true(status_has("\"endpoint\":\"mqtts://127.0.0.1:"));
    keel__uplink_stop(cur);
    cur = NULL;

    /* a wrong password: refused, said so, nothing acked */
    o.password = "wrong";
    src_add(KEEL__PRIO_HIGH, "secure", "{}", 2);
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(refused_auth, 5000));
    assert_int_equal(src_acked(), src.n - 1);
}

/* --- drain throughput --------------------------------------------------------------------------
 */

static void test_drain_rate(void **state)
{
    if (!have_broker)
        th_skip("no mosquitto broker (apt install mosquitto)");
    keel__uplink_opts o;
    keel_error e;
    char p[256];
    size_t payload = 0;
    mqtt_opts(&o, "dev-r");
    sub_reset("dev-r");
    for (unsigned i = 0; i < 20000; i++) {
        size_t len = record(p, sizeof(p), i);
        payload += len;
        src_add(KEEL__PRIO_BULK, "inference", p, len);
    }
    broker_start();
    sub_start();
    uint64_t t0 = now_ns();
    assert_int_equal(keel__uplink_start(&o, &source, &cur, &e), 0);
    assert_true(wait_for(all_acked, 30000));
    double secs = (double)(now_ns() - t0) / 1e9;
    assert_true(wait_for(all_received, 10000));
    expect_clean();
    printf("drain: %zu messages (%.0f B payload each) in %.3f s = %.0f msgs/s, %" PRIu64
           " envelopes, %.1f wire bytes/msg, final batch size %" PRIu64 "\n",
           src.n, (double)payload / (double)src.n, secs, (double)src.n / secs,
           metric("keel_uplink_batches_total"),
           (double)metric("keel_uplink_wire_bytes_total") / (double)src.n,
           metric("keel_uplink_batch_size"));
}

/* --- options and windows -----------------------------------------------------------------------
 */

/* What a producer may hand the queue: a topic the uplink can publish
 * (checked before the 202 of POST /api/events), a payload that fits an
 * envelope. Messages escape the client's bytes. */
static void test_topic_check(void **state)
{
    (void)state;
    static const struct {
        const char *topic;
        size_t len; /* 0: strlen */
        size_t payload;
        const char *err; /* NULL: accepted */
    } cases[] = {
        {"alerts/door", 0, 10, NULL},
        {"caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x9a\xaa", 0, 10, NULL},
        {"", 0, 0, "empty"},
        {"door/\xff", 0, 0, "byte 5 (\"\\xff\") is not valid UTF-8"},
        {"door/\xc0\xaf", 0, 0, "not valid UTF-8"},         /* overlong '/' */
        {"door/\xed\xa0\x80", 0, 0, "not valid UTF-8"},     /* a surrogate */
        {"door/\xe2\x82", 0, 0, "not valid UTF-8"},         /* cut short */
        {"door/\xf4\x90\x80\x80", 0, 0, "not valid UTF-8"}, /* over U+10FFFF */
        {"door/\xc2\x85", 0, 0, "control character"},       /* U+0085 */
        {"door\n", 0, 0, "\"door\\x0a\": byte 4 (\"\\x0a\") is a control character"},
        {"door/\xef\xbf\xbe", 0, 0, "non-character"}, /* U+FFFE */
        {"door/\xef\xb7\x90", 0, 0, "non-character"}, /* U+FDD0 */
        {"a/+/b", 0, 0, "wildcard"},
        {"a/#", 0, 0, "wildcard"},
        {"a\0b", 3, 0, "control character"},
        {"t", 0, KEEL__ENVELOPE_RAW_MAX, "payload of"},
        {"t", 0, KEEL__ENVELOPE_RAW_MAX - KEEL__ENVELOPE_MSG_FIXED - 1 - 24, NULL},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        keel_error e = {0};
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].topic);
        int rc = keel__topic_check_msg(cases[i].topic, len, 24, cases[i].payload, &e);
        if (!cases[i].err && rc)
            fail_msg("case %zu: %s", i, e.msg);
        if (cases[i].err)
            th_expect_err(rc, &e, rc == KEEL_ETOOBIG ? KEEL_ETOOBIG : KEEL_EINVALID, cases[i].err);
    }
    char slashes[400];
    memset(slashes, '/', sizeof(slashes));
    assert_int_equal(keel__topic_check_msg(slashes, 197, 0, 0, NULL), KEEL_OK);
    keel_error e = {0};
    th_expect_err(keel__topic_check_msg(slashes, 198, 0, 0, &e), &e, KEEL_EINVALID,
                  "198 '/' separators; at most 197");
    assert_true(keel__topic_ok("keel/dev/normal/a", 17));
    assert_false(keel__topic_ok("keel/dev/normal/\xff", 17));
}

static void test_window_parse(void **state)
{
    static const struct {
        const char *s;
        int rc;
        uint32_t every;
        int32_t from, to;
    } t[] = {
        {"always", 0, 0, -1, -1},
        {"every 15m", 0, 900, -1, -1},
        {"every 30s", 0, 30, -1, -1},
        {"every 2h", 0, 7200, -1, -1},
        {"02:00-04:00", 0, 0, 120, 240},
        {"every 1h, 22:00-06:00", 0, 3600, 1320, 360},
        {"22:00-06:00,every 5m", 0, 300, 1320, 360},
        {"", KEEL_EINVALID, 0, 0, 0},
        {"every", KEEL_EINVALID, 0, 0, 0},
        {"every 0m", KEEL_EINVALID, 0, 0, 0},
        {"every 5d", KEEL_EINVALID, 0, 0, 0},
        {"every 5m, every 6m", KEEL_EINVALID, 0, 0, 0},
        {"24:00-01:00", KEEL_EINVALID, 0, 0, 0},
        {"02:00-02:00", KEEL_EINVALID, 0, 0, 0},
        {"2:00-4:00", KEEL_EINVALID, 0, 0, 0},
        {"sometimes", KEEL_EINVALID, 0, 0, 0},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(t); i++) {
        keel__sync_window w = {7, 7, 7};
        keel_error e;
        int rc = keel__sync_window_parse(t[i].s, &w, &e);
        if (rc != t[i].rc)
            fail_msg("'%s': rc %d, want %d (%s)", t[i].s, rc, t[i].rc, e.msg);
        if (!rc && (w.every_s != t[i].every || w.from_min != t[i].from || w.to_min != t[i].to))
            fail_msg("'%s': %u %d %d", t[i].s, w.every_s, w.from_min, w.to_min);
        if (rc)
            assert_non_null(strstr(e.msg, "sync window"));
    }
    setenv("TZ", "UTC0", 1);
    tzset();
    keel__sync_window night = {0, 22 * 60, 6 * 60}, day = {0, 120, 240}, any = {0, -1, -1};
    int64_t midnight = 1735689600; /* 2025-01-01T00:00:00Z */
    assert_true(keel__sync_window_in_range(&night, midnight + 23 * 3600));
    assert_true(keel__sync_window_in_range(&night, midnight + 5 * 3600 + 3599));
    assert_false(keel__sync_window_in_range(&night, midnight + 6 * 3600));
    assert_false(keel__sync_window_in_range(&night, midnight + 12 * 3600));
    assert_true(keel__sync_window_in_range(&day, midnight + 2 * 3600));
    assert_false(keel__sync_window_in_range(&day, midnight + 4 * 3600));
    assert_true(keel__sync_window_in_range(&any, midnight));
    unsetenv("TZ");
    tzset();
}

static void test_bad_options(void **state)
{
    keel__uplink_opts o;
    keel__uplink *u = NULL;
    keel_error e;
    static const struct {
        int field;
        const char *msg;
    } t[] = {
        {0, "device id"},    {1, "device id"}, {2, "broker host"},        {3, "http"},
        {4, "daily window"}, {5, "batch"},     {6, "client certificate"}, {7, "password"},
        {8, "port"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(t); i++) {
        keel__uplink_opts_default(&o);
        o.device_id = "dev";
        o.host = "localhost";
        switch (t[i].field) {
        case 0:
            o.device_id = "";
            break;
        case 1:
            o.device_id = "a/b";
            break;
        case 2:
            o.host = NULL;
            break;
        case 3:
            o.transport = KEEL__UPLINK_HTTP;
            o.url = "ftp://x";
            break;
        case 4:
            o.window.from_min = 10;
            break;
        case 5:
            o.batch_start = 2000;
            break;
        case 6:
            o.cert_file = "c.pem";
            break;
        case 7:
            o.password = "pw";
            break;
        case 8:
            o.port = 70000;
            break;
        }
        th_expect_err(keel__uplink_start(&o, &source, &u, &e), &e, KEEL_EINVALID, t[i].msg);
        assert_null(u);
    }
    keel__uplink_stop(NULL);
}

int main(void)
{
    keel_log_set_stderr(getenv("KEEL_TEST_LOG") != NULL);
    if (getenv("KEEL_TEST_LOG"))
        keel_log_set_level(KEEL_LOG_DEBUG);
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_check),
        cmocka_unit_test(test_window_parse),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test_setup_teardown(test_offline_then_drain_in_priority_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_killed_mid_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bandwidth_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seq_across_restarts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mqtt_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_rate, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    mosquitto_lib_cleanup();
    return th_exit(rc);
}
