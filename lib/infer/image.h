/*
 * image.h - image preprocessing for inference: decodes PNG and JPEG from
 * memory (libpng, libjpeg-turbo) into 8-bit gray or RGB pixels, and turns
 * pixels into a float tensor (resize, colour and layout, scale/mean/std).
 *
 * It owns the image adapters: no libpng or libjpeg type leaves image.c. It
 * does not know models: which size, layout and normalization a model wants
 * comes from the caller (the backend's input description or the package).
 *
 * Bounded: the pixel count is checked against the caller's limit from the
 * header, before any pixel memory is allocated; progressive JPEGs are limited
 * to KEEL__IMAGE_MAX_SCANS scans. Library errors never exit(): they unwind
 * with setjmp/longjmp inside image.c. No global state: every function is
 * thread-safe on distinct outputs.
 */
#ifndef KEEL_INFER_IMAGE_H
#define KEEL_INFER_IMAGE_H

#include "core/core.h"

/* Used by keel__image_decode when max_pixels is 0 (4096x4096). */
#define KEEL__IMAGE_MAX_PIXELS_DEFAULT ((size_t)1 << 24)
/* Largest target width or height of keel__image_to_tensor. */
#define KEEL__IMAGE_MAX_SIDE 65535
/* Scans a progressive JPEG may have (real encoders write about 10). */
#define KEEL__IMAGE_MAX_SCANS 500

enum { KEEL__IMG_UNKNOWN = 0, KEEL__IMG_PNG = 1, KEEL__IMG_JPEG = 2 };

/* The format from the magic bytes (the PNG signature, JPEG's FF D8 FF). */
int keel__image_sniff(const void *data, size_t len);

typedef struct keel__image {
    int width, height;
    int channels;    /* 1 gray or 3 RGB */
    uint8_t *pixels; /* malloc'd, row-major interleaved, width*channels bytes a row */
} keel__image;

/* Decodes PNG (every bit depth and colour type: palette, 16-bit scaled to 8,
 * alpha dropped without compositing) or baseline/progressive JPEG (gray, RGB,
 * YCbCr; CMYK and YCCK converted to RGB) into 8-bit gray or RGB. Gray
 * sources stay gray, everything else is RGB.
 *
 * data is borrowed. On success *out owns pixels (free with
 * keel__image_free); on failure *out is zeroed. Errors:
 *   KEEL_EINVALID  empty input, not a PNG or JPEG
 *   KEEL_ETOOBIG   width*height > max_pixels (0: KEEL__IMAGE_MAX_PIXELS_DEFAULT)
 *   KEEL_ECORRUPT  truncated or corrupt data, with the decoder's words
 *   KEEL_EUNSUPPORTED  a JPEG colour space with no RGB meaning
 *   KEEL_ENOMEM */
KEEL_WUR int keel__image_decode(const void *data, size_t len, size_t max_pixels, keel__image *out,
                                keel_error *err);
/* Frees the pixels and zeroes img; NULL is fine. */
void keel__image_free(keel__image *img);

typedef struct keel__image_spec {
    /* Target size. Resampling is bilinear (triangle filter, pixel centres at
     * +0.5) and, when shrinking, the filter widens with the ratio so every
     * source pixel counts (antialiased, as PIL's BILINEAR resize). The same
     * size copies the pixels exactly. */
    int width, height;
    int channels; /* 1: gray (RGB through ITU-R 601 luma), 3: colour (gray replicated) */
    int bgr;      /* with channels 3: B,G,R order */
    int nchw;     /* 1: planar C,H,W; 0: interleaved H,W,C */
    float scale;  /* x = raw(0..255) * scale, e.g. 1.0f or 1/255.f */
    /* then x = (x - mean[c]) / std[c], c the output channel (with bgr,
     * mean[0] is blue's); std 0 is treated as 1; channels 1 uses [0] */
    float mean[3], std[3];
    int invert; /* 1: raw = 255 - raw first (white-on-black MNIST digits from black-on-white) */
} keel__image_spec;

/* Writes spec->channels * height * width floats to out (borrowed, the
 * caller's). img and spec are borrowed. Errors: KEEL_EINVALID for a bad
 * image or spec (sizes, channels, non-finite numbers), KEEL_ENOMEM. */
KEEL_WUR int keel__image_to_tensor(const keel__image *img, const keel__image_spec *spec, float *out,
                                   keel_error *err);

#endif
