/*
 * load.c - builds a keel__model from a package manifest: the contract
 * (inputs, outputs), the tiers (backend, model file, deadline, memory
 * budget, constants, recurrent state, context), pre/post-processing, the
 * breaker policy and the validation set. Every tier is loaded at once; one
 * that fails to load is recorded with its reason and its breaker opened, so
 * requests go to the next tier and a later probe retries the load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/model.h"

#define MOD "infer"

/* Names in keel__tensor are const for borrowers; the model owns its own. */
static void free_name(const char *p)
{
    union {
        const char *c;
        char *m;
    } u = {p};
    free(u.m);
}

/* {"name", "dtype", "shape"} into t (name malloc'd). */
static int parse_decl(const cJSON *j, keel__tensor *t, const char *where, bool need_shape,
                      keel_error *err)
{
    const char *name = NULL, *dtype = NULL;
    const cJSON *shape = NULL, *d;
    int rc;
    if ((rc = keel__json_str(j, "name", true, 63, &name, where, err)) ||
        (rc = keel__json_str(j, "dtype", true, 16, &dtype, where, err)) ||
        (rc = keel__json_member(j, "shape", cJSON_Array, need_shape, &shape, where, err)))
        return rc;
    memset(t, 0, sizeof(*t));
    if (!(t->dtype = keel__dtype_parse(dtype)))
        return keel__err(err, KEEL_EINVALID,
                         "%s.dtype: \"%s\" is not float32, float16, float64, int8..int64, "
                         "uint8..uint64, bool or string",
                         where, dtype);
    cJSON_ArrayForEach(d, shape)
    {
        if (cJSON_IsString(d) && t->ndim < KEEL_TENSOR_MAX_DIMS) { /* a symbolic size: any */
            t->shape[t->ndim++] = -1;
            continue;
        }
        if (t->ndim == KEEL_TENSOR_MAX_DIMS || !cJSON_IsNumber(d) || d->valuedouble < -1 ||
            d->valuedouble > 1e12 || d->valuedouble != (double)(int64_t)d->valuedouble)
            return keel__err(err, KEEL_EINVALID,
                             "%s.shape: expected up to %d integers (-1 for any size)", where,
                             KEEL_TENSOR_MAX_DIMS);
        t->shape[t->ndim++] = (int64_t)d->valuedouble;
    }
    if (!(t->name = strdup(name)))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    return KEEL_OK;
}

static int parse_decls(const cJSON *root, const char *key, keel__tensor *out, size_t *n,
                       keel_error *err)
{
    const cJSON *a = NULL, *it;
    int rc = keel__json_member(root, key, cJSON_Array, false, &a, "keel.json", err);
    cJSON_ArrayForEach(it, a)
    {
        char where[64];
        snprintf(where, sizeof(where), "%s[%zu]", key, *n);
        if (*n == KEEL__MAX_IO)
            return keel__err(err, KEEL_ETOOBIG, "%s: more than %d", key, KEEL__MAX_IO);
        if ((rc = parse_decl(it, &out[*n], where, true, err)))
            return rc;
        ++*n;
    }
    return rc;
}

static int ms_field(const cJSON *o, const char *key, uint64_t *ret_ns, const char *where,
                    keel_error *err)
{
    uint64_t ms = 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return KEEL_OK;
    int rc = keel__json_u64(o, key, true, &ms, where, err);
    if (!rc && ms > 3600000)
        rc = keel__err(err, KEEL_EINVALID, "%s.%s: at most an hour", where, key);
    if (!rc)
        *ret_ns = ms * 1000000u;
    return rc;
}

