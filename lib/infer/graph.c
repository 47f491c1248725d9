/*
 * graph.c - the graph backend: pipeline tiers (see graph.h for the schema).
 *
 * Load parses the tier's steps into a fixed-size graph (bounded by
 * KEEL__GRAPH_MAX_STEPS and KEEL__GRAPH_MAX_TENSORS), orders them
 * (Kahn's algorithm: a cycle is refused, naming its steps), loads each
 * model step through its own backend, then walks the order once with the
 * shapes the package and the models declare (-1: not known until a
 * request) and refuses any edge that cannot fit. A run walks the same
 * order: each step reads tensors earlier steps wrote and writes its own;
 * reshape is a view, every other op a new buffer. The graph is read-only
 * after load, so runs on one instance may overlap.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/graph.h"
#include "infer/pipeline.h"

#define RANK_UNKNOWN (KEEL_TENSOR_MAX_DIMS + 1) /* a load-time shape of unknown rank */
#define MAX_DIM      (INT64_C(1) << 40)

enum {
    K_MODEL,
    K_SLICE,
    K_WINDOW,
    K_RESHAPE,
    K_CONCAT,
    K_AFFINE,
    K_ACTIVATION,
    K_STANDARDIZE,
    K_CAST,
    K_NKINDS
};
static const char *const kind_names[K_NKINDS] = {
    "model", "slice", "window", "reshape", "concat", "affine", "activation", "standardize", "cast"};
/* the fields each kind of step takes besides name (an unknown one is refused) */
static const char *const kind_fields[K_NKINDS][8] = {
    [K_MODEL] = {"model", "backend", "inputs", "outputs", "options", "state", "context", "when"},
    [K_SLICE] = {"op", "input", "output", "axis", "start", "end", "when"},
    [K_WINDOW] = {"op", "input", "output", "axis", "size", "step", "when"},
    [K_RESHAPE] = {"op", "input", "output", "shape", "when"},
    [K_CONCAT] = {"op", "inputs", "output", "axis", "when"},
    [K_AFFINE] = {"op", "input", "output", "scale", "offset", "when"},
    [K_ACTIVATION] = {"op", "input", "output", "activation", "when"},
    [K_STANDARDIZE] = {"op", "input", "output", "mean", "std", "when"},
    [K_CAST] = {"op", "input", "output", "dtype", "when"},
};

typedef struct port {
    char name[64]; /* the model's input or output name ("" for ops) */
    size_t t;      /* the graph tensor */
} port;

typedef struct step {
    char name[32];
    int kind;
    port in[KEEL__MAX_IO], out[KEEL__MAX_IO];
    size_t nin, nout;
    /* "when": runs only if the largest element of tensor when_t is at least at_least */
    bool gated;
    size_t when_t;
    double at_least;
    /* model steps */
    const keel__backend *be;
    void *inst;
    char file[256]; /* the model's path in the package */
    /* ops */
    int64_t axis, start, end, size, stride;
    bool has_end;
    int64_t shape[KEEL_TENSOR_MAX_DIMS];
    size_t ndim;
    double scale, offset;
    int act, dtype;
    keel__pre *pre; /* standardize */
} step;

typedef struct gtensor {
    char name[64];
    int producer;      /* the step that writes it; -1: a graph input */
    unsigned readers;  /* input ports that read it */
    bool constant;     /* a tier constant (not part of the described inputs) */
    keel__tensor decl; /* what load knows of it: dtype (0 unknown), shape (-1 unknown) */
} gtensor;

typedef struct graph {
    step steps[KEEL__GRAPH_MAX_STEPS];
    size_t nsteps, order[KEEL__GRAPH_MAX_STEPS];
    gtensor t[KEEL__GRAPH_MAX_TENSORS];
    size_t nt;
    size_t outs[KEEL__MAX_IO], nouts; /* the graph's outputs */
    keel__tensor pub[KEEL__MAX_IO];   /* the inputs a caller gives (names point into t) */
    size_t npub;
    keel__tensor pubout[KEEL__MAX_IO];
    uint64_t memory;
} graph;

typedef struct gsession {
    void *bs[KEEL__GRAPH_MAX_STEPS]; /* each stateful model step's backend session */
} gsession;

/* --- parsing ------------------------------------------------------------------------------ */

static int tensor_ref(graph *g, const cJSON *v, const char *where, size_t *ret, keel_error *err)
{
    if (!cJSON_IsString(v) || !v->valuestring[0] || strlen(v->valuestring) > 63)
        return keel__err(err, KEEL_EINVALID, "%s: expected a tensor name of 1..63 bytes", where);
    for (size_t i = 0; i < g->nt; i++)
        if (!strcmp(g->t[i].name, v->valuestring)) {
            *ret = i;
            return KEEL_OK;
        }
    if (g->nt == KEEL__GRAPH_MAX_TENSORS)
        return keel__err(err, KEEL_ETOOBIG, "%s: more than %d tensors in one pipeline", where,
                         KEEL__GRAPH_MAX_TENSORS);
    gtensor *t = &g->t[g->nt];
    keel__strlcpy(t->name, v->valuestring, sizeof(t->name));
    t->producer = -1;
    t->decl.name = t->name;
    t->decl.ndim = RANK_UNKNOWN;
    *ret = g->nt++;
    return KEEL_OK;
}

static int add_port(graph *g, step *s, bool out, const char *pname, const cJSON *v,
                    const char *where, keel_error *err)
{
    port *p = out ? &s->out[s->nout] : &s->in[s->nin];
    size_t *n = out ? &s->nout : &s->nin;
    if (*n == KEEL__MAX_IO)
        return keel__err(err, KEEL_ETOOBIG, "%s: more than %d", where, KEEL__MAX_IO);
    if (strlen(pname) > 63)
        return keel__err(err, KEEL_EINVALID, "%s: name \"%.40s...\" is over 63 bytes", where,
                         pname);
    int rc = tensor_ref(g, v, where, &p->t, err);
    if (rc)
        return rc;
    keel__strlcpy(p->name, pname, sizeof(p->name));
    gtensor *t = &g->t[p->t];
    if (out) {
        if (t->producer >= 0)
            return keel__err(err, KEEL_EINVALID,
                             "%s: tensor \"%s\" is already written by step \"%s\"; each tensor "
                             "has one writer",
                             where, t->name, g->steps[t->producer].name);
        t->producer = (int)(s - g->steps);
    } else {
        t->readers++;
    }
    ++*n;
    return KEEL_OK;
}

static int int_field(const cJSON *j, const char *key, bool required, int64_t lo, int64_t hi,
                     int64_t *ret, const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v) {
        if (required)
            return keel__err(err, KEEL_EINVALID, "%s: required field \"%s\" is missing", where,
                             key);
        return KEEL_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < (double)lo || v->valuedouble > (double)hi ||
        v->valuedouble != floor(v->valuedouble))
        return keel__err(err, KEEL_EINVALID, "%s.%s: expected an integer %" PRId64 "..%" PRId64,
                         where, key, lo, hi);
    *ret = (int64_t)v->valuedouble;
    return KEEL_OK;
}

static int num_field(const cJSON *j, const char *key, double *ret, const char *where,
                     keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (v && (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)))
        return keel__err(err, KEEL_EINVALID, "%s.%s: expected a number", where, key);
    if (v)
        *ret = v->valuedouble;
    return KEEL_OK;
}

