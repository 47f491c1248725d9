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
#include "infer/router.h"
#include "core/conf.h"
#include "keel/store.h"
#include "obs/metrics.h"

/* The engine's settings (options.c). */
extern const keel__option_set keel__infer_options;

typedef struct keel__infer keel__infer;
typedef struct keel__model keel__model;

/* What the engine tells its owner (the runtime): tier transitions,
 * requests no tier could answer, inference records as the package's
 * "records" policy asks, escalations the upstream could not take (the
 * owner keeps those for re-processing), and one outcome for every request
 * the tier chain ran (run, generate, embed: answered or every tier failed;
 * requests refused before the chain, bad input, are not outcomes). Called on the request's thread,
 * outside the engine's locks; must not block for long. Every pointer is
 * borrowed for the call. */
enum {
    KEEL__EV_TRANSITION,
    KEEL__EV_ALL_FAILED,
    KEEL__EV_RECORD,
    KEEL__EV_ESCALATION_FAILED,
    KEEL__EV_OUTCOME, /* every request the chain ran: answered (ok) or every tier failed */
};
typedef struct keel__infer_event {
    int type;
    const char *model, *version;
    const char *tier, *from_tier;        /* from_tier: transitions only */
    const char *reason;                  /* transitions, failures, escalations */
    const char *result;                  /* records, escalations: the local result JSON */
    const struct keel__infer_resp *resp; /* records, escalations: the local answer */
    double confidence;                   /* records, escalations, outcomes: first row's, or -1 */
    /* records, escalations: the answer is not the first tier's; transitions:
     * the new tier is further down the chain than the one before (a fall
     * back, not a recovery) */
    bool degraded;
    uint64_t ns; /* records, outcomes: request time */
    bool ok;     /* outcomes: answered (false: every tier failed) */
    /* escalations: the request as received, to forward again later */
    const void *raw;
    size_t raw_len, raw_json_len;
} keel__infer_event;
typedef void (*keel__infer_event_fn)(void *ctx, const keel__infer_event *ev);

