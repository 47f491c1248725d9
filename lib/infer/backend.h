/*
 * backend.h - the interface every inference backend implements, the
 * registry that names them, and the deadline watchdog they share.
 *
 * A backend turns a model file into something that answers requests: maps
 * tensors to tensors (run), continues a token sequence (generate), turns
 * text into a vector (embed), or text into tokens (tokenize). It declares
 * which of these it offers in `caps`; the tier layer (lib/infer/tier.c)
 * routes each kind of call only to tiers whose backend declares it, and
 * owns every policy: chains, breakers, deadlines, budgets, overload, which
 * client session maps to which backend session. A backend knows nothing of
 * tiers, breakers or HTTP.
 *
 * What a backend owns: its loaded model (the instance) and, with
 * KEEL__CAP_SESSIONS, session objects that carry state from one call to the
 * next (recurrent state and context for onnx, a KV cache for llama).
 *
 * One file per backend (onnx.c, rules.c, graph.c); the registry is
 * backend.c.
 */
#ifndef KEEL_INFER_BACKEND_H
#define KEEL_INFER_BACKEND_H

#include <cjson/cJSON.h>
#include <stdatomic.h>

#include "infer/tensor.h"

#define KEEL__MAX_IO 16 /* inputs or outputs of one model */

/* What a backend offers. A declared capability makes its operations
 * required; undeclared ones are NULL. */
enum {
    KEEL__CAP_RUN = 1u << 0,      /* run: tensors in, tensors out */
    KEEL__CAP_GENERATE = 1u << 1, /* generate: tokens in, tokens streamed out */
    KEEL__CAP_EMBED = 1u << 2,    /* embed: text or tokens in, one vector out */
    KEEL__CAP_TOKENIZE = 1u << 3, /* tokenize: text in, tokens out */
    KEEL__CAP_SESSIONS = 1u << 4, /* session_new/free/reset: state across calls */
    KEEL__CAP_CANCEL = 1u << 5,   /* long calls watch keel__cancel and stop early */
};

/* What a backend gets at load. Everything is borrowed for the call. */
typedef struct keel__tier_ctx {
    const char *model_path;               /* the tier's "model" file, verified, in the blob store */
    const char *model_hex;                /* its SHA-256 (cache key) */
    const cJSON *tier;                    /* the tier's manifest object (options, state, ...) */
    const cJSON *files;                   /* the `files` op's files: {"in package": "on disk"} */
    const keel__tensor *inputs, *outputs; /* the package contract */
    size_t ninputs, noutputs;
    const char *cache_dir; /* for derived files (optimized graphs); may be NULL */
    const char *label;     /* "name@version tier NAME": whose model it is, for log lines */
} keel__tier_ctx;

/* A cancel flag the caller owns and may set from any thread. A backend
 * with KEEL__CAP_CANCEL checks it between steps (tokens, batches) and stops
 * early, returning KEEL_OK with what it produced so far. */
typedef struct keel__cancel {
    atomic_bool stop;
} keel__cancel;

/* Called by generate once per produced token, in order, on the calling
 * thread. piece: the token's text (borrowed for the call, may be NULL).
 * Return 0 to go on, KEEL__GEN_STOP to end the generation (not an error). */
#define KEEL__GEN_STOP 1
typedef int (*keel__token_fn)(void *ctx, int32_t token, const char *piece, size_t len);

typedef struct keel__gen_params {
    uint32_t max_tokens; /* 0: the backend's default */
    float temperature;   /* 0: greedy */
    float top_p;         /* 0: off */
    uint64_t seed;
} keel__gen_params;

