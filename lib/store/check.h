/*
 * check.h - deep invariant checks of the store, for tests and debug tools:
 * they query the database and stat blobs, so nothing on a hot path calls
 * them. The cheap checks at each state change are KEEL_ASSERTs inside
 * store.c. docs/internals/store.md lists the invariants.
 */
#ifndef KEEL_STORE_CHECK_H
#define KEEL_STORE_CHECK_H

#include "core/core.h"
#include "keel/store.h"

/* Checks, under the store's lock: no transaction is left open; every slot
 * names a recorded version (invariant 4); every `files` row's blob exists
 * with its recorded size (2); each active version is at or below its
 * high-water mark (6) and is the version of the name's last activate or
 * rollback journal row; no staging blob is left while no install runs in
 * this process. KEEL_ECORRUPT names the first violation. */
KEEL_WUR int keel__store_check(keel_store *s, keel_error *err);

#endif
