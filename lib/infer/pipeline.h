/*
 * pipeline.h - pre- and post-processing declared in the manifest, in C.
 *
 *   "preprocess":  {"input": "Input3", "image": {"width": 28, "height": 28,
 *                   "channels": 1, "layout": "NCHW", "scale": 1.0,
 *                   "mean": [0], "std": [1], "invert": false, "bgr": false}}
 *              or  {"input": "x", "tabular": {"features": ["a", "b"],
 *                   "mean": [..], "std": [..]}}
 *   "postprocess": {"output": "logits", "activation": "softmax" | "sigmoid" |
 *                   "none", "labels": "labels.txt", "top_k": 3, "threshold": 0.5}
 *
 * Postprocessing turns the raw outputs into a `result` per row: label,
 * index, confidence and, with top_k, the best k classes.
 */
#ifndef KEEL_INFER_PIPELINE_H
#define KEEL_INFER_PIPELINE_H

#include "infer/backend.h"
#include "infer/image.h"

enum { KEEL__PRE_NONE, KEEL__PRE_IMAGE, KEEL__PRE_TABULAR };
enum { KEEL__ACT_NONE, KEEL__ACT_SOFTMAX, KEEL__ACT_SIGMOID };

#define KEEL__MAX_FEATURES 512

typedef struct keel__pre {
    int kind;
    char input[64];
    keel__image_spec image;
    size_t nfeatures; /* tabular: standardization length (mean/std) */
    double mean[KEEL__MAX_FEATURES], std[KEEL__MAX_FEATURES];
    char **features; /* tabular feature names (may be NULL) */
} keel__pre;

typedef struct keel__post {
    bool on;
    char output[64]; /* "" = first output */
    int activation;
    size_t top_k;
    bool has_threshold;
    double threshold;
    char labels_file[256];
    char **labels;
    size_t nlabels;
} keel__post;

KEEL_WUR int keel__pre_parse(const cJSON *j, keel__pre *ret, keel_error *err);
void keel__pre_done(keel__pre *p);
KEEL_WUR int keel__post_parse(const cJSON *j, keel__post *ret, keel_error *err);
/* Reads one label per line (at most 100000, 64 KiB... bounded). */
KEEL_WUR int keel__post_labels(keel__post *p, const char *path, keel_error *err);
void keel__post_done(keel__post *p);

/* Decodes an image into the float32 tensor decl describes ([1,C,H,W] or
 * [1,H,W,C]); out->data is malloc'd. */
KEEL_WUR int keel__pre_image(const keel__pre *p, const keel__tensor *decl, const void *img,
                             size_t len, keel__tensor *out, keel_error *err);
/* Standardizes a float32 tensor in place: (x - mean[i % n]) / std[i % n]. */
KEEL_WUR int keel__pre_tabular(const keel__pre *p, keel__tensor *t, keel_error *err);

/* Applies KEEL__ACT_* to one row of n scores in place (softmax, sigmoid;
 * none leaves them). Shared with the pipeline tiers' activation op. */
void keel__post_activate(int activation, double *sc, size_t n);

/* The result rows for outputs (malloc'd JSON array); *ret NULL when the
 * outputs hold nothing to label. */
KEEL_WUR int keel__post_result(const keel__post *p, const keel__tensor *outs, size_t n, char **ret,
                               keel_error *err);

#endif