static int parse_consts(const cJSON *c, tier *t, const char *where, keel_error *err)
{
    const cJSON *it;
    if (c && !cJSON_IsObject(c))
        return keel__err(err, KEEL_EINVALID, "%s.constants: expected an object", where);
    cJSON_ArrayForEach(it, c)
    {
        keel__tensor *x = &t->consts[t->nconsts];
        const char *dtype = NULL;
        const cJSON *shape = NULL, *data = NULL, *e;
        char w[128];
        snprintf(w, sizeof(w), "%s.constants.%s", where, it->string);
        if (t->nconsts == KEEL__MAX_CONSTS)
            return keel__err(err, KEEL_ETOOBIG, "%s.constants: more than %d", where,
                             KEEL__MAX_CONSTS);
        int rc;
        if ((rc = keel__json_str(it, "dtype", true, 16, &dtype, w, err)) ||
            (rc = keel__json_member(it, "shape", cJSON_Array, true, &shape, w, err)) ||
            (rc = keel__json_member(it, "data", cJSON_Array, true, &data, w, err)))
            return rc;
        memset(x, 0, sizeof(*x));
        x->dtype = keel__dtype_parse(dtype);
        size_t es = keel__dtype_size(x->dtype), n = 1;
        if (!es || x->dtype == KEEL_DT_FLOAT16 || x->dtype == KEEL_DT_BFLOAT16)
            return keel__err(err, KEEL_EINVALID, "%s.dtype: \"%s\" cannot be a constant", w, dtype);
        cJSON_ArrayForEach(e, shape)
        {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 65536 ||
                x->ndim == KEEL_TENSOR_MAX_DIMS)
                return keel__err(err, KEEL_EINVALID, "%s.shape: expected sizes", w);
            x->shape[x->ndim++] = (int64_t)e->valuedouble;
            n *= (size_t)e->valuedouble;
        }
        if ((size_t)cJSON_GetArraySize(data) != n || n > 65536)
            return keel__err(err, KEEL_EINVALID, "%s.data: expected %zu numbers for the shape", w,
                             n);
        x->nbytes = n * es;
        x->data = calloc(1, x->nbytes ? x->nbytes : 1);
        x->name = strdup(it->string);
        t->nconsts++;
        if (!x->data || !x->name)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        size_t i = 0;
        cJSON_ArrayForEach(e, data)
        {
            double v = cJSON_IsNumber(e) ? e->valuedouble : cJSON_IsTrue(e) ? 1 : 0;
            if (!keel__tensor_set(x, i, v))
                return keel__err(err, KEEL_EINVALID, "%s.dtype: \"%s\" cannot be a constant", w,
                                 dtype);
            i++;
        }
    }
    return KEEL_OK;
}

/* The files a backend with a `files` op (graph) names, resolved into
 * t->files as {"path in the package": "path on disk"}. */
static int tier_files(model *m, tier *t, const cJSON *j, keel__path_fn path_of, void *ctx,
                      keel_error *err)
{
    const char *rel[64];
    size_t n = 0;
    char p[PATH_MAX];
    keel__tier_ctx tc = {
        .tier = j, .inputs = m->in, .ninputs = m->nin, .outputs = m->out, .noutputs = m->nout};
    int rc = t->be->files(&tc, rel, KEEL_ARRAY_LEN(rel), &n, err);
    if (rc)
        return rc;
    if (!(t->files = cJSON_CreateObject()))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if ((rc = path_of(ctx, rel[i], p, sizeof(p), err)))
            return keel__err_prefix(err, "model \"%s\"", rel[i]);
        if (!cJSON_AddStringToObject(t->files, rel[i], p))
            return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    return KEEL_OK;
}

