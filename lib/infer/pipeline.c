/*
 * pipeline.c - manifest-declared pre- and post-processing (see pipeline.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/pipeline.h"

static int floats(const cJSON *o, const char *key, double *out, size_t max, size_t *ret_n,
                  const char *where, keel_error *err)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key), *e;
    size_t n = 0;
    if (!a)
        return KEEL_OK;
    if (!cJSON_IsArray(a))
        return keel__err(err, KEEL_EINVALID, "%s.%s: expected an array of numbers", where, key);
    cJSON_ArrayForEach(e, a)
    {
        if (!cJSON_IsNumber(e) || n == max)
            return keel__err(err, KEEL_EINVALID, "%s.%s: expected up to %zu numbers", where, key,
                             max);
        out[n++] = e->valuedouble;
    }
    *ret_n = n;
    return KEEL_OK;
}

static int number(const cJSON *o, const char *key, double *ret, const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return KEEL_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return keel__err(err, KEEL_EINVALID, "%s.%s: expected a number", where, key);
    *ret = v->valuedouble;
    return KEEL_OK;
}

static int parse_image(const cJSON *im, keel__pre *p, keel_error *err)
{
    const char *w = "preprocess.image", *layout = NULL;
    uint64_t width = 0, height = 0, ch = 3;
    double scale = 1, mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
    size_t nm = 0, ns = 0;
    int rc;
    if ((rc = keel__json_u64(im, "width", true, &width, w, err)) ||
        (rc = keel__json_u64(im, "height", true, &height, w, err)) ||
        (rc = keel__json_u64(im, "channels", false, &ch, w, err)) ||
        (rc = keel__json_str(im, "layout", false, 8, &layout, w, err)) ||
        (rc = number(im, "scale", &scale, w, err)) ||
        (rc = floats(im, "mean", mean, 3, &nm, w, err)) ||
        (rc = floats(im, "std", std, 3, &ns, w, err)))
        return rc;
    if (!width || !height || width > 8192 || height > 8192)
        return keel__err(err, KEEL_EINVALID, "%s: width and height must be within 1..8192", w);
    if (ch != 1 && ch != 3)
        return keel__err(err, KEEL_EINVALID, "%s.channels: must be 1 or 3", w);
    if (layout && strcmp(layout, "NCHW") && strcmp(layout, "NHWC"))
        return keel__err(err, KEEL_EINVALID, "%s.layout: \"%s\" is not NCHW or NHWC", w, layout);
    keel__image_spec *s = &p->image;
    s->width = (int)width;
    s->height = (int)height;
    s->channels = (int)ch;
    s->nchw = !layout || !strcmp(layout, "NCHW");
    s->bgr = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(im, "bgr"));
    s->invert = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(im, "invert"));
    s->scale = (float)scale;
    for (int c = 0; c < 3; c++) {
        s->mean[c] = (float)(nm ? mean[nm == 1 ? 0 : c] : 0);
        s->std[c] = (float)(ns ? std[ns == 1 ? 0 : c] : 1);
    }
    p->kind = KEEL__PRE_IMAGE;
    return KEEL_OK;
}

static int parse_tabular(const cJSON *tb, keel__pre *p, keel_error *err)
{
    const char *w = "preprocess.tabular";
    size_t nm = 0, ns = 0;
    int rc;
    if ((rc = floats(tb, "mean", p->mean, KEEL__MAX_FEATURES, &nm, w, err)) ||
        (rc = floats(tb, "std", p->std, KEEL__MAX_FEATURES, &ns, w, err)))
        return rc;
    if (nm != ns)
        return keel__err(err, KEEL_EINVALID, "%s: mean has %zu values and std %zu", w, nm, ns);
    for (size_t i = 0; i < ns; i++)
        if (!(p->std[i] > 0))
            return keel__err(err, KEEL_EINVALID, "%s.std[%zu]: must be > 0", w, i);
    p->nfeatures = nm;
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(tb, "features"), *e;
    if (names) {
        int n = cJSON_GetArraySize(names);
        if (!cJSON_IsArray(names) || n > KEEL__MAX_FEATURES || (nm && (size_t)n != nm))
            return keel__err(err, KEEL_EINVALID,
                             "%s.features: expected an array of names, one per mean/std value", w);
        p->features = calloc((size_t)n + 1, sizeof(char *));
        if (!p->features)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        size_t i = 0;
        cJSON_ArrayForEach(e, names)
        {
            if (!cJSON_IsString(e) || !(p->features[i++] = strdup(e->valuestring)))
                return keel__err(err, KEEL_EINVALID, "%s.features: expected strings", w);
        }
        if (!nm)
            p->nfeatures = i;
    }
    p->kind = KEEL__PRE_TABULAR;
    return KEEL_OK;
}

int keel__pre_parse(const cJSON *j, keel__pre *p, keel_error *err)
{
    memset(p, 0, sizeof(*p));
    if (!j)
        return KEEL_OK;
    const char *input = NULL;
    const cJSON *im = cJSON_GetObjectItemCaseSensitive(j, "image"),
                *tb = cJSON_GetObjectItemCaseSensitive(j, "tabular");
    int rc;
    if (!cJSON_IsObject(j))
        return keel__err(err, KEEL_EINVALID, "preprocess: expected an object");
    if ((rc = keel__json_str(j, "input", true, 63, &input, "preprocess", err)))
        return rc;
    keel__strlcpy(p->input, input, sizeof(p->input));
    if (!!im == !!tb)
        return keel__err(err, KEEL_EINVALID,
                         "preprocess: give exactly one of \"image\" or \"tabular\"");
    return im ? parse_image(im, p, err) : parse_tabular(tb, p, err);
}

void keel__pre_done(keel__pre *p)
{
    for (size_t i = 0; p->features && p->features[i]; i++)
        free(p->features[i]);
    free(p->features);
    p->features = NULL;
}

int keel__post_parse(const cJSON *j, keel__post *p, keel_error *err)
{
    memset(p, 0, sizeof(*p));
    if (!j)
        return KEEL_OK;
    const char *w = "postprocess", *out = NULL, *act = NULL, *labels = NULL;
    uint64_t k = 0;
    int rc;
    if (!cJSON_IsObject(j))
        return keel__err(err, KEEL_EINVALID,
                         "postprocess: expected an object like {\"activation\": \"softmax\", "
                         "\"labels\": \"labels.txt\"}");
    if ((rc = keel__json_str(j, "output", false, 63, &out, w, err)) ||
        (rc = keel__json_str(j, "activation", false, 16, &act, w, err)) ||
        (rc = keel__json_str(j, "labels", false, 255, &labels, w, err)) ||
        (rc = keel__json_u64(j, "top_k", false, &k, w, err)))
        return rc;
    if (act && !strcmp(act, "softmax"))
        p->activation = KEEL__ACT_SOFTMAX;
    else if (act && !strcmp(act, "sigmoid"))
        p->activation = KEEL__ACT_SIGMOID;
    else if (act && strcmp(act, "none"))
        return keel__err(err, KEEL_EINVALID,
                         "postprocess.activation: \"%s\" is not softmax, sigmoid or none", act);
    if (k > 1000)
        return keel__err(err, KEEL_EINVALID, "postprocess.top_k: at most 1000");
    p->top_k = (size_t)k;
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(j, "threshold");
    if (th) {
        if (!cJSON_IsNumber(th))
            return keel__err(err, KEEL_EINVALID, "postprocess.threshold: expected a number");
        p->has_threshold = true;
        p->threshold = th->valuedouble;
    }
    if (out)
        keel__strlcpy(p->output, out, sizeof(p->output));
    if (labels)
        keel__strlcpy(p->labels_file, labels, sizeof(p->labels_file));
    p->on = true;
    return KEEL_OK;
}

int keel__post_labels(keel__post *p, const char *path, keel_error *err)
{
    char *text = NULL;
    size_t len = 0, n = 0;
    int rc = keel__fs_read(path, 4u << 20, &text, &len, err);
    if (rc)
        return keel__err_prefix(err, "labels file");
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    p->labels = calloc(n + 2, sizeof(char *));
    if (!p->labels) {
        free(text);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        size_t l = strlen(line);
        while (l && (line[l - 1] == '\r' || line[l - 1] == ' '))
            line[--l] = 0;
        if (!l)
            continue;
        if (!(p->labels[p->nlabels++] = strdup(line))) {
            free(text);
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        }
    }
    free(text);
    return KEEL_OK;
}

void keel__post_done(keel__post *p)
{
    for (size_t i = 0; i < p->nlabels; i++)
        free(p->labels[i]);
    free(p->labels);
    p->labels = NULL;
    p->nlabels = 0;
}

int keel__pre_image(const keel__pre *p, const keel__tensor *decl, const void *img, size_t len,
                    keel__tensor *out, keel_error *err)
{
    keel__image im;
    const keel__image_spec *s = &p->image;
    int rc = keel__image_decode(img, len, KEEL__IMAGE_MAX_PIXELS_DEFAULT, &im, err);
    if (rc == KEEL_ECORRUPT && err) /* a damaged image is a bad request, not a bad package */
        err->code = rc = KEEL_EINVALID;
    if (rc)
        return rc;
    size_t n = (size_t)s->channels * (size_t)s->width * (size_t)s->height;
    memset(out, 0, sizeof(*out));
    out->name = decl->name;
    out->dtype = KEEL_DT_FLOAT32;
    out->ndim = 4;
    out->shape[0] = 1;
    out->shape[s->nchw ? 1 : 3] = s->channels;
    out->shape[s->nchw ? 2 : 1] = s->height;
    out->shape[s->nchw ? 3 : 2] = s->width;
    if (decl->ndim == 3) { /* [C,H,W] or [H,W,C] without a batch axis */
        out->ndim = 3;
        memmove(out->shape, out->shape + 1, 3 * sizeof(int64_t));
    }
    out->nbytes = n * sizeof(float);
    out->data = malloc(out->nbytes);
    if (!out->data)
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
    else
        rc = keel__image_to_tensor(&im, s, out->data, err);
    keel__image_free(&im);
    if (rc) {
        free(out->data);
        out->data = NULL;
    }
    return rc;
}

