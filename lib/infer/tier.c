/*
 * tier.c - tier policy: the fallback chain over a package's tiers, their
 * breakers, deadlines, memory budgets and overload guard, the client
 * sessions (LRU, idle expiry, one request at a time per session) mapped to
 * backend sessions, and routing to the upstream. The state a session
 * carries (recurrent state, context, a KV cache) belongs to the backend.
 *
 * The chain (the only place tier policy lives):
 *   for each tier in manifest order (or only the pinned one):
 *     skip it when its breaker is open (a half-open breaker lets one probe
 *     through), or when more requests are in flight in it than max_inflight
 *     (overload goes to the next tier instead of queueing without bound);
 *     run it under its deadline; a hard failure (load failure, runtime
 *     error, NaN/Inf output, deadline, memory budget) is counted on its
 *     breaker and the request goes on to the next tier.
 * Only when every tier failed does the caller get an error, naming each.
 */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "infer/model.h"

#define MOD "infer"

/* --- breakers ------------------------------------------------------------------------ */

static const char *const breaker_names[] = {"closed", "open", "half_open"};

const char *keel__breaker_name(int state)
{
    return state >= 0 && state <= 2 ? breaker_names[state] : "?";
}

int keel__breaker_state(const tier *t, uint64_t now)
{
    /* open past its cool-down: the next request is the half-open probe */
    if (t->br.state == BR_OPEN && now >= t->br.open_until)
        return BR_HALF_OPEN;
    return t->br.state;
}

/* May a request use the tier now? Lock held. A half-open breaker admits one
 * probe at a time; *probe says this request is it. */
static bool breaker_admit(tier *t, uint64_t now, bool *probe)
{
    breaker *b = &t->br;
    *probe = false;
    if (b->state == BR_OPEN && now >= b->open_until) {
        b->state = BR_HALF_OPEN;
        b->probing = false;
    }
    if (b->state == BR_CLOSED)
        return true;
    if (b->state == BR_HALF_OPEN && !b->probing) {
        b->probing = true;
        *probe = true;
        return true;
    }
    return false;
}

static void breaker_trip(model *m, tier *t, uint64_t now, const char *why)
{
    breaker *b = &t->br;
    if (b->state != BR_OPEN)
        KEEL_LOG_W(MOD, "%s@%s tier %s: breaker open (%s); next probe in %" PRIu64 " ms", m->name,
                   m->version, t->name, why, b->cooldown_ns / 1000000u);
    b->state = BR_OPEN;
    b->open_until = now + b->cooldown_ns;
    b->trips++;
    b->probing = false;
}

/* Records an outcome. Lock held. */
static void breaker_record(model *m, tier *t, bool ok, bool probe, uint64_t now)
{
    breaker *b = &t->br;
    b->window = (b->window << 1) | (ok ? 0u : 1u);
    if (b->nwindow < m->pol.window)
        b->nwindow++;
    if (probe)
        b->probing = false;
    if (ok) {
        b->consecutive = 0;
        if (b->state != BR_CLOSED) {
            KEEL_LOG_I(MOD, "%s@%s tier %s: breaker closed again", m->name, m->version, t->name);
            b->state = BR_CLOSED;
            b->window = 0;
            b->nwindow = 0;
        }
        return;
    }
    b->consecutive++;
    unsigned bad = 0;
    for (unsigned i = 0; i < b->nwindow; i++)
        bad += (unsigned)((b->window >> i) & 1u);
    if (b->state == BR_HALF_OPEN || b->consecutive >= m->pol.failures)
        breaker_trip(m, t, now, b->state == BR_HALF_OPEN ? "probe failed" : "consecutive failures");
    else if (b->nwindow >= m->pol.min_requests &&
             (double)bad >= m->pol.error_rate * (double)b->nwindow)
        breaker_trip(m, t, now, "error rate");
}

/* --- metrics: series handles engine.c attached (NULL: not counted) --------------------- */

const double keel__latency_bounds[KEEL__NBUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};

static void count(keel__metric_series *s)
{
    if (s)
        keel__metric_inc(s, 1);
}

static void observe(tier *t, uint64_t ns)
{
    if (t->m_latency)
        keel__metric_observe(t->m_latency, (double)ns / 1e9);
}

/* --- sessions ---------------------------------------------------------------------------- */