static int parse_tier(model *m, const cJSON *j, size_t k, uint64_t default_deadline,
                      keel__path_fn path_of, void *ctx, keel_error *err)
{
    tier *t = &m->tiers[k];
    char where[32];
    const char *name = NULL, *backend = NULL, *file = NULL;
    uint64_t mem_mb = 0, max_inflight = 0;
    int rc;
    snprintf(where, sizeof(where), "tiers[%zu]", k);
    if ((rc = keel__json_str(j, "name", true, sizeof(t->name) - 1, &name, where, err)) ||
        (rc = keel__json_str(j, "backend", true, 16, &backend, where, err)) ||
        (rc = keel__json_str(j, "model", false, 255, &file, where, err)) ||
        (rc = keel__json_u64(j, "memory_mb", false, &mem_mb, where, err)) ||
        (rc = keel__json_u64(j, "max_inflight", false, &max_inflight, where, err)))
        return rc;
    keel__strlcpy(t->name, name, sizeof(t->name));
    for (size_t i = 0; i < k; i++)
        if (!strcmp(m->tiers[i].name, name))
            return keel__err(err, KEEL_EINVALID, "%s.name: \"%s\" is used twice", where, name);
    if (!(t->be = keel__backend_find(backend)))
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "%s.backend: \"%s\" is not a backend this keel has (onnx, rules, "
                         "graph)",
                         where, backend);
    if (t->be->files) { /* a pipeline: its steps name the files */
        if (file)
            return keel__err(err, KEEL_EINVALID,
                             "%s.model: a %s tier names its models in its steps, not here", where,
                             backend);
        if ((rc = tier_files(m, t, j, path_of, ctx, err)))
            return keel__err_prefix(err, "%s", where);
    } else if (!file) {
        return keel__err(err, KEEL_EINVALID, "%s: required field \"model\" is missing", where);
    } else if ((rc = path_of(ctx, file, t->model_path, sizeof(t->model_path), err))) {
        return keel__err_prefix(err, "%s.model", where);
    }
    const char *base = strrchr(t->model_path, '/');
    base = base ? base + 1 : t->model_path;
    if (strlen(base) == 64 && strspn(base, "0123456789abcdef") == 64)
        keel__strlcpy(t->model_hex, base, sizeof(t->model_hex));
    t->deadline_ns = default_deadline;
    if ((rc = ms_field(j, "deadline_ms", &t->deadline_ns, where, err)))
        return rc;
    t->memory_budget = mem_mb << 20;
    t->max_inflight = max_inflight > 100000 ? 100000 : (unsigned)max_inflight;
    /* "state" and "context" are the backend's (onnx.c reads them at load) */
    if ((rc = parse_consts(cJSON_GetObjectItemCaseSensitive(j, "constants"), t, where, err)))
        return rc;
    if (!(t->spec = cJSON_Duplicate(j, 1)))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    t->br.cooldown_ns = m->pol.cooldown_ns;
    return KEEL_OK;
}

static int parse_policy(model *m, const cJSON *pol, uint64_t *ret_deadline, keel_error *err)
{
    policy *p = &m->pol;
    p->failures = 3;
    p->error_rate = 0.5;
    p->window = 20;
    p->min_requests = 10;
    p->cooldown_ns = 5000000000ull;
    if (!pol)
        return KEEL_OK;
    int rc = ms_field(pol, "deadline_ms", ret_deadline, "policy", err);
    const cJSON *br = cJSON_GetObjectItemCaseSensitive(pol, "breaker");
    if (rc || !br)
        return rc;
    uint64_t f = p->failures, w = p->window, mr = p->min_requests;
    if ((rc = keel__json_u64(br, "failures", false, &f, "policy.breaker", err)) ||
        (rc = keel__json_u64(br, "window", false, &w, "policy.breaker", err)) ||
        (rc = keel__json_u64(br, "min_requests", false, &mr, "policy.breaker", err)) ||
        (rc = ms_field(br, "cooldown_ms", &p->cooldown_ns, "policy.breaker", err)))
        return rc;
    const cJSON *er = cJSON_GetObjectItemCaseSensitive(br, "error_rate");
    if (er && (!cJSON_IsNumber(er) || er->valuedouble <= 0 || er->valuedouble > 1))
        return keel__err(err, KEEL_EINVALID, "policy.breaker.error_rate: expected 0 < rate <= 1");
    if (er)
        p->error_rate = er->valuedouble;
    if (!f || f > 1000 || !w || w > 64 || mr > w)
        return keel__err(err, KEEL_EINVALID,
                         "policy.breaker: failures 1..1000, window 1..64, min_requests <= window");
    p->failures = (unsigned)f;
    p->window = (unsigned)w;
    p->min_requests = (unsigned)mr;
    return KEEL_OK;
}