static int parse_model(graph *g, step *s, const cJSON *j, const char *where, keel_error *err)
{
    const char *file = NULL, *backend = "onnx";
    const cJSON *ins = NULL, *outs = NULL, *it;
    char w[96];
    int rc;
    if ((rc = keel__json_str(j, "model", true, sizeof(s->file) - 1, &file, where, err)) ||
        (rc = keel__json_str(j, "backend", false, 16, &backend, where, err)) ||
        (rc = keel__json_member(j, "inputs", cJSON_Object, true, &ins, where, err)) ||
        (rc = keel__json_member(j, "outputs", cJSON_Object, true, &outs, where, err)))
        return rc;
    keel__strlcpy(s->file, file, sizeof(s->file));
    if (!(s->be = keel__backend_find(backend)))
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "%s.backend: \"%s\" is not a backend this keel has (onnx, rules)", where,
                         backend);
    if (s->be->files)
        return keel__err(err, KEEL_EINVALID,
                         "%s.backend: a pipeline step cannot itself be a pipeline (%s)", where,
                         backend);
    if (!(s->be->caps & KEEL__CAP_RUN))
        return keel__err(err, KEEL_EUNSUPPORTED, "%s.backend: %s does not run tensors", where,
                         backend);
    snprintf(w, sizeof(w), "%s.inputs", where);
    cJSON_ArrayForEach(it, ins)
    {
        if ((rc = add_port(g, s, false, it->string, it, w, err)))
            return rc;
    }
    snprintf(w, sizeof(w), "%s.outputs", where);
    cJSON_ArrayForEach(it, outs)
    {
        if ((rc = add_port(g, s, true, it->string, it, w, err)))
            return rc;
    }
    if (!s->nin || !s->nout)
        return keel__err(err, KEEL_EINVALID,
                         "%s: map at least one model input and one output, like \"inputs\": "
                         "{\"input\": \"audio\"}, \"outputs\": {\"output\": \"mel\"}",
                         where);
    return KEEL_OK;
}

static int parse_op(graph *g, step *s, const cJSON *j, const char *where, keel_error *err)
{
    const cJSON *v;
    char w[96];
    int rc = KEEL_OK;
    if (s->kind == K_CONCAT) {
        const cJSON *arr = NULL, *it;
        if ((rc = keel__json_member(j, "inputs", cJSON_Array, true, &arr, where, err)))
            return rc;
        snprintf(w, sizeof(w), "%s.inputs", where);
        cJSON_ArrayForEach(it, arr)
        {
            if ((rc = add_port(g, s, false, "", it, w, err)))
                return rc;
        }
        if (!s->nin)
            return keel__err(err, KEEL_EINVALID, "%s.inputs: name at least one tensor", where);
    } else {
        snprintf(w, sizeof(w), "%s.input", where);
        if (!(v = cJSON_GetObjectItemCaseSensitive(j, "input")))
            return keel__err(err, KEEL_EINVALID, "%s: required field \"input\" is missing", where);
        if ((rc = add_port(g, s, false, "", v, w, err)))
            return rc;
    }
    snprintf(w, sizeof(w), "%s.output", where);
    if (!(v = cJSON_GetObjectItemCaseSensitive(j, "output")))
        return keel__err(err, KEEL_EINVALID, "%s: required field \"output\" is missing", where);
    if ((rc = add_port(g, s, true, "", v, w, err)))
        return rc;
    switch (s->kind) {
    case K_SLICE:
        s->has_end = cJSON_GetObjectItemCaseSensitive(j, "end") != NULL;
        if ((rc = int_field(j, "axis", true, -8, 7, &s->axis, where, err)) ||
            (rc = int_field(j, "start", false, -MAX_DIM, MAX_DIM, &s->start, where, err)) ||
            (rc = int_field(j, "end", false, -MAX_DIM, MAX_DIM, &s->end, where, err)))
            return rc;
        if (s->has_end && ((s->start >= 0) == (s->end >= 0)) && s->end <= s->start)
            return keel__err(err, KEEL_EINVALID, "%s: end %" PRId64 " is not after start %" PRId64,
                             where, s->end, s->start);
        break;
    case K_WINDOW:
        s->stride = 1;
        if ((rc = int_field(j, "axis", true, -8, 7, &s->axis, where, err)) ||
            (rc = int_field(j, "size", true, 1, 1 << 20, &s->size, where, err)) ||
            (rc = int_field(j, "step", false, 1, 1 << 20, &s->stride, where, err)))
            return rc;
        break;
    case K_CONCAT:
        return int_field(j, "axis", true, -8, 7, &s->axis, where, err);
    case K_RESHAPE: {
        const cJSON *shape = NULL, *d;
        bool any = false;
        if ((rc = keel__json_member(j, "shape", cJSON_Array, true, &shape, where, err)))
            return rc;
        cJSON_ArrayForEach(d, shape)
        {
            if (s->ndim == KEEL_TENSOR_MAX_DIMS || !cJSON_IsNumber(d) || d->valuedouble < -1 ||
                d->valuedouble > (double)MAX_DIM || d->valuedouble != floor(d->valuedouble) ||
                (d->valuedouble == -1 && any))
                return keel__err(err, KEEL_EINVALID,
                                 "%s.shape: expected up to %d sizes (0 keeps the input's, one "
                                 "-1 takes the rest)",
                                 where, KEEL_TENSOR_MAX_DIMS);
            any |= d->valuedouble == -1;
            s->shape[s->ndim++] = (int64_t)d->valuedouble;
        }
        break;
    }
    case K_AFFINE:
        s->scale = 1;
        if ((rc = num_field(j, "scale", &s->scale, where, err)) ||
            (rc = num_field(j, "offset", &s->offset, where, err)))
            return rc;
        break;
    case K_ACTIVATION: {
        const char *a = NULL;
        if ((rc = keel__json_str(j, "activation", true, 16, &a, where, err)))
            return rc;
        if (!strcmp(a, "softmax"))
            s->act = KEEL__ACT_SOFTMAX;
        else if (!strcmp(a, "sigmoid"))
            s->act = KEEL__ACT_SIGMOID;
        else
            return keel__err(err, KEEL_EINVALID, "%s.activation: \"%s\" is not softmax or sigmoid",
                             where, a);
        break;
    }
    case K_STANDARDIZE: {
        /* the tabular preprocessing's own parser and checks */
        cJSON *tab = cJSON_CreateObject(), *pre = cJSON_CreateObject();
        const cJSON *mean = cJSON_GetObjectItemCaseSensitive(j, "mean"),
                    *std = cJSON_GetObjectItemCaseSensitive(j, "std");
        if (!(s->pre = calloc(1, sizeof(*s->pre))) || !tab || !pre) {
            cJSON_Delete(tab);
            cJSON_Delete(pre);
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        }
        if (!mean || !std) {
            cJSON_Delete(tab);
            cJSON_Delete(pre);
            return keel__err(err, KEEL_EINVALID, "%s: needs \"mean\" and \"std\" arrays", where);
        }
        cJSON_AddItemToObject(tab, "mean", cJSON_Duplicate(mean, 1));
        cJSON_AddItemToObject(tab, "std", cJSON_Duplicate(std, 1));
        cJSON_AddStringToObject(pre, "input", "x");
        cJSON_AddItemToObject(pre, "tabular", tab);
        rc = keel__pre_parse(pre, s->pre, err);
        cJSON_Delete(pre);
        if (!rc && !s->pre->nfeatures)
            rc = keel__err(err, KEEL_EINVALID, "preprocess.tabular: mean and std are empty");
        if (rc)
            return keel__err_prefix(err, "%s", where);
        break;
    }
    case K_CAST: {
        const char *dt = NULL;
        if ((rc = keel__json_str(j, "dtype", true, 16, &dt, where, err)))
            return rc;
        s->dtype = keel__dtype_parse(dt);
        if (!keel__dtype_size(s->dtype) || s->dtype == KEEL_DT_FLOAT16 ||
            s->dtype == KEEL_DT_BFLOAT16)
            return keel__err(err, KEEL_EINVALID,
                             "%s.dtype: \"%s\" is not float32, float64, int8..int64, "
                             "uint8..uint64 or bool",
                             where, dt);
        break;
    }
    default:
        break;
    }
    return KEEL_OK;
}