void keel__session_free(model *m, session *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < m->ntiers; i++) {
        void *inst = atomic_load(&m->tiers[i].inst);
        if (s->bs[i] && inst)
            m->tiers[i].be->session_free(inst, s->bs[i]);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Finds or makes session id, locked for the caller (release with
 * session_put). Expires idle sessions; when full, evicts the least recently
 * used idle one; refuses when all are busy. */
static int session_get(model *m, const char *id, session **ret, keel_error *err)
{
    session *s = NULL;
    if (strlen(id) >= sizeof(s->id))
        return keel__err(err, KEEL_EINVALID, "parameters.session: longer than %zu bytes",
                         sizeof(s->id) - 1);
    pthread_mutex_lock(&m->mu);
    /* Read under the lock: last_used is written under it, so it is never
     * later than now (a clock read before the lock could be, and the
     * unsigned difference below would then expire a live session). */
    uint64_t now = keel__now_mono_ns();
    for (size_t i = 0; i < m->nsessions;) {
        session *x = m->sessions[i];
        if (!x->refs && now - x->last_used > m->eng_opts.session_idle_s * 1000000000ull) {
            m->sessions[i] = m->sessions[--m->nsessions];
            m->sessions_expired++;
            keel__session_free(m, x);
            continue;
        }
        if (!strcmp(x->id, id))
            s = x;
        i++;
    }
    if (!s) {
        if (m->nsessions == m->eng_opts.max_sessions) {
            size_t lru = SIZE_MAX;
            for (size_t i = 0; i < m->nsessions; i++)
                if (!m->sessions[i]->refs &&
                    (lru == SIZE_MAX || m->sessions[i]->last_used < m->sessions[lru]->last_used))
                    lru = i;
            if (lru == SIZE_MAX) {
                pthread_mutex_unlock(&m->mu);
                return keel__err(err, KEEL_EBUSY, "all %zu sessions are busy; retry shortly",
                                 m->eng_opts.max_sessions);
            }
            keel__session_free(m, m->sessions[lru]);
            m->sessions[lru] = m->sessions[--m->nsessions];
            m->sessions_evicted++;
        }
        if (!(s = calloc(1, sizeof(*s)))) {
            pthread_mutex_unlock(&m->mu);
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        }
        keel__strlcpy(s->id, id, sizeof(s->id));
        pthread_mutex_init(&s->mu, NULL);
        m->sessions[m->nsessions++] = s;
    }
    s->refs++;
    s->last_used = now;
    pthread_mutex_unlock(&m->mu);
    pthread_mutex_lock(&s->mu); /* a stream's frames run in order */
    *ret = s;
    return KEEL_OK;
}

static void session_put(model *m, session *s)
{
    if (!s)
        return;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&m->mu);
    s->refs--;
    s->last_used = keel__now_mono_ns();
    pthread_mutex_unlock(&m->mu);
}

/* --- tiers ---------------------------------------------------------------------------------- */

/* "\"a\", \"b\"" into buf: the names of n tensors, for messages. */
static const char *names_of(const keel__tensor *t, size_t n, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s\"%s\"", i ? ", " : "", t[i].name);
    if (!n)
        snprintf(buf, size, "none");
    return buf;
}

/* Whether the shape a package declares fits the one the model takes:
 * the same rank, and equal sizes where both are fixed. */
static bool shape_fits(const keel__tensor *decl, const keel__tensor *x)
{
    if (decl->ndim != x->ndim)
        return false;
    for (size_t d = 0; d < decl->ndim; d++)
        if (decl->shape[d] >= 0 && x->shape[d] >= 0 && decl->shape[d] != x->shape[d])
            return false;
    return true;
}

static const keel__tensor *find_tensor(const keel__tensor *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, name))
            return &t[i];
    return NULL;
}

/* Whether a loaded tier's model can serve the package's contract: every
 * input it needs is declared (or one of the tier's constants); every
 * declared input is one it takes, with the declared dtype and a fitting
 * shape; every declared output is one it gives, with the declared dtype (a
 * sequence or map output fits any). A part of the contract still empty
 * (the package leaves it to the model) and a backend that does not
 * describe its model are not checked. */
static int check_contract(const model *m, const tier *t, void *inst, keel_error *err)
{
    const keel__backend *be = t->be;
    keel__tensor mio[KEEL__MAX_IO];
    char names[512], want[128], got[128];
    size_t n = 0;
    if (be->ninputs && m->nin) {
        for (size_t i = 0; i < be->ninputs(inst) && n < KEEL__MAX_IO; i++) {
            const keel__tensor *d = be->input(inst, i);
            if (!find_tensor(t->consts, t->nconsts, d->name))
                mio[n++] = *d;
        }
        for (size_t i = 0; i < n; i++)
            if (!find_tensor(m->in, m->nin, mio[i].name))
                return keel__err(err, KEEL_EINVALID,
                                 "the model needs input \"%s\", which the package does not "
                                 "declare (it declares %s); declare it in keel.json's \"inputs\" "
                                 "or give it in the tier's \"constants\"",
                                 mio[i].name, names_of(m->in, m->nin, names, sizeof(names)));
        for (size_t i = 0; i < m->nin; i++) {
            const keel__tensor *decl = &m->in[i], *x = find_tensor(mio, n, decl->name);
            if (!x)
                return keel__err(err, KEEL_EINVALID,
                                 "the package declares input \"%s\", which the model does not "
                                 "take (it takes %s)",
                                 decl->name, names_of(mio, n, names, sizeof(names)));
            if (x->dtype != decl->dtype)
                return keel__err(
                    err, KEEL_EINVALID, "input \"%s\": the package declares %s, the model takes %s",
                    decl->name, keel__dtype_name(decl->dtype), keel__dtype_name(x->dtype));
            if (!shape_fits(decl, x)) {
                keel__shape_str(decl, want, sizeof(want));
                keel__shape_str(x, got, sizeof(got));
                return keel__err(err, KEEL_EINVALID,
                                 "input \"%s\": the package declares shape [%s], the model takes "
                                 "[%s] (-1: any size)",
                                 decl->name, want, got);
            }
        }
    }
    if (be->noutputs && m->nout) {
        n = 0;
        for (size_t i = 0; i < be->noutputs(inst) && n < KEEL__MAX_IO; i++)
            mio[n++] = *be->output(inst, i);
        for (size_t i = 0; i < m->nout; i++) {
            const keel__tensor *decl = &m->out[i], *x = find_tensor(mio, n, decl->name);
            if (!x)
                return keel__err(err, KEEL_EINVALID,
                                 "the package declares output \"%s\", which the model does not "
                                 "give (it gives %s)",
                                 decl->name, names_of(mio, n, names, sizeof(names)));
            if (x->dtype != decl->dtype && x->dtype != KEEL_DT_JSON)
                return keel__err(err, KEEL_EINVALID,
                                 "output \"%s\": the package declares %s, the model gives %s",
                                 decl->name, keel__dtype_name(decl->dtype),
                                 keel__dtype_name(x->dtype));
        }
    }
    return KEEL_OK;
}

