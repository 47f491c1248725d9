/* metrics.c - the metrics registry and its Prometheus text and JSON renderers. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "obs/metrics.h"

struct keel__metric_series {
    keel__metric_family *f;
    atomic_uint refs;                 /* the registry's (while linked) + handles */
    struct keel__metric_series *next; /* under reg->mu */
    const char *values[KEEL_METRICS_MAX_LABELS];
    _Atomic uint64_t u;         /* counter value; summary count */
    _Atomic uint64_t bits;      /* gauge value; histogram and summary sum (double) */
    _Atomic uint64_t buckets[]; /* histogram: nbounds + 1, not cumulative */
};

struct keel__metric_family {
    keel__metrics *reg;
    atomic_uint refs; /* the registry's (while registered) + one per series alive */
    char *name, *help;
    keel__metric_type type;
    size_t nlabels;
    char *labels[KEEL_METRICS_MAX_LABELS];
    double *bounds;
    size_t nbounds;
    keel__metric_series *head; /* under reg->mu; creation order */
    size_t nseries;
};

typedef struct collector {
    keel__metrics_collect_fn fn;
    void *ctx;
} collector;

struct keel__metrics {
    pthread_mutex_t mu;        /* families and series lists */
    pthread_mutex_t scrape_mu; /* one render at a time; the collector list */
    keel__metric_family *fams[KEEL_METRICS_MAX_FAMILIES];
    size_t nfams;
    collector *cols;
    size_t ncols;
};

static const char *const type_names[] = {"counter", "gauge", "histogram", "summary"};

/* --- values ----------------------------------------------------------------------- */

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static void atomic_add_double(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, double_bits(bits_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* Shortest text that reads back as v; integers without a fraction. */
static void fmt_double(double v, char *out, size_t n)
{
    if (isnan(v)) {
        keel__strlcpy(out, "NaN", n);
    } else if (isinf(v)) {
        keel__strlcpy(out, v > 0 ? "+Inf" : "-Inf", n);
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, n, "%.0f", v == 0 ? 0.0 : v);
    } else {
        snprintf(out, n, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, n, "%.17g", v);
    }
}

/* --- names -------------------------------------------------------------------------- */

static bool name_ok(const char *s, bool metric)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > KEEL_METRICS_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (metric && c == ':');
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return false;
    }
    return metric || strncmp(s, "__", 2) != 0;
}

static int check_desc(const keel__metric_desc *d, keel_error *err)
{
    const char *name = d->name ? d->name : "(null)";
    if (!name_ok(d->name, true))
        return keel__err(err, KEEL_EINVALID,
                         "metric name \"%s\" is not [a-zA-Z_:][a-zA-Z0-9_:]* of at most %d bytes",
                         name, KEEL_METRICS_NAME_MAX);
    if ((int)d->type < 0 || d->type > KEEL_METRIC_SUMMARY)
        return keel__err(err, KEEL_EINVALID, "metric %s: unknown type %d", name, (int)d->type);
    if (!d->help || strlen(d->help) > KEEL_METRICS_HELP_MAX)
        return keel__err(err, KEEL_EINVALID, "metric %s: HELP is missing or over %d bytes", name,
                         KEEL_METRICS_HELP_MAX);
    if (d->nlabels > KEEL_METRICS_MAX_LABELS)
        return keel__err(err, KEEL_ETOOBIG, "metric %s: %zu labels (at most %d)", name, d->nlabels,
                         KEEL_METRICS_MAX_LABELS);
    for (size_t i = 0; i < d->nlabels; i++) {
        const char *l = d->labels[i];
        if (!name_ok(l, false) || (d->type == KEEL_METRIC_HISTOGRAM && !strcmp(l, "le")) ||
            (d->type == KEEL_METRIC_SUMMARY && !strcmp(l, "quantile")))
            return keel__err(err, KEEL_EINVALID, "metric %s: label name \"%s\" is not allowed",
                             name, l ? l : "(null)");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(l, d->labels[j]))
                return keel__err(err, KEEL_EINVALID, "metric %s: label %s given twice", name, l);
    }
    if (d->type != KEEL_METRIC_HISTOGRAM)
        return d->nbounds ? keel__err(err, KEEL_EINVALID, "metric %s: bounds on a %s", name,
                                      type_names[d->type])
                          : KEEL_OK;
    if (d->nbounds == 0 || d->nbounds > KEEL_METRICS_MAX_BUCKETS || !d->bounds)
        return keel__err(err, KEEL_EINVALID, "metric %s: a histogram needs 1 to %d bucket bounds",
                         name, KEEL_METRICS_MAX_BUCKETS);
    for (size_t i = 0; i < d->nbounds; i++)
        if (!isfinite(d->bounds[i]) || (i > 0 && d->bounds[i] <= d->bounds[i - 1]))
            return keel__err(err, KEEL_EINVALID,
                             "metric %s: bucket bounds must be finite and strictly increasing "
                             "(bound %zu)",
                             name, i);
    return KEEL_OK;
}

