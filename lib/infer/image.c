/*
 * image.c - PNG/JPEG decoding from memory and the float tensor conversion.
 *
 * libpng and libjpeg report errors by calling a handler that must not
 * return; ours copy the message and longjmp back. Each decoder runs in a
 * function (png_run, jpeg_run) whose only state lives in a context owned by
 * the caller, so nothing the longjmp skips over is a local of the function
 * that called setjmp (C11 7.13.2.1), and the caller frees what the context
 * holds whichever way the run ended.
 */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "infer/image.h"

static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

int keel__image_sniff(const void *data, size_t len)
{
    const uint8_t *p = data;
    if (!p)
        return KEEL__IMG_UNKNOWN;
    if (len >= sizeof(png_magic) && memcmp(p, png_magic, sizeof(png_magic)) == 0)
        return KEEL__IMG_PNG;
    if (len >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return KEEL__IMG_JPEG;
    return KEEL__IMG_UNKNOWN;
}

void keel__image_free(keel__image *img)
{
    if (!img)
        return;
    free(img->pixels);
    memset(img, 0, sizeof(*img));
}

static int check_size(const char *fmt, uint64_t w, uint64_t h, size_t max_pixels, keel_error *err)
{
    if (w * h > (uint64_t)max_pixels || w * h * 3 > (uint64_t)SIZE_MAX)
        return keel__err(err, KEEL_ETOOBIG,
                         "image: %s is %llux%llu, over the limit of %zu pixels: send a smaller "
                         "image",
                         fmt, (unsigned long long)w, (unsigned long long)h, max_pixels);
    return KEEL_OK;
}

/* --- PNG -------------------------------------------------------------------- */

typedef struct png_ctx {
    const uint8_t *data;
    size_t len, pos;
    size_t max_pixels;
    png_structp png;
    png_infop info;
    png_bytep *rows;
    uint8_t *pixels;
    int width, height, channels;
    keel_error *err;
    char msg[200]; /* libpng's words, set by png_on_error */
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    keel__strlcpy(c->msg, msg ? msg : "unknown error", sizeof(c->msg));
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    KEEL_UNUSED(png);
    KEEL_UNUSED(msg);
}

static void png_read_mem(png_structp png, png_bytep out, size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos)
        png_error(png, "file is truncated");
    memcpy(out, c->data + c->pos, n);
    c->pos += n;
}

/* Ancillary chunks that mean nothing to pixels: discarded unread. */
static const png_byte png_ignored[] = {
    'i', 'C', 'C', 'P', 0, 'i', 'T', 'X', 't', 0, 's', 'P', 'L', 'T', 0, 't', 'E', 'X', 't', 0,
    'z', 'T', 'X', 't', 0, 'e', 'X', 'I', 'f', 0, 't', 'I', 'M', 'E', 0, 'p', 'C', 'A', 'L', 0,
    's', 'C', 'A', 'L', 0, 'h', 'I', 'S', 'T', 0, 'p', 'H', 'Y', 's', 0, 'o', 'F', 'F', 's', 0,
};

