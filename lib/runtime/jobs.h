/*
 * jobs.h - the runtime's background jobs on one thread: periodic work
 * (re-verify, queue expiry, re-processing; later probation timers and
 * retention) with a period each, run in due order, and kickable at once.
 *
 * Time is CLOCK_MONOTONIC: a wall clock that jumps (devices offline for
 * months drift) must not make a job spin or stall. A job runs on the jobs
 * thread only, never two at once; a long job (a deep re-hash of a large
 * package) delays the others, which is acceptable for their periods
 * (seconds to days) and keeps the daemon at one background thread.
 */
#ifndef KEEL_RUNTIME_JOBS_H
#define KEEL_RUNTIME_JOBS_H

#include "core/core.h"

typedef struct keel__jobs keel__jobs;
typedef void (*keel__job_fn)(void *ctx);

/* NULL when out of memory or no thread could start. */
keel__jobs *keel__jobs_start(void);
/* Waits for a job in progress, then stops. Accepts NULL. */
void keel__jobs_stop(keel__jobs *j);
/* Adds a job that runs every period_s seconds (0: only when kicked),
 * first after one period. name is copied (for logs and status). Returns
 * its id (> 0), 0 when the table is full. */
int keel__jobs_add(keel__jobs *j, const char *name, uint64_t period_s, keel__job_fn fn, void *ctx);
/* A new period, counted from now (0: only when kicked). */
void keel__jobs_set_period(keel__jobs *j, int id, uint64_t period_s);
/* Removes a job; waits when it is running now. Its id is not reused. */
void keel__jobs_remove(keel__jobs *j, int id);
/* Runs the job as soon as the thread is free. */
void keel__jobs_kick(keel__jobs *j, int id);
/* {"name":{"period_s":N,"runs":N,"last_ms":N},...} (malloc'd). */
char *keel__jobs_status_json(keel__jobs *j);

#endif
