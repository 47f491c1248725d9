/*
 * probation.c - running statistics of a version on probation, its health
 * rules and the decision (probation.h). The rule is written out in
 * probation.h and docs/update.md ("Probation").
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/json.h"
#include "update/probation.h"

#define Z95 1.959963984540054 /* two-sided 95 % normal quantile */

const char *keel__probation_decision_name(keel__probation_decision d)
{
    switch (d) {
    case KEEL__PROBATION_PASS:
        return "pass";
    case KEEL__PROBATION_BREACH:
        return "breach";
    default:
        return "continue";
    }
}

void keel__health_defaults(keel__health *h, uint64_t requests, uint64_t seconds)
{
    *h = (keel__health){
        .requests = requests,
        .seconds = seconds,
        .min_requests = requests && requests < KEEL__PROBATION_MIN_REQUESTS
                            ? requests
                            : KEEL__PROBATION_MIN_REQUESTS,
        .max_error_rate = -1,
        .max_fallback_rate = -1,
        .max_p95_ms = -1,
        .min_mean_confidence = -1,
        .tol_error = KEEL__PROBATION_TOL_ERROR,
        .tol_fallback = KEEL__PROBATION_TOL_FALLBACK,
        .p95_ratio = KEEL__PROBATION_P95_RATIO,
        .p95_slack_ms = KEEL__PROBATION_P95_SLACK_MS,
        .tol_confidence = KEEL__PROBATION_TOL_CONF,
        .baseline = {-1, -1, -1, -1},
    };
}

bool keel__health_applies(const keel__health *h)
{
    return h->requests || h->seconds;
}

/* --- reading the sections ----------------------------------------------------------------- */

/* A number member key of obj within [lo, hi] into *ret (absent: untouched). */
static int num(const cJSON *obj, const char *key, double lo, double hi, double *ret,
               const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return KEEL_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return keel__err(err, KEEL_EINVALID, "keel.json: %s.%s: expected a number from %g to %g",
                         where, key, lo, hi);
    *ret = v->valuedouble;
    return KEEL_OK;
}

/* Refuses members of obj not in names (NULL-terminated). */
static int only(const cJSON *obj, const char *const *names, const char *where, keel_error *err)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, obj)
    {
        bool known = false;
        for (size_t i = 0; names[i] && !known; i++)
            known = !strcmp(it->string, names[i]);
        if (known)
            continue;
        char list[256] = "";
        for (size_t i = 0; names[i]; i++) {
            size_t o = strlen(list);
            snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", names[i]);
        }
        return keel__err(err, KEEL_EINVALID, "keel.json: %s: unknown field \"%.64s\" (known: %s)",
                         where, it->string, list);
    }
    return KEEL_OK;
}