/* "when": {"tensor": "speech", "at_least": 0.5} */
static int parse_when(graph *g, step *s, const cJSON *w, const char *where, keel_error *err)
{
    char at[96];
    const cJSON *v;
    if (!w)
        return KEEL_OK;
    snprintf(at, sizeof(at), "%s.when", where);
    if (!cJSON_IsObject(w) || cJSON_GetArraySize(w) != 2 ||
        !cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(w, "at_least")) ||
        !isfinite(v->valuedouble))
        return keel__err(err, KEEL_EINVALID,
                         "%s: expected {\"tensor\": NAME, \"at_least\": NUMBER}", at);
    int rc = tensor_ref(g, cJSON_GetObjectItemCaseSensitive(w, "tensor"), at, &s->when_t, err);
    if (rc)
        return rc;
    s->gated = true;
    s->at_least = v->valuedouble;
    g->t[s->when_t].readers++;
    return KEEL_OK;
}

static int parse_step(graph *g, const cJSON *j, size_t k, keel_error *err)
{
    step *s = &g->steps[k];
    const char *name = NULL, *op = NULL;
    char where[64];
    int rc;
    snprintf(where, sizeof(where), "steps[%zu]", k);
    if (!cJSON_IsObject(j))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    if ((rc = keel__json_str(j, "name", true, sizeof(s->name) - 1, &name, where, err)) ||
        (rc = keel__json_str(j, "op", false, 16, &op, where, err)))
        return rc;
    keel__strlcpy(s->name, name, sizeof(s->name));
    snprintf(where, sizeof(where), "steps[%zu] (\"%s\")", k, name);
    for (size_t i = 0; i < k; i++)
        if (!strcmp(g->steps[i].name, name))
            return keel__err(err, KEEL_EINVALID, "%s.name: used by steps[%zu] too", where, i);
    bool model = cJSON_GetObjectItemCaseSensitive(j, "model") != NULL;
    if (model == (op != NULL))
        return keel__err(err, KEEL_EINVALID,
                         "%s: give exactly one of \"model\" (a file of the package) or \"op\" "
                         "(slice, window, reshape, concat, affine, activation, standardize, cast)",
                         where);
    s->kind = -1;
    for (int i = 0; i < K_NKINDS; i++)
        if (model ? i == K_MODEL : (i != K_MODEL && !strcmp(op, kind_names[i])))
            s->kind = i;
    if (s->kind < 0)
        return keel__err(err, KEEL_EINVALID,
                         "%s.op: unknown op \"%s\" (slice, window, reshape, concat, affine, "
                         "activation, standardize, cast)",
                         where, op);
    const cJSON *f;
    cJSON_ArrayForEach(f, j)
    {
        bool known = !strcmp(f->string, "name");
        for (size_t i = 0; !known && i < 8 && kind_fields[s->kind][i]; i++)
            known = !strcmp(f->string, kind_fields[s->kind][i]);
        if (!known)
            return keel__err(err, KEEL_EINVALID, "%s: unknown field \"%s\" for a %s step", where,
                             f->string, model ? "model" : op);
    }
    int rc2 = model ? parse_model(g, s, j, where, err) : parse_op(g, s, j, where, err);
    return rc2 ? rc2 : parse_when(g, s, cJSON_GetObjectItemCaseSensitive(j, "when"), where, err);
}

/* Orders the steps so each runs after the steps whose tensors it reads
 * (Kahn's algorithm); what cannot be ordered is a cycle. */
static int order_steps(graph *g, keel_error *err)
{
    size_t indeg[KEEL__GRAPH_MAX_STEPS], n = 0;
    bool done[KEEL__GRAPH_MAX_STEPS] = {0};
    for (size_t s = 0; s < g->nsteps; s++) {
        indeg[s] = 0;
        for (size_t p = 0; p < g->steps[s].nin; p++)
            indeg[s] += g->t[g->steps[s].in[p].t].producer >= 0;
        indeg[s] += g->steps[s].gated && g->t[g->steps[s].when_t].producer >= 0;
    }
    while (n < g->nsteps) {
        size_t s = 0;
        while (s < g->nsteps && (done[s] || indeg[s]))
            s++;
        if (s == g->nsteps)
            break;
        done[s] = true;
        g->order[n++] = s;
        for (size_t r = 0; r < g->nsteps; r++) {
            for (size_t p = 0; p < g->steps[r].nin; p++)
                if (g->t[g->steps[r].in[p].t].producer == (int)s)
                    indeg[r]--;
            if (g->steps[r].gated && g->t[g->steps[r].when_t].producer == (int)s)
                indeg[r]--;
        }
    }
    if (n == g->nsteps)
        return KEEL_OK;
    char names[256] = "";
    size_t o = 0;
    for (size_t s = 0; s < g->nsteps && o < sizeof(names); s++)
        if (!done[s])
            o += (size_t)snprintf(names + o, sizeof(names) - o, "%s\"%s\"", o ? ", " : "",
                                  g->steps[s].name);
    return keel__err(err, KEEL_EINVALID,
                     "steps: %s wait for each other's outputs in a cycle; a pipeline must be "
                     "acyclic",
                     names);
}

static void graph_free(graph *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->nsteps; i++) {
        step *s = &g->steps[i];
        if (s->inst)
            s->be->unload(s->inst);
        if (s->pre) {
            keel__pre_done(s->pre);
            free(s->pre);
        }
    }
    free(g);
}

/* The structure of the tier's "steps": everything that needs no model. */
static int parse(const cJSON *tier, graph **ret, keel_error *err)
{
    const cJSON *steps = NULL, *it;
    int rc = keel__json_member(tier, "steps", cJSON_Array, true, &steps, "tier", err);
    if (rc)
        return rc;
    int n = cJSON_GetArraySize(steps);
    if (n < 1)
        return keel__err(err, KEEL_EINVALID, "steps: a pipeline needs at least one step");
    if (n > KEEL__GRAPH_MAX_STEPS)
        return keel__err(err, KEEL_ETOOBIG,
                         "steps: %d steps, more than the %d a pipeline tier may have", n,
                         KEEL__GRAPH_MAX_STEPS);
    graph *g = calloc(1, sizeof(*g));
    if (!g)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    cJSON_ArrayForEach(it, steps)
    {
        rc = parse_step(g, it, g->nsteps, err);
        g->nsteps++; /* counted even when it failed: graph_free frees its parts */
        if (rc)
            goto out;
    }
    rc = order_steps(g, err);
out:
    if (rc) {
        graph_free(g);
        return rc;
    }
    *ret = g;
    return KEEL_OK;
}

/* The graph's outputs: the tier's "outputs", else the package's declared
 * outputs, else every tensor no step reads. Then no step may be dead. */
