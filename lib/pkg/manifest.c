/*
 * manifest.c - parsing and checking keel.json (package format v1).
 *
 * The parser keeps the exact bytes (signatures are over them) and the cJSON
 * tree (so unknown fields survive and later modules can read their sections).
 * Every check names the field and says what was expected.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "pkg/pkg_internal.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "keel/pkg.h"

struct keel_manifest {
    uint8_t *bytes;
    size_t len;
    uint8_t digest[KEEL_SHA256_LEN];
    cJSON *root;
    int format;
    const char *name, *version, *description, *task, *created;
    size_t nfiles;
    keel_file *files;   /* sorted by path */
    keel_chunk *chunks; /* all files' chunks, one allocation */
    uint64_t total;
    size_t ntiers;
    const cJSON **tiers;
};

static const char *const dtypes[] = {"float32", "float16", "bfloat16", "float64", "int8",
                                     "int16",   "int32",   "int64",    "uint8",   "uint16",
                                     "uint32",  "uint64",  "bool",     "string"};

bool keel__pkg_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= KEEL_NAME_MAX)
        return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

const char *keel__pkg_path_problem(const char *p, size_t len)
{
    size_t comp = 0, depth = 0;
    if (len == 0)
        return "empty path";
    if (len >= KEEL_PATH_MAX)
        return "path longer than 1023 bytes";
    if (p[0] == '/')
        return "absolute path";
    for (size_t i = 0; i <= len; i++) {
        char c = i < len ? p[i] : '/';
        if (c == '/') {
            const char *s = p + i - comp;
            if (comp == 0)
                return "empty path component (\"//\" or trailing \"/\")";
            if ((comp == 1 && s[0] == '.') || (comp == 2 && s[0] == '.' && s[1] == '.'))
                return "\".\" or \"..\" component";
            if (comp > 255)
                return "path component longer than 255 bytes";
            if (++depth > 32)
                return "more than 32 directory levels";
            comp = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '+' || c == '@' || c == '=' || c == ','))
            return "character outside [A-Za-z0-9._+@=,-]";
        comp++;
    }
    return NULL;
}

void keel_manifest_free(keel_manifest *m)
{
    if (!m)
        return;
    free(m->bytes);
    cJSON_Delete(m->root);
    free(m->files);
    free(m->chunks);
    free(m->tiers);
    free(m);
}

static int file_cmp(const void *a, const void *b)
{
    return strcmp(((const keel_file *)a)->path, ((const keel_file *)b)->path);
}

static int parse_sha(const cJSON *obj, const char *key, uint8_t out[KEEL_SHA256_LEN],
                     const char *where, keel_error *err)
{
    const char *s = NULL;
    int rc = keel__json_str(obj, key, true, 64, &s, where, err);
    if (rc)
        return rc;
    if (keel_hex_decode(s, strlen(s), out, KEEL_SHA256_LEN))
        return keel__err(err, KEEL_EINVALID, "%s: \"%s\" must be 64 hex digits", where, key);
    return KEEL_OK;
}

