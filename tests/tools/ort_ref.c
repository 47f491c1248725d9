/*
 * ort_ref.c - raw ONNX Runtime reference numbers for the example models,
 * computed through keel's ORT adapter only (no keel packaging, tiers,
 * preprocessing or HTTP), so the integration tests can compare what keel's
 * API answers with what the bare model gives.
 *
 *   ort_ref mnist MODEL IDX_IMAGES_GZ IDX_LABELS_GZ
 *       raw 0..255 pixels as f32[1,1,28,28], argmax of the 10 logits;
 *       prints "CORRECT/TOTAL" (mnist-8 on t10k: 9891/10000)
 *   ort_ref vad MODEL WAV [--probs]
 *       16 kHz mono s16 WAV in 512-sample frames (samples / 32768), one
 *       stream: Silero v5/v6 (inputs input, state, sr) get the previous
 *       frame's last 64 samples prepended (zeros before the first) and the
 *       state carried; the legacy v4 (inputs input, sr, h, c) gets the 512
 *       samples and h/c carried. sr = 16000. Prints the index of every frame
 *       with p > 0.5, one a line ("INDEX PROB" for every frame with --probs),
 *       then "FLAGGED/FRAMES" (v6 on silero_test.wav: 1452/1875)
 *   ort_ref kws MEL EMBEDDING CLASSIFIER WAV CHUNK
 *       the openWakeWord chain (examples/kws) one model at a time, the glue
 *       between them written out here: the WAV's raw s16 values as float32
 *       in chunks of CHUNK samples; per chunk "chunk I score S" and the
 *       embeddings "emb I W: ..." (see cmd_kws)
 *   ort_ref iris MODEL CSV
 *       scikit-learn iris.csv (header "150,4,names...", rows of four
 *       features and the class index) or a CSV whose header names a "label"
 *       column (class index or name); output_label of each row run alone;
 *       prints "CORRECT/TOTAL" (rf_iris: 149/150)
 *
 * The runtime: KEEL_ORT_LIB, else keel's default search. Exit 0 on success,
 * 1 on any error (message on stderr), 2 on bad usage.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "infer/ort.h"

/* Debug builds run under LeakSanitizer: ONNX Runtime keeps a small
 * allocation for the process lifetime (tests/lsan.supp), which would turn
 * every run's exit status into a failure. Read only when LSan is linked. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libonnxruntime.so\n";
}
const char *__lsan_default_options(void);
const char *__lsan_default_options(void)
{
    return "print_suppressions=0";
}

static int fail(const char *what, const keel_error *e)
{
    fprintf(stderr, "ort_ref: %s: %s\n", what, e ? e->msg : "failed");
    return 1;
}

static keel__ort_session *open_model(const char *path)
{
    keel_error e = {0};
    if (keel__ort_load(NULL, &e)) {
        fail("loading ONNX Runtime", &e);
        return NULL;
    }
    keel__ort_opts o = {.intra_threads = 1, .opt_level = 99};
    keel__ort_session *s = NULL;
    if (keel__ort_session_new(path, &o, &s, &e)) {
        fail(path, &e);
        return NULL;
    }
    return s;
}

/* Index of the session output named name, or -1. */
static long find_output(const keel__ort_session *s, const char *name)
{
    for (size_t i = 0; i < keel__ort_noutputs(s); i++)
        if (strcmp(keel__ort_output(s, i)->name, name) == 0)
            return (long)i;
    return -1;
}

static int has_input(const keel__ort_session *s, const char *name)
{
    for (size_t i = 0; i < keel__ort_ninputs(s); i++)
        if (strcmp(keel__ort_input(s, i)->name, name) == 0)
            return 1;
    return 0;
}

static void outputs_done(keel__tensor *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        keel__tensor_done(&out[i]);
}

/* --- mnist ----------------------------------------------------------------- */

