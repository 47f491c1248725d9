/*
 * uplink.c - the uplink's thread and its two transports (MQTT through
 * libmosquitto, HTTP through libcurl). Policy (windows, bandwidth, batch
 * size, backoff, breaker) lives in the thread's loop; a transport only
 * connects, sends one envelope and waits for the far side's answer.
 *
 * One batch is out at a time: the source may hand the same unacked
 * messages out again, so a second batch could only duplicate the first.
 * The thread owns the connection and runs its own poll(2) over the MQTT
 * socket and a wake pipe (mosquitto_loop_read/write/misc, never
 * loop_forever), so wake and stop take effect at once.
 *
 * Each transport's library is loaded (dlopen) when an uplink using it
 * starts (core/curl_dl.h, sync/mosq_dl.h): a keeld without an uplink maps
 * neither.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/curl_dl.h"
#include "core/json.h"
#include "sync/envelope.h"
#include "sync/mosq_dl.h"
#include "sync/topic.h"
#include "sync/uplink.h"

#define MOD       "uplink"
#define MS        1000000ull /* ns per ms */
#define TOPIC_MAX 1024u

static const char *const breaker_names[] = {"closed", "open", "half_open"};

typedef struct transport transport;

/* Counters and state a reader may look at (under mu). */
typedef struct stats {
    bool connected, window_open;
    int breaker;
    uint64_t transitions[3]; /* into closed, open, half_open */
    uint64_t msgs, batches, wire_bytes, raw_bytes, payload_bytes, dropped;
    uint64_t failures, connects, disconnects, heartbeats;
    uint64_t ack_ns_sum, ack_count;
    unsigned consecutive;
    uint32_t batch;
    uint64_t backoff_ms;
    int64_t last_sync; /* wall seconds; 0 never */
    char last_error[512];
} stats;

struct keel__uplink {
    keel__uplink_opts o; /* strings point into the copies below */
    char *strs[10];
    char endpoint[512];
    const transport *tr;
    keel__sync_source src;
    pthread_t thread;
    bool started;
    int wake_rd, wake_wr;
    atomic_bool stopping;

    pthread_mutex_t mu;
    stats st;
    /* the registry's copy of st (metrics_start); NULL without o.metrics */
    keel__metric_family *fam[16];    /* NFAMILIES */
    keel__metric_series *series[18]; /* NSERIES */

    /* Everything below belongs to the thread. */
    struct mosquitto *mosq;
    int conn_rc; /* CONNACK code; -1 while waiting */
    bool lost;   /* the broker connection went away */
    int pub_mid; /* the publish waiting for PUBACK */
    bool pub_done;
    CURL *curl;
    bool http_up; /* the last HTTP exchange got an answer */

    int breaker;
    unsigned fails;
    uint64_t retry_at, opened_at, last_io;
    uint32_t batch;
    double tokens;
    uint64_t tokens_at;
    bool win_open;
    uint64_t win_opened, win_next;
    uint64_t seq, seq_end; /* the next batch number; the end of the reserved block */
    keel_buf env;
    uint64_t *ids;
    size_t ids_cap;
};

/* A transport: every member required. */
struct transport {
    const char *name;
    /* Ready to send (MQTT: connected and CONNACKed). */
    int (*connect)(keel__uplink *u, keel_error *err);
    bool (*connected)(keel__uplink *u);
    /* Sends one envelope and waits for the far side to accept it. */
    int (*send)(keel__uplink *u, const char *topic, const void *data, size_t len, uint64_t deadline,
                keel_error *err);
    void (*drop)(keel__uplink *u);
    /* Whether a heartbeat is due and, when it is, runs it. */
    int (*heartbeat)(keel__uplink *u, keel_error *err);
};

static int metrics_start(keel__uplink *u, keel_error *err);
static void metrics_stop(keel__uplink *u);

/* --- small helpers ------------------------------------------------------------------------ */

static uint64_t mono(void)
{
    return keel__now_mono_ns();
}

static int64_t wall(const keel__uplink *u)
{
    return u->o.clock ? u->o.clock(u->o.clock_ctx) : keel__now_wall_s();
}

static void set_error(keel__uplink *u, const keel_error *e)
{
    pthread_mutex_lock(&u->mu);
    keel__strlcpy(u->st.last_error, e->msg, sizeof(u->st.last_error));
    pthread_mutex_unlock(&u->mu);
}

/* --- batch numbers ----------------------------------------------------------------------- */

/* Batch numbers rise, across restarts too (docs/uplink.md). The thread
 * reserves them a block at a time: a block starts above the end of the last
 * one recorded in o.seq_path, and no lower than wall-clock seconds << 20;
 * its end is written there (atomically, fsynced) before its first number
 * goes out. That is one durable write when the uplink first sends and one
 * per SEQ_BLOCK batches after, none per message. */
#define SEQ_BLOCK  (1ull << 20)
#define SEQ_MAGIC  "keel-uplink-seq"
#define SEQ_FORMAT 1u

/* The end of the last block recorded; 0 when there is none to read. */
static uint64_t seq_recorded(const keel__uplink *u)
{
    char *text = NULL, magic[sizeof(SEQ_MAGIC) + 8];
    size_t len;
    unsigned format;
    uint64_t end = 0;
    int used = 0;
    keel_error e;
    if (!u->o.seq_path || !keel__fs_exists(u->o.seq_path))
        return 0;
    if (keel__fs_read(u->o.seq_path, 256, &text, &len, &e)) {
        KEEL_LOG_W(MOD, "reading the batch numbers used: %s; numbering from the clock", e.msg);
        return 0;
    }
    if (sscanf(text, "%23s %u %" SCNu64 "%n", magic, &format, &end, &used) != 3 ||
        strcmp(magic, SEQ_MAGIC) != 0 || format != SEQ_FORMAT || text[used] != '\n' ||
        end > UINT64_MAX - 2 * SEQ_BLOCK) {
        KEEL_LOG_W(MOD,
                   "%s is not a batch number record (\"" SEQ_MAGIC " %u NEXT\" expected); "
                   "numbering from the clock",
                   u->o.seq_path, SEQ_FORMAT);
        end = 0;
    }
    free(text);
    return end;
}

