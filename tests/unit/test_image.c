/* test_image.c - PNG/JPEG decoding (fixtures encoded here with libpng and
 * libjpeg), limits and corrupt input, and the tensor conversion: resize
 * math, colour, layout, normalization. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "helpers.h"
#include "infer/image.h"

/* --- fixtures ------------------------------------------------------------------ */

typedef struct mbuf {
    uint8_t *data;
    size_t len;
} mbuf;

static void mbuf_write(png_structp png, png_bytep d, size_t n)
{
    mbuf *m = png_get_io_ptr(png);
    m->data = realloc(m->data, m->len + n);
    assert_non_null(m->data);
    memcpy(m->data + m->len, d, n);
    m->len += n;
}

static void mbuf_flush(png_structp png)
{
}

typedef struct png_fixture {
    int w, h, ctype, depth;
    const void *pix; /* rows packed as PNG stores them (16-bit big-endian) */
    const png_color *pal;
    int npal;
    const uint8_t *trns;
    int ntrns;
    int interlace;
} png_fixture;

static int png_channels(int ctype)
{
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
    case PNG_COLOR_TYPE_PALETTE:
        return 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        return 2;
    case PNG_COLOR_TYPE_RGB:
        return 3;
    default:
        return 4;
    }
}

/* Encodes f; the caller frees the result. */
static uint8_t *png_encode(const png_fixture *f, size_t *len)
{
    mbuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    assert_non_null(info);
    if (setjmp(png_jmpbuf(png)))
        fail_msg("libpng could not encode a fixture");
    png_set_write_fn(png, &m, mbuf_write, mbuf_flush);
    png_set_IHDR(png, info, (png_uint_32)f->w, (png_uint_32)f->h, f->depth, f->ctype,
                 f->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (f->pal)
        png_set_PLTE(png, info, f->pal, f->npal);
    if (f->trns)
        png_set_tRNS(png, info, f->trns, f->ntrns, NULL);
    png_text text = {.compression = PNG_TEXT_COMPRESSION_NONE, .key = "Comment", .text = "keel"};
    png_set_text(png, info, &text, 1);
    png_write_info(png, info);
    size_t stride = ((size_t)f->w * (size_t)png_channels(f->ctype) * (size_t)f->depth + 7) / 8;
    png_bytep rows[64];
    assert_true(f->h <= 64);
    for (int y = 0; y < f->h; y++)
        rows[y] = (png_bytep)f->pix + stride * (size_t)y;
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    *len = m.len;
    return m.data;
}

/* Encodes w x h pixels of comps components in colour space cs; free() the result. */
static uint8_t *jpeg_encode(int w, int h, int comps, J_COLOR_SPACE cs, const uint8_t *pix,
                            int progressive, size_t *len)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    unsigned char *out = NULL;
    unsigned long n = 0;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &out, &n);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = comps;
    c.in_color_space = cs;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    if (progressive)
        jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)pix + (size_t)c.next_scanline * (size_t)w * (size_t)comps;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = n;
    return out;
}

static void decode_ok(const uint8_t *data, size_t len, keel__image *img)
{
    keel_error e = {0};
    int rc = keel__image_decode(data, len, 0, img, &e);
    if (rc != KEEL_OK)
        fail_msg("decode: %s", e.msg);
}

static void expect_pixels(const keel__image *img, int w, int h, int ch, const uint8_t *want)
{
    assert_int_equal(img->width, w);
    assert_int_equal(img->height, h);
    assert_int_equal(img->channels, ch);
    assert_memory_equal(img->pixels, want, (size_t)w * (size_t)h * (size_t)ch);
}

static void expect_near(const keel__image *img, int w, int h, int ch, const uint8_t *want, int tol)
{
    assert_int_equal(img->width, w);
    assert_int_equal(img->height, h);
    assert_int_equal(img->channels, ch);
    for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)ch; i++)
        if (abs((int)img->pixels[i] - (int)want[i]) > tol)
            fail_msg("byte %zu: got %d, want %d +- %d", i, img->pixels[i], want[i], tol);
}

