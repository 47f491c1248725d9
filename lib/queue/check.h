/*
 * check.h - deep invariant checks of the queue, for tests and debug tools:
 * they query the database, so nothing on a hot path calls them. The cheap
 * checks at each state change are KEEL_ASSERTs inside queue.c.
 * docs/internals/queue.md lists the invariants.
 */
#ifndef KEEL_QUEUE_CHECK_H
#define KEEL_QUEUE_CHECK_H

#include "core/core.h"
#include "keel/queue.h"

/* Recounts every class's rows and bytes and compares them with the
 * in-memory counters; checks that no transaction is left open and that the
 * next id is above every stored id and id_floor. KEEL_ECORRUPT names the
 * first difference. Thread-safe (takes the queue's lock). */
KEEL_WUR int keel__queue_check(keel_queue *q, keel_error *err);

#endif
