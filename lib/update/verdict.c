/*
 * verdict.c - the versions not to retry and the versions promoted
 * (verdict.h), in memory under a lock and in STATE_DIR/update/verdicts.json.
 */
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "keel/pkg.h"
#include "update/verdict.h"

typedef struct entry {
    char name[KEEL_NAME_MAX];
    char version[KEEL_VERSION_MAX];
    keel__verdict_kind kind;
    char reason[KEEL__VERDICT_REASON_MAX];
    int64_t at;
} entry;

struct keel__verdicts {
    pthread_mutex_t mu;
    char path[PATH_MAX];
    entry *e;
    size_t n, cap;
};

static const char *const kind_names[] = {"none", "rolled_back", "refused", "promoted"};

const char *keel__verdict_kind_name(keel__verdict_kind k)
{
    return (unsigned)k < KEEL_ARRAY_LEN(kind_names) ? kind_names[k] : "none";
}

bool keel__verdict_retry(keel__verdict_kind k)
{
    return k != KEEL__VERDICT_ROLLED_BACK && k != KEEL__VERDICT_REFUSED;
}

static int add(keel__verdicts *v, const entry *en)
{
    for (size_t i = 0; i < v->n; i++)
        if (!strcmp(v->e[i].name, en->name) && !strcmp(v->e[i].version, en->version)) {
            memmove(&v->e[i], &v->e[i + 1], (v->n - i - 1) * sizeof(*v->e));
            v->n--;
            break;
        }
    if (v->n == KEEL__VERDICT_MAX) { /* the oldest goes */
        memmove(&v->e[0], &v->e[1], (v->n - 1) * sizeof(*v->e));
        v->n--;
    }
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        entry *ne = realloc(v->e, cap * sizeof(*ne));
        if (!ne)
            return KEEL_ENOMEM;
        v->e = ne;
        v->cap = cap;
    }
    v->e[v->n++] = *en;
    return KEEL_OK;
}

static int parse(keel__verdicts *v, const char *data, size_t len, keel_error *err)
{
    cJSON *root = NULL;
    const cJSON *list = NULL, *it;
    uint64_t format = 0;
    const char *type = NULL;
    char where[PATH_MAX + 32];
    snprintf(where, sizeof(where), "%s", v->path);
    int rc = keel__json_parse(data, len, where, &root, err);
    if (!rc)
        rc = keel__json_u64(root, "format", true, &format, where, err);
    if (!rc)
        rc = keel__json_str(root, "type", true, 64, &type, where, err);
    if (!rc && (format != 1 || strcmp(type, "keel-verdicts")))
        rc = keel__err(err, format > 1 ? KEEL_EUNSUPPORTED : KEEL_ECORRUPT,
                       "%s: not a keel-verdicts document of format 1 (format %llu, type %s)", where,
                       (unsigned long long)format, type);
    if (!rc)
        rc = keel__json_member(root, "verdicts", cJSON_Array, true, &list, where, err);
    size_t i = 0;
    cJSON_ArrayForEach(it, list)
    {
        const char *name = NULL, *ver = NULL, *kind = NULL, *reason = "";
        uint64_t at = 0;
        entry en = {0};
        if (rc || i++ >= KEEL__VERDICT_MAX)
            break;
        if ((rc = keel__json_str(it, "name", true, KEEL_NAME_MAX - 1, &name, where, err)) ||
            (rc = keel__json_str(it, "version", true, KEEL_VERSION_MAX - 1, &ver, where, err)) ||
            (rc = keel__json_str(it, "kind", true, 32, &kind, where, err)) ||
            (rc = keel__json_str(it, "reason", false, KEEL__VERDICT_REASON_MAX - 1, &reason, where,
                                 err)) ||
            (rc = keel__json_u64(it, "at", false, &at, where, err)))
            break;
        for (size_t k = 1; k < KEEL_ARRAY_LEN(kind_names); k++)
            if (!strcmp(kind, kind_names[k]))
                en.kind = (keel__verdict_kind)k;
        if (!en.kind) {
            rc = keel__err(err, KEEL_ECORRUPT, "%s: unknown verdict kind \"%.32s\"", where, kind);
            break;
        }
        keel__strlcpy(en.name, name, sizeof(en.name));
        keel__strlcpy(en.version, ver, sizeof(en.version));
        keel__strlcpy(en.reason, reason, sizeof(en.reason));
        en.at = (int64_t)at;
        if ((rc = add(v, &en)))
            rc = keel__err(err, rc, "out of memory");
    }
    cJSON_Delete(root);
    if (rc && err && rc != KEEL_ENOMEM)
        keel__err_prefix(err, "the list of versions not to retry is unreadable (fix or remove it)");
    return rc;
}