/* A smooth 16x16 RGB picture (JPEG keeps it within a few levels). */
static void smooth_rgb(uint8_t *p)
{
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++) {
            uint8_t *q = p + (y * 16 + x) * 3;
            q[0] = (uint8_t)(40 + x * 10);
            q[1] = (uint8_t)(200 - y * 8);
            q[2] = (uint8_t)(90 + x * 3 + y * 3);
        }
}

/* --- decoding ------------------------------------------------------------------ */

static void test_sniff(void **state)
{
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0};
    static const uint8_t jpg[] = {0xff, 0xd8, 0xff, 0xe0};
    assert_int_equal(keel__image_sniff(png, sizeof(png)), KEEL__IMG_PNG);
    assert_int_equal(keel__image_sniff(png, 7), KEEL__IMG_UNKNOWN);
    assert_int_equal(keel__image_sniff(jpg, sizeof(jpg)), KEEL__IMG_JPEG);
    assert_int_equal(keel__image_sniff(jpg, 2), KEEL__IMG_UNKNOWN);
    assert_int_equal(keel__image_sniff("GIF89a", 6), KEEL__IMG_UNKNOWN);
    assert_int_equal(keel__image_sniff(NULL, 0), KEEL__IMG_UNKNOWN);
}

static void test_png_kinds(void **state)
{
    keel__image img;
    size_t len;
    uint8_t *data;

    /* 8-bit gray, with a tEXt chunk, exact */
    static const uint8_t gray[] = {0, 1, 127, 128, 254, 255};
    png_fixture fg = {.w = 3, .h = 2, .ctype = PNG_COLOR_TYPE_GRAY, .depth = 8, .pix = gray};
    data = png_encode(&fg, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 3, 2, 1, gray);
    keel__image_free(&img);
    assert_null(img.pixels);
    free(data);

    /* RGB, and the same interlaced (Adam7) */
    uint8_t rgb[16 * 16 * 3];
    smooth_rgb(rgb);
    for (int il = 0; il < 2; il++) {
        png_fixture f = {
            .w = 16, .h = 16, .ctype = PNG_COLOR_TYPE_RGB, .depth = 8, .pix = rgb, .interlace = il};
        data = png_encode(&f, &len);
        decode_ok(data, len, &img);
        expect_pixels(&img, 16, 16, 3, rgb);
        keel__image_free(&img);
        free(data);
    }

    /* RGBA: alpha dropped, colour kept even where fully transparent */
    static const uint8_t rgba[] = {10, 20, 30, 255, 40, 50, 60, 0, 70, 80, 90, 128};
    static const uint8_t rgba_want[] = {10, 20, 30, 40, 50, 60, 70, 80, 90};
    png_fixture fa = {.w = 3, .h = 1, .ctype = PNG_COLOR_TYPE_RGB_ALPHA, .depth = 8, .pix = rgba};
    data = png_encode(&fa, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 3, 1, 3, rgba_want);
    keel__image_free(&img);
    free(data);

    /* gray + alpha stays gray */
    static const uint8_t ga[] = {5, 255, 200, 0};
    static const uint8_t ga_want[] = {5, 200};
    png_fixture fga = {.w = 2, .h = 1, .ctype = PNG_COLOR_TYPE_GRAY_ALPHA, .depth = 8, .pix = ga};
    data = png_encode(&fga, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 2, 1, 1, ga_want);
    keel__image_free(&img);
    free(data);

    /* palette with tRNS: RGB, transparency ignored */
    static const png_color pal[] = {{255, 0, 0}, {0, 255, 0}, {1, 2, 3}};
    static const uint8_t trns[] = {0, 128};
    static const uint8_t idx[] = {2, 0, 1, 1};
    static const uint8_t pal_want[] = {1, 2, 3, 255, 0, 0, 0, 255, 0, 0, 255, 0};
    png_fixture fp = {.w = 2,
                      .h = 2,
                      .ctype = PNG_COLOR_TYPE_PALETTE,
                      .depth = 8,
                      .pix = idx,
                      .pal = pal,
                      .npal = 3,
                      .trns = trns,
                      .ntrns = 2};
    data = png_encode(&fp, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 2, 2, 3, pal_want);
    keel__image_free(&img);
    free(data);

    /* 4-bit palette, packed */
    static const uint8_t idx4[] = {0x21, 0x00};
    static const uint8_t pal4_want[] = {1, 2, 3, 0, 255, 0, 255, 0, 0};
    png_fixture fp4 = {.w = 3,
                       .h = 1,
                       .ctype = PNG_COLOR_TYPE_PALETTE,
                       .depth = 4,
                       .pix = idx4,
                       .pal = pal,
                       .npal = 3};
    data = png_encode(&fp4, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 3, 1, 3, pal4_want);
    keel__image_free(&img);
    free(data);

    /* 1-bit gray: 0 and 1 become 0 and 255 */
    static const uint8_t bits[] = {0xa0 /* 1010 0... */};
    static const uint8_t bits_want[] = {255, 0, 255, 0, 0};
    png_fixture fb = {.w = 5, .h = 1, .ctype = PNG_COLOR_TYPE_GRAY, .depth = 1, .pix = bits};
    data = png_encode(&fb, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 5, 1, 1, bits_want);
    keel__image_free(&img);
    free(data);

    /* 16-bit RGB: v*257 maps back to v exactly; others round v*255/65535 */
    static const uint8_t rgb16[] = {0x00, 0x00, 0xff, 0xff, 0x80, 0x80, /* 0, 65535, 128*257 */
                                    0x12, 0x34, 0x7f, 0xff, 0x80, 0x00};
    static const uint8_t rgb16_want[] = {0, 255, 128, 0x12, 127, 128};
    png_fixture f16 = {.w = 2, .h = 1, .ctype = PNG_COLOR_TYPE_RGB, .depth = 16, .pix = rgb16};
    data = png_encode(&f16, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 2, 1, 3, rgb16_want);
    keel__image_free(&img);
    free(data);

    /* 16-bit gray + alpha */
    static const uint8_t ga16[] = {0xc8, 0xc8, 0x00, 0x00};
    static const uint8_t ga16_want[] = {200};
    png_fixture fga16 = {
        .w = 1, .h = 1, .ctype = PNG_COLOR_TYPE_GRAY_ALPHA, .depth = 16, .pix = ga16};
    data = png_encode(&fga16, &len);
    decode_ok(data, len, &img);
    expect_pixels(&img, 1, 1, 1, ga16_want);
    keel__image_free(&img);
    free(data);
}