typedef struct keel__backend {
    const char *name;
    unsigned caps; /* KEEL__CAP_* */

    /* --- always required ------------------------------------------------------------ */
    /* Loads the tier's model. *ret is the instance every other op gets. */
    KEEL_WUR int (*load)(const keel__tier_ctx *ctx, void **ret, keel_error *err);
    /* Frees the instance. Every session of it was freed first. */
    void (*unload)(void *inst);

    /* --- KEEL__CAP_RUN (required with it) ---------------------------------------------- */
    /* Runs inputs (by name) and fills out[0..*nout) (malloc'd data, freed
     * with keel__tensor_done). sess: a session of this instance (state
     * carried from the last run, updated on success), or NULL for fresh
     * state that is dropped after the run. deadline_ns: CLOCK_MONOTONIC
     * instant after which the run stops with KEEL_ETIMEOUT (0: none). A
     * backend that decides labels itself (rules) sets *result_json to a
     * malloc'd JSON array with one {"label","confidence"} object per row;
     * others leave it. Safe to call from several threads on one instance
     * (never on one session at once: the tier layer serializes a session). */
    KEEL_WUR int (*run)(void *inst, void *sess, const keel__tensor *in, size_t nin,
                        keel__tensor *out, size_t *nout, char **result_json, uint64_t deadline_ns,
                        keel_error *err);

    /* --- KEEL__CAP_GENERATE (required with it) ---------------------------------------- */
    /* Feeds tokens[0..ntokens) after what sess already holds (sess NULL: a
     * fresh context), then samples until an end token, max_tokens, the
     * callback's KEEL__GEN_STOP, the cancel flag (may be NULL) or the
     * deadline. *ret_ntokens: tokens produced. */
    KEEL_WUR int (*generate)(void *inst, void *sess, const int32_t *tokens, size_t ntokens,
                             const keel__gen_params *p, keel__token_fn on_token, void *cb_ctx,
                             const keel__cancel *cancel, uint64_t deadline_ns, size_t *ret_ntokens,
                             keel_error *err);

    /* --- KEEL__CAP_EMBED (required with it) ------------------------------------------- */
    /* One vector for text (len bytes, not NUL-terminated) or, when text is
     * NULL, for tokens. *ret is malloc'd (*ret_dim floats), the caller's. */
    KEEL_WUR int (*embed)(void *inst, const char *text, size_t len, const int32_t *tokens,
                          size_t ntokens, float **ret, size_t *ret_dim, keel_error *err);

    /* --- KEEL__CAP_TOKENIZE (required with it) ---------------------------------------- */
    /* Writes up to max tokens of text to tokens; *ret_n is the full count
     * (more than max: call again with a bigger array). */
    KEEL_WUR int (*tokenize)(void *inst, const char *text, size_t len, int32_t *tokens, size_t max,
                             size_t *ret_n, keel_error *err);

    /* --- KEEL__CAP_SESSIONS (all three required with it) ------------------------------ */
    /* A session holds what carries from one call to the next (recurrent
     * state and context samples, a KV cache). Owned by the backend, bound to
     * inst; the tier layer keeps one per (client session, tier) and frees it
     * before the instance. */
    KEEL_WUR int (*session_new)(void *inst, void **ret, keel_error *err);
    void (*session_free)(void *inst, void *sess);  /* NULL is fine */
    void (*session_reset)(void *inst, void *sess); /* back to the fresh state */

    /* --- optional (NULL when absent) ---------------------------------------------------- */
    /* The inputs a caller gives (without what the backend fills itself, such
     * as recurrent state), for describing the package. */
    size_t (*ninputs)(void *inst);
    const keel__tensor *(*input)(void *inst, size_t i);
    /* The outputs a caller gets (without internal ones such as recurrent
     * state); dtype KEEL_DT_JSON for a non-tensor output (sequence, map).
     * With ninputs/input, the tier layer checks the package's contract
     * against them at load and derives what the manifest leaves out. */
    size_t (*noutputs)(void *inst);
    const keel__tensor *(*output)(void *inst, size_t i);
    uint64_t (*memory)(void *inst);    /* bytes attributed to the loaded model */
    const char *(*device)(void *inst); /* "cpu", "cuda", ... */
    KEEL_WUR int (*health)(void *inst, keel_error *err);

    /* The package files the tier object (ctx->tier) names instead of one
     * "model" (a pipeline's step models), up to max into ret (borrowed from
     * the tier object); checks what it can before anything loads on the way
     * (ctx has the tier and the contract only). load.c resolves each into
     * ctx->files for load; a backend with this op takes no "model". */
    KEEL_WUR int (*files)(const keel__tier_ctx *ctx, const char **ret, size_t max, size_t *ret_n,
                          keel_error *err);
} keel__backend;

extern const keel__backend keel__backend_onnx;
extern const keel__backend keel__backend_rules;
extern const keel__backend keel__backend_graph;

/* --- the registry (backend.c) ------------------------------------------------------- */

/* The backend called `name` (built-in first, then registered), or NULL. */
const keel__backend *keel__backend_find(const char *name);
/* Adds a backend (borrowed: it must outlive every model that uses it; in
 * practice static storage). Checks that every declared capability has its
 * operations. KEEL_EEXISTS for a taken name, KEEL_ETOOBIG past 8. Thread-safe. */
KEEL_WUR int keel__backend_register(const keel__backend *be, keel_error *err);

/* --- deadline watchdog ---------------------------------------------------------- */

/* Calls fire(arg) from the watchdog thread once deadline_ns passes, unless
 * disarmed first. Returns a handle (0 when it could not arm). Disarm waits
 * for a fire in progress, so arg may be freed right after it. */
uint64_t keel__watchdog_arm(uint64_t deadline_ns, void (*fire)(void *), void *arg);
void keel__watchdog_disarm(uint64_t handle);

/* Resident set size of this process in bytes (from /proc/self/statm). */
uint64_t keel__rss_bytes(void);

#endif