/* Decodes into c->pixels; returns KEEL_E* with the message in c->err. */
static int png_run(png_ctx *c)
{
    if (setjmp(png_jmpbuf(c->png)))
        return keel__err(c->err, KEEL_ECORRUPT, "image: corrupt PNG: %s", c->msg);

    png_set_read_fn(c->png, c, png_read_mem);
    png_set_user_limits(c->png, 0x7fffffff, 0x7fffffff); /* ours is max_pixels */
    png_set_chunk_malloc_max(c->png, (png_alloc_size_t)1 << 22);
    png_set_keep_unknown_chunks(c->png, PNG_HANDLE_CHUNK_NEVER, NULL, 0);
    png_set_keep_unknown_chunks(c->png, PNG_HANDLE_CHUNK_NEVER, png_ignored,
                                (int)(sizeof(png_ignored) / 5));
    png_read_info(c->png, c->info);

    png_uint_32 w = 0, h = 0;
    int depth = 0, ctype = 0;
    png_get_IHDR(c->png, c->info, &w, &h, &depth, &ctype, NULL, NULL, NULL);
    int rc = check_size("PNG", w, h, c->max_pixels, c->err);
    if (rc != KEEL_OK)
        return rc;
    int channels = (ctype & PNG_COLOR_MASK_COLOR) ? 3 : 1; /* palette has the colour bit */

    if (ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(c->png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(c->png);
    if (depth == 16)
        png_set_scale_16(c->png); /* v * 255 / 65535 rounded, not just the high byte */
    png_set_strip_alpha(c->png);  /* also the alpha a palette's tRNS expands to */
    (void)png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);

    size_t stride = (size_t)w * (size_t)channels;
    if (png_get_channels(c->png, c->info) != channels || png_get_bit_depth(c->png, c->info) != 8 ||
        png_get_rowbytes(c->png, c->info) != stride)
        return keel__err(c->err, KEEL_EINTERNAL,
                         "image: PNG colour type %d depth %d decoded to %d channels of %d bits",
                         ctype, depth, png_get_channels(c->png, c->info),
                         png_get_bit_depth(c->png, c->info));

    c->pixels = malloc(stride * h);
    c->rows = malloc(sizeof(*c->rows) * h);
    if (!c->pixels || !c->rows)
        return keel__err(c->err, KEEL_ENOMEM, "image: no memory for a %ux%u PNG", w, h);
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = c->pixels + stride * y;
    png_read_image(c->png, c->rows);
    /* The end (IEND, trailing text) is not read: the pixels are complete. */
    c->width = (int)w;
    c->height = (int)h;
    c->channels = channels;
    return KEEL_OK;
}

static int decode_png(const uint8_t *data, size_t len, size_t max_pixels, keel__image *out,
                      keel_error *err)
{
    /* The IHDR chunk must come first: refuse oversized images before libpng
     * sees them, even when the rest is missing. */
    if (len < 33)
        return keel__err(err, KEEL_ECORRUPT,
                         "image: corrupt PNG: file is truncated (%zu bytes, under a header's 33)",
                         len);
    if (memcmp(data + 12, "IHDR", 4) == 0) {
        uint64_t w = (uint64_t)data[16] << 24 | (uint64_t)data[17] << 16 | (uint64_t)data[18] << 8 |
                     data[19];
        uint64_t h = (uint64_t)data[20] << 24 | (uint64_t)data[21] << 16 | (uint64_t)data[22] << 8 |
                     data[23];
        int rc = check_size("PNG", w, h, max_pixels, err);
        if (rc != KEEL_OK)
            return rc;
    }

    png_ctx c;
    memset(&c, 0, sizeof(c));
    c.data = data;
    c.len = len;
    c.max_pixels = max_pixels;
    c.err = err;
    c.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error, png_on_warning);
    if (c.png)
        c.info = png_create_info_struct(c.png);
    int rc = c.info ? png_run(&c) : keel__err(err, KEEL_ENOMEM, "image: no memory for libpng");
    png_destroy_read_struct(&c.png, &c.info, NULL);
    free(c.rows);
    if (rc != KEEL_OK) {
        free(c.pixels);
        return rc;
    }
    out->width = c.width;
    out->height = c.height;
    out->channels = c.channels;
    out->pixels = c.pixels;
    return KEEL_OK;
}

/* --- JPEG ----------------------------------------------------------------------- */

typedef struct jpeg_ctx {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    const uint8_t *data;
    size_t len;
    size_t max_pixels;
    uint8_t *pixels;
    uint8_t *row; /* one CMYK row */
    int width, height, channels;
    keel_error *err;
    char msg[JMSG_LENGTH_MAX]; /* libjpeg's words, or ours */
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_ctx *c = cinfo->client_data;
    (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jb, 1);
}

/* Warnings are mostly survivable corruption (libjpeg fills in gray), but
 * running out of data means the picture is partly made up: refuse it. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_ctx *c = cinfo->client_data;
    if (level >= 0)
        return; /* trace */
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        keel__strlcpy(c->msg, "file is truncated", sizeof(c->msg));
        longjmp(c->jb, 1);
    }
    cinfo->err->num_warnings++;
}