static bool same_desc(const keel__metric_family *f, const keel__metric_desc *d)
{
    if (f->type != d->type || strcmp(f->help, d->help) || f->nlabels != d->nlabels ||
        f->nbounds != d->nbounds)
        return false;
    for (size_t i = 0; i < f->nlabels; i++)
        if (strcmp(f->labels[i], d->labels[i]))
            return false;
    for (size_t i = 0; i < f->nbounds; i++)
        if (f->bounds[i] != d->bounds[i])
            return false;
    return true;
}

/* --- registry ------------------------------------------------------------------------ */

int keel__metrics_new(keel__metrics **ret, keel_error *err)
{
    keel__metrics *reg = calloc(1, sizeof(*reg));
    if (!reg)
        return keel__err(err, KEEL_ENOMEM, "out of memory creating the metrics registry");
    pthread_mutex_init(&reg->mu, NULL);
    pthread_mutex_init(&reg->scrape_mu, NULL);
    *ret = reg;
    return KEEL_OK;
}

static void family_free(keel__metric_family *f)
{
    free(f->name);
    free(f->help);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->bounds);
    free(f);
}

static void family_unref(keel__metric_family *f)
{
    if (atomic_fetch_sub(&f->refs, 1) == 1)
        family_free(f);
}

void keel__metric_series_unref(keel__metric_series *s)
{
    if (!s)
        return;
    unsigned before = atomic_fetch_sub(&s->refs, 1);
    KEEL_ASSERT(before > 0, "series of %s released once too often", s->f->name);
    if (before == 1) {
        keel__metric_family *f = s->f;
        free(s);
        family_unref(f);
    }
}

/* Unlinks every series of f matching label=value (label NULL: all), under reg->mu. */
static size_t unlink_series(keel__metric_family *f, const char *label, const char *value)
{
    size_t li = 0, n = 0;
    if (label) {
        for (li = 0; li < f->nlabels && strcmp(f->labels[li], label); li++)
            ;
        if (li == f->nlabels)
            return 0;
    }
    for (keel__metric_series **pp = &f->head; *pp;) {
        keel__metric_series *s = *pp;
        if (label && strcmp(s->values[li], value ? value : "")) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        f->nseries--;
        n++;
        keel__metric_series_unref(s);
    }
    return n;
}

static void unregister_locked(keel__metrics *reg, keel__metric_family *f)
{
    for (size_t i = 0; i < reg->nfams; i++)
        if (reg->fams[i] == f) {
            memmove(&reg->fams[i], &reg->fams[i + 1], (reg->nfams - i - 1) * sizeof(f));
            reg->nfams--;
            break;
        }
    for (keel__metric_series *s = f->head; s; s = s->next)
        KEEL_ASSERT(atomic_load(&s->refs) == 1, "metric %s unregistered while a handle is held",
                    f->name);
    unlink_series(f, NULL, NULL);
    family_unref(f);
}

