/*
 * import.h - USB / air-gap imports (docs/update.md, "USB and air-gapped
 * sites"): a bundle folder or a .keel file goes through the same steps as
 * any update: root rotation and revocation into the trust dir in force (and
 * every installed version re-checked), then each package installed
 * (signatures, rules, revocation, anti-rollback, every hash) and the
 * newest version of each name activated (its validation set runs). Imports
 * run on the runtime's jobs thread, never on an HTTP worker; the watched
 * directory (import_dir) is scanned there every 2 s.
 */
#ifndef KEEL_RUNTIME_IMPORT_H
#define KEEL_RUNTIME_IMPORT_H

#include "runtime/runtime.h"

/* Imports path now, on the caller's thread (a job). *ret_json (malloc'd):
 * {"path","ok","error"?,"trust_changed","items":[{"entry","kind","name",
 * "version","outcome","reason","activation","activation_reason"}]}; a
 * result is written also when the bundle cannot be read (ok false, error).
 * Each item's outcome is published as a KEEL__BUS_UPDATE event. Returns
 * KEEL_ENOMEM only. */
KEEL_WUR int keel__runtime_import(keel__runtime *rt, const char *path, char **ret_json,
                                  keel_error *err);

/* Queues an import of path (absolute) for the jobs thread; *ret_id names
 * it for keel__runtime_import_result. KEEL_EBUSY when 8 wait already. */
KEEL_WUR int keel__runtime_import_submit(keel__runtime *rt, const char *path, uint64_t *ret_id,
                                         keel_error *err);
/* {"id":N,"state":"queued"|"running"|"done","path":..,"result":{..}}
 * (malloc'd; result only when done). KEEL_ENOTFOUND for an id never given
 * or forgotten (the last 16 are kept). */
KEEL_WUR int keel__runtime_import_result(keel__runtime *rt, uint64_t id, char **ret_json,
                                         keel_error *err);

#endif