/* A progressive JPEG may have any number of scans, each costing a pass over
 * the image: a small file could take minutes. */
static void jpeg_on_progress(j_common_ptr cinfo)
{
    jpeg_ctx *c = cinfo->client_data;
    if (c->cinfo.input_scan_number > KEEL__IMAGE_MAX_SCANS) {
        snprintf(c->msg, sizeof(c->msg), "more than %d scans", KEEL__IMAGE_MAX_SCANS);
        longjmp(c->jb, 1);
    }
}

static int jpeg_run(jpeg_ctx *c)
{
    struct jpeg_decompress_struct *ci = &c->cinfo;
    ci->err = jpeg_std_error(&c->jerr);
    c->jerr.error_exit = jpeg_on_error;
    c->jerr.emit_message = jpeg_on_message;
    ci->client_data = c;
    if (setjmp(c->jb))
        return keel__err(c->err, KEEL_ECORRUPT, "image: corrupt JPEG: %s", c->msg);

    jpeg_create_decompress(ci); /* keeps err and client_data */
    c->progress.progress_monitor = jpeg_on_progress;
    ci->progress = &c->progress;
    jpeg_mem_src(ci, c->data, c->len);
    (void)jpeg_read_header(ci, TRUE);
    int rc = check_size("JPEG", ci->image_width, ci->image_height, c->max_pixels, c->err);
    if (rc != KEEL_OK)
        return rc;

    int cmyk = 0;
    switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE:
        ci->out_color_space = JCS_GRAYSCALE;
        c->channels = 1;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        ci->out_color_space = JCS_RGB;
        c->channels = 3;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        ci->out_color_space = JCS_CMYK; /* libjpeg goes no further: RGB below */
        c->channels = 3;
        cmyk = 1;
        break;
    default:
        return keel__err(c->err, KEEL_EUNSUPPORTED,
                         "image: JPEG with %d colour components of unknown meaning: send gray, "
                         "RGB or CMYK",
                         ci->num_components);
    }

    (void)jpeg_start_decompress(ci);
    JDIMENSION w = ci->output_width, h = ci->output_height;
    if (w != ci->image_width || h != ci->image_height ||
        ci->output_components != (cmyk ? 4 : c->channels))
        return keel__err(c->err, KEEL_EINTERNAL,
                         "image: JPEG %ux%u decoded as %ux%u with %d components", ci->image_width,
                         ci->image_height, w, h, ci->output_components);
    size_t stride = (size_t)w * (size_t)c->channels;
    c->pixels = malloc(stride * h);
    if (cmyk)
        c->row = malloc((size_t)w * 4);
    if (!c->pixels || (cmyk && !c->row))
        return keel__err(c->err, KEEL_ENOMEM, "image: no memory for a %ux%u JPEG", w, h);

    while (ci->output_scanline < h) {
        uint8_t *dst = c->pixels + stride * ci->output_scanline;
        JSAMPROW row = cmyk ? c->row : dst;
        if (jpeg_read_scanlines(ci, &row, 1) != 1)
            return keel__err(c->err, KEEL_ECORRUPT, "image: corrupt JPEG: no data at row %u",
                             ci->output_scanline);
        if (!cmyk)
            continue;
        /* Adobe writes CMYK inverted (0 is full ink); others plain. */
        int inv = ci->saw_Adobe_marker;
        for (JDIMENSION x = 0; x < w; x++) {
            const uint8_t *s = c->row + 4 * (size_t)x;
            unsigned k = inv ? s[3] : 255u - s[3];
            for (int i = 0; i < 3; i++) {
                unsigned v = inv ? s[i] : 255u - s[i];
                dst[3 * (size_t)x + (size_t)i] = (uint8_t)((v * k + 127) / 255);
            }
        }
    }
    /* Not jpeg_finish_decompress: what follows the pixels does not matter. */
    c->width = (int)w;
    c->height = (int)h;
    return KEEL_OK;
}