static void seq_reserve(keel__uplink *u)
{
    uint64_t start = (uint64_t)keel__now_wall_s() << 20, recorded = seq_recorded(u);
    if (recorded > start)
        start = recorded;
    if (u->seq > start) /* the clock went back while running */
        start = u->seq;
    u->seq = start;
    u->seq_end = start + SEQ_BLOCK;
    if (!u->o.seq_path)
        return;
    char line[64];
    int n = snprintf(line, sizeof(line), SEQ_MAGIC " %u %" PRIu64 "\n", SEQ_FORMAT, u->seq_end);
    keel_error e;
    if (keel__fs_write_atomic(u->o.seq_path, line, (size_t)n, 0600, &e))
        KEEL_LOG_W(MOD,
                   "recording the batch numbers reserved: %s; after a restart, numbers may "
                   "repeat",
                   e.msg);
}

static void set_connected(keel__uplink *u, bool up)
{
    pthread_mutex_lock(&u->mu);
    bool changed = up != u->st.connected;
    if (up && !u->st.connected)
        u->st.connects++;
    if (!up && u->st.connected)
        u->st.disconnects++;
    u->st.connected = up;
    pthread_mutex_unlock(&u->mu);
    if (changed && u->o.on_link)
        u->o.on_link(u->o.link_ctx, up, u->endpoint);
}

/* Drains the wake pipe; true if anything was in it. */
static bool drain(keel__uplink *u)
{
    char b[64];
    bool any = false;
    while (read(u->wake_rd, b, sizeof(b)) > 0)
        any = true;
    return any;
}

/*
 * One round of waiting, at most ms: on the wake pipe and, when MQTT has a
 * socket, on it (reading, writing and keepalive through libmosquitto).
 * Returns true when woken.
 */