/* Loads a tier's backend instance and checks it against the contract.
 * Called with load_mu held (or before the model is shared). */
int keel__model_tier_load(model *m, size_t ti, keel_error *err)
{
    tier *t = &m->tiers[ti];
    char label[KEEL_NAME_MAX + KEEL_VERSION_MAX + 48];
    snprintf(label, sizeof(label), "%s@%s tier %s", m->name, m->version, t->name);
    keel__tier_ctx ctx = {
        .model_path = t->model_path,
        .model_hex = t->model_hex,
        .tier = t->spec,
        .files = t->files,
        .inputs = m->in,
        .ninputs = m->nin,
        .outputs = m->out,
        .noutputs = m->nout,
        .cache_dir = m->eng_opts.cache_dir,
        .label = label,
    };
    void *inst = NULL;
    int rc = t->be->load(&ctx, &inst, err);
    if (!rc && (rc = check_contract(m, t, inst, err))) {
        t->be->unload(inst);
        inst = NULL;
    }
    if (!rc && t->memory_budget && t->be->memory) {
        uint64_t used = t->be->memory(inst);
        if (used > t->memory_budget) {
            t->be->unload(inst);
            inst = NULL;
            rc = keel__err(err, KEEL_ENOSPACE,
                           "memory budget exceeded: the model takes %.1f MiB, the tier allows "
                           "%.1f MiB",
                           (double)used / 1048576.0, (double)t->memory_budget / 1048576.0);
        }
    }
    if (rc) {
        /* said once per failure, not at every retry (a self-test retries per row) */
        if (strncmp(t->load_error, err->msg, sizeof(t->load_error) - 1))
            KEEL_LOG_W(MOD, "%s@%s tier %s (%s) failed to load: %s", m->name, m->version, t->name,
                       t->be->name, err->msg);
        keel__strlcpy(t->load_error, err->msg, sizeof(t->load_error));
        return rc;
    }
    t->load_error[0] = 0;
    atomic_store(&t->inst, inst);
    return KEEL_OK;
}

/* Runs one tier: adds the constants to the inputs, passes the client
 * session's backend session for this tier (made on first use), checks the
 * outputs and hands the contract's outputs to resp. */
static int tier_run(model *m, size_t ti, const keel__tensor *ins, size_t nin, session *s,
                    keel__infer_resp *resp, uint64_t deadline, keel_error *err)
{
    tier *t = &m->tiers[ti];
    keel__tensor all[KEEL__MAX_IO * 2], out[KEEL__MAX_IO];
    size_t n = 0, nout = 0;
    char *result = NULL;
    void *bs = NULL;
    int rc = KEEL_OK;
    void *inst = atomic_load(&t->inst);
    if (!(t->be->caps & KEEL__CAP_RUN))
        return keel__err(err, KEEL_EUNSUPPORTED, "backend %s does not run tensors", t->be->name);
    if (nin + t->nconsts > KEEL_ARRAY_LEN(all))
        return keel__err(err, KEEL_ETOOBIG, "too many inputs");
    for (size_t i = 0; i < nin; i++)
        all[n++] = ins[i];
    for (size_t i = 0; i < t->nconsts; i++)
        all[n++] = t->consts[i];
    if (s && (t->be->caps & KEEL__CAP_SESSIONS)) {
        if (!s->bs[ti] && (rc = t->be->session_new(inst, &s->bs[ti], err)))
            return rc;
        bs = s->bs[ti];
    }
    if ((rc = t->be->run(inst, bs, all, n, out, &nout, &result, deadline, err)))
        goto out;
    for (size_t i = 0; i < nout; i++)
        if (keel__tensor_nonfinite(&out[i])) {
            rc = keel__err(err, KEEL_ECORRUPT, "output \"%s\" holds NaN or Inf", out[i].name);
            goto out_free;
        }
    /* the contract's outputs, in contract order */
    resp->noutputs = 0;
    for (size_t o = 0; o < m->nout; o++)
        for (size_t i = 0; i < nout; i++)
            if (out[i].data && !strcmp(out[i].name, m->out[o].name)) {
                resp->outputs[resp->noutputs] = out[i];
                resp->outputs[resp->noutputs++].name = m->out[o].name;
                out[i].data = NULL;
            }
    resp->result = result;
    result = NULL;
out_free:
    for (size_t i = 0; i < nout; i++)
        keel__tensor_done(&out[i]);
out:
    free(result);
    return rc;
}

/* --- inputs -------------------------------------------------------------------------------- */

static int check_input(const keel__tensor *decl, const keel__tensor *x, keel_error *err)
{
    if (x->dtype != decl->dtype)
        return keel__err(err, KEEL_EINVALID, "input \"%s\": datatype %s, the model takes %s",
                         x->name, keel__dtype_name(x->dtype), keel__dtype_name(decl->dtype));
    if (!decl->ndim && !decl->shape[0])
        return KEEL_OK; /* declared without a shape */
    bool ok = x->ndim == decl->ndim;
    for (size_t d = 0; ok && d < x->ndim; d++)
        ok = decl->shape[d] < 0 || decl->shape[d] == x->shape[d];
    if (!ok) {
        char want[128], got[128];
        keel__shape_str(decl, want, sizeof(want));
        keel__shape_str(x, got, sizeof(got));
        return keel__err(err, KEEL_EINVALID,
                         "input \"%s\": shape [%s] does not fit [%s] (-1: any size)", x->name, got,
                         want);
    }
    return KEEL_OK;
}