static int resolve_outputs(graph *g, const cJSON *tier, const keel__tensor *decl, size_t ndecl,
                           keel_error *err)
{
    const cJSON *outs = NULL, *it;
    int rc = keel__json_member(tier, "outputs", cJSON_Array, false, &outs, "tier", err);
    if (rc)
        return rc;
    g->nouts = 0;
    if (outs) {
        cJSON_ArrayForEach(it, outs)
        {
            size_t t = g->nt;
            for (size_t i = 0; cJSON_IsString(it) && i < g->nt; i++)
                if (!strcmp(g->t[i].name, it->valuestring))
                    t = i;
            if (!cJSON_IsString(it))
                return keel__err(err, KEEL_EINVALID, "outputs: expected tensor names");
            if (t == g->nt || g->t[t].producer < 0)
                return keel__err(err, KEEL_EINVALID,
                                 "outputs: no step writes tensor \"%s\" (a missing tensor)",
                                 it->valuestring);
            if (g->nouts == KEEL__MAX_IO)
                return keel__err(err, KEEL_ETOOBIG, "outputs: more than %d", KEEL__MAX_IO);
            g->outs[g->nouts++] = t;
        }
        if (!g->nouts)
            return keel__err(err, KEEL_EINVALID, "outputs: name at least one tensor");
    } else if (ndecl) {
        for (size_t o = 0; o < ndecl; o++) {
            size_t t = g->nt;
            for (size_t i = 0; i < g->nt; i++)
                if (!strcmp(g->t[i].name, decl[o].name))
                    t = i;
            if (t == g->nt || g->t[t].producer < 0)
                return keel__err(err, KEEL_EINVALID,
                                 "package output \"%s\" is written by no step (name a step's "
                                 "output tensor \"%s\", or list the tier's own \"outputs\")",
                                 decl[o].name, decl[o].name);
            g->outs[g->nouts++] = t;
        }
    } else {
        for (size_t i = 0; i < g->nt && g->nouts < KEEL__MAX_IO; i++)
            if (g->t[i].producer >= 0 && !g->t[i].readers)
                g->outs[g->nouts++] = i;
    }
    for (size_t s = 0; s < g->nsteps; s++) {
        bool used = false;
        for (size_t p = 0; p < g->steps[s].nout && !used; p++) {
            size_t t = g->steps[s].out[p].t;
            used = g->t[t].readers > 0;
            for (size_t o = 0; o < g->nouts; o++)
                used |= g->outs[o] == t;
        }
        if (!used)
            return keel__err(err, KEEL_EINVALID,
                             "steps[%zu] (\"%s\"): nothing reads its outputs and none is a "
                             "pipeline output; drop the step or list its tensor in \"outputs\"",
                             s, g->steps[s].name);
    }
    return KEEL_OK;
}

int keel__graph_check(const cJSON *tier, keel_error *err)
{
    graph *g = NULL;
    int rc = parse(tier, &g, err);
    if (!rc)
        rc = resolve_outputs(g, tier, NULL, 0, err);
    graph_free(g);
    return rc;
}

static int check_edges(graph *g, const keel__tier_ctx *ctx, keel_error *err);

/* The step models' files, after every check that needs no model: the
 * structure, then the edges with what the package declares (its inputs,
 * outputs and the tier's constants), model steps' own shapes unknown. */
static int graph_files(const keel__tier_ctx *ctx, const char **ret, size_t max, size_t *ret_n,
                       keel_error *err)
{
    const cJSON *tier = ctx->tier;
    size_t n = 0;
    graph *g = NULL;
    int rc = parse(tier, &g, err);
    if (!rc)
        rc = resolve_outputs(g, tier, ctx->outputs, ctx->noutputs, err);
    if (!rc)
        rc = check_edges(g, ctx, err);
    graph_free(g);
    if (rc)
        return rc;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(tier, "steps"))
    {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(it, "model");
        bool dup = false;
        if (!cJSON_IsString(f))
            continue;
        for (size_t i = 0; i < n; i++)
            dup |= !strcmp(ret[i], f->valuestring);
        if (dup)
            continue;
        if (n == max)
            return keel__err(err, KEEL_ETOOBIG, "steps: more than %zu model files", max);
        ret[n++] = f->valuestring;
    }
    *ret_n = n;
    return KEEL_OK;
}

/* --- shapes: one function for load (dims may be -1, rank unknown) and run --------------- */

static void shape_str(const keel__tensor *t, char *buf, size_t n)
{
    size_t o = 0;
    if (t->ndim == RANK_UNKNOWN) {
        snprintf(buf, n, "[any]");
        return;
    }
    o += (size_t)snprintf(buf, n, "[");
    for (size_t d = 0; d < t->ndim && o < n; d++) {
        if (t->shape[d] < 0)
            o += (size_t)snprintf(buf + o, n - o, "%s?", d ? "," : "");
        else
            o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, d ? "," : "", t->shape[d]);
    }
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static int norm_axis(int64_t axis, size_t ndim, int64_t *ret, keel_error *err)
{
    int64_t a = axis < 0 ? axis + (int64_t)ndim : axis;
    if (a < 0 || a >= (int64_t)ndim)
        return keel__err(err, KEEL_EINVALID, "axis %" PRId64 " is outside a tensor of rank %zu",
                         axis, ndim);
    *ret = a;
    return KEEL_OK;
}

/* Elements of a concrete shape; false on overflow or a negative size. */
static bool elements(const keel__tensor *t, size_t *ret)
{
    size_t n = 1;
    if (t->ndim > KEEL_TENSOR_MAX_DIMS)
        return false;
    for (size_t d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || (t->shape[d] && n > SIZE_MAX / (size_t)t->shape[d]))
            return false;
        n *= (size_t)t->shape[d];
    }
    *ret = n;
    return true;
}