static void test_jpeg_kinds(void **state)
{
    keel__image img;
    size_t len;
    uint8_t *data;

    uint8_t gray[16 * 16];
    for (int i = 0; i < 256; i++)
        gray[i] = (uint8_t)(30 + (i % 16) * 6 + (i / 16) * 4);
    data = jpeg_encode(16, 16, 1, JCS_GRAYSCALE, gray, 0, &len);
    decode_ok(data, len, &img);
    expect_near(&img, 16, 16, 1, gray, 6);
    keel__image_free(&img);
    free(data);

    uint8_t rgb[16 * 16 * 3];
    smooth_rgb(rgb);
    for (int prog = 0; prog < 2; prog++) {
        data = jpeg_encode(16, 16, 3, JCS_RGB, rgb, prog, &len);
        decode_ok(data, len, &img);
        expect_near(&img, 16, 16, 3, rgb, 12);
        keel__image_free(&img);
        free(data);
    }

    /* CMYK as Photoshop writes it (inverted, Adobe marker): red, gray, black */
    static const uint8_t cmyk[] = {255, 0, 0, 255, 255, 255, 255, 128, 255, 255, 255, 0};
    static const uint8_t rgbs[3][3] = {{255, 0, 0}, {128, 128, 128}, {0, 0, 0}};
    uint8_t cmyk_px[24 * 8 * 4], want[24 * 8 * 3]; /* one 8x8 block each: no ringing */
    for (int i = 0; i < 24 * 8; i++) {
        int k = (i % 24) / 8;
        memcpy(cmyk_px + 4 * i, cmyk + 4 * k, 4);
        memcpy(want + 3 * i, rgbs[k], 3);
    }
    data = jpeg_encode(24, 8, 4, JCS_CMYK, cmyk_px, 0, &len);
    decode_ok(data, len, &img);
    expect_near(&img, 24, 8, 3, want, 4);
    keel__image_free(&img);
    free(data);
}