/* The outputs a request asks for must be ones the package gives. */
static int check_outputs(const model *m, const keel__infer_req *req, keel_error *err)
{
    char names[512];
    if (req->noutputs > KEEL__MAX_IO)
        return keel__err(err, KEEL_ETOOBIG, "outputs: more than %d", KEEL__MAX_IO);
    for (size_t i = 0; i < req->noutputs; i++)
        if (!req->outputs[i] || !find_tensor(m->out, m->nout, req->outputs[i]))
            return keel__err(err, KEEL_EINVALID, "unknown output \"%s\"; %s gives %s",
                             req->outputs[i] ? req->outputs[i] : "", m->name,
                             names_of(m->out, m->nout, names, sizeof(names)));
    return KEEL_OK;
}

/* Resolves the request's inputs against the contract into ins (contract
 * order). Image and tabular preprocessing produce owned buffers (owned[]). */
static int prepare(model *m, const keel__infer_req *req, keel__tensor *ins, void **owned,
                   size_t *nowned, keel_error *err)
{
    for (size_t i = 0; i < req->ninputs; i++) {
        size_t k = m->nin;
        for (size_t j = 0; j < m->nin; j++)
            if (!strcmp(req->inputs[i].name, m->in[j].name))
                k = j;
        if (k == m->nin) {
            char names[512];
            return keel__err(err, KEEL_EINVALID, "unknown input \"%s\"; %s takes %s",
                             req->inputs[i].name, m->name,
                             names_of(m->in, m->nin, names, sizeof(names)));
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(req->inputs[j].name, req->inputs[i].name))
                return keel__err(err, KEEL_EINVALID, "input \"%s\" given twice",
                                 req->inputs[i].name);
        ins[k] = req->inputs[i];
    }
    for (size_t j = 0; j < m->nin; j++) {
        bool is_pre = m->pre.kind && !strcmp(m->pre.input, m->in[j].name);
        if (is_pre && m->pre.kind == KEEL__PRE_IMAGE && req->image) {
            if (ins[j].name)
                return keel__err(err, KEEL_EINVALID,
                                 "input \"%s\" given both as an image and as a tensor",
                                 m->in[j].name);
            int rc = keel__pre_image(&m->pre, &m->in[j], req->image, req->image_len, &ins[j], err);
            if (rc)
                return rc;
            owned[(*nowned)++] = ins[j].data;
        }
        if (!ins[j].name)
            return keel__err(err, KEEL_EINVALID, "input \"%s\" is missing%s", m->in[j].name,
                             is_pre && m->pre.kind == KEEL__PRE_IMAGE
                                 ? " (send it as a tensor, or an encoded PNG/JPEG image)"
                                 : "");
        int rc = check_input(&m->in[j], &ins[j], err);
        if (rc)
            return rc;
        size_t es = keel__dtype_size(ins[j].dtype), cnt = 1;
        for (size_t d = 0; d < ins[j].ndim; d++)
            cnt *= (size_t)ins[j].shape[d];
        if (es && cnt * es != ins[j].nbytes)
            return keel__err(err, KEEL_EINVALID, "input \"%s\": %zu bytes for %zu elements of %s",
                             ins[j].name, ins[j].nbytes, cnt, keel__dtype_name(ins[j].dtype));
        if (is_pre && m->pre.kind == KEEL__PRE_TABULAR && m->pre.nfeatures) {
            void *copy = malloc(ins[j].nbytes ? ins[j].nbytes : 1);
            if (!copy)
                return keel__err(err, KEEL_ENOMEM, "out of memory");
            memcpy(copy, ins[j].data, ins[j].nbytes);
            owned[(*nowned)++] = copy;
            ins[j].data = copy;
            if ((rc = keel__pre_tabular(&m->pre, &ins[j], err)))
                return rc;
        }
    }
    return KEEL_OK;
}

/* --- the chain ----------------------------------------------------------------------------- */

/* Lock held. A transition is counted once per change of the serving tier,
 * not per request. Returns the previous tier when it changed, else -1: the
 * caller tells the owner (KEEL__EV_TRANSITION), which logs it (the
 * runtime: on_infer_event); here it is only a debug line. */
static int note_served(model *m, size_t ti, const char *reason)
{
    int was = m->serving_tier;
    if (m->serving_tier != (int)ti) {
        if (m->serving_tier >= 0) {
            m->transitions++;
            count(m->m_transitions);
            m->tiers[ti].transitions_in++;
            KEEL_LOG_D(MOD, "%s@%s served by tier %s (was %s)%s%s", m->name, m->version,
                       m->tiers[ti].name, m->tiers[m->serving_tier].name, reason[0] ? ": " : "",
                       reason);
        }
        m->serving_tier = (int)ti;
        m->serving_since = keel__now_wall_s();
        return was;
    }
    return -1;
}