static int decode_jpeg(const uint8_t *data, size_t len, size_t max_pixels, keel__image *out,
                       keel_error *err)
{
    jpeg_ctx c;
    memset(&c, 0, sizeof(c));
    c.data = data;
    c.len = len;
    c.max_pixels = max_pixels;
    c.err = err;
    int rc = jpeg_run(&c);
    jpeg_destroy_decompress(&c.cinfo); /* fine on a half-made one: mem is NULL */
    free(c.row);
    if (rc != KEEL_OK) {
        free(c.pixels);
        return rc;
    }
    out->width = c.width;
    out->height = c.height;
    out->channels = c.channels;
    out->pixels = c.pixels;
    return KEEL_OK;
}

int keel__image_decode(const void *data, size_t len, size_t max_pixels, keel__image *out,
                       keel_error *err)
{
    memset(out, 0, sizeof(*out));
    if (!data || len == 0)
        return keel__err(err, KEEL_EINVALID,
                         "image: empty input: send image/png or image/jpeg bytes");
    if (max_pixels == 0)
        max_pixels = KEEL__IMAGE_MAX_PIXELS_DEFAULT;
    switch (keel__image_sniff(data, len)) {
    case KEEL__IMG_PNG:
        return decode_png(data, len, max_pixels, out, err);
    case KEEL__IMG_JPEG:
        return decode_jpeg(data, len, max_pixels, out, err);
    default:
        break;
    }
    const uint8_t *p = data;
    char hex[16] = "";
    size_t n = len < 4 ? len : 4;
    for (size_t i = 0; i < n; i++)
        snprintf(hex + strlen(hex), sizeof(hex) - strlen(hex), "%s%02x", i ? " " : "", p[i]);
    return keel__err(err, KEEL_EINVALID,
                     "image: not a PNG or JPEG (first bytes %s): send image/png or image/jpeg",
                     hex);
}

/* --- tensor ------------------------------------------------------------------------ */

/* Resampling weights along one axis: output i blends count[i] inputs from
 * start[i] with weights w[i * taps ...], which sum to 1. */
typedef struct axis {
    int taps;
    int *start, *count;
    float *w;
} axis;

static void axis_done(axis *a)
{
    free(a->start);
    free(a->count);
    free(a->w);
}

static double triangle(double x)
{
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* PIL's precompute_coeffs with the bilinear filter: centres at +0.5, the
 * support widened by the ratio when shrinking. The same size gives weights
 * {1, 0}: an exact copy. */
static int axis_init(axis *a, int in, int out)
{
    double scale = (double)in / (double)out;
    double fscale = scale > 1.0 ? scale : 1.0;
    double support = fscale; /* the triangle's support is 1 */
    a->taps = (int)ceil(support) * 2 + 1;
    a->start = malloc(sizeof(int) * (size_t)out);
    a->count = malloc(sizeof(int) * (size_t)out);
    a->w = calloc((size_t)out * (size_t)a->taps, sizeof(float));
    if (!a->start || !a->count || !a->w)
        return KEEL_ENOMEM;
    for (int i = 0; i < out; i++) {
        double center = ((double)i + 0.5) * scale;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0)
            lo = 0;
        if (hi > in)
            hi = in;
        if (hi - lo > a->taps)
            hi = lo + a->taps;
        float *w = a->w + (size_t)i * (size_t)a->taps;
        double sum = 0;
        for (int x = lo; x < hi; x++) {
            double v = triangle(((double)x - center + 0.5) / fscale);
            w[x - lo] = (float)v;
            sum += v;
        }
        if (sum <= 0) { /* cannot happen with in >= 1; nearest pixel */
            lo = (int)center < in ? (int)center : in - 1;
            hi = lo + 1;
            w[0] = 1.0f;
            sum = 1.0;
        }
        for (int x = 0; x < hi - lo; x++)
            w[x] = (float)(w[x] / sum);
        a->start[i] = lo;
        a->count[i] = hi - lo;
    }
    return KEEL_OK;
}