/* y's dtype and shape from x's, for op step s. */
static int op_shape(const step *s, const keel__tensor *const *x, size_t nx, keel__tensor *y,
                    keel_error *err)
{
    const keel__tensor *a = x[0];
    char sh[160];
    int64_t ax = 0;
    int rc;
    y->dtype = a->dtype;
    y->ndim = a->ndim;
    memcpy(y->shape, a->shape, sizeof(y->shape));
    bool unk = a->ndim == RANK_UNKNOWN;
    size_t es = keel__dtype_size(a->dtype);
    if (a->dtype && (s->kind == K_AFFINE || s->kind == K_ACTIVATION || s->kind == K_STANDARDIZE) &&
        a->dtype != KEEL_DT_FLOAT32)
        return keel__err(err, KEEL_EINVALID, "%s takes float32; \"%s\" is %s", kind_names[s->kind],
                         a->name, keel__dtype_name(a->dtype));
    if (a->dtype && (!es || a->dtype == KEEL_DT_FLOAT16 || a->dtype == KEEL_DT_BFLOAT16) &&
        s->kind == K_CAST)
        return keel__err(err, KEEL_EINVALID, "cast cannot read \"%s\" (%s)", a->name,
                         keel__dtype_name(a->dtype));
    if (a->dtype && !es)
        return keel__err(err, KEEL_EINVALID, "%s cannot handle \"%s\" (%s)", kind_names[s->kind],
                         a->name, keel__dtype_name(a->dtype));
    switch (s->kind) {
    case K_CAST:
        y->dtype = s->dtype;
        return KEEL_OK;
    case K_AFFINE:
    case K_STANDARDIZE:
        return KEEL_OK;
    case K_ACTIVATION:
        if (!unk && !a->ndim)
            return keel__err(err, KEEL_EINVALID,
                             "activation needs at least one axis; \"%s\" is "
                             "a scalar",
                             a->name);
        return KEEL_OK;
    case K_RESHAPE: {
        int64_t total = -1, prod = 1;
        size_t neg = SIZE_MAX, in_n = 0;
        if (!unk && elements(a, &in_n))
            total = (int64_t)in_n;
        y->ndim = s->ndim;
        for (size_t d = 0; d < s->ndim; d++) {
            int64_t v = s->shape[d];
            if (v == 0) {
                if (!unk && d >= a->ndim)
                    return keel__err(err, KEEL_EINVALID,
                                     "shape[%zu] is 0 (keep the input's size) but \"%s\" has "
                                     "rank %zu",
                                     d, a->name, a->ndim);
                v = unk ? -1 : a->shape[d];
            } else if (v == -1) {
                neg = d;
            }
            y->shape[d] = v;
            if (v >= 0 && d != neg)
                prod *= v;
        }
        if (total < 0)
            return KEEL_OK; /* known when a request comes */
        if (neg != SIZE_MAX) {
            if (!prod || total % prod)
                goto bad_reshape;
            y->shape[neg] = total / prod;
        } else if (prod != total) {
            goto bad_reshape;
        }
        return KEEL_OK;
    bad_reshape:
        shape_str(a, sh, sizeof(sh));
        return keel__err(err, KEEL_EINVALID,
                         "cannot reshape \"%s\" %s (%" PRId64 " elements) to the shape given",
                         a->name, sh, total);
    }
    case K_SLICE: {
        if (unk)
            return KEEL_OK;
        if ((rc = norm_axis(s->axis, a->ndim, &ax, err)))
            return rc;
        int64_t d = a->shape[ax];
        if (d < 0) {
            y->shape[ax] = s->start >= 0 && s->has_end && s->end >= 0 ? s->end - s->start
                           : s->start < 0 && !s->has_end              ? -s->start
                           : s->start < 0 && s->has_end && s->end < 0 ? s->end - s->start
                                                                      : -1;
            return KEEL_OK;
        }
        int64_t b = s->start < 0 ? d + s->start : s->start, e = !s->has_end  ? d
                                                                : s->end < 0 ? d + s->end
                                                                             : s->end;
        if (b < 0 || e > d || b >= e)
            return keel__err(err, KEEL_EINVALID,
                             "slice %" PRId64 "..%" PRId64 " of axis %" PRId64
                             " does not fit \"%s\", whose axis has %" PRId64,
                             s->start, s->has_end ? s->end : d, ax, a->name, d);
        y->shape[ax] = e - b;
        return KEEL_OK;
    }
    case K_WINDOW: {
        if (unk)
            return KEEL_OK;
        if (a->ndim >= KEEL_TENSOR_MAX_DIMS)
            return keel__err(err, KEEL_EINVALID, "window adds an axis; \"%s\" has the most (%d)",
                             a->name, KEEL_TENSOR_MAX_DIMS);
        if ((rc = norm_axis(s->axis, a->ndim, &ax, err)))
            return rc;
        int64_t d = a->shape[ax];
        if (d >= 0 && d < s->size)
            return keel__err(err, KEEL_EINVALID,
                             "a window of %" PRId64 " along axis %" PRId64
                             " needs at least %" PRId64 "; \"%s\" has %" PRId64,
                             s->size, ax, s->size, a->name, d);
        y->ndim = a->ndim + 1;
        y->shape[ax] = d < 0 ? -1 : (d - s->size) / s->stride + 1;
        y->shape[ax + 1] = s->size;
        for (size_t i = (size_t)ax + 1; i < a->ndim; i++)
            y->shape[i + 1] = a->shape[i];
        return KEEL_OK;
    }
    case K_CONCAT: {
        for (size_t i = 1; i < nx; i++) {
            if (x[i]->dtype && a->dtype && x[i]->dtype != a->dtype)
                return keel__err(err, KEEL_EINVALID, "concat: \"%s\" is %s, \"%s\" is %s", a->name,
                                 keel__dtype_name(a->dtype), x[i]->name,
                                 keel__dtype_name(x[i]->dtype));
            unk |= x[i]->ndim == RANK_UNKNOWN;
        }
        if (unk) {
            y->ndim = RANK_UNKNOWN;
            return KEEL_OK;
        }
        if ((rc = norm_axis(s->axis, a->ndim, &ax, err)))
            return rc;
        for (size_t i = 1; i < nx; i++) {
            bool ok = x[i]->ndim == a->ndim;
            for (size_t d = 0; ok && d < a->ndim; d++) {
                if ((int64_t)d == ax)
                    continue;
                if (a->shape[d] >= 0 && x[i]->shape[d] >= 0)
                    ok = a->shape[d] == x[i]->shape[d];
                else if (y->shape[d] < 0)
                    y->shape[d] = x[i]->shape[d];
            }
            if (!ok) {
                char s2[160];
                shape_str(a, sh, sizeof(sh));
                shape_str(x[i], s2, sizeof(s2));
                return keel__err(err, KEEL_EINVALID,
                                 "concat along axis %" PRId64 ": \"%s\" %s and \"%s\" %s differ "
                                 "elsewhere",
                                 ax, a->name, sh, x[i]->name, s2);
            }
            y->shape[ax] =
                y->shape[ax] < 0 || x[i]->shape[ax] < 0 ? -1 : y->shape[ax] + x[i]->shape[ax];
        }
        return KEEL_OK;
    }
    default:
        return keel__err(err, KEEL_EINTERNAL, "op %d has no shape", s->kind);
    }
}

/* Whether have (what the graph gives) fits want (what a model takes). */
static bool fits(const keel__tensor *want, const keel__tensor *have)
{
    if (want->dtype && have->dtype && want->dtype != have->dtype)
        return false;
    if (want->ndim == RANK_UNKNOWN || have->ndim == RANK_UNKNOWN)
        return true;
    if (want->ndim != have->ndim)
        return false;
    for (size_t d = 0; d < want->ndim; d++)
        if (want->shape[d] >= 0 && have->shape[d] >= 0 && want->shape[d] != have->shape[d])
            return false;
    return true;
}

/* How many inputs (or outputs) a model step's model describes; 0 before it
 * is loaded (a check from the manifest alone) or when it describes none. */
static size_t nio(const step *s, bool out)
{
    if (!s->inst)
        return 0;
    if (out)
        return s->be->noutputs ? s->be->noutputs(s->inst) : 0;
    return s->be->ninputs ? s->be->ninputs(s->inst) : 0;
}

static const keel__tensor *model_input(const step *s, const char *name)
{
    size_t n = nio(s, false);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s->be->input(s->inst, i)->name, name))
            return s->be->input(s->inst, i);
    return NULL;
}

static const keel__tensor *model_output(const step *s, const char *name)
{
    size_t n = nio(s, true);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s->be->output(s->inst, i)->name, name))
            return s->be->output(s->inst, i);
    return NULL;
}

static void names_of(const step *s, bool out, char *buf, size_t n)
{
    size_t o = 0, k = nio(s, out);
    buf[0] = 0;
    for (size_t i = 0; i < k && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s\"%s\"", i ? ", " : "",
                              (out ? s->be->output(s->inst, i) : s->be->input(s->inst, i))->name);
}