/* degraded: transitions only (records take the response's) */
static void emit(model *m, int type, const char *tier_name, const char *from, const char *reason,
                 bool degraded, const keel__infer_resp *resp)
{
    keel__infer_event ev = {.type = type,
                            .model = m->name,
                            .version = m->version,
                            .tier = tier_name,
                            .from_tier = from,
                            .reason = reason,
                            .degraded = degraded,
                            .confidence = -1};
    if (resp) {
        ev.resp = resp;
        ev.result = resp->result;
        ev.degraded = resp->degraded;
        ev.ns = resp->ns;
    }
    m->eng_opts.event(m->eng_opts.event_ctx, &ev);
}

/* The first result row's confidence, or -1. */
static double first_confidence(const char *result)
{
    const char *c = result ? strstr(result, "\"confidence\":") : NULL;
    return c ? strtod(c + 13, NULL) : -1;
}

/* One outcome per request the chain ran (probation's input, through the
 * owner's bus): answered, or every tier failed. Nothing is allocated; the
 * confidence is read from an answer's result rows only. */
static void emit_outcome(model *m, const char *tier_name, bool ok, bool degraded, uint64_t ns,
                         const char *result)
{
    if (!m->eng_opts.event)
        return;
    keel__infer_event ev = {.type = KEEL__EV_OUTCOME,
                            .model = m->name,
                            .version = m->version,
                            .tier = tier_name,
                            .ok = ok,
                            .degraded = ok && degraded,
                            .ns = ns,
                            .confidence = ok ? first_confidence(result) : -1};
    m->eng_opts.event(m->eng_opts.event_ctx, &ev);
}

/* Whether this answer is recorded, per the package's policy. */
static bool want_record(model *m, const keel__infer_resp *resp)
{
    switch (m->rec_mode) {
    case 1:
        return true;
    case 2: { /* deterministic sampling: every 1/rate-th answer */
        uint64_t n = atomic_fetch_add(&m->rec_counter, 1);
        uint64_t every = (uint64_t)(1.0 / m->rec_rate + 0.5);
        return every <= 1 || n % every == 0;
    }
    case 3: {
        double c = first_confidence(resp->result);
        return c >= 0 && c < m->rec_below;
    }
    default:
        return false;
    }
}

/* One tier's work for the chain: runs tier ti before deadline (0: none). */
typedef int (*tier_op)(model *m, size_t ti, uint64_t deadline, void *ctx, keel_error *err);

static const char *const cap_verbs[] = {"run tensors", "generate", "embed", "tokenize"};

/* The tier pinned by name (KEEL_EINVALID when there is none), or -1. */
static int find_pin(model *m, const char *name, int *ret, keel_error *err)
{
    *ret = -1;
    if (!name)
        return KEEL_OK;
    for (size_t i = 0; i < m->ntiers; i++)
        if (!strcmp(m->tiers[i].name, name))
            *ret = (int)i;
    if (*ret < 0)
        return keel__err(err, KEEL_EINVALID, "parameters.tier: %s has no tier \"%s\"", m->name,
                         name);
    return KEEL_OK;
}

/* KEEL_EUNSUPPORTED unless some tier (or the pinned one) declares cap. */
static int check_cap(model *m, int pin, unsigned cap, keel_error *err)
{
    char have[256] = "";
    size_t o = 0;
    const char *verb = "do that";
    for (size_t b = 0; b < KEEL_ARRAY_LEN(cap_verbs); b++)
        if (cap == 1u << b)
            verb = cap_verbs[b];
    for (size_t i = 0; i < m->ntiers; i++) {
        if ((pin < 0 || (int)i == pin) && (m->tiers[i].be->caps & cap))
            return KEEL_OK;
        if (o < sizeof(have))
            o += (size_t)snprintf(have + o, sizeof(have) - o, "%s%s (%s)", i ? ", " : "",
                                  m->tiers[i].name, m->tiers[i].be->name);
    }
    if (pin >= 0)
        return keel__err(err, KEEL_EUNSUPPORTED, "%s@%s: tier %s's backend (%s) cannot %s", m->name,
                         m->version, m->tiers[pin].name, m->tiers[pin].be->name, verb);
    return keel__err(err, KEEL_EUNSUPPORTED,
                     "%s@%s: no tier's backend can %s (tiers: %s); install a package whose tiers "
                     "use a backend that declares it",
                     m->name, m->version, verb, have);
}

/* The most bytes of a tier's own error quoted in its clause of why:
 * KEEL__CLAUSE_MAX, less when a package has so many tiers (or such long
 * names) that the 503 naming every tier would not fit in keel_error's msg. */
static int clause_max(const model *m)
{
    size_t fixed = strlen(m->name) + strlen(m->version) + sizeof("@: every tier failed: ");
    for (size_t i = 0; i < m->ntiers; i++)
        fixed += strlen(m->tiers[i].name) + sizeof("; : breaker open after load failure: ...");
    size_t room =
        fixed < KEEL_ERROR_MSG_MAX ? (KEEL_ERROR_MSG_MAX - fixed) / (m->ntiers ? m->ntiers : 1) : 0;
    return room < KEEL__CLAUSE_MAX ? (int)room : KEEL__CLAUSE_MAX;
}

/* Runs op on the tiers that declare cap, in order (or only the pinned one),
 * under their breakers, overload guards and deadlines, until one succeeds.
 * why collects one clause per tier that did not serve. *ret_ti: the tier
 * that served. KEEL_ENOTREADY when none did (err names each failure). */
