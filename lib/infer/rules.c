/*
 * rules.c - the rules backend: the tier that needs no model.
 *
 * A rules file computes a few features over each row of one input (the
 * input's slice along its first axis) and maps them, first match wins, to a
 * label, a confidence and output values in the package's output contract:
 *
 *   {"format": 1, "input": "float_input",
 *    "features": {"petal": {"fn": "value", "index": 2},
 *                 "z": {"fn": "abs_zscore", "of": "last", "mean": 70, "std": 8},
 *                 "last": {"fn": "last"}},
 *    "rules": [{"if": [["petal", "<", 2.45]], "label": "setosa",
 *               "confidence": 0.9, "outputs": {"output_label": [0]}},
 *              {"label": "virginica", "confidence": 0.6, "outputs": {"output_label": [2]}}]}
 *
 * A rule's values for an output are one row of it: the output's declared
 * shape with its first size set to the rows. The sizes after the first must
 * hold exactly the values (all fixed, or all but one, which the values then
 * fill); a rules file that does not fit the shapes fails to load, saying
 * which rule and output.
 *
 * Everything is compiled at load into flat arrays; a run allocates only the
 * response. Deterministic: same input, same answer, on every device.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/backend.h"

#define MOD         "rules"
#define MAX_FEAT    32
#define MAX_RULES   64
#define MAX_CONDS   8
#define MAX_OUTVALS 64

enum fn {
    FN_VALUE,
    FN_LAST,
    FN_MEAN,
    FN_MIN,
    FN_MAX,
    FN_SUM,
    FN_RMS,
    FN_STD,
    FN_RANGE,
    FN_COUNT_ABOVE,
    FN_COUNT_BELOW,
    FN_ZSCORE,
    FN_ABS_ZSCORE,
    FN_COUNT
};
static const char *const fn_names[FN_COUNT] = {
    "value", "last",  "mean",        "min",         "max",    "sum",       "rms",
    "std",   "range", "count_above", "count_below", "zscore", "abs_zscore"};

enum op { OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"<", "<=", ">", ">=", "==", "!="};

typedef struct feature {
    char name[64];
    enum fn fn;
    size_t index;     /* value */
    double threshold; /* count_above/below */
    int of;           /* zscore: feature index computed before this one */
    double mean, std;
} feature;

typedef struct cond {
    int feat;
    enum op op;
    double value;
} cond;

typedef struct out_vals {
    int output; /* index into the contract's outputs */
    size_t n;
    double v[MAX_OUTVALS];
} out_vals;

typedef struct rule {
    cond conds[MAX_CONDS];
    size_t nconds;
    char label[64];
    double confidence;
    out_vals outs[KEEL__MAX_IO];
    size_t nouts;
} rule;

typedef struct rules {
    char input[64];
    feature feats[MAX_FEAT];
    size_t nfeats;
    rule rules[MAX_RULES];
    size_t nrules;
    keel__tensor outputs[KEEL__MAX_IO]; /* the contract's outputs (names borrowed from names) */
    char names[KEEL__MAX_IO][64];
    size_t noutputs;
    /* per output, from its declared shape: the product of the fixed sizes
     * after the first, and the one size after the first left free (0: none,
     * -1: more than one, so rules cannot fill it) */
    size_t per_row[KEEL__MAX_IO];
    int free_dim[KEEL__MAX_IO];
} rules;

/* per_row and free_dim of output o from its declared shape. */
static void row_shape(rules *r, size_t o)
{
    const keel__tensor *d = &r->outputs[o];
    r->per_row[o] = 1;
    r->free_dim[o] = 0;
    for (size_t k = 1; k < d->ndim; k++) {
        if (d->shape[k] >= 0)
            r->per_row[o] *= (size_t)d->shape[k];
        else
            r->free_dim[o] = r->free_dim[o] ? -1 : (int)k;
    }
}