static int parse_health(const cJSON *hs, keel__health *h, keel_error *err)
{
    static const char *const top[] = {"probation",  "max_error_rate",      "max_fallback_rate",
                                      "max_p95_ms", "min_mean_confidence", "tolerance",
                                      NULL};
    static const char *const win[] = {"requests", "minutes", "min_requests", NULL};
    static const char *const tol[] = {"error_rate",   "fallback_rate", "p95_ratio",
                                      "p95_slack_ms", "confidence",    NULL};
    const double big = 1e9;
    const cJSON *p, *t;
    int rc = only(hs, top, "health", err);
    if (rc)
        return rc;
    if ((p = cJSON_GetObjectItemCaseSensitive(hs, "probation"))) {
        double req = -1, min = -1, minreq = -1;
        if (!cJSON_IsObject(p))
            return keel__err(err, KEEL_EINVALID,
                             "keel.json: health.probation: expected an object like "
                             "{\"requests\": 200, \"minutes\": 30}");
        if ((rc = only(p, win, "health.probation", err)) ||
            (rc = num(p, "requests", 0, big, &req, "health.probation", err)) ||
            (rc = num(p, "minutes", 0, 525600, &min, "health.probation", err)) ||
            (rc = num(p, "min_requests", 1, big, &minreq, "health.probation", err)))
            return rc;
        if (req >= 0 || min >= 0) {
            h->requests = req >= 0 ? (uint64_t)req : 0;
            h->seconds = min >= 0 ? (uint64_t)llround(min * 60) : 0;
            if (h->requests && h->requests < h->min_requests)
                h->min_requests = h->requests;
        }
        if (minreq >= 0)
            h->min_requests = (uint64_t)minreq;
        if (h->requests && h->min_requests > h->requests)
            return keel__err(err, KEEL_EINVALID,
                             "keel.json: health.probation: min_requests (%llu) is above "
                             "requests (%llu): the window would close before any decision",
                             (unsigned long long)h->min_requests, (unsigned long long)h->requests);
    }
    if ((rc = num(hs, "max_error_rate", 0, 1, &h->max_error_rate, "health", err)) ||
        (rc = num(hs, "max_fallback_rate", 0, 1, &h->max_fallback_rate, "health", err)) ||
        (rc = num(hs, "max_p95_ms", 0, big, &h->max_p95_ms, "health", err)) ||
        (rc = num(hs, "min_mean_confidence", 0, 1, &h->min_mean_confidence, "health", err)))
        return rc;
    if ((t = cJSON_GetObjectItemCaseSensitive(hs, "tolerance"))) {
        if (!cJSON_IsObject(t))
            return keel__err(err, KEEL_EINVALID,
                             "keel.json: health.tolerance: expected an object like "
                             "{\"error_rate\": 0.02, \"p95_ratio\": 1.5}");
        if ((rc = only(t, tol, "health.tolerance", err)) ||
            (rc = num(t, "error_rate", 0, 1, &h->tol_error, "health.tolerance", err)) ||
            (rc = num(t, "fallback_rate", 0, 1, &h->tol_fallback, "health.tolerance", err)) ||
            (rc = num(t, "p95_ratio", 1, 1000, &h->p95_ratio, "health.tolerance", err)) ||
            (rc = num(t, "p95_slack_ms", 0, big, &h->p95_slack_ms, "health.tolerance", err)) ||
            (rc = num(t, "confidence", 0, 1, &h->tol_confidence, "health.tolerance", err)))
            return rc;
    }
    return KEEL_OK;
}

static int parse_baseline(const cJSON *b, keel__health *h, keel_error *err)
{
    int rc;
    if ((rc = num(b, "error_rate", 0, 1, &h->baseline.error_rate, "baseline", err)) ||
        (rc = num(b, "fallback_rate", 0, 1, &h->baseline.fallback_rate, "baseline", err)) ||
        (rc = num(b, "p95_ms", 0, 1e9, &h->baseline.p95_ms, "baseline", err)) ||
        (rc = num(b, "mean_confidence", 0, 1, &h->baseline.mean_confidence, "baseline", err)))
        return rc;
    return KEEL_OK;
}

int keel__health_from_manifest(const void *manifest, size_t len, keel__health *h,
                               bool *ret_has_health, keel_error *err)
{
    cJSON *root = NULL;
    const cJSON *hs = NULL, *bs = NULL;
    keel__health nh = *h;
    int rc = keel__json_parse_except(manifest, len, "files", "keel.json", &root, err);
    if (!rc)
        rc = keel__json_member(root, "health", cJSON_Object, false, &hs, "keel.json", err);
    if (!rc)
        rc = keel__json_member(root, "baseline", cJSON_Object, false, &bs, "keel.json", err);
    if (!rc && hs)
        rc = parse_health(hs, &nh, err);
    if (!rc && bs)
        rc = parse_baseline(bs, &nh, err);
    if (!rc) {
        *h = nh;
        *ret_has_health = hs != NULL;
    }
    cJSON_Delete(root);
    return rc;
}

/* --- counting ------------------------------------------------------------------------------ */

static size_t bucket_of(uint64_t ns)
{
    double us = (double)ns / 1e3;
    if (us < 1)
        return 0;
    int e;
    double f = frexp(us, &e); /* us = f * 2^e, f in [0.5, 1) */
    size_t sub = (size_t)((f * 2 - 1) * KEEL__PROBATION_SUB);
    size_t i = 1 + (size_t)(e - 1) * KEEL__PROBATION_SUB + sub;
    return i < KEEL__PROBATION_BUCKETS ? i : KEEL__PROBATION_BUCKETS - 1;
}

