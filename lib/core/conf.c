/* conf.c - declared settings and keeld's config file (conf.h): `key =
 * value` lines, bounded and strict. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/conf.h"
#include "core/json.h"

typedef struct value {
    const keel__option *o;
    const char *module;
    char *s; /* PATH, STR: malloc'd */
    uint64_t u;
    bool b;
    bool set; /* by the file or a flag, not only the default */
} value;

struct keel__conf {
    value *v;
    size_t n;
};

static value *find(const keel__conf *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->v[i].o->name, name))
            return &c->v[i];
    return NULL;
}

const keel__option *keel__conf_option(const keel__conf *c, const char *name)
{
    value *v = find(c, name);
    return v ? v->o : NULL;
}

static int parse_u64(const char *v, uint64_t max, const char *suffixes, uint64_t *ret)
{
    char *end;
    if (!isdigit((unsigned char)v[0]))
        return KEEL_EINVALID;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno)
        return KEEL_EINVALID;
    uint64_t mul = 1;
    if (*end && strchr(suffixes, *end) && end[1] == '\0') {
        switch (*end) {
        case 'K':
            mul = 1024;
            break;
        case 'M':
            mul = 1024 * 1024;
            break;
        case 'G':
            mul = 1024ull * 1024 * 1024;
            break;
        case 's':
            mul = 1;
            break;
        case 'm':
            mul = 60;
            break;
        case 'h':
            mul = 3600;
            break;
        case 'd':
            mul = 86400;
            break;
        default:
            return KEEL_EINVALID;
        }
    } else if (*end) {
        return KEEL_EINVALID;
    }
    if (x > max / mul)
        return KEEL_ETOOBIG;
    *ret = (uint64_t)x * mul;
    return KEEL_OK;
}

/* Parses text into v (nothing changes on error). */
static int set_value(value *v, const char *text, keel_error *err)
{
    const keel__option *k = v->o;
    const char *key = k->name;
    uint64_t u = 0;
    int rc = KEEL_OK;
    switch (k->kind) {
    case KEEL__OPT_PATH:
    case KEEL__OPT_STR: {
        size_t max = k->kind == KEEL__OPT_PATH ? KEEL__CONF_PATH_MAX : KEEL__CONF_STR_MAX;
        size_t len = strlen(text);
        if (k->kind == KEEL__OPT_PATH && len >= max)
            return keel__err(err, KEEL_ETOOBIG, "%s: path longer than %zu bytes", key, max - 1);
        if (k->kind == KEEL__OPT_STR && (len >= max || !len))
            return keel__err(err, KEEL_EINVALID, "%s: expected %s", key, k->help);
        char *s = strdup(text);
        if (!s)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        free(v->s);
        v->s = s;
        return KEEL_OK;
    }
    case KEEL__OPT_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on") ||
            !strcmp(text, "1"))
            v->b = true;
        else if (!strcmp(text, "false") || !strcmp(text, "no") || !strcmp(text, "off") ||
                 !strcmp(text, "0"))
            v->b = false;
        else
            return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is not %s", key, text, k->help);
        return KEEL_OK;
    case KEEL__OPT_LEVEL: {
        keel_log_level lv;
        if (keel_log_level_parse(text, &lv))
            return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is not %s", key, text, k->help);
        v->u = (uint64_t)lv;
        return KEEL_OK;
    }
    case KEEL__OPT_UINT:
        rc = parse_u64(text, k->max ? k->max : UINT32_MAX, "", &u);
        break;
    case KEEL__OPT_SIZE:
        rc = parse_u64(text, k->max, "KMG", &u);
        break;
    case KEEL__OPT_DUR:
        rc = parse_u64(text, k->max, "smhd", &u);
        break;
    }
    if (rc || u < k->min || (k->max && u > k->max))
        return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is not %s", key, text, k->help);
    v->u = u;
    return KEEL_OK;
}

void keel__conf_free(keel__conf *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->v[i].s);
    free(c->v);
    free(c);
}