int keel__image_to_tensor(const keel__image *img, const keel__image_spec *spec, float *out,
                          keel_error *err)
{
    if (!img || !img->pixels || img->width < 1 || img->height < 1 ||
        (img->channels != 1 && img->channels != 3))
        return keel__err(err, KEEL_EINVALID, "image: no pixels to convert");
    if (!spec || !out)
        return keel__err(err, KEEL_EINVALID, "image: no target description or output");
    if (spec->width < 1 || spec->height < 1 || spec->width > KEEL__IMAGE_MAX_SIDE ||
        spec->height > KEEL__IMAGE_MAX_SIDE)
        return keel__err(err, KEEL_EINVALID, "image: target size %dx%d is not within 1..%d",
                         spec->width, spec->height, KEEL__IMAGE_MAX_SIDE);
    if (spec->channels != 1 && spec->channels != 3)
        return keel__err(err, KEEL_EINVALID, "image: target has %d channels: want 1 or 3",
                         spec->channels);
    int tc = spec->channels;
    float mean[3], stdv[3];
    int finite = isfinite(spec->scale);
    for (int c = 0; c < tc; c++) {
        mean[c] = spec->mean[c];
        stdv[c] = spec->std[c] == 0.0f ? 1.0f : spec->std[c];
        finite = finite && isfinite(mean[c]) && isfinite(stdv[c]);
    }
    if (!finite)
        return keel__err(err, KEEL_EINVALID, "image: scale, mean or std is not a finite number");

    int sw = img->width, sh = img->height, sc = img->channels;
    int dw = spec->width, dh = spec->height;
    size_t plane = (size_t)dw * (size_t)dh;
    size_t src_stride = (size_t)sw * (size_t)sc;
    axis ax = {0}, ay = {0};
    float *row = malloc(sizeof(float) * src_stride);
    int rc = KEEL_OK;
    if (!row || axis_init(&ax, sw, dw) != KEEL_OK || axis_init(&ay, sh, dh) != KEEL_OK) {
        rc = keel__err(err, KEEL_ENOMEM, "image: no memory to resize %dx%d to %dx%d", sw, sh, dw,
                       dh);
        goto out;
    }

    for (int oy = 0; oy < dh; oy++) {
        /* vertical pass into one row of source width */
        const float *wy = ay.w + (size_t)oy * (size_t)ay.taps;
        memset(row, 0, sizeof(float) * src_stride);
        for (int k = 0; k < ay.count[oy]; k++) {
            const uint8_t *s = img->pixels + (size_t)(ay.start[oy] + k) * src_stride;
            float wk = wy[k];
            for (size_t i = 0; i < src_stride; i++)
                row[i] += wk * (float)s[i];
        }
        for (int ox = 0; ox < dw; ox++) {
            /* horizontal pass */
            const float *wx = ax.w + (size_t)ox * (size_t)ax.taps;
            const float *p = row + (size_t)ax.start[ox] * (size_t)sc;
            float v[3] = {0, 0, 0};
            for (int k = 0; k < ax.count[ox]; k++, p += sc)
                for (int c = 0; c < sc; c++)
                    v[c] += wx[k] * p[c];

            float raw[3];
            if (tc == 1) {
                raw[0] = sc == 1 ? v[0]
                                 : (float)(0.299 * (double)v[0] + 0.587 * (double)v[1] +
                                           0.114 * (double)v[2]);
            } else {
                for (int c = 0; c < 3; c++)
                    raw[c] = v[sc == 1 ? 0 : (spec->bgr ? 2 - c : c)];
            }
            size_t pix = (size_t)oy * (size_t)dw + (size_t)ox;
            for (int c = 0; c < tc; c++) {
                float x = spec->invert ? 255.0f - raw[c] : raw[c];
                x = (x * spec->scale - mean[c]) / stdv[c];
                if (spec->nchw)
                    out[(size_t)c * plane + pix] = x;
                else
                    out[pix * (size_t)tc + (size_t)c] = x;
            }
        }
    }
out:
    axis_done(&ax);
    axis_done(&ay);
    free(row);
    return rc;
}