static int parse_files(keel_manifest *m, const cJSON *files, const keel_limits *lim,
                       keel_error *err)
{
    const cJSON *it;
    size_t n = (size_t)cJSON_GetArraySize(files), i = 0, nchunks = 0, ci = 0;
    if (n > lim->max_files)
        return keel__err(err, KEEL_ETOOBIG,
                         "keel.json: \"files\" lists %zu files, more than the limit of %u", n,
                         lim->max_files);
    /* Count chunks first: one allocation for all of them. */
    cJSON_ArrayForEach(it, files)
    {
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(it, "chunks");
        if (cJSON_IsArray(ch))
            nchunks += (size_t)cJSON_GetArraySize(ch);
    }
    m->files = calloc(n ? n : 1, sizeof(*m->files));
    m->chunks = calloc(nchunks ? nchunks : 1, sizeof(*m->chunks));
    if (!m->files || !m->chunks)
        return keel__err(err, KEEL_ENOMEM, "out of memory reading keel.json");
    cJSON_ArrayForEach(it, files)
    {
        char where[64];
        keel_file *f = &m->files[i];
        const cJSON *ch = NULL, *c;
        const char *path = NULL, *problem;
        int rc;
        snprintf(where, sizeof(where), "keel.json: files[%zu]", i++);
        if (!cJSON_IsObject(it))
            return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
        if ((rc = keel__json_str(it, "path", true, KEEL_PATH_MAX, &path, where, err)) ||
            (rc = keel__json_u64(it, "size", true, &f->size, where, err)) ||
            (rc = parse_sha(it, "sha256", f->sha256, where, err)) ||
            (rc = keel__json_member(it, "chunks", cJSON_Array, false, &ch, where, err)))
            return rc;
        if ((problem = keel__pkg_path_problem(path, strlen(path))))
            return keel__err(err, KEEL_EINVALID, "%s: path \"%s\" is not allowed: %s", where, path,
                             problem);
        if (!strcmp(path, KEEL_MANIFEST_NAME) || !strcmp(path, KEEL_SIG_NAME))
            return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is reserved", where, path);
        if (f->size > lim->max_file_bytes)
            return keel__err(err, KEEL_ETOOBIG, "%s: \"%s\" is %llu bytes, over the limit of %llu",
                             where, path, (unsigned long long)f->size,
                             (unsigned long long)lim->max_file_bytes);
        f->path = path;
        m->total += f->size;
        if (m->total > lim->max_package_bytes)
            return keel__err(err, KEEL_ETOOBIG,
                             "keel.json: files add up to more than the package limit of %llu "
                             "bytes",
                             (unsigned long long)lim->max_package_bytes);
        if (!ch)
            continue;
        f->chunks = &m->chunks[ci];
        uint64_t off = 0;
        size_t k = 0;
        cJSON_ArrayForEach(c, ch)
        {
            const cJSON *l = cJSON_GetArrayItem(c, 0), *h = cJSON_GetArrayItem(c, 1);
            uint64_t len = 0;
            keel_chunk *kc = &m->chunks[ci];
            if (!cJSON_IsArray(c) || cJSON_GetArraySize(c) != 2 || !keel__json_is_uint(l, &len) ||
                len == 0 || len > KEEL_CHUNK_MAX || !cJSON_IsString(h) ||
                keel_hex_decode(h->valuestring, strlen(h->valuestring), kc->sha256,
                                KEEL_SHA256_LEN))
                return keel__err(err, KEEL_EINVALID,
                                 "%s: chunks[%zu] must be [length 1..%u, \"<64 hex sha256>\"]",
                                 where, k, KEEL_CHUNK_MAX);
            kc->offset = off;
            kc->len = (uint32_t)len;
            off += len;
            ci++;
            k++;
        }
        f->nchunks = k;
        if (off != f->size)
            return keel__err(err, KEEL_EINVALID,
                             "%s: chunk lengths add up to %llu, but size is %llu", where,
                             (unsigned long long)off, (unsigned long long)f->size);
    }
    m->nfiles = n;
    qsort(m->files, n, sizeof(*m->files), file_cmp);
    for (size_t j = 1; j < n; j++)
        if (strcmp(m->files[j - 1].path, m->files[j].path) == 0)
            return keel__err(err, KEEL_EINVALID, "keel.json: \"%s\" is listed twice in files",
                             m->files[j].path);
    return KEEL_OK;
}

static int parse_tensors(const cJSON *arr, const char *what, keel_error *err)
{
    const cJSON *it;
    size_t i = 0;
    cJSON_ArrayForEach(it, arr)
    {
        char where[64];
        const char *name = NULL, *dtype = NULL;
        const cJSON *shape = NULL, *d;
        int rc;
        bool ok = false;
        snprintf(where, sizeof(where), "keel.json: %s[%zu]", what, i++);
        if (!cJSON_IsObject(it))
            return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
        if ((rc = keel__json_str(it, "name", true, 256, &name, where, err)) ||
            (rc = keel__json_str(it, "dtype", true, 16, &dtype, where, err)) ||
            (rc = keel__json_member(it, "shape", cJSON_Array, false, &shape, where, err)))
            return rc;
        for (size_t k = 0; k < KEEL_ARRAY_LEN(dtypes); k++)
            ok = ok || strcmp(dtype, dtypes[k]) == 0;
        if (!ok)
            return keel__err(err, KEEL_EINVALID,
                             "%s: dtype \"%s\" is not one of float32, float16, bfloat16, "
                             "float64, int8..int64, uint8..uint64, bool, string",
                             where, dtype);
        cJSON_ArrayForEach(d, shape)
        {
            /* A dimension is a size >= 0, -1 (dynamic), or a symbolic name. */
            if (cJSON_IsString(d))
                continue;
            if (!cJSON_IsNumber(d) || d->valuedouble < -1 || d->valuedouble > 1e15 ||
                d->valuedouble != (double)(long long)d->valuedouble)
                return keel__err(err, KEEL_EINVALID,
                                 "%s: shape entries must be sizes, -1 (dynamic) or names", where);
        }
    }
    return KEEL_OK;
}