/* Whether n values are one row of output o; why says what fits otherwise. */
static int check_width(const rules *r, int o, size_t n, const char *where, keel_error *err)
{
    const keel__tensor *d = &r->outputs[o];
    char shape[128];
    size_t per = r->per_row[o];
    bool ok = r->free_dim[o] == 0 ? n == per : r->free_dim[o] > 0 && (per ? n && n % per == 0 : !n);
    if (ok)
        return KEEL_OK;
    keel__shape_str(d, shape, sizeof(shape));
    if (r->free_dim[o] < 0)
        return keel__err(err, KEEL_EINVALID,
                         "%s.outputs.%s: the package declares its shape [%s], with more than one "
                         "free size after the first; a rules tier needs them fixed, or all but one",
                         where, d->name, shape);
    if (r->free_dim[o] > 0)
        return keel__err(err, KEEL_EINVALID,
                         "%s.outputs.%s: %zu values, but the package declares shape [%s]: a row "
                         "needs a non-zero multiple of %zu",
                         where, d->name, n, shape, per);
    return keel__err(err, KEEL_EINVALID,
                     "%s.outputs.%s: %zu values, but the package declares shape [%s]: a row needs "
                     "%zu",
                     where, d->name, n, shape, per);
}

static int find_feature(const rules *r, const char *name)
{
    for (size_t i = 0; i < r->nfeats; i++)
        if (!strcmp(r->feats[i].name, name))
            return (int)i;
    return -1;
}

static int num(const cJSON *o, const char *key, bool required, double *ret, const char *where,
               keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        if (required)
            return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is missing", where, key);
        return KEEL_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return keel__err(err, KEEL_EINVALID, "%s.%s: expected a number", where, key);
    *ret = v->valuedouble;
    return KEEL_OK;
}

static int parse_feature(rules *r, const cJSON *f, keel_error *err)
{
    char where[96];
    snprintf(where, sizeof(where), "features.%s", f->string);
    if (r->nfeats == MAX_FEAT)
        return keel__err(err, KEEL_ETOOBIG, "more than %d features", MAX_FEAT);
    if (!cJSON_IsObject(f))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    if (strlen(f->string) >= sizeof(r->feats[0].name) || find_feature(r, f->string) >= 0)
        return keel__err(err, KEEL_EINVALID, "%s: name too long or repeated", where);
    feature *x = &r->feats[r->nfeats];
    memset(x, 0, sizeof(*x));
    keel__strlcpy(x->name, f->string, sizeof(x->name));
    const char *fn = NULL;
    int rc = keel__json_str(f, "fn", true, 32, &fn, where, err);
    if (rc)
        return rc;
    x->fn = FN_COUNT;
    for (int i = 0; i < FN_COUNT; i++)
        if (!strcmp(fn, fn_names[i]))
            x->fn = (enum fn)i;
    if (x->fn == FN_COUNT)
        return keel__err(err, KEEL_EINVALID,
                         "%s.fn: \"%s\" is not one of value, last, mean, min, max, sum, rms, std, "
                         "range, count_above, count_below, zscore, abs_zscore",
                         where, fn);
    uint64_t idx = 0;
    switch (x->fn) {
    case FN_VALUE:
        rc = keel__json_u64(f, "index", true, &idx, where, err);
        x->index = (size_t)idx;
        break;
    case FN_COUNT_ABOVE:
    case FN_COUNT_BELOW:
        rc = num(f, "threshold", true, &x->threshold, where, err);
        break;
    case FN_ZSCORE:
    case FN_ABS_ZSCORE: {
        const char *of = NULL;
        x->std = 1;
        if ((rc = keel__json_str(f, "of", true, 64, &of, where, err)) ||
            (rc = num(f, "mean", true, &x->mean, where, err)) ||
            (rc = num(f, "std", true, &x->std, where, err)))
            return rc;
        if ((x->of = find_feature(r, of)) < 0)
            return keel__err(err, KEEL_EINVALID,
                             "%s.of: \"%s\" is not a feature defined before this one", where, of);
        if (!(x->std > 0))
            return keel__err(err, KEEL_EINVALID, "%s.std: must be > 0", where);
        break;
    }
    default:
        break;
    }
    if (!rc)
        r->nfeats++;
    return rc;
}

