/*
 * ort.h - the adapter to ONNX Runtime, loaded with dlopen.
 *
 * No C header for ONNX Runtime is reachable from this build, so ort.c
 * declares the OrtApi entries it uses at their slot positions in the
 * append-only OrtApi table (onnxruntime_c_api.h, stable since API 1) and
 * checks the runtime's version string at load. Nothing of ONNX Runtime's
 * types leaves lib/infer/ort.c.
 *
 * It covers load, sessions (options, execution providers), runs with every
 * tensor dtype including strings, run cancellation, and sequence/map outputs
 * as JSON. lib/infer/onnx.c is the backend built on it.
 */
#ifndef KEEL_INFER_ORT_H
#define KEEL_INFER_ORT_H

#include "infer/tensor.h"

/* Loads the runtime once (thread-safe): lib_path, or KEEL_ORT_LIB, or beside
 * libkeel / the program (DIR, DIR/../lib, a build tree's .deps), or the
 * install prefix's LIBDIR, or the system's (ort.c has the order). A failure
 * is logged once, with every place looked at. */
KEEL_WUR int keel__ort_load(const char *lib_path, keel_error *err);
/* The runtime's version ("1.30.0") once loaded, else NULL. */
const char *keel__ort_version(void);

typedef struct keel__ort_opts {
    int intra_threads;                /* 0: ORT default */
    int opt_level;                    /* 0 disable, 1 basic, 2 extended, 99 all (default) */
    const char *optimized_model_path; /* save the optimized graph here (may be NULL) */
    const char *const *providers; /* preference order, e.g. {"cuda", "cpu"}; CPU if none takes */
    size_t nproviders;
} keel__ort_opts;

typedef struct keel__ort_session keel__ort_session;

KEEL_WUR int keel__ort_session_new(const char *model_path, const keel__ort_opts *opts,
                                   keel__ort_session **ret, keel_error *err);
/* The same from a model in memory (data must stay valid during the call). */
KEEL_WUR int keel__ort_session_from_memory(const void *data, size_t len, const keel__ort_opts *opts,
                                           keel__ort_session **ret, keel_error *err);
void keel__ort_session_free(keel__ort_session *s);
size_t keel__ort_ninputs(const keel__ort_session *s);
size_t keel__ort_noutputs(const keel__ort_session *s);
/* Describes input/output i: name (valid until free), dtype, shape (-1 dynamic). */
const keel__tensor *keel__ort_input(const keel__ort_session *s, size_t i);
const keel__tensor *keel__ort_output(const keel__ort_session *s, size_t i);

/* The execution provider the session runs on ("cpu", "cuda", ...). */
const char *keel__ort_provider(const keel__ort_session *s);

/* A run control: lets another thread stop a Run in flight (deadlines). */
typedef struct keel__ort_runctl keel__ort_runctl;
KEEL_WUR int keel__ort_runctl_new(keel__ort_runctl **ret, keel_error *err);
void keel__ort_runctl_free(keel__ort_runctl *c);
void keel__ort_runctl_terminate(keel__ort_runctl *c); /* thread-safe */
void keel__ort_runctl_reset(keel__ort_runctl *c);
KEEL_WUR int keel__ort_run_ctl(keel__ort_session *s, const keel__tensor *inputs, size_t ninputs,
                               keel__tensor *outputs, keel__ort_runctl *ctl, keel_error *err);

/* Runs with inputs (by name) and fills outputs[0..noutputs) in session order.
 * Thread-safe for one session (ORT sessions allow concurrent Run). */
KEEL_WUR int keel__ort_run(keel__ort_session *s, const keel__tensor *inputs, size_t ninputs,
                           keel__tensor *outputs, keel_error *err);

#endif
