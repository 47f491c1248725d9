/*
 * runtime.h - the device's live state. keel__runtime_open opens, in order,
 * and owns: the store, the event bus, the queue, the device shadow, the
 * uplink (when configured), the upstream router and its re-processing queue
 * (when configured), and the inference engine; it runs the background jobs
 * (re-verify, queue expiry, re-processing) and keeps readiness.
 *
 * Owns: every file under STATE_DIR (names in keel/layout.h), the API token,
 * the metrics registry (created before the modules, which register their
 * families in it, and freed after them), the order things start and stop
 * in, and what each module's events turn into (queue messages, readiness).
 * Knows nothing of HTTP: lib/http renders what this module answers, and
 * the daemon only opens, reloads and closes.
 *
 * A feature that needs the device's state (updates, the dashboard, audit,
 * an OpenAI route, the fleet agent) takes it from here and listens on the
 * bus (keel__runtime_bus); see docs/internals/runtime.md.
 *
 * Thread safety: every function except open and close may be called from
 * any thread at once.
 */
#ifndef KEEL_RUNTIME_RUNTIME_H
#define KEEL_RUNTIME_RUNTIME_H

#include "core/bus.h"
#include "core/conf.h"
#include "core/core.h"
#include "infer/infer.h"
#include "keel/queue.h"
#include "keel/store.h"
#include "obs/metrics.h"

typedef struct keel__runtime keel__runtime;

/* The runtime's own settings, and the tables of every module it opens
 * (runtime, store, queue, infer, sync), for keel__conf_new. A daemon adds
 * the tables of what it runs on top (keel__http_options). */
extern const keel__option_set keel__runtime_options;
const keel__option_set *const *keel__runtime_option_sets(size_t *ret_n);

/* Opens everything conf (copied; made over at least the tables above) asks
 * for. The state dir is created when absent; a start-up verification of
 * what is about to serve sets the first readiness. Errors name the part
 * that failed (the queue, the uplink options, ...). */
KEEL_WUR int keel__runtime_open(const keel__conf *conf, keel__runtime **ret, keel_error *err);
/* Stops the jobs and every module, in the reverse order. Accepts NULL. */
void keel__runtime_close(keel__runtime *rt);
/* Applies a re-read config: the settings declared reloadable take effect
 * now (limits, max_body, trust_dir, verify_interval, log_level, ...); a
 * change to any other is logged as needing a restart and not applied.
 * Publishes KEEL__BUS_CONFIG. */
void keel__runtime_reload(keel__runtime *rt, const keel__conf *next);

/* The trust dir changed (a revocation list or a root rotation was installed,
 * by this process or by hand): reloads it, re-checks every installed version
 * (keel_store_recheck), refreshes what serves and readiness, publishes
 * KEEL__BUS_TRUST and one KEEL__BUS_REVOKED per newly revoked version. The
 * runtime also does this at open, on reload, and by itself within
 * trust_check_interval of a change to the trust dir's files. */
void keel__runtime_trust_changed(keel__runtime *rt);

/* --- the parts (borrowed; valid until close) ------------------------------------ */

keel_store *keel__runtime_store(keel__runtime *rt);
keel__infer *keel__runtime_infer(keel__runtime *rt);
keel__bus *keel__runtime_bus(keel__runtime *rt);
/* The API bearer token (64 hex digits). */
const char *keel__runtime_token(keel__runtime *rt);
/* Settings in force, by name (under the runtime's lock: a reload may
 * change the reloadable ones at any time). */
uint64_t keel__runtime_setting_u64(keel__runtime *rt, const char *name);
bool keel__runtime_setting_bool(keel__runtime *rt, const char *name);
/* A copy of the settings in force (caller frees with keel__conf_free). */
keel__conf *keel__runtime_conf(keel__runtime *rt);
/* The state directory and this device's name (fixed while open). */
const char *keel__runtime_state_dir(keel__runtime *rt);
const char *keel__runtime_device_id(keel__runtime *rt);
/* STATE_DIR/NAME of a layout entry into buf. */
void keel__runtime_path(keel__runtime *rt, int keel_state_file, char *buf, size_t n);

/* A periodic job on the runtime's jobs thread (see jobs.h): fn(ctx) every
 * period_s seconds. Returns its id for keel__runtime_cancel. */
int keel__runtime_every(keel__runtime *rt, const char *name, uint64_t period_s,
                        void (*fn)(void *ctx), void *ctx);
/* Removes it; waits when it is running now. */
void keel__runtime_cancel(keel__runtime *rt, int id);

/* --- readiness and status -------------------------------------------------------- */