/* The declared dtype and shape of a tier constant, from the tier object. */
static bool constant_decl(const cJSON *tier, const char *name, keel__tensor *ret)
{
    const cJSON *c =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tier, "constants"), name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(c, "dtype"),
                *shape = cJSON_GetObjectItemCaseSensitive(c, "shape"), *d;
    if (!c)
        return false;
    ret->dtype = cJSON_IsString(dt) ? keel__dtype_parse(dt->valuestring) : 0;
    ret->ndim = RANK_UNKNOWN;
    if (cJSON_IsArray(shape) && cJSON_GetArraySize(shape) <= KEEL_TENSOR_MAX_DIMS) {
        ret->ndim = 0;
        cJSON_ArrayForEach(d, shape) ret->shape[ret->ndim++] =
            cJSON_IsNumber(d) ? (int64_t)d->valuedouble : -1;
    }
    return true;
}

/* Where the graph's inputs come from, and the shapes along every edge. */
static int check_edges(graph *g, const keel__tier_ctx *ctx, keel_error *err)
{
    char a[160], b[160];
    /* graph inputs: package inputs, tier constants, or (no declared
     * inputs) whatever the first reader takes */
    for (size_t i = 0; i < g->nt; i++) {
        gtensor *t = &g->t[i];
        if (t->producer >= 0)
            continue;
        const keel__tensor *in = NULL;
        for (size_t k = 0; k < ctx->ninputs; k++)
            if (!strcmp(ctx->inputs[k].name, t->name))
                in = &ctx->inputs[k];
        if (in) {
            t->decl = *in;
            if (!in->ndim && !in->shape[0])
                t->decl.ndim = RANK_UNKNOWN; /* declared without a shape */
        } else if (constant_decl(ctx->tier, t->name, &t->decl)) {
            t->constant = true;
        } else if (ctx->ninputs) {
            char names[256] = "";
            size_t o = 0;
            for (size_t k = 0; k < ctx->ninputs && o < sizeof(names); k++)
                o += (size_t)snprintf(names + o, sizeof(names) - o, "%s\"%s\"", k ? ", " : "",
                                      ctx->inputs[k].name);
            for (size_t s = 0; s < g->nsteps; s++)
                for (size_t p = 0; p <= g->steps[s].nin; p++)
                    if (p < g->steps[s].nin ? g->steps[s].in[p].t == i
                                            : g->steps[s].gated && g->steps[s].when_t == i)
                        return keel__err(err, KEEL_EINVALID,
                                         "steps[%zu] (\"%s\") reads tensor \"%s\", which no step "
                                         "writes and which is neither a package input (%s) nor "
                                         "a tier constant (a missing tensor)",
                                         s, g->steps[s].name, t->name, names);
        } else { /* described by its first reader: a model's input, else float32 */
            t->decl.dtype = KEEL_DT_FLOAT32;
            for (size_t k = g->nsteps; k-- > 0;)
                for (size_t p = 0; p < g->steps[g->order[k]].nin; p++) {
                    const step *s = &g->steps[g->order[k]];
                    const keel__tensor *mi = s->in[p].t == i && s->kind == K_MODEL
                                                 ? model_input(s, s->in[p].name)
                                                 : NULL;
                    if (mi)
                        t->decl = *mi;
                }
        }
        t->decl.name = t->name;
        if (!t->constant && g->npub < KEEL__MAX_IO) {
            g->pub[g->npub] = t->decl;
            if (g->pub[g->npub].ndim == RANK_UNKNOWN) { /* the contract's "no shape" */
                g->pub[g->npub].ndim = 0;
                g->pub[g->npub].shape[0] = 0;
            }
            g->npub++;
        }
    }
    for (size_t k = 0; k < g->nsteps; k++) {
        step *s = &g->steps[g->order[k]];
        char where[64];
        snprintf(where, sizeof(where), "steps[%zu] (\"%s\")", g->order[k], s->name);
        if (s->gated) {
            const keel__tensor *w = &g->t[s->when_t].decl;
            if (w->dtype && (!keel__dtype_size(w->dtype) || w->dtype == KEEL_DT_FLOAT16 ||
                             w->dtype == KEEL_DT_BFLOAT16))
                return keel__err(err, KEEL_EINVALID,
                                 "%s.when: tensor \"%s\" is %s; a gate reads numbers", where,
                                 w->name, keel__dtype_name(w->dtype));
        }
        if (s->kind != K_MODEL) {
            const keel__tensor *x[KEEL__MAX_IO];
            for (size_t p = 0; p < s->nin; p++)
                x[p] = &g->t[s->in[p].t].decl;
            gtensor *y = &g->t[s->out[0].t];
            int rc = op_shape(s, x, s->nin, &y->decl, err);
            if (rc)
                return keel__err_prefix(err, "%s", where);
            y->decl.name = y->name;
            continue;
        }
        size_t nmi = nio(s, false);
        for (size_t p = 0; p < s->nin; p++) {
            const keel__tensor *want = model_input(s, s->in[p].name),
                               *have = &g->t[s->in[p].t].decl;
            if (!want && nmi) {
                names_of(s, false, a, sizeof(a));
                return keel__err(err, KEEL_EINVALID,
                                 "%s.inputs: %s has no input \"%s\" (it takes %s)", where, s->file,
                                 s->in[p].name, a);
            }
            if (want && !fits(want, have)) {
                shape_str(want, a, sizeof(a));
                shape_str(have, b, sizeof(b));
                return keel__err(err, KEEL_EINVALID,
                                 "%s: input \"%s\" takes %s %s, but tensor \"%s\" is %s %s "
                                 "(a shape mismatch)",
                                 where, s->in[p].name, keel__dtype_name(want->dtype), a, have->name,
                                 have->dtype ? keel__dtype_name(have->dtype) : "any", b);
            }
        }
        for (size_t i = 0; i < nmi; i++) { /* every input the model needs is fed */
            const char *need = s->be->input(s->inst, i)->name;
            bool fed = false;
            for (size_t p = 0; p < s->nin; p++)
                fed |= !strcmp(s->in[p].name, need);
            if (!fed)
                return keel__err(err, KEEL_EINVALID,
                                 "%s.inputs: model input \"%s\" of %s is not fed; map it to a "
                                 "tensor",
                                 where, need, s->file);
        }
        size_t nmo = nio(s, true);
        for (size_t p = 0; p < s->nout; p++) {
            const keel__tensor *o = model_output(s, s->out[p].name);
            gtensor *y = &g->t[s->out[p].t];
            if (!o && nmo) {
                names_of(s, true, a, sizeof(a));
                return keel__err(err, KEEL_EINVALID,
                                 "%s.outputs: %s has no output \"%s\" (it gives %s)", where,
                                 s->file, s->out[p].name, a);
            }
            if (o)
                y->decl = *o;
            y->decl.name = y->name;
        }
    }
    for (size_t o = 0; o < g->nouts; o++) {
        g->pubout[o] = g->t[g->outs[o]].decl;
        if (g->pubout[o].ndim == RANK_UNKNOWN) {
            g->pubout[o].ndim = 0;
            g->pubout[o].shape[0] = 0;
        }
    }
    return KEEL_OK;
}

/* --- load ------------------------------------------------------------------------------- */