/* "records": {"mode": "none" | "all" | "sampled" | "low_confidence",
 *             "sample_rate": 0.01, "confidence_below": 0.6} */
static int parse_records(model *m, const cJSON *r, keel_error *err)
{
    static const char *const modes[] = {"none", "all", "sampled", "low_confidence"};
    const char *mode = NULL;
    m->rec_rate = 0.01;
    m->rec_below = 0.6;
    if (!r)
        return KEEL_OK;
    int rc = keel__json_str(r, "mode", true, 32, &mode, "records", err);
    if (rc)
        return rc;
    m->rec_mode = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(mode, modes[i]))
            m->rec_mode = i;
    if (m->rec_mode < 0)
        return keel__err(err, KEEL_EINVALID,
                         "records.mode: \"%s\" is not none, all, sampled or low_confidence", mode);
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(r, "sample_rate"),
                *below = cJSON_GetObjectItemCaseSensitive(r, "confidence_below");
    if (rate && (!cJSON_IsNumber(rate) || !(rate->valuedouble > 0) || rate->valuedouble > 1))
        return keel__err(err, KEEL_EINVALID, "records.sample_rate: expected 0 < rate <= 1");
    if (below && (!cJSON_IsNumber(below) || below->valuedouble < 0 || below->valuedouble > 1))
        return keel__err(err, KEEL_EINVALID, "records.confidence_below: expected 0..1");
    if (rate)
        m->rec_rate = rate->valuedouble;
    if (below)
        m->rec_below = below->valuedouble;
    return KEEL_OK;
}

/* "routing": {"mode": "local" | "escalate" | "upstream_first",
 *             "confidence_below": 0.6, "deadline_ms": 300} */
static int parse_routing(model *m, const cJSON *r, keel_error *err)
{
    static const char *const modes[] = {"local", "escalate", "upstream_first"};
    const char *mode = NULL;
    m->route_below = 0.6;
    m->route_deadline_ms = 300;
    if (!r)
        return KEEL_OK;
    int rc = keel__json_str(r, "mode", true, 32, &mode, "routing", err);
    if (!rc)
        rc = keel__json_u64(r, "deadline_ms", false, &m->route_deadline_ms, "routing", err);
    if (rc)
        return rc;
    m->route_mode = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(mode, modes[i]))
            m->route_mode = i;
    if (m->route_mode < 0)
        return keel__err(err, KEEL_EINVALID,
                         "routing.mode: \"%s\" is not local, escalate or upstream_first", mode);
    const cJSON *below = cJSON_GetObjectItemCaseSensitive(r, "confidence_below");
    if (below && (!cJSON_IsNumber(below) || below->valuedouble < 0 || below->valuedouble > 1.01))
        return keel__err(err, KEEL_EINVALID, "routing.confidence_below: expected 0..1");
    if (below)
        m->route_below = below->valuedouble;
    if (!m->route_deadline_ms || m->route_deadline_ms > 60000)
        return keel__err(err, KEEL_EINVALID, "routing.deadline_ms: 1..60000");
    return KEEL_OK;
}

int keel__model_route(const keel__model *m, double *ret_below, uint64_t *ret_deadline_ms)
{
    *ret_below = m->route_below;
    *ret_deadline_ms = m->route_deadline_ms;
    return m->route_mode;
}

