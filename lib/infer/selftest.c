/*
 * selftest.c - runs a package's bundled validation set through each tier
 * and checks the manifest's metric against its threshold; the store's
 * validator, so a package that fails its own validation set never goes live.
 *
 *   "validation": {"data": "validation/x.csv", "metric": "accuracy",
 *                  "threshold": 0.95, "session": false,
 *                  "tier_thresholds": {"tertiary": 0.8}}
 *
 * CSV (no quoting): a header; column `label` is the expected result label;
 * column `file` (optional) names a package file that is the input (an
 * encoded image for an image preprocess, else raw little-endian values of
 * the first input's dtype); other columns, in order, are the first input's
 * values. scikit-learn's dataset CSV (header "rows,features,class names...",
 * the class index last) is read too. With "session": true the rows stream
 * through one session in order, as frames of one recording.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/model.h"

#define MOD      "infer"
#define MAX_COLS 4096
#define MAX_ROWS 100000

typedef struct csv {
    char *text;
    char *cols[MAX_COLS]; /* header */
    size_t ncols;
    int label_col, file_col;
    bool sklearn; /* class index in the last column, names in the header */
} csv;

static size_t split(char *line, char **out, size_t max)
{
    size_t n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, ",", &save); t && n < max; t = strtok_r(NULL, ",", &save)) {
        size_t l = strlen(t);
        while (l && (t[l - 1] == '\r' || t[l - 1] == ' '))
            t[--l] = 0;
        out[n++] = t;
    }
    return n;
}

/* Fills in from one row. vals/nvals: numeric columns; label, file. */
typedef struct row {
    double *vals;
    size_t nvals;
    const char *label, *file;
} row;

static int parse_row(const csv *c, char *line, row *r, char **cells, size_t lineno, keel_error *err)
{
    size_t n = split(line, cells, MAX_COLS);
    if (n != c->ncols && !c->sklearn)
        return keel__err(err, KEEL_EINVALID, "validation line %zu: %zu columns, the header has %zu",
                         lineno, n, c->ncols);
    r->nvals = 0;
    r->label = r->file = NULL;
    for (size_t i = 0; i < n; i++) {
        if (c->sklearn && i == n - 1) {
            char *end = NULL;
            unsigned long k = strtoul(cells[i], &end, 10);
            if (*end || 2 + k >= c->ncols)
                return keel__err(err, KEEL_EINVALID, "validation line %zu: class \"%s\"?", lineno,
                                 cells[i]);
            r->label = c->cols[2 + k];
            continue;
        }
        if ((int)i == c->label_col) {
            r->label = cells[i];
            continue;
        }
        if ((int)i == c->file_col) {
            r->file = cells[i];
            continue;
        }
        char *end = NULL;
        r->vals[r->nvals++] = strtod(cells[i], &end);
        if (end == cells[i] || *end)
            return keel__err(err, KEEL_EINVALID, "validation line %zu: \"%s\" is not a number",
                             lineno, cells[i]);
    }
    if (!r->label)
        return keel__err(err, KEEL_EINVALID, "validation line %zu: no label", lineno);
    return KEEL_OK;
}

/* Builds the first input's tensor for one row. */
static int row_input(model *m, const row *r, keel__path_fn path_of, void *ctx, keel__infer_req *req,
                     keel__tensor *t, void **owned, keel_error *err)
{
    const keel__tensor *decl = &m->in[0];
    *t = (keel__tensor){.name = decl->name, .dtype = decl->dtype, .ndim = decl->ndim};
    memcpy(t->shape, decl->shape, sizeof(t->shape));
    size_t es = keel__dtype_size(decl->dtype), n;
    if (!es || decl->dtype == KEEL_DT_FLOAT16 || decl->dtype == KEEL_DT_BFLOAT16)
        return keel__err(err, KEEL_EUNSUPPORTED, "validation: input dtype %s",
                         keel__dtype_name(decl->dtype));
    if (r->file) {
        char path[PATH_MAX];
        char *data = NULL;
        size_t len = 0;
        int rc = path_of(ctx, r->file, path, sizeof(path), err);
        if (!rc)
            rc = keel__fs_read(path, 64u << 20, &data, &len, err);
        if (rc)
            return keel__err_prefix(err, "validation file %s", r->file);
        *owned = data;
        if (m->pre.kind == KEEL__PRE_IMAGE && !strcmp(m->pre.input, decl->name)) {
            req->image = data;
            req->image_len = len;
            req->ninputs = 0;
            return KEEL_OK;
        }
        t->data = data;
        t->nbytes = len;
        n = len / es;
    } else {
        n = r->nvals;
        t->nbytes = n * es;
        if (!(t->data = *owned = malloc(t->nbytes ? t->nbytes : 1)))
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            double v = r->vals[i];
            keel__tensor_set(t, i, v);
        }
    }
    /* shape: the declared one with the free axis sized to fit one row */
    size_t fixed = 1;
    int free_axis = -1;
    for (size_t d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0) {
            if (d == 0) {
                t->shape[d] = 1;
            } else {
                free_axis = (int)d;
                continue;
            }
        }
        fixed *= (size_t)t->shape[d];
    }
    if (free_axis >= 0 && fixed && n % fixed == 0)
        t->shape[free_axis] = (int64_t)(n / fixed);
    else if (!t->ndim) {
        t->ndim = 2;
        t->shape[0] = 1;
        t->shape[1] = (int64_t)n;
    }
    req->inputs = t;
    req->ninputs = 1;
    return KEEL_OK;
}