static int load_step(graph *g, step *s, const cJSON *spec, const keel__tier_ctx *ctx,
                     keel_error *err)
{
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(ctx->files, s->file);
    if (!cJSON_IsString(path))
        return keel__err(err, KEEL_ENOTFOUND, "model \"%s\" was not resolved in the package",
                         s->file);
    const char *base = strrchr(path->valuestring, '/');
    base = base ? base + 1 : path->valuestring;
    bool hex = strlen(base) == 64 && strspn(base, "0123456789abcdef") == 64;
    keel__tier_ctx sub = {
        .model_path = path->valuestring,
        .model_hex = hex ? base : NULL,
        .tier = spec,
        .cache_dir = ctx->cache_dir,
    };
    int rc = s->be->load(&sub, &s->inst, err);
    if (!rc && s->be->memory)
        g->memory += s->be->memory(s->inst);
    return rc;
}

static int graph_load(const keel__tier_ctx *ctx, void **ret, keel_error *err)
{
    graph *g = NULL;
    int rc = parse(ctx->tier, &g, err);
    if (rc)
        return rc;
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(ctx->tier, "steps");
    for (size_t i = 0; i < g->nsteps && !rc; i++) {
        step *s = &g->steps[i];
        if (s->kind == K_MODEL &&
            (rc = load_step(g, s, cJSON_GetArrayItem(spec, (int)i), ctx, err)))
            rc = keel__err_prefix(err, "steps[%zu] (\"%s\", %s)", i, s->name, s->file);
    }
    if (!rc)
        rc = resolve_outputs(g, ctx->tier, ctx->outputs, ctx->noutputs, err);
    if (!rc)
        rc = check_edges(g, ctx, err);
    if (rc) {
        graph_free(g);
        return rc;
    }
    *ret = g;
    return KEEL_OK;
}

static void graph_unload(void *inst)
{
    graph_free(inst);
}

/* --- run ---------------------------------------------------------------------------------- */

typedef struct values {
    keel__tensor v[KEEL__GRAPH_MAX_TENSORS];
    bool have[KEEL__GRAPH_MAX_TENSORS], owned[KEEL__GRAPH_MAX_TENSORS];
} values;

static int run_model(const graph *g, size_t si, gsession *gs, values *vals, uint64_t deadline,
                     keel_error *err)
{
    const step *s = &g->steps[si];
    keel__tensor ins[KEEL__MAX_IO], outs[KEEL__MAX_IO];
    size_t nout = 0;
    char *result = NULL;
    for (size_t p = 0; p < s->nin; p++) {
        ins[p] = vals->v[s->in[p].t];
        ins[p].name = s->in[p].name;
    }
    int rc = s->be->run(s->inst, gs ? gs->bs[si] : NULL, ins, s->nin, outs, &nout, &result,
                        deadline, err);
    free(result); /* a step's labels are not the pipeline's: postprocess labels the outputs */
    if (rc)
        return rc;
    for (size_t p = 0; p < s->nout && !rc; p++) {
        size_t i = 0;
        while (i < nout && (!outs[i].name || strcmp(outs[i].name, s->out[p].name)))
            i++;
        if (i == nout) {
            rc = keel__err(err, KEEL_ECORRUPT, "%s gave no output \"%s\"", s->file, s->out[p].name);
            break;
        }
        size_t t = s->out[p].t;
        vals->v[t] = outs[i];
        vals->v[t].name = g->t[t].name;
        vals->have[t] = vals->owned[t] = true;
        outs[i].data = NULL;
        outs[i].name = NULL;
    }
    for (size_t i = 0; i < nout; i++)
        keel__tensor_done(&outs[i]);
    return rc;
}

static int run_op(const step *s, const keel__tensor *const *x, keel__tensor *y, bool *owned,
                  keel_error *err)
{
    const keel__tensor *a = x[0];
    size_t es = keel__dtype_size(a->dtype), n = 0, in_n = 0;
    int64_t ax = 0;
    for (size_t i = 0; i < s->nin; i++) {
        size_t k;
        if (!elements(x[i], &k) || !keel__dtype_size(x[i]->dtype) ||
            k * keel__dtype_size(x[i]->dtype) != x[i]->nbytes)
            return keel__err(err, KEEL_EINVALID, "tensor \"%s\": %zu bytes do not fit its shape",
                             x[i]->name, x[i]->nbytes);
    }
    int rc = op_shape(s, x, s->nin, y, err);
    if (rc)
        return rc;
    size_t oes = keel__dtype_size(y->dtype);
    if (!elements(y, &n) || n > KEEL__GRAPH_MAX_BYTES / oes)
        return keel__err(err, KEEL_ETOOBIG, "the result would be over %u MiB",
                         KEEL__GRAPH_MAX_BYTES >> 20);
    if (!elements(a, &in_n))
        return keel__err(err, KEEL_EINVALID, "bad shape");
    if (s->kind == K_RESHAPE) { /* a view: same bytes, new shape */
        y->data = a->data;
        y->nbytes = a->nbytes;
        *owned = false;
        return KEEL_OK;
    }
    y->nbytes = n * oes;
    if (!(y->data = malloc(y->nbytes ? y->nbytes : 1)))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    *owned = true;
    const unsigned char *src = a->data;
    unsigned char *dst = y->data;
    size_t outer = 1, inner = es;
    if (s->kind == K_SLICE || s->kind == K_WINDOW || s->kind == K_CONCAT) {
        if ((rc = norm_axis(s->axis, a->ndim, &ax, err)))
            return rc;
        for (int64_t d = 0; d < ax; d++)
            outer *= (size_t)a->shape[d];
        for (size_t d = (size_t)ax + 1; d < a->ndim; d++)
            inner *= (size_t)a->shape[d];
    }
    switch (s->kind) {
    case K_SLICE: {
        size_t d = (size_t)a->shape[ax], len = (size_t)y->shape[ax];
        size_t b = (size_t)(s->start < 0 ? (int64_t)d + s->start : s->start);
        for (size_t o = 0; o < outer; o++)
            memcpy(dst + o * len * inner, src + (o * d + b) * inner, len * inner);
        break;
    }
    case K_WINDOW: {
        size_t d = (size_t)a->shape[ax], w = (size_t)y->shape[ax], size = (size_t)s->size,
               stride = (size_t)s->stride;
        for (size_t o = 0; o < outer; o++)
            for (size_t k = 0; k < w; k++)
                memcpy(dst + ((o * w + k) * size) * inner, src + (o * d + k * stride) * inner,
                       size * inner);
        break;
    }
    case K_CONCAT:
        for (size_t o = 0; o < outer; o++)
            for (size_t i = 0; i < s->nin; i++) {
                size_t chunk = (size_t)x[i]->shape[ax] * inner;
                memcpy(dst, (const unsigned char *)x[i]->data + o * chunk, chunk);
                dst += chunk;
            }
        break;
    case K_AFFINE: {
        const float *xf = a->data;
        float *yf = y->data;
        for (size_t i = 0; i < n; i++)
            yf[i] = (float)((double)xf[i] * s->scale + s->offset);
        break;
    }
    case K_ACTIVATION: {
        size_t row = (size_t)a->shape[a->ndim - 1], rows = row ? n / row : 0;
        double *sc = malloc((row ? row : 1) * sizeof(double));
        if (!sc)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        const float *xf = a->data;
        float *yf = y->data;
        for (size_t r = 0; r < rows; r++) {
            for (size_t i = 0; i < row; i++)
                sc[i] = xf[r * row + i];
            keel__post_activate(s->act, sc, row);
            for (size_t i = 0; i < row; i++)
                yf[r * row + i] = (float)sc[i];
        }
        free(sc);
        break;
    }
    case K_STANDARDIZE:
        memcpy(dst, src, y->nbytes);
        return keel__pre_tabular(s->pre, y, err);
    case K_CAST:
        for (size_t i = 0; i < n; i++) {
            double v = keel__tensor_get(a, i);
            if (!keel__tensor_set(y, i, y->dtype == KEEL_DT_BOOL ? v != 0 : v))
                return keel__err(err, KEEL_EINVALID, "cast to %s failed",
                                 keel__dtype_name(y->dtype));
        }
        break;
    default:
        return keel__err(err, KEEL_EINTERNAL, "op %d cannot run", s->kind);
    }
    return KEEL_OK;
}

