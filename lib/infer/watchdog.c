/*
 * watchdog.c - one thread that fires callbacks at deadlines (stopping ONNX
 * Runtime runs that went over their tier's budget), and the RSS reader.
 *
 * Armed entries sit in a small linked list; the thread sleeps on a
 * monotonic condvar until the earliest deadline it knows of. Arming costs a
 * lock and, only when the new deadline comes before that wake-up (or the
 * thread sleeps with nothing to watch), a signal: under steady load with one
 * deadline length that is about one wake-up per deadline period, not one
 * per request.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "infer/backend.h"

typedef struct entry {
    struct entry *next;
    uint64_t id, deadline;
    void (*fire)(void *);
    void *arg;
} entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv, done_cv;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static entry *armed;
static uint64_t next_id = 1, firing; /* id being fired, 0 none */
static bool started;
static uint64_t wake_at; /* when the thread will look next; UINT64_MAX: never */

static void *run(void *unused)
{
    pthread_mutex_lock(&mu);
    for (;;) {
        uint64_t now = keel__now_mono_ns();
        entry **pp = &armed, *due = NULL;
        for (; *pp; pp = &(*pp)->next)
            if ((*pp)->deadline <= now) {
                due = *pp;
                *pp = due->next;
                break;
            }
        if (due) {
            firing = due->id;
            pthread_mutex_unlock(&mu);
            due->fire(due->arg);
            free(due);
            pthread_mutex_lock(&mu);
            firing = 0;
            pthread_cond_broadcast(&done_cv);
            continue;
        }
        uint64_t soonest = UINT64_MAX;
        for (entry *e = armed; e; e = e->next)
            if (e->deadline < soonest)
                soonest = e->deadline;
        wake_at = soonest;
        if (soonest == UINT64_MAX) {
            pthread_cond_wait(&cv, &mu);
        } else {
            struct timespec ts = {(time_t)(soonest / 1000000000u), (long)(soonest % 1000000000u)};
            pthread_cond_timedwait(&cv, &mu, &ts);
        }
    }
    return unused;
}

static void start(void)
{
    wake_at = UINT64_MAX;
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &a);
    pthread_condattr_destroy(&a);
    pthread_cond_init(&done_cv, NULL);
    pthread_t t;
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&ta, 64u << 10);
    started = pthread_create(&t, &ta, run, NULL) == 0;
    pthread_attr_destroy(&ta);
}

uint64_t keel__watchdog_arm(uint64_t deadline_ns, void (*fire)(void *), void *arg)
{
    pthread_once(&once, start);
    entry *e = malloc(sizeof(*e));
    if (!started || !e) {
        free(e);
        return 0;
    }
    e->deadline = deadline_ns;
    e->fire = fire;
    e->arg = arg;
    pthread_mutex_lock(&mu);
    e->id = next_id++;
    e->next = armed;
    armed = e;
    if (deadline_ns < wake_at) {
        wake_at = deadline_ns;
        pthread_cond_signal(&cv);
    }
    pthread_mutex_unlock(&mu);
    return e->id;
}

void keel__watchdog_disarm(uint64_t handle)
{
    if (!handle)
        return;
    pthread_mutex_lock(&mu);
    for (entry **pp = &armed; *pp; pp = &(*pp)->next)
        if ((*pp)->id == handle) {
            entry *e = *pp;
            *pp = e->next;
            free(e);
            break;
        }
    while (firing == handle)
        pthread_cond_wait(&done_cv, &mu);
    pthread_mutex_unlock(&mu);
}

uint64_t keel__rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "re");
    unsigned long long size = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &rss) != 2)
        rss = 0;
    fclose(f);
    return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}