/* The label of a response's first result row. */
static bool label_matches(const char *result, const char *want)
{
    cJSON *j = NULL;
    if (!result || keel__json_parse(result, strlen(result), "result", &j, NULL))
        return false;
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(j, 0), "label");
    bool ok = cJSON_IsString(l) && !strcmp(l->valuestring, want);
    cJSON_Delete(j);
    return ok;
}

static int run_selftest(model *m, keel__path_fn path_of, void *ctx, char **ret_report,
                        keel_error *err)
{
    const cJSON *v = m->validation;
    const char *data = NULL, *metric = "accuracy";
    double threshold = 0;
    char path[PATH_MAX];
    csv c = {.label_col = -1, .file_col = -1};
    char **cells = NULL;
    double *vals = NULL;
    size_t text_len = 0;
    int rc;
    *ret_report = NULL;
    if (!v)
        return keel__err(err, KEEL_ENOTFOUND, "%s has no validation set in its manifest", m->name);
    if ((rc = keel__json_str(v, "data", true, 255, &data, "validation", err)) ||
        (rc = keel__json_str(v, "metric", false, 32, &metric, "validation", err)))
        return rc;
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(v, "threshold");
    if (!cJSON_IsNumber(th) || th->valuedouble < 0 || th->valuedouble > 1)
        return keel__err(err, KEEL_EINVALID, "validation.threshold: expected a number 0..1");
    threshold = th->valuedouble;
    if (strcmp(metric, "accuracy"))
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "validation.metric: \"%s\" is not supported (accuracy is)", metric);
    const cJSON *tth = cJSON_GetObjectItemCaseSensitive(v, "tier_thresholds");
    bool stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "session"));
    if (!m->nin)
        return keel__err(err, KEEL_EINVALID, "validation: the package declares no inputs");
    if ((rc = path_of(ctx, data, path, sizeof(path), err)) ||
        (rc = keel__fs_read(path, 64u << 20, &c.text, &text_len, err)))
        return keel__err_prefix(err, "validation data %s", data);
    cells = calloc(MAX_COLS, sizeof(char *));
    vals = calloc(MAX_COLS, sizeof(double));
    if (!cells || !vals) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    char *save = NULL, *line = strtok_r(c.text, "\n", &save);
    if (!line) {
        rc = keel__err(err, KEEL_EINVALID, "validation data %s is empty", data);
        goto out;
    }
    c.ncols = split(line, c.cols, MAX_COLS);
    for (size_t i = 0; i < c.ncols; i++) {
        if (!strcmp(c.cols[i], "label"))
            c.label_col = (int)i;
        else if (!strcmp(c.cols[i], "file"))
            c.file_col = (int)i;
    }
    if (c.label_col < 0) {
        char *end = NULL;
        if (c.ncols >= 3 && strtoul(c.cols[0], &end, 10) && !*end) {
            c.sklearn = true;
        } else {
            rc = keel__err(err, KEEL_EINVALID, "validation data %s: no \"label\" column", data);
            goto out;
        }
    }
    /* keep the rows: each tier walks them */
    char **lines = calloc(MAX_ROWS, sizeof(char *));
    size_t nrows = 0;
    if (!lines) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    for (char *l = strtok_r(NULL, "\n", &save); l && nrows < MAX_ROWS;
         l = strtok_r(NULL, "\n", &save))
        if (*l && *l != '\r')
            lines[nrows++] = l;
    cJSON *report = cJSON_CreateObject(), *tiers = cJSON_AddArrayToObject(report, "tiers");
    cJSON_AddStringToObject(report, "package", m->name);
    cJSON_AddStringToObject(report, "version", m->version);
    cJSON_AddStringToObject(report, "metric", metric);
    cJSON_AddNumberToObject(report, "threshold", threshold);
    cJSON_AddNumberToObject(report, "rows", (double)nrows);
    bool passed = nrows > 0;
    keel_buf failures;
    keel__buf_init(&failures, 2048);
    for (size_t ti = 0; ti < m->ntiers; ti++) {
        size_t good = 0, errors = 0;
        char first_error[256] = "", sess[64];
        snprintf(sess, sizeof(sess), "keel-selftest-%zu", ti);
        for (size_t k = 0; k < nrows; k++) {
            char *copy = strdup(lines[k]);
            row r = {.vals = vals};
            keel__infer_req req = {
                .tier = m->tiers[ti].name, .session = stream ? sess : NULL, .selftest = true};
            keel__tensor t;
            void *owned = NULL;
            keel__infer_resp resp;
            keel_error e = {0};
            int x = copy ? parse_row(&c, copy, &r, cells, k + 2, &e) : KEEL_ENOMEM;
            if (!x)
                x = row_input(m, &r, path_of, ctx, &req, &t, &owned, &e);
            if (!x)
                x = keel__model_run(m, &req, &resp, &e);
            if (!x) {
                good += label_matches(resp.result, r.label);
                keel__infer_resp_done(&resp);
            } else {
                errors++;
                if (!first_error[0])
                    snprintf(first_error, sizeof(first_error), "row %zu: %s", k + 1, e.msg);
            }
            free(owned);
            free(copy);
        }
        double acc = nrows ? (double)good / (double)nrows : 0;
        double want = threshold;
        const cJSON *tw = cJSON_GetObjectItemCaseSensitive(tth, m->tiers[ti].name);
        if (cJSON_IsNumber(tw))
            want = tw->valuedouble;
        bool ok = acc >= want;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "tier", m->tiers[ti].name);
        cJSON_AddNumberToObject(x, "accuracy", acc);
        cJSON_AddNumberToObject(x, "correct", (double)good);
        cJSON_AddNumberToObject(x, "errors", (double)errors);
        cJSON_AddNumberToObject(x, "threshold", want);
        cJSON_AddBoolToObject(x, "passed", ok);
        if (first_error[0])
            cJSON_AddStringToObject(x, "first_error", first_error);
        cJSON_AddItemToArray(tiers, x);
        if (!ok) {
            passed = false;
            if (keel__buf_appendf(&failures, "%stier %s: %s %.4f < %.4f (%zu/%zu%s%s)",
                                  failures.len ? "; " : "", m->tiers[ti].name, metric, acc, want,
                                  good, nrows, first_error[0] ? "; " : "", first_error)) {
            }
        }
    }
    cJSON_AddBoolToObject(report, "passed", passed);
    *ret_report = keel__json_print(report);
    cJSON_Delete(report);
    if (!passed)
        rc = keel__err(err, KEEL_ECORRUPT, "validation set %s: %s", data,
                       failures.data ? failures.data : "no rows");
    keel__buf_done(&failures);
    free(lines);