void keel__model_free(keel__model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nsessions; i++) /* before the instances they belong to */
        keel__session_free(m, m->sessions[i]);
    free(m->sessions);
    for (size_t i = 0; i < m->ntiers; i++) {
        tier *t = &m->tiers[i];
        void *inst = atomic_load(&t->inst);
        if (inst)
            t->be->unload(inst);
        for (size_t k = 0; k < t->nconsts; k++) {
            free_name(t->consts[k].name);
            free(t->consts[k].data);
        }
        cJSON_Delete(t->spec);
        cJSON_Delete(t->files);
        for (size_t k = 0; k < KEEL__NOUTCOMES; k++)
            keel__metric_series_unref(t->m_req[k]);
        keel__metric_series_unref(t->m_latency);
    }
    keel__metric_series_unref(m->m_transitions);
    keel__metric_series_unref(m->m_all_failed);
    for (size_t i = 0; i < m->nin; i++)
        free_name(m->in[i].name);
    for (size_t i = 0; i < m->nout; i++)
        free_name(m->out[i].name);
    keel__pre_done(&m->pre);
    keel__post_done(&m->post);
    cJSON_Delete(m->validation);
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->load_mu);
    free(m);
}

/* Fills the parts of the contract the manifest leaves out (inputs,
 * outputs) from tier t, just loaded, when its backend describes its model:
 * the first such tier in chain order defines them, and every later tier is
 * checked against them as it loads. Left out: what keel fills in itself
 * (the tier's constants here; recurrent state the backend does not list). */
static int derive_contract(model *m, const tier *t, keel_error *err)
{
    void *inst = atomic_load(&t->inst);
    if (!inst)
        return KEEL_OK;
    if (!m->nin && t->be->ninputs) {
        for (size_t k = 0; k < t->be->ninputs(inst) && m->nin < KEEL__MAX_IO; k++) {
            const keel__tensor *d = t->be->input(inst, k);
            bool internal = false;
            for (size_t c = 0; c < t->nconsts; c++)
                internal |= !strcmp(t->consts[c].name, d->name);
            if (internal)
                continue;
            m->in[m->nin] = *d;
            if (!(m->in[m->nin].name = strdup(d->name)))
                return keel__err(err, KEEL_ENOMEM, "out of memory");
            m->nin++;
        }
    }
    if (!m->nout && t->be->noutputs) {
        for (size_t k = 0; k < t->be->noutputs(inst) && m->nout < KEEL__MAX_IO; k++) {
            m->out[m->nout] = *t->be->output(inst, k);
            if (!(m->out[m->nout].name = strdup(m->out[m->nout].name)))
                return keel__err(err, KEEL_ENOMEM, "out of memory");
            m->nout++;
        }
    }
    return KEEL_OK;
}