static bool pump(keel__uplink *u, int ms)
{
    struct pollfd p[2] = {{.fd = u->wake_rd, .events = POLLIN}, {.fd = -1}};
    nfds_t n = 1;
    int sock = u->mosq ? mosquitto_socket(u->mosq) : -1;
    if (sock >= 0) {
        p[1].fd = sock;
        p[1].events = (short)(POLLIN | (mosquitto_want_write(u->mosq) ? POLLOUT : 0));
        n = 2;
    }
    if (ms > 0 && sock >= 0 && ms > 1000)
        ms = 1000; /* keepalive needs loop_misc now and then */
    int r = poll(p, n, ms < 0 ? 0 : ms);
    bool woke = r > 0 && (p[0].revents & POLLIN) && drain(u);
    if (sock >= 0) {
        int rc = MOSQ_ERR_SUCCESS;
        if (r > 0 && (p[1].revents & (POLLIN | POLLERR | POLLHUP)))
            rc = mosquitto_loop_read(u->mosq, 1);
        if (!rc && mosquitto_socket(u->mosq) >= 0 &&
            ((r > 0 && (p[1].revents & POLLOUT)) || mosquitto_want_write(u->mosq)))
            rc = mosquitto_loop_write(u->mosq, 1);
        if (!rc)
            rc = mosquitto_loop_misc(u->mosq);
        if (rc) {
            u->lost = true;
            KEEL_LOG_D(MOD, "mqtt: connection to %s lost: %s", u->endpoint,
                       rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        }
    }
    return woke;
}

/* Waits until `until` (mono ns), a stop, or, when wakeable, a wake. MQTT
 * is serviced meanwhile; a lost connection is dropped (no failure: nothing
 * was being sent). */
static void idle(keel__uplink *u, uint64_t until, bool wakeable)
{
    while (!atomic_load(&u->stopping)) {
        uint64_t now = mono();
        if (now >= until)
            return;
        uint64_t left = (until - now + MS - 1) / MS;
        if (pump(u, left > 60000 ? 60000 : (int)left) && wakeable)
            return;
        if (u->lost && u->mosq)
            u->tr->drop(u);
    }
}

static uint64_t rand_below(uint64_t n)
{
    uint64_t r = 0;
    if (n == 0 || keel__random_bytes(&r, sizeof(r), NULL))
        return n / 2;
    return r % (n + 1);
}

/* --- MQTT ------------------------------------------------------------------------------------ */

static void on_connect(struct mosquitto *m, void *ctx, int rc)
{
    keel__uplink *u = ctx;
    u->conn_rc = rc;
    if (!rc && u->o.subscribe && mosquitto_subscribe(m, NULL, u->o.subscribe, 1))
        KEEL_LOG_W(MOD, "mqtt: cannot subscribe to %s", u->o.subscribe);
}

static void on_message(struct mosquitto *m, void *ctx, const struct mosquitto_message *msg)
{
    keel__uplink *u = ctx;
    KEEL_UNUSED(m);
    if (u->o.on_message && msg->payloadlen >= 0)
        u->o.on_message(u->o.msg_ctx, msg->topic, msg->payload, (size_t)msg->payloadlen);
}

static void on_disconnect(struct mosquitto *m, void *ctx, int rc)
{
    KEEL_UNUSED(m);
    KEEL_UNUSED(rc);
    ((keel__uplink *)ctx)->lost = true;
}

static void on_publish(struct mosquitto *m, void *ctx, int mid)
{
    keel__uplink *u = ctx;
    KEEL_UNUSED(m);
    if (mid == u->pub_mid)
        u->pub_done = true;
}

static void mqtt_drop(keel__uplink *u)
{
    if (u->mosq) {
        if (!u->lost)
            (void)mosquitto_disconnect(u->mosq);
        mosquitto_destroy(u->mosq);
        u->mosq = NULL;
    }
    u->lost = false;
    set_connected(u, false);
}

static bool mqtt_connected(keel__uplink *u)
{
    return u->mosq && !u->lost && u->conn_rc == 0;
}

static const char *mosq_err(int rc)
{
    return rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
}

static int mqtt_connect(keel__uplink *u, keel_error *err)
{
    const keel__uplink_opts *o = &u->o;
    int rc;
    if (mqtt_connected(u))
        return KEEL_OK;
    mqtt_drop(u);
    u->mosq = mosquitto_new(o->device_id, true, u);
    if (!u->mosq)
        return keel__err(err, KEEL_ENOMEM, "mqtt: creating a client for %s", u->endpoint);
    mosquitto_connect_callback_set(u->mosq, on_connect);
    mosquitto_disconnect_callback_set(u->mosq, on_disconnect);
    mosquitto_publish_callback_set(u->mosq, on_publish);
    mosquitto_message_callback_set(u->mosq, on_message);
    (void)mosquitto_int_option(u->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    if (o->username && (rc = mosquitto_username_pw_set(u->mosq, o->username, o->password))) {
        rc = keel__err(err, KEEL_EINVALID, "mqtt: username/password: %s", mosq_err(rc));
        goto fail;
    }
    if (o->ca_file &&
        (rc = mosquitto_tls_set(u->mosq, o->ca_file, NULL, o->cert_file, o->key_file, NULL))) {
        rc = keel__err(err, KEEL_EINVALID, "mqtt: TLS (ca %s): %s", o->ca_file, mosq_err(rc));
        goto fail;
    }
    u->conn_rc = -1;
    u->lost = false;
    rc = mosquitto_connect_async(u->mosq, o->host, o->port, (int)o->keepalive_s);
    if (rc) {
        rc = keel__err(err, KEEL_ENOCONN, "mqtt: connecting to %s: %s", u->endpoint, mosq_err(rc));
        goto fail;
    }
    uint64_t deadline = mono() + o->connect_timeout_ms * MS;
    while (u->conn_rc < 0 && !u->lost && !atomic_load(&u->stopping)) {
        uint64_t now = mono();
        if (now >= deadline) {
            rc = keel__err(err, KEEL_ETIMEOUT, "mqtt: no CONNACK from %s within %u ms", u->endpoint,
                           o->connect_timeout_ms);
            goto fail;
        }
        (void)pump(u, (int)((deadline - now) / MS + 1));
    }
    if (u->conn_rc != 0) {
        if (u->conn_rc > 0)
            rc = keel__err(err, KEEL_ENOCONN, "mqtt: %s refused the connection: %s", u->endpoint,
                           mosquitto_connack_string(u->conn_rc));
        else
            rc = keel__err(err, KEEL_ENOCONN, "mqtt: cannot connect to %s%s", u->endpoint,
                           atomic_load(&u->stopping) ? " (stopping)" : ": connection failed");
        goto fail;
    }
    set_connected(u, true);
    KEEL_LOG_I(MOD, "mqtt: connected to %s as %s", u->endpoint, o->device_id);
    return KEEL_OK;
fail:
    u->lost = true;
    mqtt_drop(u);
    return rc;
}

static int mqtt_send(keel__uplink *u, const char *topic, const void *data, size_t len,
                     uint64_t deadline, keel_error *err)
{
    int mid = 0;
    u->pub_done = false;
    u->pub_mid = -1;
    int rc = mosquitto_publish(u->mosq, &mid, topic, (int)len, data, 1, false);
    if (rc) {
        u->lost = true;
        return keel__err(err, KEEL_ENOCONN, "mqtt: publishing %zu bytes to %s on %s: %s", len,
                         topic, u->endpoint, mosq_err(rc));
    }
    u->pub_mid = mid;
    while (!u->pub_done) {
        uint64_t now = mono();
        if (atomic_load(&u->stopping))
            return keel__err(err, KEEL_EBUSY, "mqtt: stopping before PUBACK");
        if (u->lost)
            return keel__err(err, KEEL_ENOCONN, "mqtt: connection to %s lost before PUBACK",
                             u->endpoint);
        if (now >= deadline)
            return keel__err(err, KEEL_ETIMEOUT, "mqtt: no PUBACK from %s within %u ms",
                             u->endpoint, u->o.ack_timeout_ms);
        (void)pump(u, (int)((deadline - now) / MS + 1));
    }
    return KEEL_OK;
}

static int mqtt_heartbeat(keel__uplink *u, keel_error *err)
{
    KEEL_UNUSED(u);
    KEEL_UNUSED(err);
    return KEEL_OK; /* MQTT keepalive (PINGREQ) runs in pump */
}

static const transport mqtt_transport = {"mqtt",    mqtt_connect, mqtt_connected,
                                         mqtt_send, mqtt_drop,    mqtt_heartbeat};

/* --- HTTP ------------------------------------------------------------------------------------ */

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
    KEEL_UNUSED(p);
    KEEL_UNUSED(ctx);
    return size * n;
}

static int abort_on_stop(void *ctx, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    KEEL_UNUSED(dt);
    KEEL_UNUSED(dn);
    KEEL_UNUSED(ut);
    KEEL_UNUSED(un);
    return atomic_load(&((keel__uplink *)ctx)->stopping) ? 1 : 0;
}

static int http_connect(keel__uplink *u, keel_error *err)
{
    if (!u->curl && !(u->curl = curl_easy_init()))
        return keel__err(err, KEEL_ENOMEM, "http: creating a curl handle");
    return KEEL_OK;
}

static bool http_connected(keel__uplink *u)
{
    return u->curl != NULL;
}

static void http_drop(keel__uplink *u)
{
    /* curl keeps the connection cache in the handle: a fresh handle is a
     * clean reconnect. */
    if (u->curl)
        curl_easy_cleanup(u->curl);
    u->curl = NULL;
    u->http_up = false;
    set_connected(u, false);
}

/* One request; *ret_code the HTTP status. head: a HEAD probe. */
static int http_do(keel__uplink *u, bool head, const char *topic, const void *data, size_t len,
                   uint64_t deadline, long *ret_code, keel_error *err)
{
    const keel__uplink_opts *o = &u->o;
    struct curl_slist *h = NULL, *t;
    char th[TOPIC_MAX + 32];
    int rc = KEEL_OK;
    CURL *c = u->curl;
    uint64_t now = mono();
    long timeout = deadline > now ? (long)((deadline - now) / MS) + 1 : 1;

    curl_easy_reset(c);
    (void)curl_easy_setopt(c, CURLOPT_URL, o->url);
    (void)curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    (void)curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
    (void)curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
    (void)curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    (void)curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    (void)curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
    (void)curl_easy_setopt(c, CURLOPT_XFERINFODATA, u);
    (void)curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (o->ca_file)
        (void)curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_file);
    if (o->cert_file)
        (void)curl_easy_setopt(c, CURLOPT_SSLCERT, o->cert_file);
    if (o->key_file)
        (void)curl_easy_setopt(c, CURLOPT_SSLKEY, o->key_file);
    if (o->username) {
        (void)curl_easy_setopt(c, CURLOPT_USERNAME, o->username);
        (void)curl_easy_setopt(c, CURLOPT_PASSWORD, o->password ? o->password : "");
    }
    if (head) {
        (void)curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else {
        snprintf(th, sizeof(th), "Keel-Topic: %s", topic);
        if (!(t = curl_slist_append(h, "Content-Type: application/vnd.keel.envelope")) ||
            !(h = t, t = curl_slist_append(h, "Expect:")) ||
            !(h = t, t = curl_slist_append(h, th))) {
            rc = keel__err(err, KEEL_ENOMEM, "http: request headers");
            goto out;
        }
        h = t;
        (void)curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        (void)curl_easy_setopt(c, CURLOPT_POST, 1L);
        (void)curl_easy_setopt(c, CURLOPT_POSTFIELDS, data);
        (void)curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    CURLcode cr = curl_easy_perform(c);
    if (cr != CURLE_OK) {
        u->http_up = false;
        set_connected(u, false);
        rc = keel__err(err, cr == CURLE_OPERATION_TIMEDOUT ? KEEL_ETIMEOUT : KEEL_ENOCONN,
                       "http: %s %s: %s", head ? "HEAD" : "POST", o->url, curl_easy_strerror(cr));
        goto out;
    }
    long code = 0;
    (void)curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    u->http_up = true;
    set_connected(u, true);
    *ret_code = code;
out:
    curl_slist_free_all(h);
    return rc;
}

static int http_send(keel__uplink *u, const char *topic, const void *data, size_t len,
                     uint64_t deadline, keel_error *err)
{
    long code = 0;
    int rc = http_do(u, false, topic, data, len, deadline, &code, err);
    if (rc)
        return rc;
    if (code < 200 || code > 299)
        return keel__err(err, KEEL_EIO, "http: POST %s answered %ld (2xx expected)", u->o.url,
                         code);
    return KEEL_OK;
}

/* Idle and up: a HEAD now and then tells whether the endpoint is still
 * reachable (any answer will do). */
static int http_heartbeat(keel__uplink *u, keel_error *err)
{
    long code = 0;
    uint64_t now = mono();
    if (!u->o.heartbeat_s || !u->http_up || now - u->last_io < u->o.heartbeat_s * 1000 * MS)
        return KEEL_OK;
    u->last_io = now;
    pthread_mutex_lock(&u->mu);
    u->st.heartbeats++;
    pthread_mutex_unlock(&u->mu);
    return http_do(u, true, NULL, NULL, 0, now + u->o.ack_timeout_ms * MS, &code, err);
}

static const transport http_transport = {"http",    http_connect, http_connected,
                                         http_send, http_drop,    http_heartbeat};

/* --- policy: breaker, backoff, windows, bandwidth -------------------------------------------- */

static void breaker_set(keel__uplink *u, int to)
{
    if (u->breaker == to)
        return;
    KEEL_LOG_I(MOD, "breaker for %s: %s -> %s", u->endpoint, breaker_names[u->breaker],
               breaker_names[to]);
    u->breaker = to;
    if (to == KEEL__UPLINK_OPEN)
        u->opened_at = mono();
    pthread_mutex_lock(&u->mu);
    u->st.breaker = to;
    u->st.transitions[to]++;
    pthread_mutex_unlock(&u->mu);
}

static void failure(keel__uplink *u, const keel_error *e)
{
    uint64_t now = mono();
    u->fails++;
    if (u->fails == 1)
        KEEL_LOG_W(MOD, "%s (retrying with backoff)", e->msg);
    else
        KEEL_LOG_D(MOD, "attempt %u: %s", u->fails, e->msg);
    u->batch = u->batch > 1 ? u->batch / 2 : 1;
    u->tr->drop(u);
    if (u->breaker == KEEL__UPLINK_HALF_OPEN ||
        (u->breaker == KEEL__UPLINK_CLOSED && u->fails >= u->o.breaker_failures))
        breaker_set(u, KEEL__UPLINK_OPEN);
    unsigned shift = u->fails - 1 < 30 ? u->fails - 1 : 30;
    uint64_t ceil_ms = (uint64_t)u->o.backoff_base_ms << shift;
    if (ceil_ms > u->o.backoff_cap_ms)
        ceil_ms = u->o.backoff_cap_ms;
    uint64_t delay = rand_below(ceil_ms);
    u->retry_at = now + delay * MS;
    pthread_mutex_lock(&u->mu);
    u->st.failures++;
    u->st.consecutive = u->fails;
    u->st.batch = u->batch;
    u->st.backoff_ms = delay;
    keel__strlcpy(u->st.last_error, e->msg, sizeof(u->st.last_error));
    pthread_mutex_unlock(&u->mu);
}

static void success(keel__uplink *u)
{
    if (u->fails)
        KEEL_LOG_I(MOD, "%s reachable again after %u failed attempts", u->endpoint, u->fails);
    u->fails = 0;
    u->retry_at = 0;
    breaker_set(u, KEEL__UPLINK_CLOSED);
    pthread_mutex_lock(&u->mu);
    u->st.consecutive = 0;
    u->st.backoff_ms = 0;
    pthread_mutex_unlock(&u->mu);
}

bool keel__sync_window_in_range(const keel__sync_window *w, int64_t t)
{
    if (w->from_min < 0 || w->to_min < 0)
        return true;
    time_t tt = (time_t)t;
    struct tm tm;
    if (!localtime_r(&tt, &tm))
        return true;
    int m = tm.tm_hour * 60 + tm.tm_min;
    if (w->from_min <= w->to_min)
        return m >= w->from_min && m < w->to_min;
    return m >= w->from_min || m < w->to_min; /* wraps past midnight */
}

/* Whether messages below critical may go now. */
static bool window_open(keel__uplink *u, uint64_t now)
{
    const keel__sync_window *w = &u->o.window;
    bool open = keel__sync_window_in_range(w, wall(u));
    if (open && w->every_s) {
        if (!u->win_open && now >= u->win_next) {
            u->win_open = true;
            u->win_opened = now;
        }
        open = u->win_open;
    }
    pthread_mutex_lock(&u->mu);
    u->st.window_open = open;
    pthread_mutex_unlock(&u->mu);
    return open;
}

/* The source had nothing more: an interval window closes until the next. */
static void window_drained(keel__uplink *u)
{
    if (u->o.window.every_s && u->win_open) {
        u->win_open = false;
        u->win_next = u->win_opened + (uint64_t)u->o.window.every_s * 1000 * MS;
    }
}

/* Token bucket over wire bytes, holding at most a quarter second of
 * traffic; a send may take it below zero, the next waits until it is back
 * at zero. Over any T seconds at most rate * (T + 0.25) bytes plus one
 * batch go out. */
static double bucket_cap(const keel__uplink *u)
{
    return (double)u->o.bandwidth_bps / 4;
}

static void bandwidth_refill(keel__uplink *u, uint64_t now)
{
    u->tokens += (double)u->o.bandwidth_bps * (double)(now - u->tokens_at) / 1e9;
    if (u->tokens > bucket_cap(u))
        u->tokens = bucket_cap(u);
    u->tokens_at = now;
}

static void bandwidth_wait(keel__uplink *u)
{
    if (!u->o.bandwidth_bps)
        return;
    for (;;) {
        uint64_t now = mono();
        bandwidth_refill(u, now);
        if (u->tokens >= 0 || atomic_load(&u->stopping))
            return;
        idle(u, now + (uint64_t)(-u->tokens / (double)u->o.bandwidth_bps * 1e9) + 1, false);
    }
}

/* --- the thread --------------------------------------------------------------------------------
 */

static int build_topic(keel__uplink *u, const keel__sync_msg *m, char *out, size_t n,
                       keel_error *err)
{
    char shown[160]; /* the topic escaped: it holds a producer's bytes */
    const char *t = m->topic ? m->topic : "";
    if (keel__snprintf(out, n, "keel/%s/%s/%s", u->o.device_id, keel__prio_name(m->priority), t))
        return keel__err(err, KEEL_EINVALID, "message %" PRIu64 ": topic \"%s\" too long", m->id,
                         keel__escape(shown, sizeof(shown), t, strlen(t)));
    if (!keel__topic_ok(out, strlen(out)))
        return keel__err(err, KEEL_EINVALID,
                         "message %" PRIu64 ": \"%s\" is not a valid MQTT topic (wildcards, bad "
                         "UTF-8 or too many levels)",
                         m->id, keel__escape(shown, sizeof(shown), out, strlen(out)));
    return KEEL_OK;
}

/* Gets the next batch to send, or none (*n == 0) when nothing may go now. */
static int fetch(keel__uplink *u, bool wopen, keel__sync_msg **msgs, size_t *n, keel_error *err)
{
    size_t max_bytes = u->o.batch_max_bytes;
    if (u->o.bandwidth_bps && max_bytes > u->o.bandwidth_bps / 4) /* one bucket's worth */
        max_bytes = u->o.bandwidth_bps / 4 ? (size_t)(u->o.bandwidth_bps / 4) : 1;
    if (!wopen) {
        /* Outside the window only critical goes: look at one first. */
        int rc = u->src.next_batch(u->src.ctx, 1, max_bytes, msgs, n, err);
        if (rc)
            return rc;
        bool crit = *n && (*msgs)[0].priority == KEEL__PRIO_CRITICAL;
        u->src.release(u->src.ctx);
        *n = 0;
        if (!crit)
            return KEEL_OK;
    }
    int rc = u->src.next_batch(u->src.ctx, u->batch, max_bytes, msgs, n, err);
    if (rc)
        return rc;
    if (*n && !wopen && (*msgs)[0].priority != KEEL__PRIO_CRITICAL) {
        u->src.release(u->src.ctx);
        *n = 0;
    }
    return KEEL_OK;
}

/* A message that can never be sent (not encodable, not a valid topic):
 * keeping it would stop everything behind it. */
static void drop_poison(keel__uplink *u, const keel__sync_msg *m, const keel_error *e)
{
    uint64_t id = m->id;
    keel_error ae;
    KEEL_LOG_E(MOD, "dropping message %" PRIu64 " (it can never be sent): %s", id, e->msg);
    u->src.release(u->src.ctx);
    if (u->src.ack(u->src.ctx, &id, 1, &ae))
        KEEL_LOG_E(MOD, "acknowledging dropped message %" PRIu64 ": %s", id, ae.msg);
    pthread_mutex_lock(&u->mu);
    u->st.dropped++;
    keel__strlcpy(u->st.last_error, e->msg, sizeof(u->st.last_error));
    pthread_mutex_unlock(&u->mu);
}

/* One pass: returns after sending a batch, or after waiting for a reason. */
static void step(keel__uplink *u)
{
    keel_error e;
    keel__sync_msg *msgs = NULL;
    size_t n = 0, payload = 0;
    char topic[TOPIC_MAX];
    uint64_t now = mono();

    if (now < u->retry_at) {
        idle(u, u->retry_at, false);
        return;
    }
    if (u->breaker == KEEL__UPLINK_OPEN) {
        uint64_t until = u->opened_at + (uint64_t)u->o.breaker_cooldown_ms * MS;
        if (now < until) {
            idle(u, until, false);
            return;
        }
        breaker_set(u, KEEL__UPLINK_HALF_OPEN);
    }

    bool wopen = window_open(u, now);
    if (fetch(u, wopen, &msgs, &n, &e)) {
        KEEL_LOG_W(MOD, "reading the queue: %s", e.msg);
        set_error(u, &e);
        idle(u, now + u->o.poll_ms * MS, true);
        return;
    }
    if (n == 0) {
        if (wopen)
            window_drained(u);
        if (u->tr->connected(u) && u->tr->heartbeat(u, &e)) {
            failure(u, &e);
            return;
        }
        uint64_t until = mono() + u->o.poll_ms * MS;
        if (u->o.window.every_s && !u->win_open && u->win_next < until)
            until = u->win_next; /* the next interval window */
        idle(u, until, true);
        return;
    }

    if (build_topic(u, &msgs[0], topic, sizeof(topic), &e)) {
        drop_poison(u, &msgs[0], &e);
        return;
    }
    if (u->seq >= u->seq_end)
        seq_reserve(u);
    u->env.len = 0;
    int rc = keel__envelope_encode(u->o.device_id, u->seq, msgs, n, u->o.compress, &u->env, &e);
    if (rc) {
        if (n > 1) { /* too much for one envelope: ask for fewer */
            u->src.release(u->src.ctx);
            u->batch = (uint32_t)(n / 2);
            return;
        }
        drop_poison(u, &msgs[0], &e);
        return;
    }
    if (u->ids_cap < n) {
        uint64_t *p = realloc(u->ids, n * sizeof(*p));
        if (!p) {
            u->src.release(u->src.ctx);
            keel__err(&e, KEEL_ENOMEM, "uplink: %zu message ids", n);
            set_error(u, &e);
            idle(u, now + u->o.poll_ms * MS, false);
            return;
        }
        u->ids = p;
        u->ids_cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        u->ids[i] = msgs[i].id;
        payload += msgs[i].len;
    }
    int prio = msgs[0].priority;
    u->src.release(u->src.ctx);
    msgs = NULL;

    if (!u->tr->connected(u) || u->lost) {
        if ((rc = u->tr->connect(u, &e))) {
            if (!atomic_load(&u->stopping))
                failure(u, &e);
            return;
        }
    }
    /* wire bytes: the envelope plus, roughly, the MQTT PUBLISH header or
     * the HTTP request line and headers */
    size_t wire = u->env.len + strlen(topic) + (u->tr == &http_transport ? 200 : 8);
    bandwidth_wait(u);
    if (atomic_load(&u->stopping))
        return;
    if (u->o.bandwidth_bps)
        u->tokens -= (double)wire;

    uint64_t t0 = mono();
    rc = u->tr->send(u, topic, u->env.data, u->env.len, t0 + u->o.ack_timeout_ms * MS, &e);
    uint64_t t1 = mono();
    u->last_io = t1;
    u->seq++;
    if (atomic_load(&u->stopping))
        return; /* abandoned: the messages stay in the source */
    if (rc) {
        failure(u, &e);
        return;
    }
    keel_error ae;
    if (u->src.ack(u->src.ctx, u->ids, n, &ae)) {
        /* delivered but still queued: it will go again (at least once) */
        KEEL_LOG_W(MOD, "acknowledging %zu delivered messages: %s", n, ae.msg);
        set_error(u, &ae);
    }
    int64_t when = keel__now_wall_s();
    if (u->src.synced)
        u->src.synced(u->src.ctx, when);
    success(u);
    if (t1 - t0 <= u->o.ack_target_ms * MS && n >= u->batch && u->batch < u->o.batch_max)
        u->batch = u->batch * 2 > u->o.batch_max ? u->o.batch_max : u->batch * 2;
    KEEL_LOG_D(MOD, "sent %zu %s messages (%zu bytes) to %s in %.1f ms", n, keel__prio_name(prio),
               u->env.len, topic, (double)(t1 - t0) / 1e6);
    pthread_mutex_lock(&u->mu);
    u->st.msgs += n;
    u->st.batches++;
    u->st.wire_bytes += wire;
    u->st.raw_bytes += u->env.len;
    u->st.payload_bytes += payload;
    u->st.ack_ns_sum += t1 - t0;
    u->st.ack_count++;
    u->st.batch = u->batch;
    u->st.last_sync = when;
    pthread_mutex_unlock(&u->mu);
}

static void *run(void *arg)
{
    keel__uplink *u = arg;
    while (!atomic_load(&u->stopping))
        step(u);
    u->tr->drop(u);
    return NULL;
}

/* --- options, start, stop -------------------------------------------------------------------- */

void keel__uplink_opts_default(keel__uplink_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->transport = KEEL__UPLINK_MQTT;
    o->keepalive_s = 60;
    o->heartbeat_s = 60;
    o->window.from_min = o->window.to_min = -1;
    o->batch_start = 32;
    o->batch_max = 1024;
    o->batch_max_bytes = 1024 * 1024;
    o->ack_target_ms = 1000;
    o->ack_timeout_ms = 10000;
    o->connect_timeout_ms = 10000;
    o->compress = true;
    o->backoff_base_ms = 1000;
    o->backoff_cap_ms = 300000;
    o->breaker_failures = 5;
    o->breaker_cooldown_ms = 30000;
    o->poll_ms = 1000;
}

static int parse_hhmm(const char *s, size_t len, int32_t *ret)
{
    if (len != 5 || s[2] != ':')
        return KEEL_EINVALID;
    for (size_t i = 0; i < 5; i++)
        if (i != 2 && (s[i] < '0' || s[i] > '9'))
            return KEEL_EINVALID;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59)
        return KEEL_EINVALID;
    *ret = h * 60 + m;
    return KEEL_OK;
}

int keel__sync_window_parse(const char *s, keel__sync_window *ret, keel_error *err)
{
    keel__sync_window w = {0, -1, -1};
    const char *p = s;
    bool any = false;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, ",");
        while (len && p[len - 1] == ' ')
            len--;
        if (len == 6 && !strncmp(p, "always", 6)) {
            /* nothing to restrict */
        } else if (len > 6 && !strncmp(p, "every ", 6)) {
            char *end;
            errno = 0;
            unsigned long v = strtoul(p + 6, &end, 10);
            unsigned long mul = 0;
            if (end == p + 6 || errno)
                goto bad;
            size_t ul = len - (size_t)(end - p);
            if (ul == 1 && *end == 's')
                mul = 1;
            else if (ul == 1 && *end == 'm')
                mul = 60;
            else if (ul == 1 && *end == 'h')
                mul = 3600;
            if (!mul || v == 0 || v > UINT32_MAX / mul || w.every_s)
                goto bad;
            w.every_s = (uint32_t)(v * mul);
        } else if (len == 11 && p[5] == '-' && w.from_min < 0) {
            if (parse_hhmm(p, 5, &w.from_min) || parse_hhmm(p + 6, 5, &w.to_min) ||
                w.from_min == w.to_min)
                goto bad;
        } else {
            goto bad;
        }
        any = true;
        p += strcspn(p, ",");
    }
    if (!any)
        goto bad;
    *ret = w;
    return KEEL_OK;
