/*
 * lint.c - every problem activation would find in a package's keel.json,
 * listed in one pass (lint.h).
 *
 * The checks stop at the first problem, so after each one the member it
 * blames ("tiers[1]", "postprocess", ...) is taken out of a copy of the
 * manifest and the checks run again, until they pass or the problem is in
 * something that cannot be taken out (name, version, format, files). Array
 * indexes in messages are those of the manifest as written.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/json.h"
#include "infer/lint.h"
#include "infer/model.h"
#include "keel/pkg.h"

#define MAX_ROUNDS  64
#define MAX_DEPTH   32
#define ZERO_SHA256 "0000000000000000000000000000000000000000000000000000000000000000"

static int add(keel__lint *l, const char *fmt, ...) KEEL_PRINTF(2, 3);
static int add(keel__lint *l, const char *fmt, ...)
{
    char msg[KEEL_ERROR_MSG_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->problems[i], msg))
            return KEEL_OK;
    char **p = realloc(l->problems, (l->n + 1) * sizeof(*p));
    if (!p)
        return KEEL_ENOMEM;
    l->problems = p;
    if (!(p[l->n] = strdup(msg)))
        return KEEL_ENOMEM;
    l->n++;
    return KEEL_OK;
}

void keel__lint_done(keel__lint *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->problems[i]);
    free(l->problems);
    l->problems = NULL;
    l->n = 0;
}

/* --- the files a pack of DIR would list ------------------------------------------- */

typedef struct walk_ctx {
    keel__lint *l;
    cJSON *files;
    size_t count, max;
} walk_ctx;

/* Lists what `keel pack` would (keel.json's "files", hashes left out: the
 * checks look at paths and sizes), and what it would refuse. */
static int walk(walk_ctx *w, const char *root, const char *rel, int depth, keel_error *err)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d)
        return keel__err(err, KEEL_EIO, "cannot read %s: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = KEEL_OK;
    while (!rc && (e = readdir(d))) {
        char sub[PATH_MAX], full[PATH_MAX];
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (!*rel && (!strcmp(e->d_name, KEEL_MANIFEST_NAME) || !strcmp(e->d_name, KEEL_SIG_NAME)))
            continue;
        snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(full, sizeof(full), "%s/%s", root, sub);
        if (lstat(full, &st)) {
            rc = keel__err(err, KEEL_EIO, "cannot stat %s: %s", full, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            if (depth >= MAX_DEPTH)
                rc = add(w->l, "%s: nested deeper than %d folders", sub, MAX_DEPTH);
            else
                rc = walk(w, root, sub, depth + 1, err);
        } else if (!S_ISREG(st.st_mode)) {
            rc =
                add(w->l, "%s: a symbolic link or special file; keel pack takes regular files only",
                    sub);
        } else if (++w->count <= w->max) {
            cJSON *f = cJSON_CreateObject();
            if (!f || !cJSON_AddItemToArray(w->files, f) ||
                !cJSON_AddStringToObject(f, "path", sub) ||
                !cJSON_AddNumberToObject(f, "size", (double)st.st_size) ||
                !cJSON_AddStringToObject(f, "sha256", ZERO_SHA256))
                rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        }
    }
    closedir(d);
    return rc;
}

/* --- blaming a member ----------------------------------------------------------------- */

/* The arrays whose elements are taken out one by one, and the index each
 * remaining element had in the manifest as written. */
typedef struct idx_map {
    const char *key;
    int orig[256];
    int n;
} idx_map;

typedef struct lint_ctx {
    keel__lint *l;
    cJSON *doc;      /* the copy being reduced */
    const char *dir; /* where the files are; NULL: nowhere (a packed manifest) */
    idx_map maps[3];
} lint_ctx;

static idx_map *map_of(lint_ctx *c, const char *key)
{
    for (size_t i = 0; i < KEEL_ARRAY_LEN(c->maps); i++)
        if (!strcmp(c->maps[i].key, key))
            return &c->maps[i];
    return NULL;
}

static void maps_init(lint_ctx *c)
{
    static const char *const keys[] = {"tiers", "inputs", "outputs"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(keys); i++) {
        idx_map *m = &c->maps[i];
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(c->doc, keys[i]);
        m->key = keys[i];
        m->n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
        if (m->n > (int)KEEL_ARRAY_LEN(m->orig))
            m->n = (int)KEEL_ARRAY_LEN(m->orig);
        for (int k = 0; k < m->n; k++)
            m->orig[k] = k;
    }
}

/* Finds the top-level member msg blames: its leading field ("tiers[1].model:
 * ...", after "keel.json: "), else the first top-level member it quotes
 * ("field \"policy\" must be an object"). *ret_idx: the element, or -1. */
static const cJSON *blame(const lint_ctx *c, const char *msg, int *ret_idx)
{
    char key[64];
    const char *p = msg;
    *ret_idx = -1;
    if (!strncmp(p, "keel.json: ", 11))
        p += 11;
    size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    if (n && n < sizeof(key)) {
        memcpy(key, p, n);
        key[n] = 0;
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->doc, key);
        if (it && (p[n] == '[' || p[n] == '.' || p[n] == ':' || p[n] == ' ')) {
            if (p[n] == '[')
                *ret_idx = atoi(p + n + 1);
            return it;
        }
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, c->doc)
    {
        char q[80];
        snprintf(q, sizeof(q), "\"%s\"", it->string);
        if (strstr(p, q))
            return it;
    }
    return NULL;
}

