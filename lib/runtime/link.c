/*
 * link.c - the runtime's side of store-and-forward: the queue as the
 * uplink's source (called on the uplink's thread), what bus events become
 * queue messages (the reporter), and the device shadow (desired documents
 * from the broker, local changes, the reported state).
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "runtime/rt.h"

#define MOD "runtime"

void keel__rt_wake(keel__runtime *rt, bool critical)
{
    if (rt->uplink)
        keel__uplink_wake(rt->uplink, critical);
}

/* Removes expired messages at most every 10 s (from whichever caller comes). */
/* Evicting is data loss. The queue counts it (keel_queue_evicted_total);
 * the runtime says so in the log, at most once a minute per class. */
static void report_evictions(keel__runtime *rt, int64_t now)
{
    keel_queue_stats st;
    keel_error e;
    if (keel_queue_stats_get(rt->queue, &st, &e))
        return;
    pthread_mutex_lock(&rt->lock);
    for (int p = 0; p < KEEL_PRIO_COUNT; p++) {
        uint64_t total = st.cls[p].evicted, n = total - rt->evict_reported[p];
        if (total <= rt->evict_reported[p] || now - rt->evict_reported_at[p] < 60)
            continue;
        KEEL_LOG_W(MOD,
                   "queue full: evicted %" PRIu64 " %s message(s) to make room; %" PRIu64
                   " %s evicted since the queue was created (raise queue_max_bytes or "
                   "queue_max_rows, or let the uplink drain it)",
                   n, keel_prio_name((keel_prio)p), total, keel_prio_name((keel_prio)p));
        rt->evict_reported[p] = total;
        rt->evict_reported_at[p] = now;
    }
    pthread_mutex_unlock(&rt->lock);
}

void keel__rt_expire_maybe(keel__runtime *rt)
{
    int64_t now = keel__now_wall_s(), last = rt->last_expire;
    if (now - last < 10 || !atomic_compare_exchange_strong(&rt->last_expire, &last, now))
        return;
    keel_error e;
    uint64_t n = 0;
    if (keel_queue_expire(rt->queue, now, &n, &e))
        KEEL_LOG_W(MOD, "queue expiry: %s", e.msg);
    report_evictions(rt, now);
}

typedef struct produced_ctx {
    keel__runtime *rt;
    bool critical;
    char what[KEEL_NAME_MAX + 64];
} produced_ctx;

/* The committer's word on a produced message (its thread). */
static void produced(void *arg, int rc, uint64_t id, const keel_error *err)
{
    produced_ctx *p = arg;
    if (rc)
        KEEL_LOG_W(MOD, "could not queue %s: %s", p->what, err->msg);
    else
        keel__rt_wake(p->rt, p->critical);
    free(p);
}

/* Queues m without holding the caller (a request's thread: the inference
 * that produced a record must not wait for its fsync); logs (once, here)
 * when it cannot. */
static void produce(keel__runtime *rt, keel_msg_in *m, int build_rc, const char *what)
{
    keel_error e;
    produced_ctx *p = build_rc ? NULL : malloc(sizeof(*p));
    m->content_type = "application/json";
    if (!p) {
        KEEL_LOG_W(MOD, "could not queue %s: out of memory", what);
        return;
    }
    *p = (produced_ctx){.rt = rt, .critical = m->prio == KEEL_PRIO_CRITICAL};
    keel__strlcpy(p->what, what, sizeof(p->what));
    if (keel_queue_enqueue_async(rt->queue, m, produced, p, &e)) {
        KEEL_LOG_W(MOD, "could not queue %s: %s", what, e.msg);
        free(p);
    }
}

/* Whether an all-tiers-failed alert for model goes out now: at most one per
 * package every 10 s, with the count of those folded into it. */
static bool fold_all_failed(keel__runtime *rt, const char *model, uint64_t *ret_folded)
{
    int64_t now = keel__now_wall_s();
    size_t slot = 0;
    bool send = true;
    pthread_mutex_lock(&rt->fold_mu);
    for (size_t i = 0; i < KEEL_ARRAY_LEN(rt->recent); i++) {
        if (!strcmp(rt->recent[i].name, model)) {
            slot = i;
            break;
        }
        if (rt->recent[i].last < rt->recent[slot].last)
            slot = i;
    }
    if (!strcmp(rt->recent[slot].name, model) && now - rt->recent[slot].last < 10) {
        rt->recent[slot].folded++;
        send = false;
    } else {
        if (strcmp(rt->recent[slot].name, model))
            rt->recent[slot].folded = 0;
        keel__strlcpy(rt->recent[slot].name, model, sizeof(rt->recent[slot].name));
        rt->recent[slot].last = now;
        *ret_folded = rt->recent[slot].folded;
        rt->recent[slot].folded = 0;
    }
    pthread_mutex_unlock(&rt->fold_mu);
    return send;
}