bad:
    return keel__err(err, KEEL_EINVALID,
                     "sync window '%s': expected 'always', 'every N[s|m|h]', 'HH:MM-HH:MM' (two "
                     "different times), or an interval and a range separated by a comma",
                     s);
}

static bool device_ok(const char *d)
{
    size_t n = d ? strlen(d) : 0;
    if (n == 0 || n > KEEL__ENVELOPE_DEVICE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = d[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int check_opts(const keel__uplink_opts *o, keel_error *err)
{
    if (!device_ok(o->device_id))
        return keel__err(err, KEEL_EINVALID,
                         "uplink: device id '%s' must be 1..%u characters of A-Z a-z 0-9 . _ -",
                         o->device_id ? o->device_id : "", KEEL__ENVELOPE_DEVICE_MAX);
    if (o->transport == KEEL__UPLINK_MQTT) {
        if (!o->host || !*o->host)
            return keel__err(err, KEEL_EINVALID, "uplink: mqtt needs a broker host");
        if (o->port < 0 || o->port > 65535)
            return keel__err(err, KEEL_EINVALID, "uplink: port %d out of range", o->port);
        if (o->keepalive_s < 5 || o->keepalive_s > 65535)
            return keel__err(err, KEEL_EINVALID, "uplink: keepalive %u s (5..65535)",
                             o->keepalive_s);
    } else if (o->transport == KEEL__UPLINK_HTTP) {
        if (!o->url || (strncmp(o->url, "http://", 7) && strncmp(o->url, "https://", 8)))
            return keel__err(err, KEEL_EINVALID, "uplink: http needs an http:// or https:// url");
    } else {
        return keel__err(err, KEEL_EINVALID, "uplink: unknown transport %d", (int)o->transport);
    }
    if ((o->cert_file == NULL) != (o->key_file == NULL))
        return keel__err(err, KEEL_EINVALID,
                         "uplink: a client certificate needs both cert_file and key_file");
    if (o->password && !o->username)
        return keel__err(err, KEEL_EINVALID, "uplink: a password needs a username");
    const keel__sync_window *w = &o->window;
    if ((w->from_min < 0) != (w->to_min < 0) || w->from_min >= 1440 || w->to_min >= 1440 ||
        (w->from_min >= 0 && w->from_min == w->to_min))
        return keel__err(err, KEEL_EINVALID,
                         "uplink: daily window %d-%d: both ends in 0..1439 minutes and different, "
                         "or both -1",
                         w->from_min, w->to_min);
    if (!o->batch_start || !o->batch_max || o->batch_start > o->batch_max || !o->batch_max_bytes)
        return keel__err(err, KEEL_EINVALID,
                         "uplink: batch sizes: 1 <= batch_start (%u) <= batch_max (%u), "
                         "batch_max_bytes > 0",
                         o->batch_start, o->batch_max);
    if (!o->ack_timeout_ms || !o->connect_timeout_ms || !o->poll_ms || !o->backoff_cap_ms ||
        o->backoff_base_ms > o->backoff_cap_ms || !o->breaker_failures)
        return keel__err(err, KEEL_EINVALID,
                         "uplink: timeouts, poll and backoff cap must be > 0, backoff base <= cap, "
                         "breaker_failures >= 1");
    return KEEL_OK;
}

int keel__uplink_start(const keel__uplink_opts *o, const keel__sync_source *src, keel__uplink **ret,
                       keel_error *err)
{
    int rc = check_opts(o, err);
    if (rc)
        return rc;
    if (!src || !src->next_batch || !src->release || !src->ack)
        return keel__err(err, KEEL_EINVALID, "uplink: the source lacks next_batch/release/ack");
    if ((rc = o->transport == KEEL__UPLINK_MQTT ? keel__mosq_load(err) : keel__curl_load(err)))
        return keel__err_prefix(err, "uplink");

    keel__uplink *u = calloc(1, sizeof(*u));
    if (!u)
        return keel__err(err, KEEL_ENOMEM, "uplink: allocating");
    u->o = *o;
    u->src = *src;
    u->wake_rd = u->wake_wr = -1;
    pthread_mutex_init(&u->mu, NULL);
    keel__buf_init(&u->env, 0);
    const char **fields[] = {&u->o.device_id, &u->o.host,     &u->o.url,      &u->o.ca_file,
                             &u->o.cert_file, &u->o.key_file, &u->o.username, &u->o.password,
                             &u->o.subscribe, &u->o.seq_path};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(fields); i++) {
        if (!*fields[i])
            continue;
        if (!(u->strs[i] = strdup(*fields[i]))) {
            rc = keel__err(err, KEEL_ENOMEM, "uplink: copying options");
            goto fail;
        }
        *fields[i] = u->strs[i];
    }
    if (u->o.transport == KEEL__UPLINK_MQTT) {
        u->tr = &mqtt_transport;
        if (!u->o.port)
            u->o.port = u->o.ca_file ? 8883 : 1883;
        snprintf(u->endpoint, sizeof(u->endpoint), "%s://%s:%d", u->o.ca_file ? "mqtts" : "mqtt",
                 u->o.host, u->o.port);
    } else {
        u->tr = &http_transport;
        snprintf(u->endpoint, sizeof(u->endpoint), "%s", u->o.url);
    }
    u->batch = u->o.batch_start;
    u->breaker = KEEL__UPLINK_CLOSED;
    u->tokens = bucket_cap(u);
    u->tokens_at = mono();
    u->win_next = mono(); /* the first interval window opens at start */
    u->st.batch = u->batch;
    u->st.breaker = KEEL__UPLINK_CLOSED;
    atomic_init(&u->stopping, false);
    if (u->o.metrics && (rc = metrics_start(u, err)))
        goto fail;

    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK)) {
        rc = keel__err_errno(err, KEEL_EIO, errno, "uplink: wake pipe");
        goto fail;
    }
    u->wake_rd = fds[0];
    u->wake_wr = fds[1];
    int e = pthread_create(&u->thread, NULL, run, u);
    if (e) {
        rc = keel__err_errno(err, KEEL_EIO, e, "uplink: starting its thread");
        goto fail;
    }
    u->started = true;
    KEEL_LOG_I(MOD, "uplink to %s started (device %s)", u->endpoint, u->o.device_id);
    *ret = u;
    return KEEL_OK;
fail:
    keel__uplink_stop(u);
    return rc;
}