/* Bucket i's bounds in ms. */
static double bucket_lo_ms(size_t i)
{
    if (i == 0)
        return 0;
    size_t e = (i - 1) / KEEL__PROBATION_SUB, sub = (i - 1) % KEEL__PROBATION_SUB;
    return ldexp(1.0 + (double)sub / KEEL__PROBATION_SUB, (int)e) / 1e3;
}

static double bucket_hi_ms(size_t i)
{
    if (i == 0)
        return 0.001;
    size_t e = (i - 1) / KEEL__PROBATION_SUB, sub = (i - 1) % KEEL__PROBATION_SUB;
    return ldexp(1.0 + (double)(sub + 1) / KEEL__PROBATION_SUB, (int)e) / 1e3;
}

void keel__probation_add(keel__probation_stats *s, bool ok, bool degraded, uint64_t ns,
                         double confidence, int64_t now)
{
    if (!s->started)
        s->started = now;
    s->requests++;
    if (!ok) {
        s->errors++;
        return;
    }
    if (degraded)
        s->fallbacks++;
    size_t b = bucket_of(ns);
    if (s->lat[b] < UINT32_MAX)
        s->lat[b]++;
    if (confidence >= 0 && isfinite(confidence)) {
        s->scored++;
        s->conf_sum += confidence;
        s->conf_sq += confidence * confidence;
    }
}

static uint64_t answered(const keel__probation_stats *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i < KEEL__PROBATION_BUCKETS; i++)
        n += s->lat[i];
    return n;
}

double keel__probation_p95_ms(const keel__probation_stats *s)
{
    uint64_t n = answered(s), seen = 0;
    if (!n)
        return -1;
    uint64_t rank = (uint64_t)ceil(0.95 * (double)n);
    for (size_t i = 0; i < KEEL__PROBATION_BUCKETS; i++)
        if ((seen += s->lat[i]) >= rank)
            return bucket_hi_ms(i);
    return bucket_hi_ms(KEEL__PROBATION_BUCKETS - 1);
}

/* Answered requests certainly slower than ms (their bucket starts at or above it). */
static uint64_t slower_than(const keel__probation_stats *s, double ms)
{
    uint64_t n = 0;
    for (size_t i = 0; i < KEEL__PROBATION_BUCKETS; i++)
        if (bucket_lo_ms(i) >= ms)
            n += s->lat[i];
    return n;
}

void keel__probation_figures_of(const keel__probation_stats *s, keel__probation_figures *ret)
{
    uint64_t a = s->requests - s->errors;
    ret->error_rate = s->requests ? (double)s->errors / (double)s->requests : -1;
    ret->fallback_rate = a ? (double)s->fallbacks / (double)a : -1;
    ret->p95_ms = keel__probation_p95_ms(s);
    ret->mean_confidence = s->scored ? s->conf_sum / (double)s->scored : -1;
}

/* --- deciding ------------------------------------------------------------------------------ */

/* The 95 % Wilson score interval's lower bound of k successes in n. */
static double wilson_lower(uint64_t k, uint64_t n)
{
    if (!n)
        return 0;
    double p = (double)k / (double)n, nn = (double)n, z2 = Z95 * Z95;
    double c = p + z2 / (2 * nn), d = Z95 * sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
    return (c - d) / (1 + z2 / nn);
}

/* One limit on one metric and where it comes from. */
typedef struct limit {
    double value;
    char src[200];
} limit;

/* The limits on a metric: absolute, previous version's, baseline's. dir: +1
 * when higher is worse (rates, p95), -1 when lower is worse (confidence). */