/* Update steps and revocations into the queue: `updates` (normal) for
 * every step but a rollback, `alerts/update` (critical) for a rollback,
 * `alerts/revoked` (critical) for a revoked installed version. */
static void report_update(keel__runtime *rt, const keel__bus_event *ev)
{
    keel_buf b;
    keel_msg_in m = {.prio = KEEL_PRIO_NORMAL, .topic = "updates"};
    const char *step = ev->detail ? ev->detail : "";
    if (ev->type == KEEL__BUS_REVOKED) {
        m.prio = KEEL_PRIO_CRITICAL;
        m.topic = "alerts/revoked";
        step = "revoked";
    } else if (!strcmp(step, "rolled_back")) {
        m.prio = KEEL_PRIO_CRITICAL;
        m.topic = "alerts/update";
    }
    keel__buf_init(&b, 1u << 16);
    int rc = keel__buf_appendf(&b, "{\"device\":");
    if (!rc)
        rc = keel__json_quote(&b, rt->device_id);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"at\":%lld,\"type\":\"%s\",\"step\":", (long long)ev->at,
                               ev->type == KEEL__BUS_REVOKED ? "revoked" : "update");
    if (!rc)
        rc = keel__json_quote(&b, step);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"package\":");
    if (!rc)
        rc = keel__json_quote(&b, ev->package ? ev->package : "");
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"version\":");
    if (!rc)
        rc = keel__json_quote(&b, ev->version ? ev->version : "");
    if (!rc && ev->reason && ev->reason[0]) {
        rc = keel__buf_appendf(&b, ",\"reason\":");
        if (!rc)
            rc = keel__json_quote(&b, ev->reason);
    }
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    m.payload = b.data;
    m.payload_len = b.len;
    char what[KEEL_NAME_MAX + 64];
    snprintf(what, sizeof(what), "a %s event (%s) for %s", m.topic, step,
             ev->package ? ev->package : "?");
    produce(rt, &m, rc, what);
    keel__buf_done(&b);
}

/* Bus events into the queue: tier transitions (high), requests no tier
 * could answer (critical, folded), inference records (bulk), update steps
 * and revocations (report_update). */
void keel__rt_reporter(void *ctx, const keel__bus_event *ev)
{
    keel__runtime *rt = ctx;
    keel_buf b;
    keel_msg_in m = {0};
    char topic[KEEL_NAME_MAX + 16];
    uint64_t folded = 0;
    if (ev->type == KEEL__BUS_UPDATE || ev->type == KEEL__BUS_REVOKED) {
        report_update(rt, ev);
        return;
    }
    if (ev->type == KEEL__BUS_ALL_FAILED && !fold_all_failed(rt, ev->package, &folded))
        return;
    keel__buf_init(&b, 1u << 20);
    int rc = keel__buf_appendf(&b, "{\"device\":");
    if (!rc)
        rc = keel__json_quote(&b, rt->device_id);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"at\":%lld,\"model\":\"%s\",\"version\":\"%s\",\"tier\":",
                               (long long)ev->at, ev->package, ev->version);
    if (!rc)
        rc = keel__json_quote(&b, ev->tier ? ev->tier : "");
    switch (ev->type) {
    case KEEL__BUS_TIER:
        m.prio = KEEL_PRIO_HIGH;
        snprintf(topic, sizeof(topic), "alerts/tier");
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"type\":\"tier_transition\",\"from\":");
        if (!rc)
            rc = keel__json_quote(&b, ev->from_tier ? ev->from_tier : "");
        break;
    case KEEL__BUS_ALL_FAILED:
        m.prio = KEEL_PRIO_CRITICAL;
        snprintf(topic, sizeof(topic), "alerts/inference");
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"type\":\"all_tiers_failed\",\"earlier_failures\":%llu",
                                   (unsigned long long)folded);
        break;
    default:
        m.prio = KEEL_PRIO_BULK;
        snprintf(topic, sizeof(topic), "records/%s", ev->package);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"type\":\"record\",\"degraded\":%s,\"latency_us\":%.1f",
                                   ev->degraded ? "true" : "false", (double)ev->ns / 1e3);
        if (!rc && ev->result)
            rc = keel__buf_appendf(&b, ",\"result\":%s", ev->result);
        break;
    }
    if (!rc && ev->reason && ev->reason[0]) {
        rc = keel__buf_appendf(&b, ",\"reason\":");
        if (!rc)
            rc = keel__json_quote(&b, ev->reason);
    }
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    m.topic = topic;
    m.payload = b.data;
    m.payload_len = b.len;
    char what[KEEL_NAME_MAX + 64];
    snprintf(what, sizeof(what), "a %s event for %s", topic, ev->package);
    produce(rt, &m, rc, what);
    keel__buf_done(&b);
}