void keel__metrics_free(keel__metrics *reg)
{
    if (!reg)
        return;
    while (reg->nfams)
        unregister_locked(reg, reg->fams[reg->nfams - 1]);
    free(reg->cols);
    pthread_mutex_destroy(&reg->mu);
    pthread_mutex_destroy(&reg->scrape_mu);
    free(reg);
}

int keel__metrics_register(keel__metrics *reg, const keel__metric_desc *d,
                           keel__metric_family **ret, keel_error *err)
{
    keel__metric_family *f = NULL;
    int rc;
    if ((rc = check_desc(d, err)))
        return rc;
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; i < reg->nfams; i++) {
        if (strcmp(reg->fams[i]->name, d->name))
            continue;
        if (same_desc(reg->fams[i], d))
            *ret = reg->fams[i];
        else
            rc = keel__err(err, KEEL_ECONFLICT,
                           "metric %s is already registered with another type, help, labels "
                           "or buckets",
                           d->name);
        goto out;
    }
    if (reg->nfams == KEEL_METRICS_MAX_FAMILIES) {
        rc = keel__err(err, KEEL_ETOOBIG, "cannot register %s: the registry holds %d families",
                       d->name, KEEL_METRICS_MAX_FAMILIES);
        goto out;
    }
    if (!(f = calloc(1, sizeof(*f))) || !(f->name = strdup(d->name)) ||
        !(f->help = strdup(d->help)))
        goto nomem;
    f->reg = reg;
    f->type = d->type;
    atomic_init(&f->refs, 1);
    for (; f->nlabels < d->nlabels; f->nlabels++)
        if (!(f->labels[f->nlabels] = strdup(d->labels[f->nlabels])))
            goto nomem;
    if (d->nbounds) {
        if (!(f->bounds = malloc(d->nbounds * sizeof(double))))
            goto nomem;
        memcpy(f->bounds, d->bounds, d->nbounds * sizeof(double));
        f->nbounds = d->nbounds;
    }
    reg->fams[reg->nfams++] = f;
    *ret = f;
    goto out;
nomem:
    if (f)
        family_free(f);
    rc = keel__err(err, KEEL_ENOMEM, "out of memory registering %s", d->name);
out:
    pthread_mutex_unlock(&reg->mu);
    return rc;
}

void keel__metrics_unregister(keel__metrics *reg, keel__metric_family *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&reg->mu);
    unregister_locked(reg, f);
    pthread_mutex_unlock(&reg->mu);
}

/* --- series ----------------------------------------------------------------------------- */

/* Finds or creates; under reg->mu. The returned series has no extra reference. */
static int find_series(keel__metric_family *f, const char *const *values, keel__metric_series **ret,
                       keel_error *err)
{
    size_t nb = f->type == KEEL_METRIC_HISTOGRAM ? f->nbounds + 1 : 0, strbytes = 0;
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t len = values && values[i] ? strlen(values[i]) : 0;
        if (!values || !values[i])
            return keel__err(err, KEEL_EINVALID, "metric %s: no value for label %s", f->name,
                             f->labels[i]);
        if (len > KEEL_METRICS_VALUE_MAX)
            return keel__err(err, KEEL_ETOOBIG,
                             "metric %s: label %s value of %zu bytes (at most %d)", f->name,
                             f->labels[i], len, KEEL_METRICS_VALUE_MAX);
        strbytes += len + 1;
    }
    for (keel__metric_series *s = f->head; s; s = s->next) {
        size_t i = 0;
        while (i < f->nlabels && !strcmp(s->values[i], values[i]))
            i++;
        if (i == f->nlabels) {
            *ret = s;
            return KEEL_OK;
        }
    }
    if (f->nseries >= KEEL_METRICS_MAX_SERIES)
        return keel__err(err, KEEL_ETOOBIG,
                         "metric %s has %d series already: a label takes too many values", f->name,
                         KEEL_METRICS_MAX_SERIES);
    size_t head = sizeof(keel__metric_series) + nb * sizeof(_Atomic uint64_t);
    keel__metric_series *s = calloc(1, head + strbytes);
    if (!s)
        return keel__err(err, KEEL_ENOMEM, "out of memory adding a series to %s", f->name);
    char *p = (char *)s + head;
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t len = strlen(values[i]);
        memcpy(p, values[i], len + 1);
        s->values[i] = p;
        p += len + 1;
    }
    s->f = f;
    atomic_init(&s->refs, 1); /* the registry's */
    atomic_fetch_add(&f->refs, 1);
    keel__metric_series **pp = &f->head;
    while (*pp)
        pp = &(*pp)->next;
    *pp = s;
    f->nseries++;
    *ret = s;
    return KEEL_OK;
}