static uint8_t *find_marker(uint8_t *p, size_t len, uint8_t m)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (p[i] == 0xff && p[i + 1] == m)
            return p + i;
    return NULL;
}

static void test_limits(void **state)
{
    keel__image img;
    keel_error e;
    size_t len;
    uint8_t rgb[16 * 16 * 3];
    smooth_rgb(rgb);

    png_fixture f = {.w = 16, .h = 16, .ctype = PNG_COLOR_TYPE_RGB, .depth = 8, .pix = rgb};
    uint8_t *data = png_encode(&f, &len);
    th_expect_err(keel__image_decode(data, len, 255, &img, &e), &e, KEEL_ETOOBIG,
                  "image: PNG is 16x16, over the limit of 255 pixels");
    assert_null(img.pixels);
    decode_ok(data, len, &img); /* 256 is fine */
    keel__image_free(&img);
    assert_int_equal(keel__image_decode(data, len, 256, &img, &e), KEEL_OK);
    keel__image_free(&img);
    /* the header says 40000x40000: refused before anything is allocated,
     * even though the CRC no longer matches */
    static const uint8_t big[] = {0, 0, 0x9c, 0x40, 0, 0, 0x9c, 0x40};
    memcpy(data + 16, big, 8);
    th_expect_err(keel__image_decode(data, len, 16777216, &img, &e), &e, KEEL_ETOOBIG,
                  "image: PNG is 40000x40000, over the limit of 16777216 pixels");
    th_expect_err(keel__image_decode(data, len, 0, &img, &e), &e, KEEL_ETOOBIG,
                  "over the limit of 16777216 pixels");
    free(data);

    data = jpeg_encode(16, 16, 3, JCS_RGB, rgb, 0, &len);
    th_expect_err(keel__image_decode(data, len, 100, &img, &e), &e, KEEL_ETOOBIG,
                  "image: JPEG is 16x16, over the limit of 100 pixels");
    uint8_t *sof = find_marker(data, len, 0xc0);
    assert_non_null(sof);
    memcpy(sof + 5, big + 2, 2); /* height */
    memcpy(sof + 7, big + 2, 2); /* width */
    th_expect_err(keel__image_decode(data, len, 0, &img, &e), &e, KEEL_ETOOBIG,
                  "image: JPEG is 40000x40000, over the limit of 16777216 pixels");
    assert_null(img.pixels);
    free(data);
}