out:
    free(cells);
    free(vals);
    free(c.text);
    return rc;
}

struct sctx {
    keel_store *s;
    const char *name, *version;
};

static int store_path(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    struct sctx *x = ctx;
    return keel_store_version_file(x->s, x->name, x->version, rel, buf, n, err);
}

int keel__model_selftest(keel__model *m, keel_store *s, char **ret_report, keel_error *err)
{
    struct sctx x = {s, m->name, m->version};
    return run_selftest(m, store_path, &x, ret_report, err);
}

int keel__infer_validator(void *ctx, keel_store *s, const char *name, const char *version,
                          keel_error *err)
{
    keel__infer *e = ctx;
    char *man = NULL, *report = NULL;
    size_t len = 0;
    cJSON *j = NULL;
    int rc = keel_store_version_manifest(s, name, version, &man, &len, err);
    if (rc)
        return rc;
    /* Packages without tiers (data, configuration) have nothing to run. */
    if (keel__json_parse_except(man, len, "files", "keel.json", &j, NULL) ||
        !cJSON_GetObjectItemCaseSensitive(j, "tiers")) {
        cJSON_Delete(j);
        free(man);
        return KEEL_OK;
    }
    bool has_validation = cJSON_GetObjectItemCaseSensitive(j, "validation") != NULL;
    cJSON_Delete(j);
    free(man);
    keel__model *m = NULL;
    uint64_t t0 = keel__now_mono_ns();
    if ((rc = keel__model_load(e, name, version, &m, err)))
        return rc;
    if (!keel__model_ready(m)) {
        char why[768];
        keel__model_load_errors(m, why, sizeof(why));
        keel__model_unref(m);
        return keel__err(err, KEEL_ECORRUPT, "no tier of %s %s can load: %s", name, version, why);
    }
    if (!has_validation) {
        KEEL_LOG_W(MOD, "%s %s has no validation set; activating without a self-test", name,
                   version);
        keel__model_unref(m);
        return KEEL_OK;
    }
    rc = keel__model_selftest(m, s, &report, err);
    keel__model_unref(m);
    if (!rc)
        KEEL_LOG_I(MOD, "%s %s passed its self-test in %.0f ms: %s", name, version,
                   (double)(keel__now_mono_ns() - t0) / 1e6, report ? report : "");
    free(report);
    return rc;
}