static int chain(model *m, int pin, unsigned cap, tier_op op, void *ctx, keel_buf *why,
                 size_t *ret_ti, keel_error *err)
{
    int cmax = clause_max(m);
    for (size_t i = 0; i < m->ntiers; i++) {
        tier *t = &m->tiers[i];
        if ((pin >= 0 && (int)i != pin) || !(t->be->caps & cap))
            continue;
        uint64_t now = keel__now_mono_ns();
        bool probe = false;
        pthread_mutex_lock(&m->mu);
        bool admit = pin >= 0 || breaker_admit(t, now, &probe);
        unsigned inflight = t->inflight;
        if (admit && pin < 0 && t->max_inflight && inflight >= t->max_inflight) {
            admit = false;
            count(t->m_req[KEEL__OUT_OVERLOADED]);
            if (probe)
                t->br.probing = false;
            if (keel__buf_appendf(why, "%s%s: overloaded (%u requests in flight)",
                                  why->len ? "; " : "", t->name, inflight)) {
            }
        } else if (!admit) {
            count(t->m_req[KEEL__OUT_SKIPPED]);
            if (keel__buf_appendf(why, "%s%s: breaker open%s%.*s%s", why->len ? "; " : "", t->name,
                                  t->load_error[0] ? " after load failure: " : "", cmax,
                                  t->load_error,
                                  strlen(t->load_error) > (size_t)cmax ? "..." : "")) {
            }
        }
        if (admit)
            t->inflight++;
        pthread_mutex_unlock(&m->mu);
        if (!admit)
            continue;
        keel_error e = {0};
        int trc = KEEL_OK;
        if (!atomic_load(&t->inst)) {
            pthread_mutex_lock(&m->load_mu);
            if (!atomic_load(&t->inst))
                trc = keel__model_tier_load(m, i, &e);
            pthread_mutex_unlock(&m->load_mu);
        }
        uint64_t deadline = t->deadline_ns ? now + t->deadline_ns : 0;
        if (!trc)
            trc = op(m, i, deadline, ctx, &e);
        uint64_t dt = keel__now_mono_ns() - now;
        pthread_mutex_lock(&m->mu);
        t->inflight--;
        if (!trc) {
            t->ok++;
            count(t->m_req[KEEL__OUT_OK]);
            observe(t, dt);
        } else {
            t->failed++;
            count(t->m_req[trc == KEEL_ETIMEOUT ? KEEL__OUT_TIMEOUT : KEEL__OUT_ERROR]);
        }
        if (pin < 0 || trc) /* a pinned success says nothing about the chain's health */
            breaker_record(m, t, !trc, probe, keel__now_mono_ns());
        int was = -1;
        if (!trc && pin < 0) {
            was = note_served(m, i, why->data ? why->data : "");
            if (i > 0)
                t->fallbacks++;
        }
        pthread_mutex_unlock(&m->mu);
        if (was >= 0 && m->eng_opts.event)
            emit(m, KEEL__EV_TRANSITION, t->name, m->tiers[was].name, why->data ? why->data : "",
                 i > (size_t)was, NULL);
        if (!trc) {
            *ret_ti = i;
            return KEEL_OK;
        }
        if (keel__buf_appendf(why, "%s%s: %.*s%s", why->len ? "; " : "", t->name, cmax, e.msg,
                              strlen(e.msg) > (size_t)cmax ? "..." : "")) {
        }
    }
    pthread_mutex_lock(&m->mu);
    m->all_failed++;
    count(m->m_all_failed);
    pthread_mutex_unlock(&m->mu);
    int rc = keel__err(err, KEEL_ENOTREADY, "%s@%s: every tier failed: %s", m->name, m->version,
                       why->data ? why->data : "no tier");
    if (m->eng_opts.event)
        emit(m, KEEL__EV_ALL_FAILED, "", NULL, err ? err->msg : "", false, NULL);
    return rc;
}

/* The first tier whose backend declares cap: the one a healthy model
 * serves from, so serving from any other is degraded. */
static size_t first_with(const model *m, unsigned cap)
{
    size_t i = 0;
    while (i < m->ntiers && !(m->tiers[i].be->caps & cap))
        i++;
    return i;
}

/* The backend session of client session s for tier ti (made on first use),
 * or NULL without a client session or a backend that keeps none. */
static int backend_session(model *m, size_t ti, session *s, void **ret, keel_error *err)
{
    tier *t = &m->tiers[ti];
    *ret = NULL;
    if (!s || !(t->be->caps & KEEL__CAP_SESSIONS))
        return KEEL_OK;
    if (!s->bs[ti]) {
        int rc = t->be->session_new(atomic_load(&t->inst), &s->bs[ti], err);
        if (rc)
            return rc;
    }
    *ret = s->bs[ti];
    return KEEL_OK;
}

typedef struct run_ctx {
    const keel__tensor *ins;
    session *s;
    keel__infer_resp *resp;
} run_ctx;

static int run_op(model *m, size_t ti, uint64_t deadline, void *ctx, keel_error *err)
{
    run_ctx *c = ctx;
    return tier_run(m, ti, c->ins, m->nin, c->s, c->resp, deadline, err);
}