static void test_truncated(void **state)
{
    keel__image img;
    keel_error e;
    size_t len;
    uint8_t rgb[16 * 16 * 3];
    smooth_rgb(rgb);

    /* Every cut of a PNG fails cleanly, except past the last IDAT: the
     * IEND chunk (12 bytes) is not needed for the pixels. */
    png_fixture f = {.w = 16, .h = 16, .ctype = PNG_COLOR_TYPE_RGB, .depth = 8, .pix = rgb};
    uint8_t *data = png_encode(&f, &len);
    for (size_t n = 0; n + 12 < len; n++) {
        int rc = keel__image_decode(data, n, 0, &img, &e);
        if (rc != KEEL_ECORRUPT && rc != KEEL_EINVALID)
            fail_msg("PNG cut to %zu of %zu bytes: %s: %s", n, len, keel_errname(rc), e.msg);
        assert_null(img.pixels);
    }
    th_expect_err(keel__image_decode(data, len / 2, 0, &img, &e), &e, KEEL_ECORRUPT,
                  "image: corrupt PNG: file is truncated");
    free(data);

    /* Every cut of a JPEG fails, down to losing the EOI marker. */
    for (int prog = 0; prog < 2; prog++) {
        data = jpeg_encode(16, 16, 3, JCS_RGB, rgb, prog, &len);
        for (size_t n = 0; n + 2 < len; n++) {
            int rc = keel__image_decode(data, n, 0, &img, &e);
            if (rc != KEEL_ECORRUPT && rc != KEEL_EINVALID)
                fail_msg("JPEG cut to %zu of %zu bytes: %s: %s", n, len, keel_errname(rc), e.msg);
            assert_null(img.pixels);
        }
        th_expect_err(keel__image_decode(data, len - 40, 0, &img, &e), &e, KEEL_ECORRUPT,
                      "image: corrupt JPEG: file is truncated");
        free(data);
    }
}

static void test_garbage(void **state)
{
    keel__image img;
    keel_error e;
    th_expect_err(keel__image_decode("", 0, 0, &img, &e), &e, KEEL_EINVALID, "empty");
    th_expect_err(keel__image_decode(NULL, 10, 0, &img, &e), &e, KEEL_EINVALID, "empty");
    th_expect_err(keel__image_decode("GIF89a...", 9, 0, &img, &e), &e, KEEL_EINVALID,
                  "image: not a PNG or JPEG (first bytes 47 49 46 38): send image/png or "
                  "image/jpeg");
    th_expect_err(keel__image_decode("\x01", 1, 0, &img, &e), &e, KEEL_EINVALID,
                  "(first bytes 01)");

    /* the right magic followed by noise */
    uint8_t noise[4096];
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof(noise); i++) {
        s = s * 1103515245u + 12345u;
        noise[i] = (uint8_t)(s >> 16);
    }
    memcpy(noise, "\x89PNG\r\n\x1a\n", 8);
    th_expect_err(keel__image_decode(noise, sizeof(noise), 0, &img, &e), &e, KEEL_ECORRUPT,
                  "image: corrupt PNG");
    memcpy(noise, "\xff\xd8\xff", 3);
    th_expect_err(keel__image_decode(noise, sizeof(noise), 0, &img, &e), &e, KEEL_ECORRUPT,
                  "image: corrupt JPEG");
    assert_null(img.pixels);

    /* a flipped byte inside IDAT: zlib's check fails before the chunk CRC is read */
    size_t len;
    uint8_t rgb[16 * 16 * 3];
    smooth_rgb(rgb);
    png_fixture f = {.w = 16, .h = 16, .ctype = PNG_COLOR_TYPE_RGB, .depth = 8, .pix = rgb};
    uint8_t *data = png_encode(&f, &len);
    uint8_t *idat = memmem(data, len, "IDAT", 4);
    assert_non_null(idat);
    idat[10] ^= 0x55;
    th_expect_err(keel__image_decode(data, len, 0, &img, &e), &e, KEEL_ECORRUPT,
                  "corrupt PNG: IDAT");
    idat[10] ^= 0x55;
    data[29] ^= 1; /* IHDR's CRC */
    th_expect_err(keel__image_decode(data, len, 0, &img, &e), &e, KEEL_ECORRUPT, "IHDR: CRC error");
    free(data);
}