static int parse_rule(rules *r, const cJSON *j, size_t k, keel_error *err)
{
    char where[64];
    snprintf(where, sizeof(where), "rules[%zu]", k);
    if (!cJSON_IsObject(j))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    rule *x = &r->rules[r->nrules];
    memset(x, 0, sizeof(*x));
    const cJSON *conds = cJSON_GetObjectItemCaseSensitive(j, "if"), *c;
    if (conds && !cJSON_IsArray(conds))
        return keel__err(err, KEEL_EINVALID, "%s.if: expected [[feature, op, number], ...]", where);
    cJSON_ArrayForEach(c, conds)
    {
        const cJSON *f = cJSON_GetArrayItem(c, 0), *o = cJSON_GetArrayItem(c, 1),
                    *v = cJSON_GetArrayItem(c, 2);
        if (x->nconds == MAX_CONDS)
            return keel__err(err, KEEL_ETOOBIG, "%s.if: more than %d conditions", where, MAX_CONDS);
        if (cJSON_GetArraySize(c) != 3 || !cJSON_IsString(f) || !cJSON_IsString(o) ||
            !cJSON_IsNumber(v))
            return keel__err(err, KEEL_EINVALID,
                             "%s.if[%zu]: expected [feature, op, number], e.g. [\"rms\", \">\", "
                             "0.02]",
                             where, x->nconds);
        cond *cd = &x->conds[x->nconds];
        if ((cd->feat = find_feature(r, f->valuestring)) < 0)
            return keel__err(err, KEEL_EINVALID, "%s.if[%zu]: unknown feature \"%s\"", where,
                             x->nconds, f->valuestring);
        cd->op = OP_COUNT;
        for (int i = 0; i < OP_COUNT; i++)
            if (!strcmp(o->valuestring, op_names[i]))
                cd->op = (enum op)i;
        if (cd->op == OP_COUNT)
            return keel__err(err, KEEL_EINVALID,
                             "%s.if[%zu]: operator \"%s\" is not one of < <= > >= == !=", where,
                             x->nconds, o->valuestring);
        cd->value = v->valuedouble;
        x->nconds++;
    }
    const char *label = NULL;
    int rc = keel__json_str(j, "label", true, sizeof(x->label) - 1, &label, where, err);
    if (rc)
        return rc;
    keel__strlcpy(x->label, label, sizeof(x->label));
    x->confidence = 1.0;
    if ((rc = num(j, "confidence", false, &x->confidence, where, err)))
        return rc;
    if (x->confidence < 0 || x->confidence > 1)
        return keel__err(err, KEEL_EINVALID, "%s.confidence: must be within 0..1", where);
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(j, "outputs"), *o;
    if (outs && !cJSON_IsObject(outs))
        return keel__err(err, KEEL_EINVALID, "%s.outputs: expected an object", where);
    cJSON_ArrayForEach(o, outs)
    {
        int oi = -1;
        for (size_t i = 0; i < r->noutputs; i++)
            if (!strcmp(r->names[i], o->string))
                oi = (int)i;
        if (oi < 0)
            return keel__err(err, KEEL_EINVALID,
                             "%s.outputs: \"%s\" is not an output the package declares", where,
                             o->string);
        out_vals *ov = &x->outs[x->nouts++];
        ov->output = oi;
        const cJSON *e;
        if (!cJSON_IsArray(o))
            return keel__err(err, KEEL_EINVALID, "%s.outputs.%s: expected an array of numbers",
                             where, o->string);
        cJSON_ArrayForEach(e, o)
        {
            if (!cJSON_IsNumber(e) || ov->n == MAX_OUTVALS)
                return keel__err(err, KEEL_EINVALID, "%s.outputs.%s: expected up to %d numbers",
                                 where, o->string, MAX_OUTVALS);
            ov->v[ov->n++] = e->valuedouble;
        }
        if ((rc = check_width(r, oi, ov->n, where, err)))
            return rc;
    }
    r->nrules++;
    return KEEL_OK;
}

static int rules_load(const keel__tier_ctx *ctx, void **ret, keel_error *err)
{
    char *text = NULL;
    size_t len = 0;
    cJSON *j = NULL;
    rules *r = calloc(1, sizeof(*r));
    int rc;
    if (!r)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < ctx->noutputs && i < KEEL__MAX_IO; i++) {
        r->outputs[i] = ctx->outputs[i];
        keel__strlcpy(r->names[i], ctx->outputs[i].name, sizeof(r->names[i]));
        r->outputs[i].name = r->names[i];
        row_shape(r, i);
        r->noutputs++;
    }
    if ((rc = keel__fs_read(ctx->model_path, 1u << 20, &text, &len, err)) ||
        (rc = keel__json_parse(text, len, "rules file", &j, err)))
        goto out;
    uint64_t format = 0;
    const char *input = NULL;
    const cJSON *feats = NULL, *rs = NULL, *it;
    if ((rc = keel__json_u64(j, "format", true, &format, "rules", err)) ||
        (rc = keel__json_str(j, "input", true, 63, &input, "rules", err)) ||
        (rc = keel__json_member(j, "features", cJSON_Object, false, &feats, "rules", err)) ||
        (rc = keel__json_member(j, "rules", cJSON_Array, true, &rs, "rules", err)))
        goto out;
    if (format != 1) {
        rc = keel__err(err, KEEL_EUNSUPPORTED,
                       "rules format %llu is newer than this keel understands (1)",
                       (unsigned long long)format);
        goto out;
    }
    keel__strlcpy(r->input, input, sizeof(r->input));
    bool declared = !ctx->ninputs;
    for (size_t i = 0; i < ctx->ninputs; i++)
        declared |= !strcmp(ctx->inputs[i].name, input);
    if (!declared) {
        rc = keel__err(err, KEEL_EINVALID,
                       "rules.input: \"%s\" is not an input the package declares", input);
        goto out;
    }
    cJSON_ArrayForEach(it, feats) if ((rc = parse_feature(r, it, err))) goto out;
    size_t k = 0;
    cJSON_ArrayForEach(it, rs)
    {
        if (r->nrules == MAX_RULES) {
            rc = keel__err(err, KEEL_ETOOBIG, "more than %d rules", MAX_RULES);
            goto out;
        }
        if ((rc = parse_rule(r, it, k++, err)))
            goto out;
    }
    if (!r->nrules)
        rc = keel__err(err, KEEL_EINVALID, "rules: at least one rule is needed");