/* Records msg (indexes as written) and takes out what it blames; false when
 * nothing can be taken out, so the checks cannot go further. */
static bool record_and_reduce(lint_ctx *c, const char *msg, int *ret_rc)
{
    static const char *const vital[] = {"name", "version", "format", "files"};
    int idx;
    char buf[KEEL_ERROR_MSG_MAX + 64];
    const cJSON *it = blame(c, msg, &idx);
    idx_map *m = it ? map_of(c, it->string) : NULL;
    keel__strlcpy(buf, msg, sizeof(buf));
    if (m && idx >= 0 && idx < m->n && cJSON_IsArray(it)) {
        char was[80], now[80], *at;
        snprintf(was, sizeof(was), "%s[%d]", m->key, idx);
        snprintf(now, sizeof(now), "%s[%d]", m->key, m->orig[idx]);
        if ((at = strstr(msg, was)))
            snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - msg), msg, now, at + strlen(was));
    }
    *ret_rc = add(c->l, "%s%s", strncmp(buf, "keel.json", 9) ? "keel.json: " : "", buf);
    if (!it || *ret_rc)
        return false;
    /* a bad name or version is replaced by a good one to look further */
    if (!strcmp(it->string, "name") || !strcmp(it->string, "version")) {
        bool name = !strcmp(it->string, "name");
        if (cJSON_IsString(it) && !strcmp(it->valuestring, name ? "lint" : "0.0.0"))
            return false;
        cJSON *v = cJSON_CreateString(name ? "lint" : "0.0.0");
        if (!v || !cJSON_ReplaceItemInObjectCaseSensitive(c->doc, it->string, v)) {
            cJSON_Delete(v);
            *ret_rc = KEEL_ENOMEM;
            return false;
        }
        return true;
    }
    for (size_t i = 0; i < KEEL_ARRAY_LEN(vital); i++)
        if (!strcmp(it->string, vital[i]))
            return false;
    if (m && idx >= 0 && idx < m->n && cJSON_IsArray(it)) {
        cJSON_DeleteItemFromArray(cJSON_GetObjectItemCaseSensitive(c->doc, it->string), idx);
        memmove(&m->orig[idx], &m->orig[idx + 1], (size_t)(m->n - idx - 1) * sizeof(int));
        m->n--;
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(c->doc, it->string);
        if (m)
            m->n = 0;
    }
    return true;
}

/* --- the two readers ---------------------------------------------------------------- */

static bool listed(const cJSON *doc, const char *rel)
{
    const cJSON *f;
    cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(doc, "files"))
    {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(f, "path");
        if (cJSON_IsString(p) && !strcmp(p->valuestring, rel))
            return true;
    }
    return false;
}

/* The engine's path_of: a file the manifest names must be in the package;
 * read from the source directory when there is one. */
static int path_of(void *ctx, const char *rel, char *buf, size_t n, keel_error *err)
{
    lint_ctx *c = ctx;
    int rc;
    if (!listed(c->doc, rel) &&
        (rc = add(c->l, "keel.json names \"%s\", which is not a file in the package%s", rel,
                  c->dir ? " directory" : "")))
        return keel__err(err, rc, "out of memory");
    if (c->dir && listed(c->doc, rel))
        snprintf(buf, n, "%s/%s", c->dir, rel);
    else
        snprintf(buf, n, "/dev/null");
    return KEEL_OK;
}

static int run_checks(lint_ctx *c, bool engine, keel_error *err)
{
    int rc = KEEL_OK;
    for (int round = 0; round < MAX_ROUNDS; round++) {
        char *text = cJSON_Print(c->doc);
        keel_manifest *m = NULL;
        keel_error e = {0};
        if (!text)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        int crc = engine ? keel__model_check(text, strlen(text), path_of, c, &e)
                         : keel_manifest_parse(text, strlen(text), NULL, &m, &e);
        keel_manifest_free(m);
        free(text);
        if (!crc || crc == KEEL_ENOMEM)
            return crc ? keel__err(err, crc, "out of memory") : KEEL_OK;
        if (!record_and_reduce(c, e.msg, &rc))
            break;
        if (engine && !cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(c->doc, "tiers")))
            break; /* every tier taken out: nothing left for the engine to read */
    }
    return rc ? keel__err(err, rc, "out of memory") : KEEL_OK;
}