int keel__pre_tabular(const keel__pre *p, keel__tensor *t, keel_error *err)
{
    if (!p->nfeatures)
        return KEEL_OK;
    if (t->dtype != KEEL_DT_FLOAT32)
        return keel__err(err, KEEL_EINVALID, "input \"%s\": tabular preprocessing needs float32",
                         t->name);
    size_t n = t->nbytes / sizeof(float);
    if (n % p->nfeatures)
        return keel__err(err, KEEL_EINVALID,
                         "input \"%s\": %zu values are not rows of %zu features", t->name, n,
                         p->nfeatures);
    float *v = t->data;
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((v[i] - p->mean[i % p->nfeatures]) / p->std[i % p->nfeatures]);
    return KEEL_OK;
}

/* --- results ------------------------------------------------------------------------- */

static int label_of(keel_buf *b, const keel__post *p, size_t idx)
{
    if (idx < p->nlabels)
        return keel__json_quote(b, p->labels[idx]);
    return keel__buf_appendf(b, "\"%zu\"", idx);
}

/* One row: scores[0..n) (after activation) -> {"label","index","confidence"[,"top_k"]}.
 * probs: the scores are probabilities (after softmax or sigmoid, or a
 * ZipMap's). */
static int row_json(keel_buf *b, const keel__post *p, double *sc, size_t n, bool probs)
{
    size_t best = 0;
    int rc;
    if (!n) /* no scores: nothing to say about the row */
        return keel__buf_append(b, "{}", 2);
    keel__post_activate(p->activation, sc, n);
    if (n == 1 || (p->has_threshold && n <= 2)) { /* binary: one score (or the positive's) */
        double s = sc[n - 1], th = p->has_threshold ? p->threshold : 0.5;
        size_t idx = s >= th ? 1 : 0;
        if ((rc = keel__buf_append(b, "{\"label\":", 9)) || (rc = label_of(b, p, idx)))
            return rc;
        return keel__buf_appendf(b, ",\"index\":%zu,\"score\":%.6g,\"confidence\":%.6g}", idx, s,
                                 idx ? s : 1 - s);
    }
    for (size_t i = 1; i < n; i++)
        if (sc[i] > sc[best])
            best = i;
    if ((rc = keel__buf_append(b, "{\"label\":", 9)) || (rc = label_of(b, p, best)) ||
        (rc = keel__buf_appendf(b, ",\"index\":%zu,\"confidence\":%.6g", best, sc[best])))
        return rc;
    /* top_k: the best k of the row's n classes, never more than n. Classes
     * whose probability is 0 are left out: it underflowed (logits thousands
     * apart) or the model gave them none, so they have no rank among
     * themselves, and listing them in index order would invent one. */
    if (p->top_k) {
        size_t k = p->top_k < n ? p->top_k : n;
        bool *used = calloc(n, 1);
        if (!used)
            return KEEL_ENOMEM;
        rc = keel__buf_append(b, ",\"top_k\":[", 10);
        for (size_t j = 0; !rc && j < k; j++) {
            size_t m = n;
            for (size_t i = 0; i < n; i++)
                if (!used[i] && (m == n || sc[i] > sc[m]))
                    m = i;
            if (probs && j && !(sc[m] > 0))
                break;
            used[m] = true;
            rc = keel__buf_appendf(b, "%s{\"label\":", j ? "," : "");
            if (!rc)
                rc = label_of(b, p, m);
            if (!rc)
                rc = keel__buf_appendf(b, ",\"index\":%zu,\"score\":%.6g}", m, sc[m]);
        }
        free(used);
        if (!rc)
            rc = keel__buf_append(b, "]", 1);
    }
    return rc ? rc : keel__buf_append(b, "}", 1);
}