/* --- the queue as the uplink's source ------------------------------------------------------ */

static void src_release(void *ctx)
{
    keel__runtime *rt = ctx;
    keel_queue_batch_free(rt->batch);
    free(rt->sbatch);
    rt->batch = NULL;
    rt->sbatch = NULL;
}

static int src_next(void *ctx, size_t max, size_t max_bytes, keel__sync_msg **ret, size_t *n,
                    keel_error *err)
{
    keel__runtime *rt = ctx;
    size_t got = 0;
    src_release(rt);
    keel__rt_expire_maybe(rt);
    int rc = keel_queue_peek_batch(rt->queue, max, max_bytes, KEEL_QUEUE_PEEK_SAME_TOPIC,
                                   &rt->batch, &got, err);
    if (rc || !got) {
        *ret = NULL;
        *n = 0;
        return rc;
    }
    if (!(rt->sbatch = calloc(got, sizeof(*rt->sbatch)))) {
        src_release(rt);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < got; i++) {
        const keel_msg *m = &rt->batch[i];
        rt->sbatch[i] = (keel__sync_msg){.id = m->id,
                                         .priority = (int)m->prio,
                                         .created = m->created_at,
                                         .topic = m->topic,
                                         .content_type = m->content_type,
                                         .payload = m->payload,
                                         .len = m->payload_len};
    }
    *ret = rt->sbatch;
    *n = got;
    return KEEL_OK;
}

static int src_ack(void *ctx, const uint64_t *ids, size_t n, keel_error *err)
{
    return keel_queue_ack(((keel__runtime *)ctx)->queue, ids, n, err);
}

static void src_synced(void *ctx, int64_t when)
{
    keel_error e;
    if (keel_queue_mark_synced(((keel__runtime *)ctx)->queue, when, &e))
        KEEL_LOG_W(MOD, "recording the sync time: %s", e.msg);
}

static void on_link(void *ctx, bool up, const char *endpoint)
{
    keel__runtime *rt = ctx;
    keel__bus_event ev = {
        .type = up ? KEEL__BUS_LINK_UP : KEEL__BUS_LINK_DOWN, .detail = endpoint, .ok = up};
    keel__bus_publish(rt->bus, &ev);
}

/* --- the device shadow ---------------------------------------------------------------------- */

/* Settings the shadow may change at run time; the others are kept and
 * reported for the application. */
void keel__rt_apply_shadow(keel__runtime *rt)
{
    char *lv = keel__shadow_get(rt->shadow, "log_level");
    static const char *const levels[] = {"\"error\"", "\"warn\"", "\"info\"", "\"debug\""};
    for (int i = 0; lv && i < 4; i++)
        if (!strcmp(lv, levels[i]))
            keel_log_set_level((keel_log_level)i);
    free(lv);
}

/* Queues the reported state (topic shadow/reported, high): the shadow,
 * what each package serves, the queue's depth. */
void keel__rt_report_shadow(keel__runtime *rt)
{
    keel_buf b;
    keel_error e;
    keel_serving *sv = NULL;
    size_t n = 0;
    keel_queue_stats st;
    char *sh = keel__shadow_json(rt->shadow);
    keel__buf_init(&b, 0);
    int rc = !sh || keel__buf_appendf(&b, "{\"type\":\"shadow_reported\",\"device\":");
    if (!rc)
        rc = keel__json_quote(&b, rt->device_id);
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"at\":%lld,\"shadow\":%s,\"packages\":{",
                               (long long)keel__now_wall_s(), sh);
    if (!rc && !keel_store_serving_list(rt->store, &sv, &n, &e))
        for (size_t i = 0; !rc && i < n; i++)
            rc =
                keel__buf_appendf(&b, "%s\"%s\":{\"version\":\"%s\",\"slot\":\"%s\"}", i ? "," : "",
                                  sv[i].name, sv[i].version, keel_slot_name(sv[i].slot));
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    if (!rc && !keel_queue_stats_get(rt->queue, &st, &e))
        rc = keel__buf_appendf(&b, ",\"queue_depth\":%llu", (unsigned long long)st.depth);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    keel_msg_in m = {.topic = "shadow/reported",
                     .prio = KEEL_PRIO_HIGH,
                     .payload = b.data,
                     .payload_len = b.len};
    produce(rt, &m, rc, "the reported shadow");
    free(sv);
    free(sh);
    keel__buf_done(&b);
}