/* A pipeline tier's "steps" (docs/pipelines.md): the shape the package
 * format fixes, and every step's model in "files". What the steps mean
 * (ops, edges, cycles, shapes) is lib/infer/graph.c's to check. */
static int check_steps(keel_manifest *m, const cJSON *tier, const char *where, keel_error *err)
{
    const cJSON *steps = NULL, *it;
    size_t k = 0;
    int rc = keel__json_member(tier, "steps", cJSON_Array, false, &steps, where, err);
    if (rc || !steps)
        return rc;
    if (cJSON_GetArraySize(steps) > 32)
        return keel__err(err, KEEL_ETOOBIG, "%s: more than 32 steps", where);
    cJSON_ArrayForEach(it, steps)
    {
        char w[80];
        const char *model = NULL;
        snprintf(w, sizeof(w), "%s.steps[%zu]", where, k++);
        if (!cJSON_IsObject(it))
            return keel__err(err, KEEL_EINVALID, "%s: expected an object", w);
        if ((rc = keel__json_str(it, "model", false, KEEL_PATH_MAX, &model, w, err)))
            return rc;
        if (model && !keel_manifest_find(m, model))
            return keel__err(err, KEEL_EINVALID,
                             "%s: model \"%s\" is not in \"files\" (add the file to the "
                             "package directory and pack again)",
                             w, model);
    }
    return KEEL_OK;
}

static int parse_tiers(keel_manifest *m, const cJSON *arr, keel_error *err)
{
    const cJSON *it;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    if (n > 16)
        return keel__err(err, KEEL_ETOOBIG, "keel.json: more than 16 tiers");
    m->tiers = calloc(n ? n : 1, sizeof(*m->tiers));
    if (!m->tiers)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    cJSON_ArrayForEach(it, arr)
    {
        char where[48];
        const char *name = NULL, *backend = NULL, *model = NULL;
        const cJSON *opts = NULL;
        int rc;
        snprintf(where, sizeof(where), "keel.json: tiers[%zu]", i);
        if (!cJSON_IsObject(it))
            return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
        if ((rc = keel__json_str(it, "name", true, 64, &name, where, err)) ||
            (rc = keel__json_str(it, "backend", true, 32, &backend, where, err)) ||
            (rc = keel__json_str(it, "model", false, KEEL_PATH_MAX, &model, where, err)) ||
            (rc = keel__json_member(it, "options", cJSON_Object, false, &opts, where, err)))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(keel_manifest_tier_name(m, j), name))
                return keel__err(err, KEEL_EINVALID, "%s: tier name \"%s\" is used twice", where,
                                 name);
        m->tiers[i++] = it;
        m->ntiers = i;
        if (model && !keel_manifest_find(m, model))
            return keel__err(err, KEEL_EINVALID,
                             "%s: model \"%s\" is not in \"files\" (add the file to the "
                             "package directory and pack again)",
                             where, model);
        if ((rc = check_steps(m, it, where, err)))
            return rc;
    }
    return KEEL_OK;
}