static void test_mnist_digit(void **state)
{
    char *data;
    size_t len;
    keel_error e;
    const char *path = th_shared("models/onnx/mnist/digit_3.jpg");
    if (!keel__fs_exists(path))
        th_skip("no reference image models/onnx/mnist/digit_3.jpg (../shared or KEEL_SHARED)");
    assert_int_equal(keel__fs_read(path, 1 << 20, &data, &len, &e), 0);
    keel__image img;
    decode_ok((const uint8_t *)data, len, &img);
    assert_int_equal(img.width, 28);
    assert_int_equal(img.height, 28);
    assert_int_equal(img.channels, 1);
    /* a digit: mostly one shade with a stroke of the other */
    size_t dark = 0, light = 0;
    for (int i = 0; i < 28 * 28; i++) {
        dark += img.pixels[i] < 64;
        light += img.pixels[i] > 192;
    }
    assert_true(dark > 50 && light > 50);
    float t[28 * 28];
    keel__image_spec sp = {.width = 28, .height = 28, .channels = 1, .scale = 1 / 255.f};
    assert_int_equal(keel__image_to_tensor(&img, &sp, t, &e), 0);
    for (int i = 0; i < 28 * 28; i++)
        assert_true(t[i] >= 0.0f && t[i] <= 1.0f);
    keel__image_free(&img);
    free(data);
}

/* --- tensor -------------------------------------------------------------------- */