/* A desired document from keel/DEVICE/shadow/desired (the uplink's thread). */
static void on_desired(void *ctx, const char *topic, const void *payload, size_t len)
{
    keel__runtime *rt = ctx;
    unsigned applied = 0, conflicts = 0;
    keel_error e;
    if (!len) /* a cleared retained message */
        return;
    if (keel__shadow_apply_desired(rt->shadow, payload, len, &applied, &conflicts, &e)) {
        KEEL_LOG_W(MOD, "desired shadow from %s refused: %s", topic, e.msg);
        return;
    }
    if (!applied && !conflicts)
        return;
    KEEL_LOG_I(MOD, "desired shadow: %u keys applied, %u conflicts", applied, conflicts);
    keel__bus_event ev = {.type = KEEL__BUS_SHADOW, .detail = "desired", .ok = conflicts == 0};
    keel__bus_publish(rt->bus, &ev);
    keel__rt_apply_shadow(rt);
    keel__rt_report_shadow(rt);
}

/* --- the uplink --------------------------------------------------------------------------------
 */

/* Starts the uplink the config asks for (none: nothing). */
int keel__rt_link_start(keel__runtime *rt, keel_error *err)
{
    const keel__conf *c = rt->conf; /* the uplink's settings need a restart: no lock */
    const char *uplink = keel__conf_str(c, "uplink"), *host = keel__conf_str(c, "mqtt_host"),
               *url = keel__conf_str(c, "uplink_url"), *window = keel__conf_str(c, "sync_window"),
               *pwfile = keel__conf_str(c, "uplink_password_file");
    keel__uplink_opts o;
    char *password = NULL;
    size_t plen = 0;
    if (!strcmp(uplink, "none"))
        return KEEL_OK;
    keel__uplink_opts_default(&o);
    if (!strcmp(uplink, "mqtt")) {
        o.transport = KEEL__UPLINK_MQTT;
        o.host = host;
        o.port = (int)keel__conf_u64(c, "mqtt_port");
    } else if (!strcmp(uplink, "http")) {
        o.transport = KEEL__UPLINK_HTTP;
        o.url = url;
    } else {
        return keel__err(err, KEEL_EINVALID, "uplink: \"%s\" is not none, mqtt or http", uplink);
    }
#define OPT_PATH(k) (keel__conf_str(c, k)[0] ? keel__conf_str(c, k) : NULL)
    o.device_id = rt->device_id;
    o.ca_file = OPT_PATH("uplink_ca");
    o.cert_file = OPT_PATH("uplink_cert");
    o.key_file = OPT_PATH("uplink_key");
    o.username = OPT_PATH("uplink_username");
#undef OPT_PATH
    o.bandwidth_bps = keel__conf_u64(c, "uplink_bandwidth");
    o.on_link = on_link;
    o.link_ctx = rt;
    o.metrics = rt->metrics;
    char seq_path[PATH_MAX];
    keel__runtime_path(rt, KEEL_STATE_UPLINK_SEQ, seq_path, sizeof(seq_path));
    o.seq_path = seq_path;
    int rc = keel__sync_window_parse(window, &o.window, err);
    if (!rc && pwfile[0] && !(rc = keel__fs_read(pwfile, 4096, &password, &plen, err))) {
        while (plen && (password[plen - 1] == '\n' || password[plen - 1] == '\r'))
            password[--plen] = 0;
        o.password = password;
    }
    char sub[160];
    snprintf(sub, sizeof(sub), "keel/%s/shadow/desired", rt->device_id);
    if (o.transport == KEEL__UPLINK_MQTT) {
        o.subscribe = sub;
        o.on_message = on_desired;
        o.msg_ctx = rt;
    }
    keel__sync_source src = {.ctx = rt,
                             .next_batch = src_next,
                             .release = src_release,
                             .ack = src_ack,
                             .synced = src_synced};
    if (!rc)
        rc = keel__uplink_start(&o, &src, &rt->uplink, err);
    if (password) {
        memset(password, 0, plen);
        free(password);
    }
    if (rc)
        return rc; /* the message names the uplink option already */
    KEEL_LOG_I(MOD, "uplink: %s to %s as %s, window %s", uplink,
               o.transport == KEEL__UPLINK_MQTT ? host : url, rt->device_id, window);
    return KEEL_OK;
}

void keel__rt_link_stop(keel__runtime *rt)
{
    keel__uplink_stop(rt->uplink);
    rt->uplink = NULL;
    src_release(rt);
}