int keel_manifest_parse(const void *data, size_t len, const keel_limits *lim, keel_manifest **ret,
                        keel_error *err)
{
    keel_manifest *m = NULL;
    keel_limits deflim;
    const cJSON *files = NULL, *tiers = NULL, *inputs = NULL, *outputs = NULL, *o = NULL;
    uint64_t format = 0;
    int rc;
    if (!lim) {
        keel_limits_default(&deflim);
        lim = &deflim;
    }
    if (len > lim->max_manifest_bytes)
        return keel__err(err, KEEL_ETOOBIG, "keel.json is %zu bytes, over the limit of %u", len,
                         lim->max_manifest_bytes);
    m = calloc(1, sizeof(*m));
    if (!m || !(m->bytes = malloc(len ? len : 1))) {
        free(m);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    memcpy(m->bytes, data, len);
    m->len = len;
    keel_sha256_buf(data, len, m->digest);
    if ((rc = keel__json_parse(data, len, "keel.json", &m->root, err)))
        goto out;
    if (!cJSON_IsObject(m->root)) {
        rc = keel__err(err, KEEL_EINVALID, "keel.json: expected a JSON object at the top");
        goto out;
    }
    if ((rc = keel__json_u64(m->root, "format", true, &format, "keel.json", err)))
        goto out;
    if (format > KEEL_PKG_FORMAT) {
        rc = keel__err(err, KEEL_EUNSUPPORTED,
                       "keel.json: package format %llu is newer than this keel supports (%d); "
                       "upgrade keel to install it",
                       (unsigned long long)format, KEEL_PKG_FORMAT);
        goto out;
    }
    if (format < 1) {
        rc = keel__err(err, KEEL_EINVALID, "keel.json: \"format\" must be 1");
        goto out;
    }
    m->format = (int)format;
    m->description = m->task = m->created = "";
    if ((rc = keel__json_str(m->root, "name", true, KEEL_NAME_MAX, &m->name, "keel.json", err)) ||
        (rc = keel__json_str(m->root, "version", true, KEEL_VERSION_MAX, &m->version, "keel.json",
                             err)) ||
        (rc = keel__json_str(m->root, "description", false, 4096, &m->description, "keel.json",
                             err)) ||
        (rc = keel__json_str(m->root, "task", false, 64, &m->task, "keel.json", err)) ||
        (rc = keel__json_str(m->root, "created", false, 64, &m->created, "keel.json", err)))
        goto out;
    if (!keel__pkg_name_valid(m->name)) {
        rc = keel__err(err, KEEL_EINVALID,
                       "keel.json: name \"%s\" must be 1..127 characters of [a-z0-9._-], "
                       "starting with a letter or digit",
                       m->name);
        goto out;
    }
    if (!keel_semver_valid(m->version)) {
        rc =
            keel__err(err, KEEL_EINVALID,
                      "keel.json: version \"%s\" is not a semantic version like 1.2.3", m->version);
        goto out;
    }
    if ((rc = keel__json_member(m->root, "files", cJSON_Array, true, &files, "keel.json", err)) ||
        (rc = keel__json_member(m->root, "tiers", cJSON_Array, false, &tiers, "keel.json", err)) ||
        (rc =
             keel__json_member(m->root, "inputs", cJSON_Array, false, &inputs, "keel.json", err)) ||
        (rc =
             keel__json_member(m->root, "outputs", cJSON_Array, false, &outputs, "keel.json", err)))
        goto out;
    /* Sections later modules read: checked for type here so a wrong type is
     * refused at pack and install, not at first use. */
    static const char *const objects[] = {"policy", "validation", "health", "baseline"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(objects); i++)
        if ((rc =
                 keel__json_member(m->root, objects[i], cJSON_Object, false, &o, "keel.json", err)))
            goto out;
    static const char *const steps[] = {"preprocess", "postprocess"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(steps); i++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(m->root, steps[i]);
        if (s && !cJSON_IsArray(s) && !cJSON_IsObject(s)) {
            rc = keel__err(err, KEEL_EINVALID,
                           "keel.json: \"%s\" must be a list of steps or an object", steps[i]);
            goto out;
        }
    }
    if ((rc = parse_files(m, files, lim, err)) ||
        (inputs && (rc = parse_tensors(inputs, "inputs", err))) ||
        (outputs && (rc = parse_tensors(outputs, "outputs", err))) ||
        (tiers && (rc = parse_tiers(m, tiers, err))))
        goto out;
    *ret = m;
    m = NULL;
out:
    keel_manifest_free(m);
    return rc;
}

int keel_manifest_format(const keel_manifest *m)
{
    return m->format;
}
const char *keel_manifest_name(const keel_manifest *m)
{
    return m->name;
}
const char *keel_manifest_version(const keel_manifest *m)
{
    return m->version;
}
const char *keel_manifest_description(const keel_manifest *m)
{
    return m->description;
}
const char *keel_manifest_task(const keel_manifest *m)
{
    return m->task;
}
const char *keel_manifest_created(const keel_manifest *m)
{
    return m->created;
}
size_t keel_manifest_nfiles(const keel_manifest *m)
{
    return m->nfiles;
}
const keel_file *keel_manifest_file(const keel_manifest *m, size_t i)
{
    return i < m->nfiles ? &m->files[i] : NULL;
}
uint64_t keel_manifest_total_bytes(const keel_manifest *m)
{
    return m->total;
}
size_t keel_manifest_ntiers(const keel_manifest *m)
{
    return m->ntiers;
}

static const char *tier_str(const keel_manifest *m, size_t i, const char *key)
{
    if (i >= m->ntiers)
        return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m->tiers[i], key);
    return cJSON_IsString(v) ? v->valuestring : "";
}
const char *keel_manifest_tier_name(const keel_manifest *m, size_t i)
{
    return tier_str(m, i, "name");
}
const char *keel_manifest_tier_backend(const keel_manifest *m, size_t i)
{
    return tier_str(m, i, "backend");
}
const char *keel_manifest_tier_model(const keel_manifest *m, size_t i)
{
    return tier_str(m, i, "model");
}