int keel__metrics_series(keel__metric_family *f, const char *const *values,
                         keel__metric_series **ret, keel_error *err)
{
    keel__metric_series *s;
    pthread_mutex_lock(&f->reg->mu);
    int rc = find_series(f, values, &s, err);
    if (!rc) {
        atomic_fetch_add(&s->refs, 1);
        *ret = s;
    }
    pthread_mutex_unlock(&f->reg->mu);
    return rc;
}

void keel__metric_inc(keel__metric_series *s, uint64_t n)
{
    KEEL_ASSERT(s->f->type == KEEL_METRIC_COUNTER, "inc on %s, a %s", s->f->name,
                type_names[s->f->type]);
    if (s->f->type == KEEL_METRIC_COUNTER)
        atomic_fetch_add_explicit(&s->u, n, memory_order_relaxed);
}

void keel__metric_counter_set(keel__metric_series *s, uint64_t v)
{
    KEEL_ASSERT(s->f->type == KEEL_METRIC_COUNTER, "counter_set on %s, a %s", s->f->name,
                type_names[s->f->type]);
    if (s->f->type == KEEL_METRIC_COUNTER)
        atomic_store_explicit(&s->u, v, memory_order_relaxed);
}

void keel__metric_gauge_set(keel__metric_series *s, double v)
{
    KEEL_ASSERT(s->f->type == KEEL_METRIC_GAUGE, "gauge_set on %s, a %s", s->f->name,
                type_names[s->f->type]);
    if (s->f->type == KEEL_METRIC_GAUGE)
        atomic_store_explicit(&s->bits, double_bits(v), memory_order_relaxed);
}

void keel__metric_gauge_add(keel__metric_series *s, double v)
{
    KEEL_ASSERT(s->f->type == KEEL_METRIC_GAUGE, "gauge_add on %s, a %s", s->f->name,
                type_names[s->f->type]);
    if (s->f->type == KEEL_METRIC_GAUGE)
        atomic_add_double(&s->bits, v);
}

void keel__metric_observe(keel__metric_series *s, double v)
{
    const keel__metric_family *f = s->f;
    KEEL_ASSERT(f->type == KEEL_METRIC_HISTOGRAM || f->type == KEEL_METRIC_SUMMARY,
                "observe on %s, a %s", f->name, type_names[f->type]);
    if (f->type == KEEL_METRIC_HISTOGRAM) {
        size_t i = 0;
        while (i < f->nbounds && !(v <= f->bounds[i]))
            i++; /* NaN and values above every bound land in +Inf */
        atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
        atomic_add_double(&s->bits, v);
    } else if (f->type == KEEL_METRIC_SUMMARY) {
        atomic_add_double(&s->bits, v);
        atomic_fetch_add_explicit(&s->u, 1, memory_order_relaxed);
    }
}

void keel__metric_summary_set(keel__metric_series *s, double sum, uint64_t count)
{
    KEEL_ASSERT(s->f->type == KEEL_METRIC_SUMMARY, "summary_set on %s, a %s", s->f->name,
                type_names[s->f->type]);
    if (s->f->type != KEEL_METRIC_SUMMARY)
        return;
    atomic_store_explicit(&s->bits, double_bits(sum), memory_order_relaxed);
    atomic_store_explicit(&s->u, count, memory_order_relaxed);
}