/* Re-resolves what each package serves (verify_flags: KEEL_VERIFY_DEEP
 * re-hashes), reloads models that changed, recomputes readiness. */
void keel__runtime_refresh(keel__runtime *rt, unsigned verify_flags);
/* {"ready":bool,"reason":"..."} (malloc'd); *ret_ready set. */
char *keel__runtime_readiness_json(keel__runtime *rt, bool *ret_ready);
bool keel__runtime_ready(keel__runtime *rt);
/* The device's status document (malloc'd JSON): versions, slots,
 * verification, models, uplink, upstream. NULL when out of memory. */
char *keel__runtime_status_json(keel__runtime *rt, keel_error *err);
/* The metrics registry every module registers its families in (the
 * runtime's keel_up, keel_ready and keel_queue_*, the engine's, the
 * uplink's, the upstream router's); render it with keel__metrics_prometheus
 * or keel__metrics_json. */
keel__metrics *keel__runtime_metrics_registry(keel__runtime *rt);

/* --- package actions: store, then readiness, then one event on the bus ------------ */

/* Installs the .keel file at path (verified against the trust dir in
 * force); flags: KEEL_INSTALL_ACTIVATE. */
KEEL_WUR int keel__runtime_install(keel__runtime *rt, const char *path, unsigned flags,
                                   keel_install_result *ret, keel_error *err);
/* type: KEEL__BUS_ACTIVATE (version may be NULL: the staged one),
 * KEEL__BUS_ROLLBACK or KEEL__BUS_MARK_GOOD. *ret: what name serves now. */
KEEL_WUR int keel__runtime_slot_action(keel__runtime *rt, unsigned type, const char *name,
                                       const char *version, keel_serving *ret, keel_error *err);
KEEL_WUR int keel__runtime_gc(keel__runtime *rt, uint64_t *ret_freed, keel_error *err);
/* A new file for an upload under STATE_DIR/staging (mkostemp); *ret_fd open. */
KEEL_WUR int keel__runtime_upload_file(keel__runtime *rt, char *path, size_t n, int *ret_fd,
                                       keel_error *err);

/* Installs a package whose parts lie in dir (keel.json, keel.sig, and one
 * file per blob the store lacks, named by its SHA-256: what the update
 * fetch leaves), verified against the trust dir in force. */
KEEL_WUR int keel__runtime_install_dir(keel__runtime *rt, const char *dir, unsigned flags,
                                       keel_install_result *ret, keel_error *err);
/* Runs fn(ctx) on the runtime's actions thread, in order: slow package
 * work handed over by a request (activation runs the package's validation
 * set), so no HTTP worker waits for it. */
KEEL_WUR int keel__runtime_defer(keel__runtime *rt, void (*fn)(void *ctx), void *ctx,
                                 keel_error *err);

/* --- updates (update_job.c, docs/update.md) ------------------------------------------ */

typedef void (*keel__update_done_fn)(void *ctx, const char *result_json);
/* Asks the update thread for a check of the configured repositories
 * (apply: download, validate and activate what it finds). done (may be
 * NULL) runs once with the result JSON when a check started after this
 * call has finished, on the update thread. Returns the check's number. */
uint64_t keel__runtime_update_check(keel__runtime *rt, bool apply, keel__update_done_fn done,
                                    void *ctx);
/* The update module's state: settings, phase, the last check (malloc'd JSON). */
char *keel__runtime_update_json(keel__runtime *rt);

/* --- events and the queue ------------------------------------------------------------ */

/* Queues a message for the uplink without blocking the caller: done runs
 * once it is durable (or failed), on the queue's committer thread. The
 * uplink is woken when it commits (at once for critical). (Expired messages
 * go in the `expire` job, off the request path.) */
KEEL_WUR int keel__runtime_submit(keel__runtime *rt, const keel_msg_in *m, keel_queue_done_fn done,
                                  void *ctx, keel_error *err);
/* The queue's statistics as JSON (malloc'd), after an expiry sweep when
 * the last one is 10 s old. */
KEEL_WUR int keel__runtime_queue_json(keel__runtime *rt, char **ret, keel_error *err);

/* --- the device shadow --------------------------------------------------------------- */

/* The shadow document (malloc'd JSON). */
char *keel__runtime_shadow_json(keel__runtime *rt);
/* Local changes: body is {"set": {"key": value, ...}}. Applies what the
 * runtime acts on (log_level), queues the reported state. */
KEEL_WUR int keel__runtime_shadow_set(keel__runtime *rt, const char *body, size_t len,
                                      keel_error *err);

#endif