const keel_file *keel_manifest_find(const keel_manifest *m, const char *path)
{
    size_t lo = 0, hi = m->nfiles;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(path, m->files[mid].path);
        if (c == 0)
            return &m->files[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const uint8_t *keel_manifest_bytes(const keel_manifest *m, size_t *ret_len)
{
    if (ret_len)
        *ret_len = m->len;
    return m->bytes;
}

void keel_manifest_digest(const keel_manifest *m, uint8_t out[KEEL_SHA256_LEN])
{
    memcpy(out, m->digest, KEEL_SHA256_LEN);
}

void keel_manifest_digest_str(const keel_manifest *m, char out[72])
{
    memcpy(out, "sha256:", 7);
    keel_hex_encode(m->digest, KEEL_SHA256_LEN, out + 7);
}

const void *keel__manifest_json(const keel_manifest *m)
{
    return m->root;
}

int keel_manifest_summary_json(const keel_manifest *m, char **ret_json, keel_error *err)
{
    char digest[72];
    int rc;
    cJSON *o = cJSON_CreateObject(), *files, *tiers;
    if (!o)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    keel_manifest_digest_str(m, digest);
    cJSON_AddNumberToObject(o, "format", m->format);
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddStringToObject(o, "version", m->version);
    cJSON_AddStringToObject(o, "digest", digest);
    cJSON_AddStringToObject(o, "description", m->description);
    cJSON_AddStringToObject(o, "task", m->task);
    cJSON_AddStringToObject(o, "created", m->created);
    cJSON_AddNumberToObject(o, "total_bytes", (double)m->total);
    files = cJSON_AddArrayToObject(o, "files");
    for (size_t i = 0; files && i < m->nfiles; i++) {
        char hex[KEEL_SHA256_HEX];
        cJSON *f = cJSON_CreateObject();
        if (!f)
            break;
        keel_hex_encode(m->files[i].sha256, KEEL_SHA256_LEN, hex);
        cJSON_AddStringToObject(f, "path", m->files[i].path);
        cJSON_AddNumberToObject(f, "size", (double)m->files[i].size);
        cJSON_AddStringToObject(f, "sha256", hex);
        cJSON_AddNumberToObject(f, "chunks", (double)m->files[i].nchunks);
        cJSON_AddItemToArray(files, f);
    }
    tiers = cJSON_AddArrayToObject(o, "tiers");
    for (size_t i = 0; tiers && i < m->ntiers; i++) {
        cJSON *t = cJSON_CreateObject();
        if (!t)
            break;
        cJSON_AddStringToObject(t, "name", keel_manifest_tier_name(m, i));
        cJSON_AddStringToObject(t, "backend", keel_manifest_tier_backend(m, i));
        cJSON_AddStringToObject(t, "model", keel_manifest_tier_model(m, i));
        cJSON_AddItemToArray(tiers, t);
    }
    *ret_json = cJSON_Print(o);
    rc = *ret_json ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
    cJSON_Delete(o);
    return rc;
}