int keel__metrics_set(keel__metric_family *f, const char *const *values, double v, keel_error *err)
{
    keel__metric_series *s;
    pthread_mutex_lock(&f->reg->mu);
    int rc = find_series(f, values, &s, err);
    if (!rc && f->type == KEEL_METRIC_GAUGE)
        atomic_store_explicit(&s->bits, double_bits(v), memory_order_relaxed);
    else if (!rc && f->type == KEEL_METRIC_COUNTER)
        atomic_store_explicit(&s->u, v > 0 && v < 1.8e19 ? (uint64_t)v : 0, memory_order_relaxed);
    else if (!rc)
        rc = keel__err(err, KEEL_EINVALID, "metric %s: a %s cannot be set to one value", f->name,
                       type_names[f->type]);
    pthread_mutex_unlock(&f->reg->mu);
    return rc;
}

size_t keel__metrics_remove(keel__metric_family *f, const char *label, const char *value)
{
    pthread_mutex_lock(&f->reg->mu);
    size_t n = unlink_series(f, label, value);
    pthread_mutex_unlock(&f->reg->mu);
    return n;
}

size_t keel__metrics_remove_all(keel__metrics *reg, const char *label, const char *value)
{
    size_t n = 0;
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; i < reg->nfams; i++)
        n += unlink_series(reg->fams[i], label, value);
    pthread_mutex_unlock(&reg->mu);
    return n;
}

/* --- collectors ------------------------------------------------------------------------ */

int keel__metrics_collector_add(keel__metrics *reg, keel__metrics_collect_fn fn, void *ctx,
                                keel_error *err)
{
    int rc = KEEL_OK;
    pthread_mutex_lock(&reg->scrape_mu);
    collector *c = realloc(reg->cols, (reg->ncols + 1) * sizeof(*c));
    if (!c) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory adding a metrics collector");
    } else {
        reg->cols = c;
        reg->cols[reg->ncols++] = (collector){fn, ctx};
    }
    pthread_mutex_unlock(&reg->scrape_mu);
    return rc;
}

void keel__metrics_collector_remove(keel__metrics *reg, keel__metrics_collect_fn fn, void *ctx)
{
    pthread_mutex_lock(&reg->scrape_mu);
    for (size_t i = 0; i < reg->ncols; i++)
        if (reg->cols[i].fn == fn && reg->cols[i].ctx == ctx) {
            memmove(&reg->cols[i], &reg->cols[i + 1], (reg->ncols - i - 1) * sizeof(collector));
            reg->ncols--;
            break;
        }
    pthread_mutex_unlock(&reg->scrape_mu);
}

/* --- Prometheus text ---------------------------------------------------------------- */

/* Appends s escaped: backslash and newline always, the double quote in label values. */
static int append_escaped(keel_buf *b, const char *s, bool quote)
{
    int rc = KEEL_OK;
    const char *run = s;
    for (; !rc && *s; s++) {
        const char *esc = *s == '\\'           ? "\\\\"
                          : *s == '\n'         ? "\\n"
                          : quote && *s == '"' ? "\\\""
                                               : NULL;
        if (!esc)
            continue;
        if (!(rc = keel__buf_append(b, run, (size_t)(s - run))))
            rc = keel__buf_append(b, esc, 2);
        run = s + 1;
    }
    return rc ? rc : keel__buf_append(b, run, strlen(run));
}