int keel__verdict_load(const char *path, keel__verdicts **ret, keel_error *err)
{
    keel__verdicts *v = calloc(1, sizeof(*v));
    char *data = NULL;
    size_t len = 0;
    int rc = KEEL_OK;
    if (!v)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_mutex_init(&v->mu, NULL);
    if (keel__snprintf(v->path, sizeof(v->path), "%s", path)) {
        rc = keel__err(err, KEEL_ETOOBIG, "path too long: %s", path);
        goto out;
    }
    if (keel__fs_exists(path)) {
        if (!(rc = keel__fs_read(path, KEEL__VERDICT_FILE_MAX, &data, &len, err)))
            rc = parse(v, data, len, err);
    }
out:
    free(data);
    if (rc) {
        keel__verdict_free(v);
        return rc;
    }
    *ret = v;
    return KEEL_OK;
}

void keel__verdict_free(keel__verdicts *v)
{
    if (!v)
        return;
    pthread_mutex_destroy(&v->mu);
    free(v->e);
    free(v);
}

static int json_locked(keel__verdicts *v, const char *name, keel_buf *b)
{
    int rc = keel__buf_append(b, "[", 1);
    bool first = true;
    for (size_t i = 0; !rc && i < v->n; i++) {
        const entry *en = &v->e[i];
        if (name && strcmp(name, en->name))
            continue;
        rc = keel__buf_appendf(b, "%s{\"name\":", first ? "" : ",");
        first = false;
        if (!rc)
            rc = keel__json_quote(b, en->name);
        if (!rc)
            rc = keel__buf_appendf(b, ",\"version\":");
        if (!rc)
            rc = keel__json_quote(b, en->version);
        if (!rc)
            rc = keel__buf_appendf(
                b, ",\"kind\":\"%s\",\"retry\":%s,\"reason\":", keel__verdict_kind_name(en->kind),
                keel__verdict_retry(en->kind) ? "true" : "false");
        if (!rc)
            rc = keel__json_quote(b, en->reason);
        if (!rc)
            rc = keel__buf_appendf(b, ",\"at\":%lld}", (long long)en->at);
    }
    if (!rc)
        rc = keel__buf_append(b, "]", 1);
    return rc;
}

int keel__verdict_record(keel__verdicts *v, const char *name, const char *version,
                         keel__verdict_kind kind, const char *reason, keel_error *err)
{
    entry en = {.kind = kind, .at = keel__now_wall_s()};
    keel_buf b;
    char dir[PATH_MAX];
    if (!kind || (unsigned)kind >= KEEL_ARRAY_LEN(kind_names))
        return keel__err(err, KEEL_EINVALID, "unknown verdict kind %d", (int)kind);
    if (keel__strlcpy(en.name, name, sizeof(en.name)) >= sizeof(en.name) ||
        keel__strlcpy(en.version, version, sizeof(en.version)) >= sizeof(en.version))
        return keel__err(err, KEEL_ETOOBIG, "package name or version too long");
    keel__strlcpy(en.reason, reason ? reason : "", sizeof(en.reason));
    keel__buf_init(&b, KEEL__VERDICT_FILE_MAX);
    pthread_mutex_lock(&v->mu);
    int rc = add(v, &en);
    if (rc)
        rc = keel__err(err, rc, "out of memory");
    if (!rc)
        rc = keel__buf_appendf(&b, "{\"format\":1,\"type\":\"keel-verdicts\",\"verdicts\":");
    if (!rc)
        rc = json_locked(v, NULL, &b);
    if (!rc)
        rc = keel__buf_append(&b, "}\n", 2);
    if (rc && rc != KEEL_ENOMEM)
        rc = keel__err(err, rc, "verdicts do not fit in %u bytes", KEEL__VERDICT_FILE_MAX);
    keel__strlcpy(dir, v->path, sizeof(dir));
    if (!rc)
        rc = keel__fs_mkdir_p(dirname(dir), 0700, err);
    if (!rc)
        rc = keel__fs_write_atomic(v->path, b.data, b.len, 0600, err);
    pthread_mutex_unlock(&v->mu);
    keel__buf_done(&b);
    return rc;
}

keel__verdict_kind keel__verdict_lookup(keel__verdicts *v, const char *name, const char *version,
                                        char *reason, size_t n)
{
    keel__verdict_kind k = KEEL__VERDICT_NONE;
    if (n)
        reason[0] = '\0';
    pthread_mutex_lock(&v->mu);
    for (size_t i = 0; i < v->n; i++)
        if (!strcmp(v->e[i].name, name) && !strcmp(v->e[i].version, version)) {
            k = v->e[i].kind;
            if (n)
                keel__strlcpy(reason, v->e[i].reason, n);
        }
    pthread_mutex_unlock(&v->mu);
    return k;
}

int keel__verdict_json(keel__verdicts *v, const char *name, keel_buf *b)
{
    pthread_mutex_lock(&v->mu);
    int rc = json_locked(v, name, b);
    pthread_mutex_unlock(&v->mu);
    return rc;
}
