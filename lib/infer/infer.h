/*
 * infer.h - the inference engine: the models of the active packages, served
 * through a chain of tiers that keeps answering when one fails.
 *
 *   keel__infer      every served package by name; swaps versions in place
 *   keel__model      one loaded package version: contract, tiers, sessions
 *
 * A request names a package. The engine takes a reference on its current
 * model (so activation can swap in a new version while requests finish on
 * the old one), validates the inputs against the package's contract, runs
 * preprocessing, then the tiers in order under their deadlines and circuit
 * breakers, then postprocessing. Every answer says which tier served it.
 */
#ifndef KEEL_INFER_INFER_H
#define KEEL_INFER_INFER_H

#include "infer/backend.h"
#include "keel/store.h"

typedef struct keel__infer keel__infer;
typedef struct keel__model keel__model;

/* What the engine tells the rest of keeld (the queue, in keeld): tier
 * transitions, requests no tier could answer, and inference records as the
 * package's "records" policy asks. Called on the request's thread, outside
 * the engine's locks; must not block for long. */
enum { KEEL__EV_TRANSITION, KEEL__EV_ALL_FAILED, KEEL__EV_RECORD };
typedef struct keel__infer_event {
    int type;
    const char *model, *version;
    const char *tier, *from_tier;        /* from_tier: transitions only */
    const char *reason;                  /* transitions, failures */
    const char *result;                  /* records: the result JSON (NULL without postprocess) */
    const struct keel__infer_resp *resp; /* records: the whole answer (outputs too) */
    double confidence;                   /* records: first row's, or -1 */
    bool degraded;
    uint64_t ns; /* records: request time */
} keel__infer_event;
typedef void (*keel__infer_event_fn)(void *ctx, const keel__infer_event *ev);

typedef struct keel__infer_opts {
    keel__infer_event_fn event; /* may be NULL */
    void *event_ctx;
    const char *cache_dir;   /* derived files (optimized graphs); NULL: none */
    size_t max_sessions;     /* stateful sessions per package (default 1024) */
    uint64_t session_idle_s; /* idle expiry (default 300) */
} keel__infer_opts;

KEEL_WUR int keel__infer_new(keel_store *store, const keel__infer_opts *o, keel__infer **ret,
                             keel_error *err);
void keel__infer_free(keel__infer *e);
/* Loads what the store serves now; versions that changed are loaded beside
 * the old ones and swapped in; requests in flight finish on the old model. */
KEEL_WUR int keel__infer_refresh(keel__infer *e, keel_error *err);

/* Loads name@version from the store without serving it (self-test). */
KEEL_WUR int keel__model_load(keel__infer *e, const char *name, const char *version,
                              keel__model **ret, keel_error *err);
void keel__model_unref(keel__model *m);
/* The serving model of `name` with a reference held, or NULL. */
keel__model *keel__infer_get(keel__infer *e, const char *name);

#define KEEL__MAX_OUT    16
#define KEEL__CLAUSE_MAX 180

typedef struct keel__infer_req {
    const keel__tensor *inputs; /* borrowed */
    size_t ninputs;
    const void *image; /* an encoded image for the image preprocess input */
    size_t image_len;
    const char *tier;    /* pin to this tier (testing, comparison); NULL: chain */
    const char *session; /* stateful stream id; NULL: fresh state */
} keel__infer_req;

struct keel__infer_resp;
typedef struct keel__infer_resp {
    /* owned data; the names point into the model: keep it referenced while
     * the response is in use */
    keel__tensor outputs[KEEL__MAX_OUT];
    size_t noutputs;
    char *result; /* malloc'd JSON array (one object per row) or NULL */
    char model[KEEL_NAME_MAX], version[KEEL_VERSION_MAX], digest[72];
    char tier[32], backend[16];
    bool degraded;
    char reason[1024];    /* why earlier tiers did not serve ("" when none) */
    char escalation[256]; /* set by routing: why the upstream did not answer */
    /* each tier's clause is capped (KEEL__CLAUSE_MAX) so every tier fits */
    uint64_t ns;
} keel__infer_resp;

/* Runs a request. KEEL_EINVALID/ETOOBIG: the request is wrong (message says
 * how); KEEL_ENOTFOUND: no such package; KEEL_ENOTREADY: every tier failed
 * (message names each tier's failure). */
KEEL_WUR int keel__model_run(keel__model *m, const keel__infer_req *req, keel__infer_resp *resp,
                             keel_error *err);
void keel__infer_resp_done(keel__infer_resp *r);

/* The package's routing policy: KEEL__ROUTE_* (router.h), the confidence
 * below which "escalate" asks upstream, and the upstream deadline. */
int keel__model_route(const keel__model *m, double *ret_below, uint64_t *ret_deadline_ms);

/* Describing models. */
const char *keel__model_name(const keel__model *m);
const char *keel__model_version(const keel__model *m);
bool keel__model_ready(keel__model *m); /* some tier can serve */
/* Open Inference Protocol datatype name of a dtype ("FP32", "BYTES", ...). */
const char *keel__kserve_dtype(int dtype);
/* Open Inference Protocol model metadata (malloc'd JSON). */
char *keel__model_metadata_json(const keel__model *m);
/* The input an image request feeds, or NULL when the package takes none. */
const char *keel__model_image_input(const keel__model *m);
/* Declared input i (the contract), or NULL. */
const keel__tensor *keel__model_input(const keel__model *m, size_t i);

/* Self-test: runs the package's validation set through each tier and
 * checks the metric; *ret_report is malloc'd JSON. KEEL_EINVALID when a
 * tier falls below the threshold (the message says which and by how much). */
KEEL_WUR int keel__model_selftest(keel__model *m, keel_store *s, char **ret_report,
                                  keel_error *err);

/* Engine status for /api/status (malloc'd JSON object keyed by package). */
char *keel__infer_status_json(keel__infer *e);
/* Prometheus text exposition of the engine's metrics, appended to b. */
KEEL_WUR int keel__infer_metrics(keel__infer *e, keel_buf *b);
/* Whether every served package has a model that can serve; why otherwise. */
bool keel__infer_ready(keel__infer *e, char *why, size_t n);

/* A store validator (keel_store_set_validator) that runs the self-test. */
int keel__infer_validator(void *ctx, keel_store *s, const char *name, const char *version,
                          keel_error *err);

#endif
