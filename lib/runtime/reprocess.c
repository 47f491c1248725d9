/*
 * reprocess.c - escalations the upstream could not answer yet. A failed
 * escalation arrives on the bus (KEEL__BUS_ESCALATION) and is kept in
 * STATE_DIR/reprocess.db: the local result, a newline, then the request as
 * received (its JSON part's length in the content type). A job sends them
 * to the upstream once it answers again; each answer becomes a correction
 * event (topic corrections/MODEL, high) with the local and the upstream
 * result side by side.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "keel/layout.h"
#include "runtime/rt.h"

#define MOD "runtime"

static void keep(void *ctx, const keel__bus_event *ev)
{
    keel__runtime *rt = ctx;
    keel_buf b;
    char ctype[64];
    keel_error e;
    keel__buf_init(&b, 0);
    snprintf(ctype, sizeof(ctype), "keel-hlen=%zu", ev->json_len);
    if (keel__buf_appendf(&b, "%s\n", ev->result ? ev->result : "null") ||
        keel__buf_append(&b, ev->data ? ev->data : "", ev->len)) {
        keel__buf_done(&b);
        return;
    }
    keel_msg_in m = {.topic = ev->package,
                     .prio = KEEL_PRIO_NORMAL,
                     .payload = b.data,
                     .payload_len = b.len,
                     .content_type = ctype};
    if (keel_queue_enqueue(rt->reprocess, &m, NULL, &e))
        KEEL_LOG_W(MOD, "cannot keep %s's escalation for later: %s", ev->package, e.msg);
    else
        keel__jobs_kick(rt->jobs, rt->job_reprocess);
    keel__buf_done(&b);
}

/* One correction event from a kept escalation and the upstream's answer. */
static int correct(keel__runtime *rt, const keel_msg *m, size_t head,
                   const keel__upstream_answer *a, keel_error *e)
{
    keel_buf ev;
    keel__buf_init(&ev, 0);
    int rc = keel__buf_appendf(&ev, "{\"type\":\"correction\",\"device\":");
    if (!rc)
        rc = keel__json_quote(&ev, rt->device_id);
    if (!rc)
        rc = keel__buf_appendf(&ev,
                               ",\"model\":\"%s\",\"queued_at\":%lld,"
                               "\"local_result\":%.*s,\"upstream\":%.*s}",
                               m->topic, (long long)m->created_at, (int)(head - 1),
                               (const char *)m->payload, (int)a->json_len, a->body.data);
    char topic[KEEL_NAME_MAX + 16];
    snprintf(topic, sizeof(topic), "corrections/%s", m->topic);
    keel_msg_in cm = {.topic = topic,
                      .prio = KEEL_PRIO_HIGH,
                      .payload = ev.data,
                      .payload_len = ev.len,
                      .content_type = "application/json"};
    if (rc)
        rc = keel__err(e, KEEL_ENOMEM, "out of memory");
    else
        rc = keel_queue_enqueue(rt->queue, &cm, NULL, e);
    keel__buf_done(&ev);
    return rc;
}

static void job_reprocess(void *ctx)
{
    keel__runtime *rt = ctx;
    keel_msg *batch = NULL;
    size_t n = 0;
    keel_error e = {0};
    if (!keel__router_allow(rt->router) ||
        keel_queue_peek_batch(rt->reprocess, 16, 16u << 20, 0, &batch, &n, &e))
        return;
    for (size_t i = 0; i < n; i++) {
        const keel_msg *m = &batch[i];
        const char *nl = memchr(m->payload, '\n', m->payload_len);
        keel__upstream_answer a;
        keel_error ue = {0};
        if (!nl || strncmp(m->content_type, "keel-hlen=", 10)) { /* not ours: drop it */
            if (keel_queue_ack(rt->reprocess, &m->id, 1, &e))
                KEEL_LOG_W(MOD, "re-processing: %s", e.msg);
            continue;
        }
        size_t hlen = (size_t)strtoull(m->content_type + 10, NULL, 10);
        size_t head = (size_t)(nl + 1 - (const char *)m->payload);
        if (keel__router_forward(rt->router, m->topic, nl + 1, m->payload_len - head, hlen, 5000,
                                 &a, &ue))
            break; /* still away: try again later */
        if (!correct(rt, m, head, &a, &e)) {
            if (keel_queue_ack(rt->reprocess, &m->id, 1, &e))
                KEEL_LOG_W(MOD, "re-processing: %s", e.msg);
            keel__rt_wake(rt, false);
        }
        keel__buf_done(&a.body);
    }
    keel_queue_batch_free(batch);
}

int keel__rt_reprocess_start(keel__runtime *rt, keel_error *err)
{
    char path[PATH_MAX];
    keel_queue_opts qo;
    const char *upstream = keel__conf_str(rt->conf, "upstream_url"); /* fixed while open */
    if (!upstream[0])
        return KEEL_OK;
    int rc = keel__router_new(upstream, &rt->router, err);
    if (!rc)
        rc = keel__router_metrics_register(rt->router, rt->metrics, err);
    if (rc)
        return rc;
    keel_queue_opts_default(&qo);
    (void)keel_state_path(rt->state_dir, KEEL_STATE_REPROCESS_DB, path, sizeof(path));
    if ((rc = keel__fs_private_db(path, err)) ||
        (rc = keel_queue_open(path, &qo, &rt->reprocess, err)))
        return rc;
    rt->job_reprocess = keel__jobs_add(rt->jobs, "reprocess", 2, job_reprocess, rt);
    rt->sub_reprocess = keel__bus_subscribe(rt->bus, KEEL__BUS_ESCALATION, keep, rt);
    if (!rt->job_reprocess || !rt->sub_reprocess)
        return keel__err(err, KEEL_ENOMEM, "cannot schedule re-processing");
    KEEL_LOG_I(MOD, "upstream for routed packages: %s", upstream);
    return KEEL_OK;
}

void keel__rt_reprocess_stop(keel__runtime *rt)
{
    keel__bus_unsubscribe(rt->bus, rt->sub_reprocess);
    rt->sub_reprocess = 0;
    keel_queue_close(rt->reprocess);
    rt->reprocess = NULL;
    keel__router_free(rt->router);
    rt->router = NULL;
}