/* Whole gzip file into memory (gzread also reads plain files). */
static unsigned char *gz_slurp(const char *path, size_t *len)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *b = malloc(cap);
    for (;;) {
        if (!b)
            break;
        if (n == cap) {
            unsigned char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
        int r = gzread(f, b + n, (unsigned)(cap - n));
        if (r < 0) {
            free(b);
            b = NULL;
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    gzclose(f);
    *len = n;
    return b;
}

static unsigned le16(const unsigned char *p)
{
    return (unsigned)p[0] | (unsigned)p[1] << 8;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int cmd_mnist(const char *model, const char *images, const char *labels)
{
    size_t il = 0, ll = 0;
    unsigned char *im = gz_slurp(images, &il), *lb = gz_slurp(labels, &ll);
    int rc = 1;
    keel__ort_session *s = NULL;
    if (!im || !lb || il < 16 || ll < 8 || be32(im) != 0x803 || be32(lb) != 0x801) {
        fprintf(stderr, "ort_ref: not IDX image/label files: %s %s\n", images, labels);
        goto out;
    }
    size_t count = be32(im + 4), rows = be32(im + 8), cols = be32(im + 12);
    if (rows != 28 || cols != 28 || il < 16 + count * 784 || be32(lb + 4) != count ||
        ll < 8 + count) {
        fprintf(stderr, "ort_ref: unexpected IDX sizes\n");
        goto out;
    }
    if (!(s = open_model(model)))
        goto out;
    float px[784];
    size_t correct = 0;
    for (size_t n = 0; n < count; n++) {
        for (size_t i = 0; i < 784; i++)
            px[i] = (float)im[16 + n * 784 + i];
        keel__tensor in = {.name = keel__ort_input(s, 0)->name,
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 4,
                           .shape = {1, 1, 28, 28},
                           .data = px,
                           .nbytes = sizeof(px)};
        keel__tensor o[1];
        keel_error e = {0};
        if (keel__ort_run(s, &in, 1, o, &e)) {
            fail("run", &e);
            goto out;
        }
        const float *l = o[0].data;
        size_t best = 0, k = o[0].nbytes / sizeof(float);
        for (size_t j = 1; j < k; j++)
            if (l[j] > l[best])
                best = j;
        correct += best == lb[8 + n];
        keel__tensor_done(&o[0]);
    }
    printf("%zu/%zu\n", correct, count);
    rc = 0;
out:
    keel__ort_session_free(s);
    free(im);
    free(lb);
    return rc;
}

/* --- vad ------------------------------------------------------------------- */

/* 16-bit PCM samples of a RIFF/WAVE file as floats: sample * scale
 * (1/32768: [-1, 1); 1: the raw s16 values). */
static float *wav_read(const char *path, size_t *nsamples, float scale)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    float *out = NULL;
    unsigned char h[12], ch[8];
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RIFF", 4) || memcmp(h + 8, "WAVE", 4))
        goto done;
    int fmt_ok = 0;
    while (fread(ch, 1, 8, f) == 8) {
        uint32_t sz = le32(ch + 4);
        if (memcmp(ch, "fmt ", 4) == 0) {
            unsigned char fm[16];
            if (sz < 16 || fread(fm, 1, 16, f) != 16)
                goto done;
            unsigned fmt = le16(fm), chans = le16(fm + 2), bits = le16(fm + 14);
            uint32_t rate = le32(fm + 4);
            if (fmt != 1 || chans != 1 || rate != 16000 || bits != 16) {
                fprintf(stderr, "ort_ref: %s: need 16 kHz mono 16-bit PCM\n", path);
                goto done;
            }
            fmt_ok = 1;
            if (fseek(f, (long)(sz - 16 + (sz & 1)), SEEK_CUR))
                goto done;
        } else if (memcmp(ch, "data", 4) == 0) {
            if (!fmt_ok)
                goto done;
            size_t n = sz / 2;
            unsigned char *raw = malloc(sz ? sz : 1);
            out = malloc((n ? n : 1) * sizeof(float));
            if (!raw || !out || fread(raw, 1, n * 2, f) != n * 2) {
                free(raw);
                free(out);
                out = NULL;
                goto done;
            }
            for (size_t i = 0; i < n; i++)
                out[i] = (float)(int16_t)le16(raw + 2 * i) * scale;
            free(raw);
            *nsamples = n;
            goto done;
        } else if (fseek(f, (long)(sz + (sz & 1)), SEEK_CUR)) {
            goto done;
        }
    }
done:
    fclose(f);
    return out;
}

#define VAD_FRAME   512
#define VAD_CONTEXT 64

static int cmd_vad(const char *model, const char *wav, int probs)
{
    size_t n = 0;
    float *pcm = wav_read(wav, &n, 1.0f / 32768.0f);
    if (!pcm) {
        fprintf(stderr, "ort_ref: cannot read WAV %s\n", wav);
        return 1;
    }
    keel__ort_session *s = open_model(model);
    if (!s) {
        free(pcm);
        return 1;
    }
    int rc = 1;
    int v5 = has_input(s, "state"), v4 = has_input(s, "h") && has_input(s, "c");
    long o_prob = find_output(s, "output");
    long o_state = find_output(s, v5 ? "stateN" : "hn"), o_c = find_output(s, "cn");
    if ((!v5 && !v4) || o_prob < 0 || o_state < 0 || (v4 && o_c < 0)) {
        fprintf(stderr,
                "ort_ref: %s is neither Silero v5/v6 (input, state, sr) nor v4 "
                "(input, sr, h, c)\n",
                model);
        goto out;
    }
    size_t nout = keel__ort_noutputs(s);
    /* v5/v6: state f32[2,1,128]; v4: h, c f32[2,1,64] each */
    float state[2 * 128] = {0}, cst[2 * 64] = {0};
    size_t state_len = v5 ? 2 * 128 : 2 * 64;
    float buf[VAD_CONTEXT + VAD_FRAME] = {0};
    int64_t sr = 16000;
    size_t frames = n / VAD_FRAME, flagged = 0;
    for (size_t f = 0; f < frames; f++) {
        float *x = v5 ? buf + VAD_CONTEXT : buf;
        memcpy(x, pcm + f * VAD_FRAME, VAD_FRAME * sizeof(float));
        keel__tensor in[4] = {
            {.name = "input",
             .dtype = KEEL_DT_FLOAT32,
             .ndim = 2,
             .shape = {1, v5 ? VAD_CONTEXT + VAD_FRAME : VAD_FRAME},
             .data = buf,
             .nbytes = (v5 ? VAD_CONTEXT + VAD_FRAME : VAD_FRAME) * sizeof(float)},
            {.name = "sr", .dtype = KEEL_DT_INT64, .ndim = 0, .data = &sr, .nbytes = sizeof(sr)},
            {.name = v5 ? "state" : "h",
             .dtype = KEEL_DT_FLOAT32,
             .ndim = 3,
             .shape = {2, 1, v5 ? 128 : 64},
             .data = state,
             .nbytes = state_len * sizeof(float)},
            {.name = "c",
             .dtype = KEEL_DT_FLOAT32,
             .ndim = 3,
             .shape = {2, 1, 64},
             .data = cst,
             .nbytes = sizeof(cst)},
        };
        keel__tensor o[8];
        if (nout > KEEL_ARRAY_LEN(o)) {
            fprintf(stderr, "ort_ref: too many outputs\n");
            goto out;
        }
        keel_error e = {0};
        if (keel__ort_run(s, in, v5 ? 3 : 4, o, &e)) {
            fail("run", &e);
            goto out;
        }
        const keel__tensor *po = &o[o_prob], *so = &o[o_state];
        if (po->dtype != KEEL_DT_FLOAT32 || po->nbytes < sizeof(float) ||
            so->nbytes != state_len * sizeof(float) || (v4 && o[o_c].nbytes != sizeof(cst))) {
            fprintf(stderr, "ort_ref: unexpected output sizes\n");
            outputs_done(o, nout);
            goto out;
        }
        float p = *(const float *)po->data;
        memcpy(state, so->data, so->nbytes);
        if (v4)
            memcpy(cst, o[o_c].data, sizeof(cst));
        outputs_done(o, nout);
        if (v5) /* the next frame's context: this frame's last 64 samples */
            memmove(buf, buf + VAD_FRAME, VAD_CONTEXT * sizeof(float));
        if (p > 0.5f)
            flagged++;
        if (probs)
            printf("%zu %.6f\n", f, (double)p);
        else if (p > 0.5f)
            printf("%zu\n", f);
    }
    printf("%zu/%zu\n", flagged, frames);
    rc = 0;
out:
    keel__ort_session_free(s);
    free(pcm);
    return rc;
}

/* --- iris ------------------------------------------------------------------ */

static const char *const iris_names[] = {"setosa", "versicolor", "virginica"};

/* Splits line at commas in place (trailing CR/LF dropped); returns the count. */
static size_t split_csv(char *line, char **fields, size_t max)
{
    line[strcspn(line, "\r\n")] = '\0';
    size_t n = 0;
    char *p = line;
    while (n < max) {
        fields[n++] = p;
        char *c = strchr(p, ',');
        if (!c)
            break;
        *c = '\0';
        p = c + 1;
    }
    return n;
}

static int parse_label(const char *s, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end != s && *end == '\0') {
        *out = v;
        return 0;
    }
    for (size_t i = 0; i < KEEL_ARRAY_LEN(iris_names); i++)
        if (strcmp(s, iris_names[i]) == 0) {
            *out = (long)i;
            return 0;
        }
    return -1;
}

static int cmd_iris(const char *model, const char *csv)
{
    FILE *f = fopen(csv, "r");
    if (!f) {
        perror(csv);
        return 1;
    }
    keel__ort_session *s = open_model(model);
    if (!s) {
        fclose(f);
        return 1;
    }
    int rc = 1;
    long o_label = find_output(s, "output_label");
    size_t nout = keel__ort_noutputs(s);
    char line[4096], *fld[64];
    if (o_label < 0 || !fgets(line, sizeof(line), f)) {
        fprintf(stderr, "ort_ref: no output_label output or empty CSV\n");
        goto out;
    }
    /* header: scikit-learn's "150,4,..." (label last) or named columns */
    size_t nh = split_csv(line, fld, KEEL_ARRAY_LEN(fld)), label_col = 4;
    char *end;
    strtol(fld[0], &end, 10);
    if (end == fld[0] || *end) {
        label_col = SIZE_MAX;
        for (size_t i = 0; i < nh; i++)
            if (strcmp(fld[i], "label") == 0)
                label_col = i;
        if (label_col == SIZE_MAX) {
            fprintf(stderr, "ort_ref: %s: no label column\n", csv);
            goto out;
        }
    }
    size_t total = 0, correct = 0;
    while (fgets(line, sizeof(line), f)) {
        size_t nf = split_csv(line, fld, KEEL_ARRAY_LEN(fld));
        if (nf == 1 && fld[0][0] == '\0')
            continue;
        float x[4];
        size_t k = 0;
        long want = -1;
        for (size_t i = 0; i < nf; i++) {
            if (i == label_col) {
                if (parse_label(fld[i], &want)) {
                    fprintf(stderr, "ort_ref: bad label '%s'\n", fld[i]);
                    goto out;
                }
            } else if (k < 4) {
                x[k++] = strtof(fld[i], NULL);
            }
        }
        if (k != 4 || want < 0) {
            fprintf(stderr, "ort_ref: row %zu: need 4 features and a label\n", total + 1);
            goto out;
        }
        keel__tensor in = {.name = keel__ort_input(s, 0)->name,
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 2,
                           .shape = {1, 4},
                           .data = x,
                           .nbytes = sizeof(x)};
        keel__tensor o[8];
        keel_error e = {0};
        if (nout > KEEL_ARRAY_LEN(o)) {
            fprintf(stderr, "ort_ref: too many outputs\n");
            goto out;
        }
        if (keel__ort_run(s, &in, 1, o, &e)) {
            fail("run", &e);
            goto out;
        }
        const keel__tensor *lo = &o[o_label];
        int64_t got = -1;
        if (lo->dtype == KEEL_DT_INT64 && lo->nbytes >= sizeof(int64_t))
            got = *(const int64_t *)lo->data;
        outputs_done(o, nout);
        total++;
        correct += got == (int64_t)want;
    }
    printf("%zu/%zu\n", correct, total);
    rc = 0;
out:
    keel__ort_session_free(s);
    fclose(f);
    return rc;
}

/* --- kws ------------------------------------------------------------------- */

#define KWS_BANDS   32
#define KWS_WINDOW  76
#define KWS_STEP    8
#define KWS_EMB     96
#define KWS_CONTEXT 16

/* Runs session s on one float32 input; the first output (malloc'd) in *out. */
static int run1(keel__ort_session *s, const char *name, float *x, size_t ndim, const int64_t *shape,
                keel__tensor *out)
{
    size_t n = 1, nout = keel__ort_noutputs(s);
    keel__tensor o[8];
    for (size_t d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    keel__tensor in = {.name = name,
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = ndim,
                       .data = x,
                       .nbytes = n * sizeof(float)};
    memcpy(in.shape, shape, ndim * sizeof(int64_t));
    keel_error e = {0};
    if (nout > KEEL_ARRAY_LEN(o) || keel__ort_run(s, &in, 1, o, &e))
        return fail("run", &e);
    *out = o[0];
    o[0].data = NULL;
    outputs_done(o, nout);
    return 0;
}

/* The openWakeWord chain, one model at a time, with the glue written out
 * here (not keel's graph ops): each chunk of CHUNK samples (raw s16 values
 * as float32) -> melspectrogram [1,1,F,32] -> x / 10 + 2 -> windows of 76
 * frames, step 8 -> embedding [W,76,32,1] -> [W,1,1,96] -> the last 16
 * -> classifier [1,16,96] -> score. Prints per chunk "chunk I score S",
 * then "emb I W: v..." (W windows of 96 values, %.9g). */
static int cmd_kws(const char *mel_path, const char *emb_path, const char *clf_path,
                   const char *wav, size_t chunk)
{
    size_t n = 0;
    float *pcm = wav_read(wav, &n, 1.0f);
    keel__ort_session *mel = NULL, *emb = NULL, *clf = NULL;
    int rc = 1;
    if (!pcm) {
        fprintf(stderr, "ort_ref: cannot read WAV %s\n", wav);
        return 1;
    }
    if (!(mel = open_model(mel_path)) || !(emb = open_model(emb_path)) ||
        !(clf = open_model(clf_path)))
        goto out;
    for (size_t c = 0; (c + 1) * chunk <= n; c++) {
        keel__tensor m = {0}, e = {0}, k = {0};
        int64_t ashape[2] = {1, (int64_t)chunk};
        if (run1(mel, keel__ort_input(mel, 0)->name, pcm + c * chunk, 2, ashape, &m))
            goto out;
        size_t frames = m.nbytes / sizeof(float) / KWS_BANDS;
        float *spec = m.data;
        for (size_t i = 0; i < frames * KWS_BANDS; i++)
            spec[i] = spec[i] / 10.0f + 2.0f;
        if (frames < KWS_WINDOW) {
            fprintf(stderr, "ort_ref: chunk %zu: %zu mel frames, fewer than %d\n", c, frames,
                    KWS_WINDOW);
            keel__tensor_done(&m);
            goto out;
        }
        size_t w = (frames - KWS_WINDOW) / KWS_STEP + 1;
        float *batch = malloc(w * KWS_WINDOW * KWS_BANDS * sizeof(float));
        if (!batch) {
            keel__tensor_done(&m);
            goto out;
        }
        for (size_t i = 0; i < w; i++)
            for (size_t f = 0; f < KWS_WINDOW; f++)
                for (size_t b = 0; b < KWS_BANDS; b++)
                    batch[(i * KWS_WINDOW + f) * KWS_BANDS + b] =
                        spec[(i * KWS_STEP + f) * KWS_BANDS + b];
        keel__tensor_done(&m);
        int64_t eshape[4] = {(int64_t)w, KWS_WINDOW, KWS_BANDS, 1};
        int r = run1(emb, keel__ort_input(emb, 0)->name, batch, 4, eshape, &e);
        free(batch);
        if (r)
            goto out;
        if (e.nbytes != w * KWS_EMB * sizeof(float) || w < KWS_CONTEXT) {
            fprintf(stderr, "ort_ref: chunk %zu: %zu windows, %zu embedding bytes\n", c, w,
                    e.nbytes);
            keel__tensor_done(&e);
            goto out;
        }
        float *ev = e.data;
        int64_t cshape[3] = {1, KWS_CONTEXT, KWS_EMB};
        r = run1(clf, keel__ort_input(clf, 0)->name, ev + (w - KWS_CONTEXT) * KWS_EMB, 3, cshape,
                 &k);
        if (!r) {
            printf("chunk %zu score %.9g\n", c, (double)*(const float *)k.data);
            printf("emb %zu %zu:", c, w);
            for (size_t i = 0; i < w * KWS_EMB; i++)
                printf(" %.9g", (double)ev[i]);
            printf("\n");
        }
        keel__tensor_done(&k);
        keel__tensor_done(&e);
        if (r)
            goto out;
    }
    rc = 0;
out:
    keel__ort_session_free(mel);
    keel__ort_session_free(emb);
    keel__ort_session_free(clf);
    free(pcm);
    return rc;
}

static int usage(void)
{
    fprintf(stderr, "usage: ort_ref mnist MODEL IDX_IMAGES_GZ IDX_LABELS_GZ\n"
                    "       ort_ref vad MODEL WAV [--probs]\n"
                    "       ort_ref iris MODEL CSV\n"
                    "       ort_ref kws MEL EMBEDDING CLASSIFIER WAV CHUNK\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "mnist") == 0 && argc == 5)
        return cmd_mnist(argv[2], argv[3], argv[4]);
    if (strcmp(argv[1], "vad") == 0 && (argc == 4 || (argc == 5 && !strcmp(argv[4], "--probs"))))
        return cmd_vad(argv[2], argv[3], argc == 5);
    if (strcmp(argv[1], "iris") == 0 && argc == 4)
        return cmd_iris(argv[2], argv[3]);
    if (strcmp(argv[1], "kws") == 0 && argc == 7 && atol(argv[6]) > 0)
        return cmd_kws(argv[2], argv[3], argv[4], argv[5], (size_t)atol(argv[6]));
    return usage();
}