int keel__conf_new(const keel__option_set *const *sets, size_t nsets, keel__conf **ret,
                   keel_error *err)
{
    keel__conf *c = calloc(1, sizeof(*c));
    size_t total = 0;
    int rc = KEEL_OK;
    for (size_t i = 0; i < nsets; i++)
        total += sets[i]->n;
    if (!c || !(c->v = calloc(total ? total : 1, sizeof(*c->v)))) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nsets; i++) {
        for (size_t j = 0; j < sets[i]->n; j++) {
            const keel__option *o = &sets[i]->opts[j];
            if (find(c, o->name)) {
                rc = keel__err(err, KEEL_EINVALID, "setting \"%s\" is declared twice (%s)", o->name,
                               sets[i]->module);
                goto fail;
            }
            value *v = &c->v[c->n++];
            v->o = o;
            v->module = sets[i]->module;
            /* an empty default (PATH, STR): unset, the module decides */
            bool text = o->kind == KEEL__OPT_PATH || o->kind == KEEL__OPT_STR;
            if ((text && !o->def[0] && !(v->s = strdup(""))) ||
                ((!text || o->def[0]) && (rc = set_value(v, o->def, err)))) {
                if (!rc)
                    rc = keel__err(err, KEEL_ENOMEM, "out of memory");
                keel__err_prefix(err, "the default of %s (%s)", o->name, sets[i]->module);
                goto fail;
            }
        }
    }
    *ret = c;
    return KEEL_OK;
fail:
    keel__conf_free(c);
    return rc;
}

keel__conf *keel__conf_copy(const keel__conf *c)
{
    keel__conf *d = calloc(1, sizeof(*d));
    if (!d || !(d->v = calloc(c->n ? c->n : 1, sizeof(*d->v)))) {
        free(d);
        return NULL;
    }
    for (size_t i = 0; i < c->n; i++) {
        d->v[i] = c->v[i];
        d->v[i].s = NULL;
        d->n = i + 1;
        if (c->v[i].s && !(d->v[i].s = strdup(c->v[i].s))) {
            keel__conf_free(d);
            return NULL;
        }
    }
    d->n = c->n;
    return d;
}

int keel__conf_set(keel__conf *c, const char *key, const char *text, keel_error *err)
{
    value *v = find(c, key);
    if (!v) {
        if (strncmp(key, "x-", 2) == 0)
            return KEEL_OK;
        return keel__err(err, KEEL_EINVALID,
                         "unknown setting \"%s\" (check the spelling; see packaging/keeld.conf "
                         "for every setting)",
                         key);
    }
    int rc = set_value(v, text, err);
    if (!rc)
        v->set = true;
    return rc;
}

static void trim(const char **s, const char **e)
{
    while (*s < *e && isspace((unsigned char)**s))
        (*s)++;
    while (*e > *s && isspace((unsigned char)(*e)[-1]))
        (*e)--;
}

int keel__conf_parse(keel__conf *c, const char *data, size_t len, const char *origin,
                     keel_error *err)
{
    const char *p = data, *end = data + len;
    unsigned lineno = 0;
    if (len > KEEL__CONF_FILE_MAX)
        return keel__err(err, KEEL_ETOOBIG, "%s: config is larger than %d bytes", origin,
                         KEEL__CONF_FILE_MAX);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *s = p, *e = le;
        char key[64], val[KEEL__CONF_LINE_MAX];
        lineno++;
        p = eol ? eol + 1 : end;
        if ((size_t)(le - s) >= KEEL__CONF_LINE_MAX)
            return keel__err(err, KEEL_ETOOBIG, "%s:%u: line longer than %d bytes", origin, lineno,
                             KEEL__CONF_LINE_MAX);
        if (memchr(s, '\0', (size_t)(e - s)))
            return keel__err(err, KEEL_EINVALID, "%s:%u: NUL byte in line", origin, lineno);
        trim(&s, &e);
        if (s == e || *s == '#')
            continue;
        const char *eq = memchr(s, '=', (size_t)(e - s));
        if (!eq)
            return keel__err(err, KEEL_EINVALID, "%s:%u: expected \"key = value\", got \"%.*s\"",
                             origin, lineno, (int)(e - s > 60 ? 60 : e - s), s);
        const char *ks = s, *ke = eq, *vs = eq + 1, *ve = e;
        trim(&ks, &ke);
        trim(&vs, &ve);
        if (ke == ks || (size_t)(ke - ks) >= sizeof(key))
            return keel__err(err, KEEL_EINVALID, "%s:%u: missing or overlong key", origin, lineno);
        /* A trailing comment after an unquoted value. */
        if (vs < ve && *vs != '"') {
            const char *hash = memchr(vs, '#', (size_t)(ve - vs));
            if (hash) {
                ve = hash;
                trim(&vs, &ve);
            }
        }
        if (vs < ve && *vs == '"') {
            if (ve - vs < 2 || ve[-1] != '"')
                return keel__err(err, KEEL_EINVALID, "%s:%u: unterminated quoted value", origin,
                                 lineno);
            vs++;
            ve--;
        }
        memcpy(key, ks, (size_t)(ke - ks));
        key[ke - ks] = '\0';
        memcpy(val, vs, (size_t)(ve - vs));
        val[ve - vs] = '\0';
        int rc = keel__conf_set(c, key, val, err);
        if (rc)
            return keel__err_prefix(err, "%s:%u", origin, lineno);
    }
    return KEEL_OK;
}