/* {a="x",b="y"[,extra="v"]}; nothing when there are no labels at all. */
static int append_labels(keel_buf *b, const keel__metric_series *s, const char *extra,
                         const char *extra_value)
{
    const keel__metric_family *f = s->f;
    int rc = KEEL_OK;
    if (!f->nlabels && !extra)
        return KEEL_OK;
    rc = keel__buf_append(b, "{", 1);
    for (size_t i = 0; !rc && i < f->nlabels; i++)
        if (!(rc = keel__buf_appendf(b, "%s%s=\"", i ? "," : "", f->labels[i])) &&
            !(rc = append_escaped(b, s->values[i], true)))
            rc = keel__buf_append(b, "\"", 1);
    if (!rc && extra)
        rc = keel__buf_appendf(b, "%s%s=\"%s\"", f->nlabels ? "," : "", extra, extra_value);
    return rc ? rc : keel__buf_append(b, "}", 1);
}

static int prom_series(keel_buf *b, const keel__metric_series *s)
{
    const keel__metric_family *f = s->f;
    char v[40], le[40];
    int rc = KEEL_OK;
    if (f->type == KEEL_METRIC_COUNTER) {
        if (!(rc = keel__buf_append(b, f->name, strlen(f->name))) &&
            !(rc = append_labels(b, s, NULL, NULL)))
            rc = keel__buf_appendf(b, " %" PRIu64 "\n", atomic_load(&s->u));
    } else if (f->type == KEEL_METRIC_GAUGE) {
        fmt_double(bits_double(atomic_load(&s->bits)), v, sizeof(v));
        if (!(rc = keel__buf_append(b, f->name, strlen(f->name))) &&
            !(rc = append_labels(b, s, NULL, NULL)))
            rc = keel__buf_appendf(b, " %s\n", v);
    } else {
        uint64_t count = 0;
        if (f->type == KEEL_METRIC_HISTOGRAM) {
            for (size_t i = 0; !rc && i <= f->nbounds; i++) {
                count += atomic_load(&s->buckets[i]);
                if (i < f->nbounds)
                    fmt_double(f->bounds[i], le, sizeof(le));
                else
                    keel__strlcpy(le, "+Inf", sizeof(le));
                if (!(rc = keel__buf_appendf(b, "%s_bucket", f->name)) &&
                    !(rc = append_labels(b, s, "le", le)))
                    rc = keel__buf_appendf(b, " %" PRIu64 "\n", count);
            }
        } else {
            count = atomic_load(&s->u);
        }
        fmt_double(bits_double(atomic_load(&s->bits)), v, sizeof(v));
        if (!rc && !(rc = keel__buf_appendf(b, "%s_sum", f->name)) &&
            !(rc = append_labels(b, s, NULL, NULL)) && !(rc = keel__buf_appendf(b, " %s\n", v)) &&
            !(rc = keel__buf_appendf(b, "%s_count", f->name)) &&
            !(rc = append_labels(b, s, NULL, NULL)))
            rc = keel__buf_appendf(b, " %" PRIu64 "\n", count);
    }
    return rc;
}

static void run_collectors(keel__metrics *reg)
{
    for (size_t i = 0; i < reg->ncols; i++)
        reg->cols[i].fn(reg->cols[i].ctx);
}

int keel__metrics_prometheus(keel__metrics *reg, keel_buf *b)
{
    int rc = KEEL_OK;
    pthread_mutex_lock(&reg->scrape_mu);
    run_collectors(reg);
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; !rc && i < reg->nfams; i++) {
        const keel__metric_family *f = reg->fams[i];
        if (!(rc = keel__buf_appendf(b, "# HELP %s ", f->name)) &&
            !(rc = append_escaped(b, f->help, false)))
            rc = keel__buf_appendf(b, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
        for (const keel__metric_series *s = f->head; !rc && s; s = s->next)
            rc = prom_series(b, s);
    }
    pthread_mutex_unlock(&reg->mu);
    pthread_mutex_unlock(&reg->scrape_mu);
    return rc;
}

/* --- JSON ------------------------------------------------------------------------------ */

static int json_number(keel_buf *b, double d)
{
    char v[40];
    fmt_double(d, v, sizeof(v));
    return isfinite(d) ? keel__buf_append(b, v, strlen(v)) : keel__buf_appendf(b, "\"%s\"", v);
}