/* scikit-learn's ZipMap: a JSON array of {"class": probability} objects. */
static int zipmap_rows(keel_buf *b, const keel__post *p, const keel__tensor *t, keel_error *err)
{
    cJSON *j = NULL;
    int rc = keel__json_parse(t->data, t->nbytes, "output", &j, err);
    if (rc)
        return rc;
    const cJSON *row, *e;
    size_t r = 0;
    rc = keel__buf_append(b, "[", 1);
    cJSON_ArrayForEach(row, j)
    {
        double sc[1024];
        size_t n = 0;
        bool numeric_keys = true;
        cJSON_ArrayForEach(e, row)
        {
            char *end = NULL;
            unsigned long k = strtoul(e->string, &end, 10);
            if (*end || k != n)
                numeric_keys = false;
            if (n < KEEL_ARRAY_LEN(sc))
                sc[n++] = cJSON_IsNumber(e) ? e->valuedouble : NAN;
        }
        if (!rc && r++)
            rc = keel__buf_append(b, ",", 1);
        if (!rc && numeric_keys) {
            keel__post q = *p;
            q.activation = KEEL__ACT_NONE;
            rc = row_json(b, &q, sc, n, true);
        } else if (!rc) { /* string classes: the key is the label */
            size_t best = 0, i = 0;
            const cJSON *bk = NULL;
            cJSON_ArrayForEach(e, row)
            {
                if (!bk || sc[i] > sc[best]) {
                    best = i;
                    bk = e;
                }
                i++;
            }
            rc = keel__buf_append(b, "{\"label\":", 9);
            if (!rc)
                rc = keel__json_quote(b, bk ? bk->string : "");
            if (!rc)
                rc = keel__buf_appendf(b, ",\"index\":%zu,\"confidence\":%.6g}", best,
                                       n ? sc[best] : 0);
        }
    }
    cJSON_Delete(j);
    return rc ? rc : keel__buf_append(b, "]", 1);
}