int keel__conf_load(keel__conf *c, const char *path, keel_error *err)
{
    char *data;
    size_t len;
    int rc = keel__fs_read(path, KEEL__CONF_FILE_MAX, &data, &len, err);
    if (rc)
        return rc;
    rc = keel__conf_parse(c, data, len, path, err);
    free(data);
    return rc;
}

static const value *typed(const keel__conf *c, const char *name, bool str, bool boolean)
{
    const value *v = find(c, name);
    bool is_str = v && (v->o->kind == KEEL__OPT_PATH || v->o->kind == KEEL__OPT_STR);
    bool is_bool = v && v->o->kind == KEEL__OPT_BOOL;
    KEEL_ASSERT(v && is_str == str && is_bool == boolean, "setting %s read as the wrong type",
                name);
    return v && is_str == str && is_bool == boolean ? v : NULL;
}

const char *keel__conf_str(const keel__conf *c, const char *name)
{
    const value *v = typed(c, name, true, false);
    return v && v->s ? v->s : "";
}

bool keel__conf_is_set(const keel__conf *c, const char *name)
{
    const value *v = find(c, name);
    return v && v->set;
}

uint64_t keel__conf_u64(const keel__conf *c, const char *name)
{
    const value *v = typed(c, name, false, false);
    return v ? v->u : 0;
}

bool keel__conf_bool(const keel__conf *c, const char *name)
{
    const value *v = typed(c, name, false, true);
    return v ? v->b : false;
}

static bool same(const value *a, const value *b)
{
    switch (a->o->kind) {
    case KEEL__OPT_PATH:
    case KEEL__OPT_STR:
        return !strcmp(a->s ? a->s : "", b->s ? b->s : "");
    case KEEL__OPT_BOOL:
        return a->b == b->b;
    default:
        return a->u == b->u;
    }
}

size_t keel__conf_changes(const keel__conf *a, const keel__conf *b, const keel__option **ret,
                          size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < a->n && i < b->n; i++) {
        if (same(&a->v[i], &b->v[i]))
            continue;
        if (n < max)
            ret[n] = a->v[i].o;
        n++;
    }
    return n;
}

void keel__conf_keep_fixed(keel__conf *dst, const keel__conf *src)
{
    for (size_t i = 0; i < dst->n && i < src->n; i++) {
        value *d = &dst->v[i];
        const value *s = &src->v[i];
        if (d->o->reloadable || same(d, s))
            continue;
        if (s->s) {
            char *copy = strdup(s->s);
            if (!copy)
                continue; /* keeps the new value: the caller logs the restart need anyway */
            free(d->s);
            d->s = copy;
        }
        d->u = s->u;
        d->b = s->b;
    }
}

char *keel__conf_json(const keel__conf *c)
{
    keel_buf b;
    const char *mod = NULL;
    int rc;
    keel__buf_init(&b, 0);
    rc = keel__buf_append(&b, "{", 1);
    for (size_t i = 0; !rc && i < c->n; i++) {
        const value *v = &c->v[i];
        if (v->module != mod) {
            rc = keel__buf_appendf(&b, "%s\"%s\":{", mod ? "}," : "", v->module);
            mod = v->module;
        } else {
            rc = keel__buf_append(&b, ",", 1);
        }
        if (!rc)
            rc = keel__buf_appendf(&b, "\"%s\":", v->o->name);
        if (rc)
            break;
        switch (v->o->kind) {
        case KEEL__OPT_PATH:
        case KEEL__OPT_STR:
            rc = keel__json_quote(&b, v->s ? v->s : "");
            break;
        case KEEL__OPT_BOOL:
            rc = keel__buf_appendf(&b, "%s", v->b ? "true" : "false");
            break;
        case KEEL__OPT_LEVEL:
            rc = keel__buf_appendf(&b, "\"%s\"", keel_log_level_name((keel_log_level)v->u));
            break;
        default:
            rc = keel__buf_appendf(&b, "%llu", (unsigned long long)v->u);
            break;
        }
    }
    if (!rc)
        rc = keel__buf_append(&b, mod ? "}}" : "}", mod ? 2 : 1);
    if (rc) {
        keel__buf_done(&b);
        return NULL;
    }
    return keel__buf_steal(&b);
}
