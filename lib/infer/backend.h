/*
 * backend.h - the interface every inference backend implements, and the
 * deadline watchdog they share.
 *
 * A backend turns a model file into something that maps input tensors to
 * output tensors. It knows nothing of tiers, breakers, sessions or HTTP:
 * lib/infer/model.c owns the policy. One file per backend: onnx.c, rules.c.
 */
#ifndef KEEL_INFER_BACKEND_H
#define KEEL_INFER_BACKEND_H

#include <cjson/cJSON.h>

#include "infer/ort.h"

#define KEEL__MAX_IO 16 /* inputs or outputs of one model */

/* What a backend gets at load. Everything is borrowed for the call. */
typedef struct keel__tier_ctx {
    const char *model_path;               /* the tier's "model" file, verified, in the blob store */
    const char *model_hex;                /* its SHA-256 (cache key) */
    const cJSON *tier;                    /* the tier's manifest object (options etc.) */
    const keel__tensor *inputs, *outputs; /* the package contract */
    size_t ninputs, noutputs;
    const char *cache_dir; /* for derived files (optimized graphs); may be NULL */
} keel__tier_ctx;

typedef struct keel__backend {
    const char *name;
    /* Required. */
    KEEL_WUR int (*load)(const keel__tier_ctx *ctx, void **ret, keel_error *err);
    /* Runs inputs (by name) and fills out[0..*nout) (malloc'd data, freed
     * with keel__tensor_done). deadline_ns: CLOCK_MONOTONIC instant after
     * which the run should stop with KEEL_ETIMEOUT (0: none). A backend that
     * decides labels itself (rules) sets *result_json to a malloc'd JSON
     * array with one {"label","confidence"} object per row; others leave it. */
    KEEL_WUR int (*run)(void *inst, const keel__tensor *in, size_t nin, keel__tensor *out,
                        size_t *nout, char **result_json, uint64_t deadline_ns, keel_error *err);
    void (*unload)(void *inst);
    /* Optional (NULL when absent). */
    size_t (*ninputs)(void *inst); /* the model's own inputs, for describe */
    const keel__tensor *(*input)(void *inst, size_t i);
    uint64_t (*memory)(void *inst);    /* bytes attributed to the loaded model */
    const char *(*device)(void *inst); /* "cpu", "cuda", ... */
    KEEL_WUR int (*health)(void *inst, keel_error *err);
} keel__backend;

extern const keel__backend keel__backend_onnx;
extern const keel__backend keel__backend_rules;

/* The backend called `name`, or NULL. */
const keel__backend *keel__backend_find(const char *name);

/* --- deadline watchdog ---------------------------------------------------------- */

/* Calls fire(arg) from the watchdog thread once deadline_ns passes, unless
 * disarmed first. Returns a handle (0 when it could not arm). Disarm waits
 * for a fire in progress, so arg may be freed right after it. */
uint64_t keel__watchdog_arm(uint64_t deadline_ns, void (*fire)(void *), void *arg);
void keel__watchdog_disarm(uint64_t handle);

/* Resident set size of this process in bytes (from /proc/self/statm). */
uint64_t keel__rss_bytes(void);

#endif