void keel__uplink_stop(keel__uplink *u)
{
    if (!u)
        return;
    if (u->started) {
        atomic_store(&u->stopping, true);
        keel__uplink_wake(u, false);
        pthread_join(u->thread, NULL);
    }
    if (u->wake_rd >= 0)
        close(u->wake_rd);
    if (u->wake_wr >= 0)
        close(u->wake_wr);
    metrics_stop(u);
    keel__buf_done(&u->env);
    free(u->ids);
    for (size_t i = 0; i < KEEL_ARRAY_LEN(u->strs); i++) {
        if (u->strs[i] && u->o.password == u->strs[i]) /* no secret left in freed memory */
            explicit_bzero(u->strs[i], strlen(u->strs[i]));
        free(u->strs[i]);
    }
    pthread_mutex_destroy(&u->mu);
    free(u);
}

void keel__uplink_wake(keel__uplink *u, bool critical)
{
    KEEL_UNUSED(critical); /* the thread looks at the source either way; the
                              window decides what goes */
    if (u && u->wake_wr >= 0) {
        char c = 1;
        ssize_t r = write(u->wake_wr, &c, 1); /* a full pipe already wakes */
        KEEL_UNUSED(r);
    }
}

/* --- status and metrics ------------------------------------------------------------------------
 */