int keel__model_run(keel__model *m, const keel__infer_req *req, keel__infer_resp *resp,
                    keel_error *err)
{
    uint64_t t0 = keel__now_mono_ns();
    keel__tensor ins[KEEL__MAX_IO];
    void *owned[KEEL__MAX_IO];
    size_t nowned = 0, ti = 0;
    session *s = NULL;
    keel_buf why;
    int rc, pin = -1;
    bool ran = false; /* the chain ran: an outcome to report */
    memset(resp, 0, sizeof(*resp));
    memset(ins, 0, sizeof(ins));
    keel__buf_init(&why, sizeof(resp->reason) * 4);
    keel__strlcpy(resp->model, m->name, sizeof(resp->model));
    keel__strlcpy(resp->version, m->version, sizeof(resp->version));
    keel__strlcpy(resp->digest, m->digest, sizeof(resp->digest));
    if ((rc = find_pin(m, req->tier, &pin, err)) || (rc = check_cap(m, pin, KEEL__CAP_RUN, err)) ||
        (rc = check_outputs(m, req, err)) || (rc = prepare(m, req, ins, owned, &nowned, err)))
        goto out;
    if (req->session && req->session[0] && (rc = session_get(m, req->session, &s, err)))
        goto out;
    run_ctx c = {.ins = ins, .s = s, .resp = resp};
    ran = true;
    if ((rc = chain(m, pin, KEEL__CAP_RUN, run_op, &c, &why, &ti, err)))
        goto out;
    keel__strlcpy(resp->tier, m->tiers[ti].name, sizeof(resp->tier));
    keel__strlcpy(resp->backend, m->tiers[ti].be->name, sizeof(resp->backend));
    resp->degraded = ti > 0;
    keel__strlcpy(resp->reason, why.data ? why.data : "", sizeof(resp->reason));
    if (!resp->result &&
        (rc = keel__post_result(&m->post, resp->outputs, resp->noutputs, &resp->result, err)))
        goto out;
    if (m->eng_opts.event && m->rec_mode && !req->selftest && want_record(m, resp)) {
        resp->ns = keel__now_mono_ns() - t0;
        emit(m, KEEL__EV_RECORD, resp->tier, NULL, resp->reason, false, resp);
    }
out:
    session_put(m, s);
    for (size_t i = 0; i < nowned; i++)
        free(owned[i]);
    keel__buf_done(&why);
    resp->ns = keel__now_mono_ns() - t0;
    if (ran && !req->selftest)
        emit_outcome(m, resp->tier, !rc, resp->degraded, resp->ns, resp->result);
    if (rc)
        keel__infer_resp_done(resp);
    return rc;
}

/* --- generate and embed: routed to the tiers whose backend declares them ------------------ */

typedef struct gen_ctx {
    const keel__gen_req *req;
    session *s;
    size_t ntokens;
} gen_ctx;

static int gen_op(model *m, size_t ti, uint64_t deadline, void *ctx, keel_error *err)
{
    gen_ctx *c = ctx;
    tier *t = &m->tiers[ti];
    void *bs = NULL;
    int rc = backend_session(m, ti, c->s, &bs, err);
    if (!rc)
        rc = t->be->generate(atomic_load(&t->inst), bs, c->req->tokens, c->req->ntokens,
                             &c->req->params, c->req->on_token, c->req->cb_ctx, c->req->cancel,
                             deadline, &c->ntokens, err);
    return rc;
}

int keel__model_generate(keel__model *m, const keel__gen_req *req, keel__gen_resp *resp,
                         keel_error *err)
{
    session *s = NULL;
    keel_buf why;
    size_t ti = 0;
    int pin = -1, rc;
    uint64_t t0 = 0;
    memset(resp, 0, sizeof(*resp));
    keel__buf_init(&why, sizeof(resp->reason) * 4);
    if ((rc = find_pin(m, req->tier, &pin, err)) ||
        (rc = check_cap(m, pin, KEEL__CAP_GENERATE, err)))
        goto out;
    if (!req->on_token) {
        rc = keel__err(err, KEEL_EINVALID, "generate needs a token callback");
        goto out;
    }
    if (req->session && req->session[0] && (rc = session_get(m, req->session, &s, err)))
        goto out;
    gen_ctx c = {.req = req, .s = s};
    t0 = keel__now_mono_ns();
    if ((rc = chain(m, pin, KEEL__CAP_GENERATE, gen_op, &c, &why, &ti, err))) {
        emit_outcome(m, "", false, false, keel__now_mono_ns() - t0, NULL);
        goto out;
    }
    resp->ntokens = c.ntokens;
    keel__strlcpy(resp->tier, m->tiers[ti].name, sizeof(resp->tier));
    keel__strlcpy(resp->backend, m->tiers[ti].be->name, sizeof(resp->backend));
    resp->degraded = ti != first_with(m, KEEL__CAP_GENERATE);
    keel__strlcpy(resp->reason, why.data ? why.data : "", sizeof(resp->reason));
    emit_outcome(m, resp->tier, true, resp->degraded, keel__now_mono_ns() - t0, NULL);
out:
    session_put(m, s);
    keel__buf_done(&why);
    return rc;
}

typedef struct embed_ctx {
    const keel__embed_req *req;
    keel__embed_resp *resp;
} embed_ctx;

static int embed_op(model *m, size_t ti, uint64_t deadline, void *ctx, keel_error *err)
{
    embed_ctx *c = ctx;
    tier *t = &m->tiers[ti];
    float *v = NULL;
    size_t dim = 0;
    int rc = t->be->embed(atomic_load(&t->inst), c->req->text, c->req->len, c->req->tokens,
                          c->req->ntokens, &v, &dim, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < dim; i++)
        if (!isfinite(v[i])) {
            free(v);
            return keel__err(err, KEEL_ECORRUPT, "embedding holds NaN or Inf");
        }
    c->resp->vec = v;
    c->resp->dim = dim;
    return KEEL_OK;
}