static size_t limits_for(const keel__health *h, int metric, const keel__probation_figures *pf,
                         const char *pv, limit out[3])
{
    static const char *const abs_name[] = {"max_error_rate", "max_fallback_rate", "max_p95_ms",
                                           "min_mean_confidence"};
    const double absv[] = {h->max_error_rate, h->max_fallback_rate, h->max_p95_ms,
                           h->min_mean_confidence};
    const double prev[] = {pf ? pf->error_rate : -1, pf ? pf->fallback_rate : -1,
                           pf ? pf->p95_ms : -1, pf ? pf->mean_confidence : -1};
    const double base[] = {h->baseline.error_rate, h->baseline.fallback_rate, h->baseline.p95_ms,
                           h->baseline.mean_confidence};
    size_t n = 0;
    if (absv[metric] >= 0) {
        out[n].value = absv[metric];
        snprintf(out[n++].src, sizeof(out[0].src), "health.%s", abs_name[metric]);
    }
    for (int k = 0; k < 2; k++) {
        double r = k ? base[metric] : prev[metric];
        char who[120];
        if (r < 0)
            continue;
        if (k)
            snprintf(who, sizeof(who), "baseline");
        else
            snprintf(who, sizeof(who), "previous version %s", pv && pv[0] ? pv : "?");
        switch (metric) {
        case 0:
        case 1: {
            double t = metric ? h->tol_fallback : h->tol_error;
            out[n].value = r + t;
            snprintf(out[n++].src, sizeof(out[0].src), "%s: %.3f + tolerance %.3f", who, r, t);
            break;
        }
        case 2:
            out[n].value = r * h->p95_ratio + h->p95_slack_ms;
            snprintf(out[n++].src, sizeof(out[0].src), "%s: %.3f ms x %.2f + %.1f ms", who, r,
                     h->p95_ratio, h->p95_slack_ms);
            break;
        default:
            out[n].value = r - h->tol_confidence;
            snprintf(out[n++].src, sizeof(out[0].src), "%s: %.3f - tolerance %.3f", who, r,
                     h->tol_confidence);
            break;
        }
    }
    return n;
}

static const char *const metric_name[] = {"error_rate", "fallback_rate", "p95_ms",
                                          "mean_confidence"};

keel__probation_decision keel__probation_decide(const keel__health *h,
                                                const keel__probation_stats *cur,
                                                const keel__probation_stats *prev,
                                                const char *prev_version, int64_t now, char *reason,
                                                size_t n)
{
    keel__probation_figures f, pf;
    bool has_prev = prev && prev->requests >= h->min_requests && h->min_requests;
    bool done = (h->requests && cur->requests >= h->requests) ||
                (h->seconds && cur->started && now - cur->started >= (int64_t)h->seconds);
    uint64_t ans = cur->requests - cur->errors;
    if (n)
        reason[0] = '\0';
    if (cur->requests < h->min_requests || !cur->requests) {
        snprintf(reason, n, "%llu of at least %llu requests seen",
                 (unsigned long long)cur->requests, (unsigned long long)h->min_requests);
        return KEEL__PROBATION_CONTINUE;
    }
    keel__probation_figures_of(cur, &f);
    if (has_prev)
        keel__probation_figures_of(prev, &pf);
    const double value[] = {f.error_rate, f.fallback_rate, f.p95_ms, f.mean_confidence};
    for (int m = 0; m < 4; m++) {
        limit lim[3];
        size_t nl = limits_for(h, m, has_prev ? &pf : NULL, prev_version, lim);
        if (value[m] < 0) /* no data for this metric (no answers, no confidence) */
            continue;
        if (m == 3 && cur->scored < h->min_requests)
            continue;
        for (size_t i = 0; i < nl; i++) {
            double L = lim[i].value;
            bool breach;
            if (done) {
                breach = m == 3 ? value[m] < L : value[m] > L;
            } else {
                switch (m) { /* early: only when clear at 95 % */
                case 0:
                    breach = wilson_lower(cur->errors, cur->requests) > L;
                    break;
                case 1:
                    breach = wilson_lower(cur->fallbacks, ans) > L;
                    break;
                case 2:
                    breach = wilson_lower(slower_than(cur, L), ans) > 0.05;
                    break;
                default: {
                    double nn = (double)cur->scored, mean = f.mean_confidence;
                    double var = cur->conf_sq / nn - mean * mean;
                    double se = sqrt(var > 0 ? var / nn : 0);
                    breach = mean + Z95 * se < L;
                    break;
                }
                }
            }
            if (breach) {
                snprintf(reason, n, "%s %.3f %s %.3f (%s) after %llu requests%s", metric_name[m],
                         value[m], m == 3 ? "<" : ">", L, lim[i].src,
                         (unsigned long long)cur->requests,
                         done ? "" : ", before the window closed");
                return KEEL__PROBATION_BREACH;
            }
        }
    }
    if (!done) {
        snprintf(reason, n, "%llu requests seen; window: %llu requests or %llu s",
                 (unsigned long long)cur->requests, (unsigned long long)h->requests,
                 (unsigned long long)h->seconds);
        return KEEL__PROBATION_CONTINUE;
    }
    snprintf(reason, n,
             "%llu requests: error_rate %.3f, fallback_rate %.3f, p95 %.3f ms, mean_confidence "
             "%.3f within limits%s",
             (unsigned long long)cur->requests, f.error_rate, f.fallback_rate, f.p95_ms,
             f.mean_confidence, has_prev ? " and the previous version's" : "");
    return KEEL__PROBATION_PASS;
}