out:
    cJSON_Delete(j);
    free(text);
    if (rc) {
        keel__err_prefix(err, "rules file");
        free(r);
        return rc;
    }
    *ret = r;
    return KEEL_OK;
}

static double feature_value(const feature *f, const double *vals, const keel__tensor *t, size_t off,
                            size_t n)
{
    double acc = 0, lo = INFINITY, hi = -INFINITY, sq = 0;
    size_t cnt = 0;
    switch (f->fn) {
    case FN_VALUE:
        return f->index < n ? keel__tensor_get(t, off + f->index) : NAN;
    case FN_LAST:
        return n ? keel__tensor_get(t, off + n - 1) : NAN;
    case FN_ZSCORE:
        return (vals[f->of] - f->mean) / f->std;
    case FN_ABS_ZSCORE:
        return fabs(vals[f->of] - f->mean) / f->std;
    default:
        break;
    }
    for (size_t i = 0; i < n; i++) {
        double x = keel__tensor_get(t, off + i);
        acc += x;
        sq += x * x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        if ((f->fn == FN_COUNT_ABOVE && x > f->threshold) ||
            (f->fn == FN_COUNT_BELOW && x < f->threshold))
            cnt++;
    }
    double mean = n ? acc / (double)n : NAN;
    switch (f->fn) {
    case FN_MEAN:
        return mean;
    case FN_MIN:
        return lo;
    case FN_MAX:
        return hi;
    case FN_SUM:
        return acc;
    case FN_RMS:
        return n ? sqrt(sq / (double)n) : NAN;
    case FN_STD:
        return n ? sqrt(fmax(0, sq / (double)n - mean * mean)) : NAN;
    case FN_RANGE:
        return hi - lo;
    case FN_COUNT_ABOVE:
    case FN_COUNT_BELOW:
        return (double)cnt;
    default:
        return NAN;
    }
}

static bool holds(const cond *c, double x)
{
    switch (c->op) {
    case OP_LT:
        return x < c->value;
    case OP_LE:
        return x <= c->value;
    case OP_GT:
        return x > c->value;
    case OP_GE:
        return x >= c->value;
    case OP_EQ:
        return x == c->value;
    case OP_NE:
        return x != c->value;
    default:
        return false;
    }
}