typedef struct keel__infer_opts {
    keel__infer_event_fn event; /* may be NULL */
    void *event_ctx;
    const char *cache_dir;   /* derived files (optimized graphs); NULL: none */
    size_t max_sessions;     /* stateful sessions per package (default 1024) */
    uint64_t session_idle_s; /* idle expiry (default 300) */
    /* the upstream for hybrid routing (borrowed; must outlive the engine);
     * NULL: every package is served locally whatever its "routing" says */
    keel__router *upstream;
    /* where the engine registers its keel_infer_* families (borrowed; must
     * outlive the engine); NULL: no metrics. Each served model's series
     * are labelled model (and tier); they are removed when its version is
     * swapped out or it stops being served. */
    keel__metrics *metrics;
    /* build models without loading their tiers (keel__model_check: the
     * manifest checks of activation, for keel pack and keel lint) */
    bool check_only;
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
/* Takes one more reference on m; returns m. */
keel__model *keel__infer_model_ref(keel__model *m);
/* The serving model of `name` with a reference held, or NULL. */
keel__model *keel__infer_get(keel__infer *e, const char *name);

#define KEEL__MAX_TIERS  8
#define KEEL__MAX_OUT    16
#define KEEL__CLAUSE_MAX 180

typedef struct keel__infer_req {
    const keel__tensor *inputs; /* borrowed */
    size_t ninputs;
    const void *image; /* an encoded image for the image preprocess input */
    size_t image_len;
    const char *tier;    /* pin to this tier (testing, comparison); NULL: chain */
    const char *session; /* stateful stream id; NULL: fresh state */
    /* hybrid routing (keel__model_infer): the request as received, forwarded
     * as is when the package's routing asks the upstream. raw NULL: never
     * forwarded (image bodies). raw_json_len: where the JSON ends under the
     * binary tensor extension (0: raw_len). Borrowed. */
    const void *raw;
    size_t raw_len, raw_json_len;
    bool complex; /* parameters.complex: escalate whatever the confidence */
    /* the outputs the caller asks for, by name (borrowed); none: all. Each
     * must be one the package gives (else KEEL_EINVALID naming them); the
     * codec picks them from the response. */
    const char *outputs[KEEL__MAX_IO];
    size_t noutputs;
    /* the package's own validation set (selftest.c): not field traffic, so
     * no outcome event (probation) and no inference record */
    bool selftest;
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
    /* true when the upstream answered (tier "upstream"): answer holds its
     * reply, to send as is; outputs and result are then empty */
    bool upstream;
    keel__upstream_answer answer;
} keel__infer_resp;

/* Runs a request. KEEL_EINVALID/ETOOBIG: the request is wrong (message says
 * how); KEEL_ENOTFOUND: no such package; KEEL_ENOTREADY: every tier failed
 * (message names each tier's failure). */
KEEL_WUR int keel__model_run(keel__model *m, const keel__infer_req *req, keel__infer_resp *resp,
                             keel_error *err);
/* What a request handler calls: keel__model_run plus the package's routing
 * policy (tier.c is the only place it lives), with the engine's upstream:
 *   local           the chain only
 *   upstream_first  req->raw goes to the upstream; its answer is the
 *                   response (resp->upstream); when it fails, the chain
 *                   serves and resp->escalation says why
 *   escalate        the chain serves; when the first row's confidence is
 *                   below routing.confidence_below or req->complex, req->raw
 *                   goes to the upstream and its answer replaces the local
 *                   one; when that fails the local answer stands,
 *                   resp->escalation says so, and a KEEL__EV_ESCALATION_FAILED
 *                   event hands the request to the owner for re-processing
 * A pinned tier (req->tier), no upstream, or no raw bytes: local. Errors as
 * keel__model_run (the upstream's failures are never errors). */
KEEL_WUR int keel__model_infer(keel__model *m, const keel__infer_req *req, keel__infer_resp *resp,
                               keel_error *err);
/* Frees the outputs, result and upstream answer; resp may be reused. */
void keel__infer_resp_done(keel__infer_resp *r);

/* Generation: tokens in, tokens out through a callback, routed to the
 * first tier (in chain order, or the pinned one) whose backend declares
 * KEEL__CAP_GENERATE, falling back to the next such tier on a hard
 * failure; KEEL_EUNSUPPORTED when none does (the message lists the tiers). */
typedef struct keel__gen_req {
    const int32_t *tokens; /* the prompt, tokenized; borrowed */
    size_t ntokens;
    keel__gen_params params;
    keel__token_fn on_token; /* required */
    void *cb_ctx;
    const keel__cancel *cancel; /* may be NULL */
    const char *session;        /* the KV cache carries per session; NULL fresh */
    const char *tier;           /* pin; NULL chain */
} keel__gen_req;
typedef struct keel__gen_resp {
    size_t ntokens; /* produced */
    char tier[32], backend[16];
    bool degraded;
    char reason[1024];
} keel__gen_resp;
KEEL_WUR int keel__model_generate(keel__model *m, const keel__gen_req *req, keel__gen_resp *resp,
                                  keel_error *err);

/* Embedding: text (or tokens) to one vector, routed as generate is, to the
 * tiers that declare KEEL__CAP_EMBED. */
typedef struct keel__embed_req {
    const char *text; /* len bytes, borrowed; NULL: use tokens */
    size_t len;
    const int32_t *tokens;
    size_t ntokens;
    const char *tier; /* pin; NULL chain */
} keel__embed_req;
typedef struct keel__embed_resp {
    float *vec; /* malloc'd, dim floats; freed by keel__embed_resp_done */
    size_t dim;
    char tier[32], backend[16];
    bool degraded;
    char reason[1024];
} keel__embed_resp;
KEEL_WUR int keel__model_embed(keel__model *m, const keel__embed_req *req, keel__embed_resp *resp,
                               keel_error *err);
void keel__embed_resp_done(keel__embed_resp *r);

/* The package's routing policy: KEEL__ROUTE_* (router.h), the confidence
 * below which "escalate" asks upstream, and the upstream deadline. */
int keel__model_route(const keel__model *m, double *ret_below, uint64_t *ret_deadline_ms);

/* Describing models. */
const char *keel__model_name(const keel__model *m);
const char *keel__model_version(const keel__model *m);
bool keel__model_ready(keel__model *m); /* some tier can serve */
/* A protocol-neutral description of a model, for the codecs to render
 * (lib/http/oip.c renders the Open Inference Protocol metadata from it).
 * Every pointer is valid while m is referenced. */
typedef struct keel__model_desc {
    const char *name, *version, *digest;  /* digest: "sha256:<hex>" of keel.json */
    const keel__tensor *inputs, *outputs; /* the contract */
    size_t ninputs, noutputs;
    const char *image_input; /* the input an encoded image feeds, or NULL */
    const char *tiers[KEEL__MAX_TIERS], *backends[KEEL__MAX_TIERS]; /* in chain order */
    unsigned caps[KEEL__MAX_TIERS]; /* each tier's backend capabilities (KEEL__CAP_*) */
    size_t ntiers;
} keel__model_desc;
void keel__model_describe(const keel__model *m, keel__model_desc *ret);
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
/* Whether every served package has a model that can serve; why otherwise. */
bool keel__infer_ready(keel__infer *e, char *why, size_t n);

/* A store validator (keel_store_set_validator) that runs the self-test. */
int keel__infer_validator(void *ctx, keel_store *s, const char *name, const char *version,
                          keel_error *err);

#endif