/* --- persistence --------------------------------------------------------------------------- */

int keel__probation_stats_json(const keel__probation_stats *s, keel_buf *b)
{
    int rc =
        keel__buf_appendf(b,
                          "{\"requests\":%llu,\"errors\":%llu,\"fallbacks\":%llu,\"scored\":%llu,"
                          "\"conf_sum\":%.17g,\"conf_sq\":%.17g,\"started\":%lld,\"lat\":[",
                          (unsigned long long)s->requests, (unsigned long long)s->errors,
                          (unsigned long long)s->fallbacks, (unsigned long long)s->scored,
                          s->conf_sum, s->conf_sq, (long long)s->started);
    bool first = true;
    for (size_t i = 0; !rc && i < KEEL__PROBATION_BUCKETS; i++)
        if (s->lat[i]) {
            rc = keel__buf_appendf(b, "%s[%zu,%u]", first ? "" : ",", i, s->lat[i]);
            first = false;
        }
    if (!rc)
        rc = keel__buf_append(b, "]}", 2);
    return rc;
}

int keel__probation_stats_parse(const void *obj, keel__probation_stats *ret, keel_error *err)
{
    const cJSON *o = obj, *lat = NULL, *it;
    keel__probation_stats s = {0};
    uint64_t started = 0, total = 0;
    const char *w = "probation stats";
    int rc;
    if (!cJSON_IsObject(o))
        return keel__err(err, KEEL_ECORRUPT, "%s: expected an object", w);
    if ((rc = keel__json_u64(o, "requests", true, &s.requests, w, err)) ||
        (rc = keel__json_u64(o, "errors", true, &s.errors, w, err)) ||
        (rc = keel__json_u64(o, "fallbacks", true, &s.fallbacks, w, err)) ||
        (rc = keel__json_u64(o, "scored", true, &s.scored, w, err)) ||
        (rc = keel__json_u64(o, "started", true, &started, w, err)) ||
        (rc = keel__json_member(o, "lat", cJSON_Array, true, &lat, w, err)))
        return rc;
    const cJSON *cs = cJSON_GetObjectItemCaseSensitive(o, "conf_sum");
    const cJSON *cq = cJSON_GetObjectItemCaseSensitive(o, "conf_sq");
    if (!cJSON_IsNumber(cs) || !cJSON_IsNumber(cq) || !isfinite(cs->valuedouble) ||
        !isfinite(cq->valuedouble) || cs->valuedouble < 0 || cq->valuedouble < 0)
        return keel__err(err, KEEL_ECORRUPT, "%s: conf_sum, conf_sq: expected numbers >= 0", w);
    s.conf_sum = cs->valuedouble;
    s.conf_sq = cq->valuedouble;
    s.started = (int64_t)started;
    cJSON_ArrayForEach(it, lat)
    {
        uint64_t i, c;
        if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 ||
            !keel__json_is_uint(cJSON_GetArrayItem(it, 0), &i) ||
            !keel__json_is_uint(cJSON_GetArrayItem(it, 1), &c) || i >= KEEL__PROBATION_BUCKETS ||
            c > UINT32_MAX)
            return keel__err(err, KEEL_ECORRUPT, "%s: lat: expected [[bucket, count], ...]", w);
        s.lat[i] = (uint32_t)c;
        total += c;
    }
    if (s.errors > s.requests || s.fallbacks + s.errors > s.requests ||
        s.scored + s.errors > s.requests || total + s.errors > s.requests)
        return keel__err(err, KEEL_ECORRUPT, "%s: counts do not add up", w);
    *ret = s;
    return KEEL_OK;
}
