/*
 * rt.h - the runtime's insides, shared by runtime.c (open, close,
 * readiness, package actions), link.c (the queue as the uplink's source,
 * the shadow, what events become queue messages), reprocess.c
 * (escalations the upstream could not answer yet) and revocation.c (the
 * trust dir re-checked against what is installed). Nothing outside
 * lib/runtime includes this.
 */
#ifndef KEEL_RUNTIME_RT_H
#define KEEL_RUNTIME_RT_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

#include "infer/router.h"
#include "runtime/jobs.h"
#include "runtime/runtime.h"
#include "sync/shadow.h"
#include "sync/uplink.h"
#include "update/verdict.h"

typedef struct keel__rt_probation keel__rt_probation;

struct keel__runtime {
    keel__conf *conf; /* under lock: a reload swaps it */
    char state_dir[PATH_MAX];
    char device_id[64];
    pthread_mutex_t lock;
    char token[65];
    uint64_t started_ns;
    keel__metrics *metrics;      /* every module's families; freed last */
    keel__metric_family *fam[6]; /* the runtime's own: keel_up, keel_ready, keel_queue_* */
    keel__bus *bus;
    keel_store *store;
    keel_queue *queue;
    keel__shadow *shadow;
    keel__uplink *uplink;  /* NULL: uplink = none */
    keel__router *router;  /* NULL: no upstream_url */
    keel_queue *reprocess; /* escalations the upstream could not answer yet */
    keel__infer *infer;
    keel__jobs *jobs;
    struct keel__rt_update *update; /* update_job.c: checks, downloads, deferred actions */
    int job_verify, job_expire, job_reprocess;
    int sub_reporter, sub_reprocess;
    keel__rt_probation *probation; /* probation.c */
    keel__verdicts *verdicts;      /* versions not to retry, promoted (probation.c loads it) */
    struct keel__rt_revocation *revocation; /* revocation.c */
    /* readiness, under lock */
    bool ready;
    char why[4096];
    /* the uplink's current batch (its thread only) */
    keel_msg *batch;
    keel__sync_msg *sbatch;
    /* all-tiers-failed folding (reporter) */
    pthread_mutex_t fold_mu;
    struct {
        char name[KEEL_NAME_MAX];
        int64_t last;
        uint64_t folded;
    } recent[32];
    _Atomic int64_t last_expire;
    struct keel__rt_import *imp;  /* import.c: USB / air-gap imports, import_dir */
    struct keel__rt_peers *peers; /* peers.c: LAN peer table, beacon */
    /* evictions reported (link.c report_evictions), under lock */
    uint64_t evict_reported[KEEL_PRIO_COUNT];
    int64_t evict_reported_at[KEEL_PRIO_COUNT];
};

/* link.c */
KEEL_WUR int keel__rt_link_start(keel__runtime *rt, keel_error *err);
void keel__rt_link_stop(keel__runtime *rt);
void keel__rt_expire_maybe(keel__runtime *rt);
void keel__rt_wake(keel__runtime *rt, bool critical);
void keel__rt_report_shadow(keel__runtime *rt);
void keel__rt_apply_shadow(keel__runtime *rt);
void keel__rt_reporter(void *ctx, const keel__bus_event *ev);

/* runtime.c */
void keel__rt_trust_dir(keel__runtime *rt, char *buf, size_t n);

/* update_job.c */
typedef struct keel__rt_update keel__rt_update;
KEEL_WUR int keel__rt_update_start(keel__runtime *rt, keel_error *err);
void keel__rt_update_stop(keel__runtime *rt);

/* update_glue.c: what the pipeline asks of peers; probation.c: of verdicts
 * (STATE_DIR/update/verdicts.json) */
struct keel__fetch_opts;
void keel__rt_peers_for_fetch(keel__runtime *rt, struct keel__fetch_opts *fo);
void keel__rt_peers_done(keel__runtime *rt, struct keel__fetch_opts *fo);
void keel__rt_verdict_refused(keel__runtime *rt, const char *name, const char *version,
                              const char *why);
bool keel__rt_verdict_blocked(keel__runtime *rt, const char *name, const char *version, char *why,
                              size_t n);

/* probation.c: watches activated versions, rolls back or promotes them;
 * loads rt->verdicts. Start after the jobs, before the engine. */
KEEL_WUR int keel__rt_probation_start(keel__runtime *rt, keel_error *err);
void keel__rt_probation_stop(keel__runtime *rt);
/* {"PACKAGE":{"state":...,"version":...,"metrics":{...},...},...} (malloc'd) */
char *keel__rt_probation_status_json(keel__runtime *rt);
/* revocation.c: the first re-check (at open, before the first readiness)
 * and the job that watches the trust dir; a re-check when the trust files
 * changed since the last one. */
KEEL_WUR int keel__rt_revocation_start(keel__runtime *rt, keel_error *err);
void keel__rt_revocation_stop(keel__runtime *rt);
void keel__rt_trust_poll(keel__runtime *rt);

/* reprocess.c */
KEEL_WUR int keel__rt_reprocess_start(keel__runtime *rt, keel_error *err);
void keel__rt_reprocess_stop(keel__runtime *rt);

/* import.c */
KEEL_WUR int keel__rt_import_start(keel__runtime *rt, keel_error *err);
void keel__rt_import_stop(keel__runtime *rt);

/* peers.c */
KEEL_WUR int keel__rt_peers_start(keel__runtime *rt, keel_error *err);
void keel__rt_peers_stop(keel__runtime *rt);

#endif