char *keel__uplink_status_json(keel__uplink *u)
{
    stats s;
    pthread_mutex_lock(&u->mu);
    s = u->st;
    pthread_mutex_unlock(&u->mu);
    cJSON *o = cJSON_CreateObject(), *tr;
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "transport", u->tr->name);
    cJSON_AddStringToObject(o, "endpoint", u->endpoint);
    cJSON_AddStringToObject(o, "device", u->o.device_id);
    cJSON_AddBoolToObject(o, "connected", s.connected);
    cJSON_AddStringToObject(o, "breaker", breaker_names[s.breaker]);
    if ((tr = cJSON_AddObjectToObject(o, "breaker_transitions")))
        for (int i = 0; i < 3; i++)
            cJSON_AddNumberToObject(tr, breaker_names[i], (double)s.transitions[i]);
    cJSON_AddNumberToObject(o, "consecutive_failures", s.consecutive);
    cJSON_AddNumberToObject(o, "backoff_ms", (double)s.backoff_ms);
    cJSON_AddBoolToObject(o, "window_open", s.window_open);
    cJSON_AddNumberToObject(o, "batch_size", s.batch);
    cJSON_AddNumberToObject(o, "messages_sent", (double)s.msgs);
    cJSON_AddNumberToObject(o, "batches_sent", (double)s.batches);
    cJSON_AddNumberToObject(o, "wire_bytes", (double)s.wire_bytes);
    cJSON_AddNumberToObject(o, "payload_bytes", (double)s.payload_bytes);
    cJSON_AddNumberToObject(o, "failures", (double)s.failures);
    cJSON_AddNumberToObject(o, "dropped", (double)s.dropped);
    if (s.last_sync) {
        char t[32];
        keel__format_rfc3339(s.last_sync, t, sizeof(t));
        cJSON_AddStringToObject(o, "last_sync", t);
    }
    if (s.last_error[0])
        cJSON_AddStringToObject(o, "last_error", s.last_error);
    char *out = keel__json_print(o);
    cJSON_Delete(o);
    return out;
}