static int json_series(keel_buf *b, const keel__metric_series *s)
{
    const keel__metric_family *f = s->f;
    int rc = keel__buf_append(b, "{\"labels\":{", 11);
    for (size_t i = 0; !rc && i < f->nlabels; i++)
        if (!(rc = keel__buf_append(b, ",", i ? 1 : 0)) &&
            !(rc = keel__json_quote(b, f->labels[i])) && !(rc = keel__buf_append(b, ":", 1)))
            rc = keel__json_quote(b, s->values[i]);
    if (rc || (rc = keel__buf_append(b, "}", 1)))
        return rc;
    if (f->type == KEEL_METRIC_COUNTER)
        rc = keel__buf_appendf(b, ",\"value\":%" PRIu64, atomic_load(&s->u));
    else if (f->type == KEEL_METRIC_GAUGE) {
        if (!(rc = keel__buf_append(b, ",\"value\":", 9)))
            rc = json_number(b, bits_double(atomic_load(&s->bits)));
    } else {
        uint64_t count = 0;
        if (f->type == KEEL_METRIC_HISTOGRAM) {
            rc = keel__buf_append(b, ",\"buckets\":[", 12);
            for (size_t i = 0; !rc && i <= f->nbounds; i++) {
                count += atomic_load(&s->buckets[i]);
                if (!(rc = keel__buf_appendf(b, "%s{\"le\":", i ? "," : "")) &&
                    !(rc = i < f->nbounds ? json_number(b, f->bounds[i])
                                          : keel__buf_append(b, "\"+Inf\"", 6)))
                    rc = keel__buf_appendf(b, ",\"count\":%" PRIu64 "}", count);
            }
            if (!rc)
                rc = keel__buf_append(b, "]", 1);
        } else {
            count = atomic_load(&s->u);
        }
        if (!rc && !(rc = keel__buf_append(b, ",\"sum\":", 7)) &&
            !(rc = json_number(b, bits_double(atomic_load(&s->bits)))))
            rc = keel__buf_appendf(b, ",\"count\":%" PRIu64, count);
    }
    return rc ? rc : keel__buf_append(b, "}", 1);
}

int keel__metrics_json(keel__metrics *reg, keel_buf *b)
{
    int rc;
    pthread_mutex_lock(&reg->scrape_mu);
    run_collectors(reg);
    pthread_mutex_lock(&reg->mu);
    rc = keel__buf_append(b, "{\"format\":1,\"families\":[", 24);
    for (size_t i = 0; !rc && i < reg->nfams; i++) {
        const keel__metric_family *f = reg->fams[i];
        if ((rc = keel__buf_appendf(b, "%s{\"name\":", i ? "," : "")) ||
            (rc = keel__json_quote(b, f->name)) ||
            (rc = keel__buf_appendf(b, ",\"type\":\"%s\",\"help\":", type_names[f->type])) ||
            (rc = keel__json_quote(b, f->help)) || (rc = keel__buf_append(b, ",\"labels\":[", 11)))
            break;
        for (size_t l = 0; !rc && l < f->nlabels; l++)
            if (!(rc = keel__buf_append(b, ",", l ? 1 : 0)))
                rc = keel__json_quote(b, f->labels[l]);
        if (!rc)
            rc = keel__buf_append(b, "],\"series\":[", 12);
        for (const keel__metric_series *s = f->head; !rc && s; s = s->next)
            if (!(rc = keel__buf_append(b, ",", s == f->head ? 0 : 1)))
                rc = json_series(b, s);
        if (!rc)
            rc = keel__buf_append(b, "]}", 2);
    }
    if (!rc)
        rc = keel__buf_append(b, "]}", 2);
    pthread_mutex_unlock(&reg->mu);
    pthread_mutex_unlock(&reg->scrape_mu);
    return rc;
}