int keel__model_embed(keel__model *m, const keel__embed_req *req, keel__embed_resp *resp,
                      keel_error *err)
{
    keel_buf why;
    size_t ti = 0;
    int pin = -1, rc;
    memset(resp, 0, sizeof(*resp));
    keel__buf_init(&why, sizeof(resp->reason) * 4);
    if ((rc = find_pin(m, req->tier, &pin, err)) || (rc = check_cap(m, pin, KEEL__CAP_EMBED, err)))
        goto out;
    if (!req->text && !req->tokens) {
        rc = keel__err(err, KEEL_EINVALID, "embed needs text or tokens");
        goto out;
    }
    embed_ctx c = {.req = req, .resp = resp};
    uint64_t t0 = keel__now_mono_ns();
    if ((rc = chain(m, pin, KEEL__CAP_EMBED, embed_op, &c, &why, &ti, err))) {
        emit_outcome(m, "", false, false, keel__now_mono_ns() - t0, NULL);
        goto out;
    }
    keel__strlcpy(resp->tier, m->tiers[ti].name, sizeof(resp->tier));
    keel__strlcpy(resp->backend, m->tiers[ti].be->name, sizeof(resp->backend));
    resp->degraded = ti != first_with(m, KEEL__CAP_EMBED);
    keel__strlcpy(resp->reason, why.data ? why.data : "", sizeof(resp->reason));
    emit_outcome(m, resp->tier, true, resp->degraded, keel__now_mono_ns() - t0, NULL);
out:
    keel__buf_done(&why);
    return rc;
}

void keel__embed_resp_done(keel__embed_resp *r)
{
    free(r->vec);
    r->vec = NULL;
    r->dim = 0;
}

/* --- routing to the upstream (hybrid) -------------------------------------------------------- */

/* Forwards the request as received; true when the upstream answered (resp
 * then holds its answer). why: what happened otherwise. */
static bool forward(model *m, const keel__infer_req *req, keel__infer_resp *resp, char *why,
                    size_t n)
{
    keel__router *up = m->eng_opts.upstream;
    keel__upstream_answer a;
    keel_error ue = {0};
    if (!keel__router_allow(up)) {
        snprintf(why, n, "upstream breaker open");
        return false;
    }
    if (keel__router_forward(up, m->name, req->raw, req->raw_len,
                             req->raw_json_len ? req->raw_json_len : req->raw_len,
                             m->route_deadline_ms, &a, &ue)) {
        snprintf(why, n, "%s", ue.msg[0] ? ue.msg : "upstream failed");
        return false;
    }
    keel__infer_resp_done(resp);
    memset(resp, 0, sizeof(*resp));
    keel__strlcpy(resp->model, m->name, sizeof(resp->model));
    keel__strlcpy(resp->version, m->version, sizeof(resp->version));
    keel__strlcpy(resp->digest, m->digest, sizeof(resp->digest));
    keel__strlcpy(resp->tier, "upstream", sizeof(resp->tier));
    resp->upstream = true;
    resp->answer = a;
    return true;
}

int keel__model_infer(keel__model *m, const keel__infer_req *req, keel__infer_resp *resp,
                      keel_error *err)
{
    uint64_t t0 = keel__now_mono_ns();
    int route = m->eng_opts.upstream && req->raw && !req->tier ? m->route_mode : KEEL__ROUTE_LOCAL;
    char why[200] = "";
    int rc;
    memset(resp, 0, sizeof(*resp));
    if ((rc = check_outputs(m, req, err))) /* before the upstream sees it */
        return rc;
    if (route == KEEL__ROUTE_UPSTREAM_FIRST && forward(m, req, resp, why, sizeof(why)))
        goto out;
    if ((rc = keel__model_run(m, req, resp, err)))
        return rc;
    if (why[0])
        snprintf(resp->escalation, sizeof(resp->escalation), "upstream first: %s", why);
    if (route != KEEL__ROUTE_ESCALATE)
        goto out;
    double conf = first_confidence(resp->result);
    if (!req->complex && !(conf >= 0 && conf < m->route_below))
        goto out;
    if (forward(m, req, resp, why, sizeof(why)))
        goto out;
    snprintf(resp->escalation, sizeof(resp->escalation),
             "escalation failed (%s); local answer, queued for re-processing", why);
    if (m->eng_opts.event) {
        keel__infer_event ev = {.type = KEEL__EV_ESCALATION_FAILED,
                                .model = m->name,
                                .version = m->version,
                                .tier = resp->tier,
                                .reason = why,
                                .result = resp->result,
                                .resp = resp,
                                .confidence = conf,
                                .degraded = resp->degraded,
                                .raw = req->raw,
                                .raw_len = req->raw_len,
                                .raw_json_len =
                                    req->raw_json_len ? req->raw_json_len : req->raw_len};
        m->eng_opts.event(m->eng_opts.event_ctx, &ev);
    }
out:
    resp->ns = keel__now_mono_ns() - t0;
    return KEEL_OK;
}

void keel__infer_resp_done(keel__infer_resp *r)
{
    if (r->upstream) {
        keel__buf_done(&r->answer.body);
        r->upstream = false;
    }
    for (size_t i = 0; i < r->noutputs; i++)
        keel__tensor_done(&r->outputs[i]);
    r->noutputs = 0;
    free(r->result);
    r->result = NULL;
}