/* A step runs when everything it reads is there (a closed gate upstream
 * leaves tensors absent) and its own gate, if any, is open. */
static bool should_run(const step *s, const values *vals)
{
    for (size_t p = 0; p < s->nin; p++)
        if (!vals->have[s->in[p].t])
            return false;
    if (!s->gated)
        return true;
    if (!vals->have[s->when_t])
        return false;
    const keel__tensor *w = &vals->v[s->when_t];
    size_t es = keel__dtype_size(w->dtype), n = es ? w->nbytes / es : 0;
    for (size_t i = 0; i < n; i++) {
        double v = keel__tensor_get(w, i);
        if (v >= s->at_least) /* NaN never opens it */
            return true;
    }
    return false;
}

static int graph_run(void *inst, void *sess, const keel__tensor *in, size_t nin, keel__tensor *out,
                     size_t *nout, char **result_json, uint64_t deadline_ns, keel_error *err)
{
    graph *g = inst;
    values *vals = calloc(1, sizeof(*vals));
    int rc = KEEL_OK;
    size_t k = 0, no = 0;
    if (!vals)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < g->nt; i++) {
        if (g->t[i].producer >= 0)
            continue;
        for (size_t j = 0; j < nin && !vals->have[i]; j++)
            if (in[j].name && !strcmp(in[j].name, g->t[i].name)) {
                vals->v[i] = in[j];
                vals->have[i] = true;
            }
        if (!vals->have[i]) {
            rc = keel__err(err, KEEL_EINVALID, "pipeline input \"%s\" is missing", g->t[i].name);
            goto out;
        }
    }
    for (k = 0; k < g->nsteps; k++) {
        size_t si = g->order[k];
        const step *s = &g->steps[si];
        if (!should_run(s, vals))
            continue; /* its outputs stay absent; so do its readers' */
        if (deadline_ns && keel__now_mono_ns() >= deadline_ns) {
            rc = keel__err(err, KEEL_ETIMEOUT, "deadline passed before step \"%s\"", s->name);
            goto out;
        }
        if (s->kind == K_MODEL) {
            rc = run_model(g, si, sess, vals, deadline_ns, err);
        } else {
            const keel__tensor *x[KEEL__MAX_IO];
            size_t t = s->out[0].t;
            for (size_t p = 0; p < s->nin; p++)
                x[p] = &vals->v[s->in[p].t];
            memset(&vals->v[t], 0, sizeof(vals->v[t]));
            vals->v[t].name = g->t[t].name;
            rc = run_op(s, x, &vals->v[t], &vals->owned[t], err);
            vals->have[t] = true;
        }
        if (rc) {
            if (deadline_ns && keel__now_mono_ns() >= deadline_ns) { /* stopped by it */
                rc = KEEL_ETIMEOUT;
                if (err)
                    err->code = rc;
            }
            (void)keel__err_prefix(err, "step \"%s\"%s%s", s->name, s->kind == K_MODEL ? " " : "",
                                   s->kind == K_MODEL ? s->file : "");
            goto out;
        }
    }
    if (deadline_ns && keel__now_mono_ns() >= deadline_ns) {
        rc = keel__err(err, KEEL_ETIMEOUT, "deadline passed during the last step");
        goto out;
    }
    for (size_t o = 0; o < g->nouts; o++) { /* owned buffers move out, views are copied */
        size_t t = g->outs[o];
        if (!vals->have[t])
            continue; /* behind a gate that stayed closed */
        out[no] = vals->v[t];
        if (vals->owned[t]) {
            vals->owned[t] = false;
            no++;
            continue;
        }
        if (!(out[no].data = malloc(vals->v[t].nbytes ? vals->v[t].nbytes : 1))) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(out[no++].data, vals->v[t].data, vals->v[t].nbytes);
    }
    *nout = no;
    (void)result_json;
out:
    if (rc)
        for (size_t i = 0; i < no; i++)
            keel__tensor_done(&out[i]);
    for (size_t i = 0; i < g->nt; i++)
        if (vals->owned[i])
            keel__tensor_done(&vals->v[i]);
    free(vals);
    return rc;
}

/* --- sessions: each stateful step's backend session -------------------------------------- */

static void graph_session_free(void *inst, void *sess)
{
    graph *g = inst;
    gsession *gs = sess;
    if (!gs)
        return;
    for (size_t i = 0; i < g->nsteps; i++)
        if (gs->bs[i])
            g->steps[i].be->session_free(g->steps[i].inst, gs->bs[i]);
    free(gs);
}

static int graph_session_new(void *inst, void **ret, keel_error *err)
{
    graph *g = inst;
    gsession *gs = calloc(1, sizeof(*gs));
    if (!gs)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < g->nsteps; i++) {
        const step *s = &g->steps[i];
        if (s->kind != K_MODEL || !(s->be->caps & KEEL__CAP_SESSIONS))
            continue;
        int rc = s->be->session_new(s->inst, &gs->bs[i], err);
        if (rc) {
            graph_session_free(g, gs);
            return keel__err_prefix(err, "step \"%s\"", s->name);
        }
    }
    *ret = gs;
    return KEEL_OK;
}

static void graph_session_reset(void *inst, void *sess)
{
    graph *g = inst;
    gsession *gs = sess;
    for (size_t i = 0; i < g->nsteps; i++)
        if (gs->bs[i])
            g->steps[i].be->session_reset(g->steps[i].inst, gs->bs[i]);
}

/* --- description --------------------------------------------------------------------------- */

static size_t graph_ninputs(void *inst)
{
    return ((graph *)inst)->npub;
}

static const keel__tensor *graph_input(void *inst, size_t i)
{
    graph *g = inst;
    return i < g->npub ? &g->pub[i] : NULL;
}

static size_t graph_noutputs(void *inst)
{
    return ((graph *)inst)->nouts;
}

static const keel__tensor *graph_output(void *inst, size_t i)
{
    graph *g = inst;
    return i < g->nouts ? &g->pubout[i] : NULL;
}

static uint64_t graph_memory(void *inst)
{
    return ((graph *)inst)->memory;
}

static const char *graph_device(void *inst)
{
    graph *g = inst;
    for (size_t i = 0; i < g->nsteps; i++)
        if (g->steps[i].inst && g->steps[i].be->device)
            return g->steps[i].be->device(g->steps[i].inst);
    return "cpu";
}

const keel__backend keel__backend_graph = {
    .name = "graph",
    .caps = KEEL__CAP_RUN | KEEL__CAP_SESSIONS,
    .load = graph_load,
    .unload = graph_unload,
    .run = graph_run,
    .session_new = graph_session_new,
    .session_free = graph_session_free,
    .session_reset = graph_session_reset,
    .ninputs = graph_ninputs,
    .input = graph_input,
    .noutputs = graph_noutputs,
    .output = graph_output,
    .memory = graph_memory,
    .device = graph_device,
    .files = graph_files,
};