int keel__model_build(const char *manifest, size_t len, keel__path_fn path_of, void *ctx,
                      const keel__infer_opts *o, keel__model **ret, keel_error *err)
{
    cJSON *root = NULL;
    const cJSON *tiers = NULL, *it;
    const char *name = NULL, *version = NULL;
    uint64_t deadline = 0;
    int rc = keel__json_parse_except(manifest, len, "files", "keel.json", &root, err);
    if (rc)
        return rc;
    model *m = calloc(1, sizeof(*m));
    if (!m) {
        cJSON_Delete(root);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_mutex_init(&m->load_mu, NULL);
    atomic_init(&m->refs, 1);
    m->serving_tier = -1;
    m->eng_opts = *o;
    if (!m->eng_opts.max_sessions)
        m->eng_opts.max_sessions = 1024;
    if (!m->eng_opts.session_idle_s)
        m->eng_opts.session_idle_s = 300;
    if (!(m->sessions = calloc(m->eng_opts.max_sessions, sizeof(session *)))) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    uint8_t d[KEEL_SHA256_LEN];
    char hex[2 * KEEL_SHA256_LEN + 1];
    keel_sha256_buf(manifest, len, d);
    keel_hex_encode(d, sizeof(d), hex);
    snprintf(m->digest, sizeof(m->digest), "sha256:%s", hex);
    if ((rc = keel__json_str(root, "name", true, KEEL_NAME_MAX - 1, &name, "keel.json", err)) ||
        (rc = keel__json_str(root, "version", true, KEEL_VERSION_MAX - 1, &version, "keel.json",
                             err)) ||
        (rc = keel__json_member(root, "tiers", cJSON_Array, false, &tiers, "keel.json", err)) ||
        (rc = parse_decls(root, "inputs", m->in, &m->nin, err)) ||
        (rc = parse_decls(root, "outputs", m->out, &m->nout, err)) ||
        (rc = parse_policy(m, cJSON_GetObjectItemCaseSensitive(root, "policy"), &deadline, err)) ||
        (rc =
             keel__pre_parse(cJSON_GetObjectItemCaseSensitive(root, "preprocess"), &m->pre, err)) ||
        (rc = keel__post_parse(cJSON_GetObjectItemCaseSensitive(root, "postprocess"), &m->post,
                               err)))
        goto out;
    keel__strlcpy(m->name, name, sizeof(m->name));
    keel__strlcpy(m->version, version, sizeof(m->version));
    if ((rc = parse_records(m, cJSON_GetObjectItemCaseSensitive(root, "records"), err)) ||
        (rc = parse_routing(m, cJSON_GetObjectItemCaseSensitive(root, "routing"), err)))
        goto out;
    if (!tiers) { /* a data or configuration package: nothing to serve */
        rc = keel__err(err, KEEL_ENOTFOUND, "%s has no tiers", name);
        goto out;
    }
    if (m->post.labels_file[0]) {
        char p[PATH_MAX];
        if ((rc = path_of(ctx, m->post.labels_file, p, sizeof(p), err)) ||
            (rc = keel__post_labels(&m->post, p, err)))
            goto out;
    }
    cJSON_ArrayForEach(it, tiers)
    {
        if (m->ntiers == KEEL__MAX_TIERS) {
            rc = keel__err(err, KEEL_ETOOBIG, "tiers: more than %d", KEEL__MAX_TIERS);
            goto out;
        }
        rc = parse_tier(m, it, m->ntiers, deadline, path_of, ctx, err);
        m->ntiers++; /* counted even when it failed: keel__model_free frees its parts */
        if (rc)
            goto out;
    }
    if (!m->ntiers) {
        rc = keel__err(err, KEEL_EINVALID, "tiers: the package has no tier to serve");
        goto out;
    }
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(root, "validation");
    if (val && !(m->validation = cJSON_Duplicate(val, 1))) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < m->ntiers && !o->check_only; i++) {
        keel_error e = {0};
        if (keel__model_tier_load(m, i, &e)) { /* recorded; the breaker keeps requests away */
            m->tiers[i].br.state = BR_OPEN;
            m->tiers[i].br.open_until = keel__now_mono_ns() + m->pol.cooldown_ns;
            m->tiers[i].br.trips++;
        } else if ((rc = derive_contract(m, &m->tiers[i], err))) {
            goto out;
        }
    }
    if (m->pre.kind) {
        bool found = false;
        for (size_t i = 0; i < m->nin; i++)
            found |= !strcmp(m->in[i].name, m->pre.input);
        if (!found && m->nin) {
            rc = keel__err(err, KEEL_EINVALID, "preprocess.input: \"%s\" is not a declared input",
                           m->pre.input);
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    if (rc) {
        keel__model_free(m);
        return rc;
    }
    *ret = m;
    return KEEL_OK;
}

int keel__model_check(const char *manifest, size_t len, keel__path_fn path_of, void *ctx,
                      keel_error *err)
{
    keel__infer_opts o = {.check_only = true, .max_sessions = 1};
    keel__model *m = NULL;
    int rc = keel__model_build(manifest, len, path_of, ctx, &o, &m, err);
    keel__model_free(m);
    return rc;
}