/* The families, in exposition order: NSIMPLE without labels, then the
 * transitions by state entered, then the ack time. Each scrape copies st
 * into them (collect); status_json reads the same st. */
enum { NSIMPLE = 14, F_TRANSITIONS = NSIMPLE, F_ACK, NFAMILIES };
enum { S_ACK = NSIMPLE + 3, NSERIES };
_Static_assert(NFAMILIES == KEEL_ARRAY_LEN(((keel__uplink *)0)->fam) &&
                   NSERIES == KEEL_ARRAY_LEN(((keel__uplink *)0)->series),
               "the uplink's metric arrays");

static const keel__metric_desc families[NFAMILIES] = {
    {.name = "keel_uplink_connected",
     .help = "1 while the uplink holds a working connection.",
     .type = KEEL_METRIC_GAUGE},
    {.name = "keel_uplink_messages_total",
     .help = "Messages delivered and acknowledged.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_batches_total",
     .help = "Envelopes delivered.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_wire_bytes_total",
     .help = "Bytes sent for delivered envelopes.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_payload_bytes_total",
     .help = "Message payload bytes delivered (before compression).",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_failures_total",
     .help = "Failed connection or delivery attempts.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_dropped_total",
     .help = "Messages dropped as impossible to send.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_connects_total",
     .help = "Connections established.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_disconnects_total",
     .help = "Connections lost or closed.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_heartbeats_total",
     .help = "HTTP heartbeat probes.",
     .type = KEEL_METRIC_COUNTER},
    {.name = "keel_uplink_breaker_state",
     .help = "Circuit breaker: 0 closed, 1 open, 2 half-open.",
     .type = KEEL_METRIC_GAUGE},
    {.name = "keel_uplink_batch_size",
     .help = "Messages asked for in the next batch.",
     .type = KEEL_METRIC_GAUGE},
    {.name = "keel_uplink_window_open",
     .help = "1 while messages below critical may go.",
     .type = KEEL_METRIC_GAUGE},
    {.name = "keel_uplink_last_sync_timestamp_seconds",
     .help = "When the last batch was acked.",
     .type = KEEL_METRIC_GAUGE},
    [F_TRANSITIONS] = {.name = "keel_uplink_breaker_transitions_total",
                       .help = "Breaker state changes, by the state entered.",
                       .type = KEEL_METRIC_COUNTER,
                       .nlabels = 1,
                       .labels = {"to"}},
    [F_ACK] = {.name = "keel_uplink_ack_seconds",
               .help = "Time from sending an envelope to its acknowledgement.",
               .type = KEEL_METRIC_SUMMARY},
};

