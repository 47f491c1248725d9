/* jobs.c - the background jobs thread (jobs.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/jobs.h"

#define MAX_JOBS 16

typedef struct job {
    char name[32];
    uint64_t period_ns, due_ns; /* due 0: only when kicked */
    bool kicked;
    keel__job_fn fn;
    void *ctx;
    uint64_t runs, last_ns;
} job;

struct keel__jobs {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* CLOCK_MONOTONIC */
    pthread_cond_t done_cv; /* a job finished a run */
    job jobs[MAX_JOBS];
    size_t n;
    job *running;
    bool stop;
};

static void *jobs_main(void *arg)
{
    keel__jobs *j = arg;
    pthread_mutex_lock(&j->mu);
    while (!j->stop) {
        uint64_t now = keel__now_mono_ns(), next = UINT64_MAX;
        job *run = NULL;
        for (size_t i = 0; i < j->n; i++) {
            job *b = &j->jobs[i];
            if (!b->fn)
                continue;
            if (b->kicked || (b->due_ns && b->due_ns <= now)) {
                if (!run || b->kicked > run->kicked || (b->due_ns < run->due_ns && !run->kicked))
                    run = b;
            } else if (b->due_ns && b->due_ns < next) {
                next = b->due_ns;
            }
        }
        if (run) {
            run->kicked = false;
            run->due_ns = run->period_ns ? now + run->period_ns : 0;
            keel__job_fn fn = run->fn;
            void *ctx = run->ctx;
            j->running = run;
            pthread_mutex_unlock(&j->mu);
            uint64_t t0 = keel__now_mono_ns();
            fn(ctx);
            uint64_t took = keel__now_mono_ns() - t0;
            pthread_mutex_lock(&j->mu);
            run->runs++;
            run->last_ns = took;
            j->running = NULL;
            pthread_cond_broadcast(&j->done_cv);
            continue;
        }
        if (next == UINT64_MAX) {
            pthread_cond_wait(&j->cv, &j->mu);
        } else {
            struct timespec ts = {.tv_sec = (time_t)(next / 1000000000u),
                                  .tv_nsec = (long)(next % 1000000000u)};
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        }
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

keel__jobs *keel__jobs_start(void)
{
    keel__jobs *j = calloc(1, sizeof(*j));
    pthread_condattr_t ca;
    pthread_attr_t attr;
    if (!j)
        return NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&j->done_cv, NULL);
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&j->thread, &attr, jobs_main, j);
    pthread_attr_destroy(&attr);
    if (rc) {
        pthread_cond_destroy(&j->cv);
        pthread_mutex_destroy(&j->mu);
        free(j);
        return NULL;
    }
    return j;
}

void keel__jobs_stop(keel__jobs *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    j->stop = true;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->thread, NULL);
    pthread_cond_destroy(&j->done_cv);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

int keel__jobs_add(keel__jobs *j, const char *name, uint64_t period_s, keel__job_fn fn, void *ctx)
{
    int id = 0;
    pthread_mutex_lock(&j->mu);
    if (j->n < MAX_JOBS) {
        job *b = &j->jobs[j->n++];
        memset(b, 0, sizeof(*b));
        keel__strlcpy(b->name, name, sizeof(b->name));
        b->period_ns = period_s * 1000000000ull;
        b->due_ns = period_s ? keel__now_mono_ns() + b->period_ns : 0;
        b->fn = fn;
        b->ctx = ctx;
        id = (int)j->n;
        pthread_cond_signal(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return id;
}

void keel__jobs_set_period(keel__jobs *j, int id, uint64_t period_s)
{
    if (!j || id <= 0)
        return;
    pthread_mutex_lock(&j->mu);
    if ((size_t)id <= j->n) {
        job *b = &j->jobs[id - 1];
        b->period_ns = period_s * 1000000000ull;
        b->due_ns = period_s ? keel__now_mono_ns() + b->period_ns : 0;
        pthread_cond_signal(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
}

void keel__jobs_remove(keel__jobs *j, int id)
{
    if (!j || id <= 0)
        return;
    pthread_mutex_lock(&j->mu);
    if ((size_t)id <= j->n) {
        job *b = &j->jobs[id - 1];
        b->fn = NULL;
        b->due_ns = 0;
        b->kicked = false;
        while (j->running == b)
            pthread_cond_wait(&j->done_cv, &j->mu);
    }
    pthread_mutex_unlock(&j->mu);
}

void keel__jobs_kick(keel__jobs *j, int id)
{
    if (!j || id <= 0)
        return;
    pthread_mutex_lock(&j->mu);
    if ((size_t)id <= j->n) {
        j->jobs[id - 1].kicked = true;
        pthread_cond_signal(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
}

char *keel__jobs_status_json(keel__jobs *j)
{
    keel_buf b;
    int rc;
    keel__buf_init(&b, 0);
    rc = keel__buf_append(&b, "{", 1);
    pthread_mutex_lock(&j->mu);
    for (size_t i = 0, k = 0; !rc && i < j->n; i++)
        if (j->jobs[i].fn)
            rc = keel__buf_appendf(
                &b, "%s\"%s\":{\"period_s\":%llu,\"runs\":%llu,\"last_ms\":%.3f}", k++ ? "," : "",
                j->jobs[i].name, (unsigned long long)(j->jobs[i].period_ns / 1000000000u),
                (unsigned long long)j->jobs[i].runs, (double)j->jobs[i].last_ns / 1e6);
    pthread_mutex_unlock(&j->mu);
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    if (rc) {
        keel__buf_done(&b);
        return NULL;
    }
    return keel__buf_steal(&b);
}