void keel__post_activate(int activation, double *sc, size_t n)
{
    if (activation == KEEL__ACT_SOFTMAX && n) {
        double mx = sc[0], sum = 0;
        for (size_t i = 1; i < n; i++)
            mx = sc[i] > mx ? sc[i] : mx;
        for (size_t i = 0; i < n; i++)
            sum += (sc[i] = exp(sc[i] - mx));
        for (size_t i = 0; i < n; i++)
            sc[i] /= sum;
    } else if (activation == KEEL__ACT_SIGMOID) {
        for (size_t i = 0; i < n; i++)
            sc[i] = 1.0 / (1.0 + exp(-sc[i]));
    }
}

int keel__post_result(const keel__post *p, const keel__tensor *outs, size_t n, char **ret,
                      keel_error *err)
{
    *ret = NULL;
    if (!p->on || !n)
        return KEEL_OK;
    const keel__tensor *t = NULL;
    for (size_t i = 0; i < n && !t; i++)
        if (!p->output[0] || !strcmp(outs[i].name, p->output))
            t = &outs[i];
    if (!t) /* a tier that does not produce the scored output (rules gives its own result) */
        return KEEL_OK;
    keel_buf b;
    keel__buf_init(&b, 0);
    int rc;
    if (t->dtype == KEEL_DT_JSON) {
        rc = zipmap_rows(&b, p, t, err);
    } else if (!keel__dtype_size(t->dtype) || t->dtype == KEEL_DT_FLOAT16 ||
               t->dtype == KEEL_DT_BFLOAT16) {
        keel__buf_done(&b);
        return KEEL_OK;
    } else {
        size_t total = t->nbytes / keel__dtype_size(t->dtype);
        size_t rows = t->ndim >= 2 ? (size_t)t->shape[0] : 1;
        size_t per = rows ? total / rows : 0;
        bool is_index = t->dtype != KEEL_DT_FLOAT32 && t->dtype != KEEL_DT_FLOAT64;
        if (is_index && t->ndim == 1) { /* a label index per row */
            rows = total;
            per = 1;
        }
        if (!per || !rows) { /* nothing to score */
            keel__buf_done(&b);
            return KEEL_OK;
        }
        double *sc = malloc(per * sizeof(double));
        rc = sc ? keel__buf_append(&b, "[", 1) : KEEL_ENOMEM;
        for (size_t r = 0; !rc && r < rows; r++) {
            if (r)
                rc = keel__buf_append(&b, ",", 1);
            for (size_t i = 0; i < per; i++)
                sc[i] = keel__tensor_get(t, r * per + i);
            if (rc)
                break;
            if (is_index && per == 1) {
                size_t idx = (size_t)keel__clamp(sc[0], 0, 1e9);
                rc = keel__buf_append(&b, "{\"label\":", 9);
                if (!rc)
                    rc = label_of(&b, p, idx);
                if (!rc)
                    rc = keel__buf_appendf(&b, ",\"index\":%zu}", idx);
            } else {
                rc = row_json(&b, p, sc, per, p->activation != KEEL__ACT_NONE);
            }
        }
        free(sc);
        if (!rc)
            rc = keel__buf_append(&b, "]", 1);
    }
    if (rc) {
        keel__buf_done(&b);
        return rc == KEEL_ENOMEM ? keel__err(err, rc, "out of memory in postprocessing") : rc;
    }
    *ret = keel__buf_steal(&b);
    return KEEL_OK;
}