#define assert_float_near(a, b, eps)                                                               \
    do {                                                                                           \
        double a_ = (a), b_ = (b);                                                                 \
        if (fabs(a_ - b_) > (eps))                                                                 \
            fail_msg("%s = %.6f, want %.6f", #a, a_, b_);                                          \
    } while (0)

static void test_tensor_copy(void **state)
{
    /* same size: an exact copy, floats equal to the bytes */
    uint8_t px[5 * 3 * 3];
    for (size_t i = 0; i < sizeof(px); i++)
        px[i] = (uint8_t)(i * 37 + 11);
    keel__image img = {5, 3, 3, px};
    keel__image_spec sp = {.width = 5, .height = 3, .channels = 3, .scale = 1.0f};
    float out[5 * 3 * 3];
    keel_error e;
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    for (size_t i = 0; i < sizeof(px); i++)
        assert_true(out[i] == (float)px[i]);
}

static void test_tensor_resize(void **state)
{
    keel_error e;
    float out[16];

    /* upscale 2 -> 4: half-pixel centres, edges clamped */
    uint8_t up[] = {0, 100};
    keel__image img = {2, 1, 1, up};
    keel__image_spec sp = {.width = 4, .height = 1, .channels = 1, .scale = 1.0f};
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    assert_float_near(out[0], 0, 1e-4);
    assert_float_near(out[1], 25, 1e-4);
    assert_float_near(out[2], 75, 1e-4);
    assert_float_near(out[3], 100, 1e-4);

    /* shrink 4 -> 2: the triangle widens to 2 pixels each side, weights
     * 3/7, 3/7, 1/7 at the edge */
    uint8_t down[] = {0, 40, 80, 120};
    img = (keel__image){4, 1, 1, down};
    sp.width = 2;
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    assert_float_near(out[0], (40 * 3 + 80) / 7.0, 1e-3);
    assert_float_near(out[1], (40 + 80 * 3 + 120 * 3) / 7.0, 1e-3);

    /* 2x2 -> 1x1 is the mean of the four */
    uint8_t sq[] = {10, 20, 30, 41};
    img = (keel__image){2, 2, 1, sq};
    sp.width = sp.height = 1;
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    assert_float_near(out[0], 25.25, 1e-4);

    /* a large shrink of a flat image stays flat; of a ramp stays symmetric */
    uint8_t flat[64 * 48];
    memset(flat, 77, sizeof(flat));
    img = (keel__image){64, 48, 1, flat};
    sp.width = 3;
    sp.height = 2;
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    for (int i = 0; i < 6; i++)
        assert_float_near(out[i], 77, 1e-3);
    uint8_t ramp[16];
    for (int i = 0; i < 16; i++)
        ramp[i] = (uint8_t)(i * 10);
    img = (keel__image){16, 1, 1, ramp};
    sp.width = 2;
    sp.height = 1;
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    assert_float_near(out[0] + out[1], 150, 1e-3);
    assert_true(out[0] > 30 && out[0] < 45); /* every pixel of the half counts */

    /* 2x1 -> 2x3: rows are copies */
    img = (keel__image){2, 1, 1, up};
    sp.width = 2;
    sp.height = 3;
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    for (int y = 0; y < 3; y++) {
        assert_true(out[y * 2] == 0.0f);
        assert_true(out[y * 2 + 1] == 100.0f);
    }
}

static void test_tensor_layout(void **state)
{
    uint8_t px[] = {10, 20, 30, 40, 50, 60};
    keel__image img = {2, 1, 3, px};
    keel_error e;
    float out[6];
    static const struct {
        int bgr, nchw;
        float want[6];
    } cases[] = {
        {0, 0, {10, 20, 30, 40, 50, 60}},
        {0, 1, {10, 40, 20, 50, 30, 60}},
        {1, 0, {30, 20, 10, 60, 50, 40}},
        {1, 1, {30, 60, 20, 50, 10, 40}},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(cases); i++) {
        keel__image_spec sp = {.width = 2,
                               .height = 1,
                               .channels = 3,
                               .bgr = cases[i].bgr,
                               .nchw = cases[i].nchw,
                               .scale = 1.0f};
        assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
        assert_memory_equal(out, cases[i].want, sizeof(out));
    }

    /* RGB to gray with 601 luma; gray to RGB replicated */
    keel__image_spec g = {.width = 2, .height = 1, .channels = 1, .scale = 1.0f};
    assert_int_equal(keel__image_to_tensor(&img, &g, out, &e), 0);
    assert_float_near(out[0], 0.299 * 10 + 0.587 * 20 + 0.114 * 30, 1e-3);
    assert_float_near(out[1], 0.299 * 40 + 0.587 * 50 + 0.114 * 60, 1e-3);
    uint8_t white[] = {255};
    img = (keel__image){1, 1, 3, (uint8_t[]){255, 255, 255}};
    g.width = 1;
    assert_int_equal(keel__image_to_tensor(&img, &g, out, &e), 0);
    assert_true(out[0] == 255.0f);
    img = (keel__image){1, 1, 1, white};
    keel__image_spec c3 = {.width = 1, .height = 1, .channels = 3, .nchw = 1, .scale = 1.0f};
    assert_int_equal(keel__image_to_tensor(&img, &c3, out, &e), 0);
    assert_true(out[0] == 255.0f && out[1] == 255.0f && out[2] == 255.0f);
}

static void test_tensor_normalize(void **state)
{
    uint8_t px[] = {0, 128, 255, 51, 102, 204};
    keel__image img = {2, 1, 3, px};
    keel_error e;
    float out[6];
    /* ImageNet-style, BGR planar: mean/std are per output channel */
    keel__image_spec sp = {.width = 2,
                           .height = 1,
                           .channels = 3,
                           .bgr = 1,
                           .nchw = 1,
                           .scale = 1 / 255.f,
                           .mean = {0.406f, 0.456f, 0.485f},
                           .std = {0.225f, 0.224f, 0.229f}};
    assert_int_equal(keel__image_to_tensor(&img, &sp, out, &e), 0);
    for (int c = 0; c < 3; c++)
        for (int x = 0; x < 2; x++) {
            double raw = px[x * 3 + (2 - c)];
            assert_float_near(out[c * 2 + x], (raw / 255.0 - sp.mean[c]) / sp.std[c], 1e-4);
        }

    /* std 0 means 1; invert first (MNIST): black-on-white to white-on-black */
    uint8_t g[] = {255, 0, 200};
    img = (keel__image){3, 1, 1, g};
    keel__image_spec m = {.width = 3,
                          .height = 1,
                          .channels = 1,
                          .scale = 1 / 255.f,
                          .mean = {0.1307f},
                          .std = {0},
                          .invert = 1};
    assert_int_equal(keel__image_to_tensor(&img, &m, out, &e), 0);
    assert_float_near(out[0], 0 - 0.1307, 1e-5);
    assert_float_near(out[1], 1 - 0.1307, 1e-5);
    assert_float_near(out[2], 55 / 255.0 - 0.1307, 1e-5);
}

static void test_tensor_invalid(void **state)
{
    uint8_t px[] = {1, 2, 3};
    keel__image img = {1, 1, 3, px};
    keel_error e;
    float out[3];
    keel__image_spec sp = {.width = 1, .height = 1, .channels = 2, .scale = 1.0f};
    th_expect_err(keel__image_to_tensor(&img, &sp, out, &e), &e, KEEL_EINVALID, "2 channels");
    sp.channels = 3;
    sp.width = 0;
    th_expect_err(keel__image_to_tensor(&img, &sp, out, &e), &e, KEEL_EINVALID, "target size");
    sp.width = 70000;
    th_expect_err(keel__image_to_tensor(&img, &sp, out, &e), &e, KEEL_EINVALID, "target size");
    sp.width = 1;
    sp.scale = NAN;
    th_expect_err(keel__image_to_tensor(&img, &sp, out, &e), &e, KEEL_EINVALID, "finite");
    sp.scale = 1.0f;
    sp.std[1] = INFINITY;
    th_expect_err(keel__image_to_tensor(&img, &sp, out, &e), &e, KEEL_EINVALID, "finite");
    sp.std[1] = 1.0f;
    th_expect_err(keel__image_to_tensor(&img, &sp, NULL, &e), &e, KEEL_EINVALID, NULL);
    keel__image none = {0};
    th_expect_err(keel__image_to_tensor(&none, &sp, out, &e), &e, KEEL_EINVALID, "no pixels");
    img.channels = 4;
    th_expect_err(keel__image_to_tensor(&img, &sp, out, &e), &e, KEEL_EINVALID, "no pixels");
    keel__image_free(NULL);
}

/* --- threads ------------------------------------------------------------------- */

typedef struct job {
    const uint8_t *png, *jpg;
    size_t png_len, jpg_len;
    const uint8_t *want_png;
    int ok;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    j->ok = 1;
    for (int i = 0; i < 40; i++) {
        keel__image img;
        keel_error e;
        if (keel__image_decode(j->png, j->png_len, 0, &img, &e) != KEEL_OK ||
            memcmp(img.pixels, j->want_png, 16 * 16 * 3) != 0)
            j->ok = 0;
        keel__image_free(&img);
        if (keel__image_decode(j->jpg, j->jpg_len, 0, &img, &e) != KEEL_OK)
            j->ok = 0;
        keel__image_free(&img);
        if (keel__image_decode(j->jpg, j->jpg_len / 2, 0, &img, &e) != KEEL_ECORRUPT)
            j->ok = 0;
    }
    return NULL;
}

static void test_threads(void **state)
{
    uint8_t rgb[16 * 16 * 3];
    smooth_rgb(rgb);
    png_fixture f = {.w = 16, .h = 16, .ctype = PNG_COLOR_TYPE_RGB, .depth = 8, .pix = rgb};
    job j = {.want_png = rgb};
    uint8_t *p = png_encode(&f, &j.png_len);
    uint8_t *q = jpeg_encode(16, 16, 3, JCS_RGB, rgb, 1, &j.jpg_len);
    j.png = p;
    j.jpg = q;
    pthread_t t[4];
    job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = j;
        assert_int_equal(pthread_create(&t[i], NULL, worker, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_true(jobs[i].ok);
    }
    free(p);
    free(q);
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff),
        cmocka_unit_test(test_png_kinds),
        cmocka_unit_test(test_jpeg_kinds),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_mnist_digit),
        cmocka_unit_test(test_tensor_copy),
        cmocka_unit_test(test_tensor_resize),
        cmocka_unit_test(test_tensor_layout),
        cmocka_unit_test(test_tensor_normalize),
        cmocka_unit_test(test_tensor_invalid),
        cmocka_unit_test(test_threads),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