static void collect(void *ctx)
{
    keel__uplink *u = ctx;
    stats s;
    pthread_mutex_lock(&u->mu);
    s = u->st;
    pthread_mutex_unlock(&u->mu);
    const uint64_t v[NSIMPLE] = {
        s.connected,         s.msgs,    s.batches,     s.wire_bytes,         s.payload_bytes,
        s.failures,          s.dropped, s.connects,    s.disconnects,        s.heartbeats,
        (uint64_t)s.breaker, s.batch,   s.window_open, (uint64_t)s.last_sync};
    for (size_t i = 0; i < NSIMPLE; i++) {
        if (families[i].type == KEEL_METRIC_COUNTER)
            keel__metric_counter_set(u->series[i], v[i]);
        else
            keel__metric_gauge_set(u->series[i], (double)v[i]);
    }
    for (size_t i = 0; i < 3; i++)
        keel__metric_counter_set(u->series[NSIMPLE + i], s.transitions[i]);
    keel__metric_summary_set(u->series[S_ACK], (double)s.ack_ns_sum / 1e9, s.ack_count);
}

/* Registers the families and their series; the collector copies st in. */
static int metrics_start(keel__uplink *u, keel_error *err)
{
    keel__metrics *reg = u->o.metrics;
    int rc = KEEL_OK;
    for (size_t f = 0; !rc && f < NFAMILIES; f++)
        rc = keel__metrics_register(reg, &families[f], &u->fam[f], err);
    for (size_t f = 0; !rc && f < NSIMPLE; f++)
        rc = keel__metrics_series(u->fam[f], NULL, &u->series[f], err);
    for (size_t i = 0; !rc && i < 3; i++)
        rc = keel__metrics_series(u->fam[F_TRANSITIONS], &breaker_names[i], &u->series[NSIMPLE + i],
                                  err);
    if (!rc)
        rc = keel__metrics_series(u->fam[F_ACK], NULL, &u->series[S_ACK], err);
    if (!rc)
        rc = keel__metrics_collector_add(reg, collect, u, err);
    return rc;
}

static void metrics_stop(keel__uplink *u)
{
    if (!u->o.metrics)
        return;
    keel__metrics_collector_remove(u->o.metrics, collect, u);
    for (size_t i = 0; i < NSERIES; i++)
        keel__metric_series_unref(u->series[i]);
    for (size_t f = 0; f < NFAMILIES; f++)
        keel__metrics_unregister(u->o.metrics, u->fam[f]);
}