static int rules_run(void *inst, void *sess, const keel__tensor *in, size_t nin, keel__tensor *out,
                     size_t *nout, char **result_json, uint64_t deadline_ns, keel_error *err)
{
    const rules *r = inst;
    const keel__tensor *t = NULL;
    for (size_t i = 0; i < nin; i++)
        if (!strcmp(in[i].name, r->input))
            t = &in[i];
    if (!t)
        return keel__err(err, KEEL_EINVALID, "rules: input \"%s\" is missing", r->input);
    if (!keel__dtype_size(t->dtype) || t->dtype == KEEL_DT_FLOAT16 || t->dtype == KEEL_DT_BFLOAT16)
        return keel__err(err, KEEL_EUNSUPPORTED, "rules: input \"%s\" has dtype %s", r->input,
                         keel__dtype_name(t->dtype));
    size_t total = t->nbytes / keel__dtype_size(t->dtype);
    size_t rows = t->ndim ? (size_t)t->shape[0] : 1, per = rows ? total / rows : 0;
    const rule **chosen = calloc(rows + 1, sizeof(*chosen));
    keel_buf res;
    keel__buf_init(&res, 0);
    int rc = chosen ? keel__buf_append(&res, "[", 1) : keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t row = 0; !rc && row < rows; row++) {
        double vals[MAX_FEAT];
        for (size_t f = 0; f < r->nfeats; f++)
            vals[f] = feature_value(&r->feats[f], vals, t, row * per, per);
        for (size_t k = 0; k < r->nrules && !chosen[row]; k++) {
            bool ok = true;
            for (size_t c = 0; ok && c < r->rules[k].nconds; c++)
                ok = holds(&r->rules[k].conds[c], vals[r->rules[k].conds[c].feat]);
            if (ok)
                chosen[row] = &r->rules[k];
        }
        if (!chosen[row]) {
            rc = keel__err(err, KEEL_EINVALID,
                           "rules: no rule matched row %zu (add a default "
                           "rule without \"if\")",
                           row);
            break;
        }
        rc = keel__buf_appendf(&res, "%s{\"label\":", row ? "," : "");
        if (!rc)
            rc = keel__json_quote(&res, chosen[row]->label);
        if (!rc)
            rc = keel__buf_appendf(&res, ",\"confidence\":%.6g}", chosen[row]->confidence);
    }
    if (!rc)
        rc = keel__buf_append(&res, "]", 1);
    /* outputs: those every chosen rule gives values for */
    size_t n = 0;
    for (size_t o = 0; !rc && o < r->noutputs; o++) {
        const keel__tensor *decl = &r->outputs[o];
        size_t width = 0, es = keel__dtype_size(decl->dtype);
        bool all = rows > 0 && es && decl->dtype != KEEL_DT_FLOAT16;
        for (size_t row = 0; all && row < rows; row++) {
            const out_vals *ov = NULL;
            for (size_t k = 0; k < chosen[row]->nouts; k++)
                if (chosen[row]->outs[k].output == (int)o)
                    ov = &chosen[row]->outs[k];
            if (!ov) {
                all = false;
            } else if (row && ov->n != width) {
                rc = keel__err(err, KEEL_EINVALID,
                               "rules: rows 0 and %zu give output \"%s\" %zu and %zu values; "
                               "its rows must be the same size",
                               row, decl->name, width, ov->n);
                break;
            } else {
                width = ov->n;
            }
        }
        if (!rc && all &&
            (decl->ndim ? decl->shape[0] >= 0 && decl->shape[0] != (int64_t)rows : rows != 1))
            rc = keel__err(err, KEEL_EINVALID,
                           "rules: the package declares output \"%s\" with %" PRId64
                           " rows, but the input \"%s\" has %zu",
                           decl->name, decl->ndim ? decl->shape[0] : 1, r->input, rows);
        if (rc)
            break;
        if (!all)
            continue;
        keel__tensor *ot = &out[n];
        memset(ot, 0, sizeof(*ot));
        ot->name = decl->name;
        ot->dtype = decl->dtype;
        ot->nbytes = rows * width * es;
        ot->data = calloc(1, ot->nbytes ? ot->nbytes : 1);
        if (!ot->data) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            break;
        }
        /* shape: the declared one, its first size the rows and its free
         * size what the values fill (load checked that they fit) */
        ot->ndim = decl->ndim;
        memcpy(ot->shape, decl->shape, sizeof(ot->shape));
        if (decl->ndim)
            ot->shape[0] = (int64_t)rows;
        if (r->free_dim[o] > 0)
            ot->shape[r->free_dim[o]] = r->per_row[o] ? (int64_t)(width / r->per_row[o]) : 0;
        for (size_t row = 0; row < rows; row++)
            for (size_t k = 0; k < chosen[row]->nouts; k++)
                if (chosen[row]->outs[k].output == (int)o)
                    for (size_t i = 0; i < width; i++)
                        keel__tensor_set(ot, row * width + i, chosen[row]->outs[k].v[i]);
        n++;
    }
    free(chosen);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            keel__tensor_done(&out[i]);
        keel__buf_done(&res);
        return rc;
    }
    *nout = n;
    *result_json = keel__buf_steal(&res);
    return KEEL_OK;
}

static void rules_unload(void *inst)
{
    free(inst);
}

const keel__backend keel__backend_rules = {
    .name = "rules",
    .caps = KEEL__CAP_RUN, /* stateless: no sessions */
    .load = rules_load,
    .run = rules_run,
    .unload = rules_unload,
};