static int read_manifest(const char *path, char **ret, size_t *ret_len, char *dir, size_t dirn,
                         keel_error *err)
{
    struct stat st;
    keel_limits lim;
    keel_limits_default(&lim);
    dir[0] = 0;
    if (stat(path, &st))
        return keel__err(err, errno == ENOENT ? KEEL_ENOTFOUND : KEEL_EIO, "%s: %s", path,
                         strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char man[PATH_MAX];
        keel__strlcpy(dir, path, dirn);
        snprintf(man, sizeof(man), "%s/" KEEL_MANIFEST_NAME, path);
        int rc = keel__fs_read(man, lim.max_manifest_bytes, ret, ret_len, err);
        if (rc == KEEL_ENOTFOUND)
            return keel__err(err, rc,
                             "%s has no keel.json; write one with at least name and version "
                             "(see docs/package-format.md)",
                             path);
        return rc;
    }
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".keel")) { /* a packed package: its keel.json */
        keel_pkg *p = NULL;
        size_t len = 0;
        int rc = keel_pkg_open(path, NULL, &p, err);
        if (rc)
            return rc;
        const uint8_t *b = keel_manifest_bytes(keel_pkg_manifest(p), &len);
        *ret = keel__strndup((const char *)b, len);
        *ret_len = len;
        keel_pkg_close(p);
        return *ret ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    char copy[PATH_MAX], *slash;
    keel__strlcpy(copy, path, sizeof(copy));
    slash = strrchr(copy, '/');
    keel__strlcpy(dir, slash ? (slash == copy ? "/" : (*slash = 0, copy)) : ".", dirn);
    return keel__fs_read(path, lim.max_manifest_bytes, ret, ret_len, err);
}

int keel__lint_package(const char *path, keel__lint *ret, keel_error *err)
{
    char *text = NULL, dir[PATH_MAX];
    size_t len = 0;
    lint_ctx c = {.l = ret};
    keel_limits lim;
    int rc;
    memset(ret, 0, sizeof(*ret));
    keel_limits_default(&lim);
    if ((rc = read_manifest(path, &text, &len, dir, sizeof(dir), err)))
        return rc;
    keel_error e = {0};
    if (keel__json_parse(text, len, KEEL_MANIFEST_NAME, &c.doc, &e)) {
        rc = add(ret, "%s", e.msg);
        goto out;
    }
    if (!cJSON_IsObject(c.doc)) {
        rc = add(ret, "keel.json: expected a JSON object at the top");
        goto out;
    }
    c.dir = dir[0] ? dir : NULL;
    /* as keel pack writes it: "files" from the directory, "format" if absent */
    if (!cJSON_GetObjectItemCaseSensitive(c.doc, "files")) {
        walk_ctx w = {ret, cJSON_AddArrayToObject(c.doc, "files"), 0, lim.max_files};
        if (!w.files) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            goto out;
        }
        if (c.dir && (rc = walk(&w, c.dir, "", 0, err)))
            goto out;
        if (w.count > w.max &&
            (rc = add(ret, "%s holds %zu files, over the limit of %zu", c.dir, w.count, w.max)))
            goto out;
    }
    if (!cJSON_GetObjectItemCaseSensitive(c.doc, "format"))
        cJSON_AddNumberToObject(c.doc, "format", KEEL_PKG_FORMAT);
    bool has_tiers = cJSON_GetObjectItemCaseSensitive(c.doc, "tiers") != NULL;
    maps_init(&c);
    if ((rc = run_checks(&c, false, err)))
        goto out;
    /* a package without tiers (data, configuration) has nothing to serve */
    if (has_tiers && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(c.doc, "tiers")) &&
        (rc = run_checks(&c, true, err)))
        goto out;
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(c.doc, "validation"),
                *data = cJSON_GetObjectItemCaseSensitive(val, "data");
    if (cJSON_IsString(data) && !listed(c.doc, data->valuestring))
        rc = add(ret, "keel.json: validation.data: \"%s\" is not a file in the package",
                 data->valuestring);
out:
    if (rc == KEEL_ENOMEM)
        rc = keel__err(err, rc, "out of memory");
    cJSON_Delete(c.doc);
    free(text);
    return rc;
}
