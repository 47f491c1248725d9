/*
 * publish.c - the publisher's side of a repository: packages in, files by
 * hash, per-file patches, index.json and timestamp.json signed and written
 * in an order a reader can follow at any moment. See publish.h and
 * docs/update.md ("Repository").
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json.h"
#include "keel/pkg.h"
#include "update/patch.h"
#include "update/publish.h"

bool keel__publish_can_patch(void)
{
    return true; /* lib/update/patch.c is in every build */
}

/* --- small helpers ------------------------------------------------------------- */

static int64_t now_of(const keel__publish_opts *o)
{
    return o->now > 0 ? o->now : keel__now_wall_s();
}

static int repo_path(char *out, const char *repo, const char *rel, keel_error *err)
{
    if (keel__snprintf(out, PATH_MAX, "%s/%s", repo, rel))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s/%s", repo, rel);
    return KEEL_OK;
}

/* REPO/KIND/sha256/AB/HEX */
static int hash_path(char *out, const char *repo, const char *kind, const char *hex,
                     keel_error *err)
{
    if (keel__snprintf(out, PATH_MAX, "%s/%s/sha256/%.2s/%s", repo, kind, hex, hex))
        return keel__err(err, KEEL_ETOOBIG, "path too long under %s", repo);
    return KEEL_OK;
}

static int mkdir_parent(const char *path, keel_error *err)
{
    char dir[PATH_MAX];
    keel__strlcpy(dir, path, sizeof(dir));
    char *slash = strrchr(dir, '/');
    if (!slash)
        return KEEL_OK;
    *slash = '\0';
    return keel__fs_mkdir_p(dir, 0755, err);
}

static int write_file(const char *path, const void *data, size_t len, keel_error *err)
{
    int rc = mkdir_parent(path, err);
    return rc ? rc : keel__fs_write_atomic(path, data, len, 0644, err);
}

static bool same_size(const char *path, uint64_t size)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == size;
}

/* Copies src to dst: temporary file beside dst, fsync, rename, fsync dir. */
static int copy_file(const char *src, const char *dst, keel_error *err)
{
    char tmp[PATH_MAX];
    char buf[1 << 16];
    int in = -1, out = -1, rc;
    if ((rc = mkdir_parent(dst, err)))
        return rc;
    if (keel__snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", dst))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", dst);
    in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "opening %s", src);
    out = mkstemp(tmp);
    if (out < 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "creating %s", tmp);
        close(in);
        return rc;
    }
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = keel__err_errno(err, KEEL_EIO, errno, "reading %s", src);
            break;
        }
        if (n == 0)
            break;
        if ((rc = keel__fs_write_all(out, buf, (size_t)n))) {
            rc = keel__err_errno(err, rc, errno, "writing %s", tmp);
            break;
        }
    }
    if (!rc && (fchmod(out, 0644) != 0 || keel__fs_fsync(out) != 0))
        rc = keel__err_errno(err, KEEL_EIO, errno, "syncing %s", tmp);
    close(in);
    close(out);
    if (!rc && keel__fs_rename(tmp, dst) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "renaming %s", tmp);
    if (rc)
        unlink(tmp);
    else
        rc = keel__fs_fsync_parent(dst, err);
    return rc;
}

static int sign_doc(const keel_key *const *keys, size_t n, const char *ctx, const void *doc,
                    size_t len, char **ret_json, keel_error *err)
{
    keel_sigset sigs;
    int rc = KEEL_OK;
    memset(&sigs, 0, sizeof(sigs));
    if (n == 0)
        return keel__err(err, KEEL_EINVALID, "no key to sign with (pass --key)");
    for (size_t i = 0; !rc && i < n; i++) {
        uint8_t sig[KEEL_ED25519_SIG_LEN], id[KEEL_KEYID_LEN];
        if (!keel_key_has_private(keys[i]))
            return keel__err(err, KEEL_EINVALID,
                             "a public key cannot sign: pass the private key file (.key)");
        keel_key_id(keys[i], id);
        if (!(rc = keel_key_sign(keys[i], ctx, doc, len, sig, err)))
            rc = keel_sigset_add(&sigs, id, sig, err);
    }
    return rc ? rc : keel_sigset_format(&sigs, ret_json, err);
}

/* One writer at a time. Returns the fd to close, or -1 with err set. */
static int lock_repo(const char *repo, bool create, keel_error *err)
{
    char path[PATH_MAX];
    if (!create && !keel__fs_exists(repo)) {
        keel__err(err, KEEL_ENOTFOUND,
                  "repository %s does not exist: publish a package first (`keel publish`)", repo);
        return -1;
    }
    if ((create && keel__fs_mkdir_p(repo, 0755, err)) || repo_path(path, repo, ".lock", err))
        return -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        keel__err_errno(err, keel__err_from_errno(errno), errno, "opening %s", path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        keel__err(err, KEEL_EBUSY,
                  "another publisher is writing %s (it holds %s); wait for it and try again", repo,
                  path);
        close(fd);
        return -1;
    }
    return fd;
}

static void unlock_repo(int fd)
{
    if (fd >= 0)
        close(fd); /* drops the flock */
}

int keel__publish_duration(const char *s, int64_t *ret)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    int64_t mul = 1;
    if (end == s || errno || s[0] == '-')
        return KEEL_EINVALID;
    if (*end == 'd')
        mul = 86400;
    else if (*end == 'h')
        mul = 3600;
    else if (*end == 'm')
        mul = 60;
    else if (*end == 's' || *end == '\0')
        mul = 1;
    else
        return KEEL_EINVALID;
    if (*end && end[1])
        return KEEL_EINVALID;
    if (v == 0 || v > 3650ull * 86400 / (unsigned long long)mul)
        return KEEL_EINVALID;
    *ret = (int64_t)v * mul;
    return KEEL_OK;
}

/* --- the index as a JSON tree ----------------------------------------------------- */

static int set_item(cJSON *obj, const char *key, cJSON *v, keel_error *err)
{
    if (!v)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v)
                   ? KEEL_OK
                   : keel__err(err, KEEL_ENOMEM, "out of memory");
    return cJSON_AddItemToObject(obj, key, v) ? KEEL_OK
                                              : keel__err(err, KEEL_ENOMEM, "out of memory");
}

static cJSON *get_or_add_object(cJSON *obj, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsObject(v))
        return v;
    if (v)
        cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    return cJSON_AddObjectToObject(obj, key);
}

static const char *str_of(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Reads REPO/index.json (checked with the device's parser) or starts one. */
static int load_index(const char *repo, bool create, cJSON **ret, keel_error *err)
{
    char path[PATH_MAX], *data = NULL;
    size_t len = 0;
    keel__repo_index *ix = NULL;
    int rc;
    if ((rc = repo_path(path, repo, "index.json", err)))
        return rc;
    if (!keel__fs_exists(path)) {
        if (!create)
            return keel__err(err, KEEL_ENOTFOUND,
                             "%s has no index.json: publish a package first (`keel publish`)",
                             repo);
        cJSON *doc = cJSON_Parse("{\"format\":1,\"type\":\"keel-index\",\"version\":0,"
                                 "\"expires\":\"1970-01-01T00:00:00Z\",\"packages\":{}}");
        if (!doc)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        *ret = doc;
        return KEEL_OK;
    }
    if ((rc = keel__fs_read(path, KEEL__REPO_INDEX_MAX, &data, &len, err)))
        return rc;
    if ((rc = keel__repo_index_parse_doc(data, len, &ix, err)) ||
        (rc = keel__json_parse(data, len, "index.json", ret, err)))
        keel__err_prefix(err, "%s (fix or restore it before publishing)", path);
    keel__repo_index_free(ix);
    free(data);
    return rc;
}

static int write_timestamp(const keel__publish_opts *o, const char *index_doc, size_t index_len,
                           uint64_t index_version, uint64_t *ret_version, keel_error *err)
{
    char path[PATH_MAX], spath[PATH_MAX], hex[KEEL_SHA256_HEX], exp[21], *old = NULL, *sj = NULL;
    uint8_t sum[KEEL_SHA256_LEN];
    size_t olen = 0;
    uint64_t prev = 0;
    keel_buf b;
    int rc;
    if ((rc = repo_path(path, o->repo, "timestamp.json", err)) ||
        (rc = repo_path(spath, o->repo, "timestamp.sig", err)))
        return rc;
    if (keel__fs_exists(path)) {
        keel__repo_timestamp ts;
        if ((rc = keel__fs_read(path, KEEL__REPO_TIMESTAMP_MAX, &old, &olen, err)))
            return rc;
        rc = keel__repo_timestamp_parse_doc(old, olen, &ts, err);
        free(old);
        if (rc)
            return keel__err_prefix(err,
                                    "%s (devices refuse a timestamp version below the last they "
                                    "saw: restore it from a backup rather than remove it)",
                                    path);
        prev = ts.version;
    }
    keel_sha256_buf(index_doc, index_len, sum);
    keel_hex_encode(sum, sizeof(sum), hex);
    keel__repo_time_format(now_of(o) + (o->timestamp_expires > 0 ? o->timestamp_expires
                                                                 : KEEL__PUBLISH_TIMESTAMP_EXPIRES),
                           exp);
    keel__buf_init(&b, 0);
    if (keel__buf_appendf(
            &b,
            "{\n  \"format\": 1,\n  \"type\": \"keel-timestamp\",\n"
            "  \"version\": %llu,\n  \"expires\": \"%s\",\n"
            "  \"index\": {\"version\": %llu, \"size\": %zu, \"sha256\": \"%s\"}\n}\n",
            (unsigned long long)prev + 1, exp, (unsigned long long)index_version, index_len, hex)) {
        keel__buf_done(&b);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    const keel_key *const *keys = o->ntimestamp_keys ? o->timestamp_keys : o->index_keys;
    size_t nkeys = o->ntimestamp_keys ? o->ntimestamp_keys : o->nindex_keys;
    if (!(rc = sign_doc(keys, nkeys, KEEL_SIGCTX_TIMESTAMP, b.data, b.len, &sj, err)) &&
        !(rc = write_file(spath, sj, strlen(sj), err)))
        rc = write_file(path, b.data, b.len, err);
    if (!rc && ret_version)
        *ret_version = prev + 1;
    free(sj);
    keel__buf_done(&b);
    return rc;
}

/* Bumps the version, sets expires, checks the result with the device's
 * parser, signs and writes index.sig/index.json, then the timestamp. */
static int commit_index(const keel__publish_opts *o, cJSON *doc, uint64_t *ret_index,
                        uint64_t *ret_ts, keel_error *err)
{
    uint64_t v = 0;
    char exp[21], path[PATH_MAX], spath[PATH_MAX], *text = NULL, *sj = NULL;
    keel__repo_index *ix = NULL;
    int rc;
    if ((rc = keel__json_u64(doc, "version", true, &v, "index.json", err)))
        return rc;
    keel__repo_time_format(
        now_of(o) + (o->index_expires > 0 ? o->index_expires : KEEL__PUBLISH_INDEX_EXPIRES), exp);
    if ((rc = set_item(doc, "version", cJSON_CreateNumber((double)(v + 1)), err)) ||
        (rc = set_item(doc, "expires", cJSON_CreateString(exp), err)))
        return rc;
    text = cJSON_Print(doc);
    if (!text)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    size_t len = strlen(text);
    if ((rc = keel__repo_index_parse_doc(text, len, &ix, err))) {
        keel__err_prefix(err, "the new index.json would not be accepted by devices");
        goto out;
    }
    if ((rc = repo_path(path, o->repo, "index.json", err)) ||
        (rc = repo_path(spath, o->repo, "index.sig", err)) ||
        (rc = sign_doc(o->index_keys, o->nindex_keys, KEEL_SIGCTX_INDEX, text, len, &sj, err)) ||
        (rc = write_file(spath, sj, strlen(sj), err)) || (rc = write_file(path, text, len, err)) ||
        (rc = write_timestamp(o, text, len, v + 1, ret_ts, err)))
        goto out;
    if (ret_index)
        *ret_index = v + 1;
out:
    keel__repo_index_free(ix);
    free(sj);
    free(text);
    return rc;
}

/* --- files of a package ------------------------------------------------------------ */

typedef struct sink_ctx {
    const char *repo;
    int fd;
    char tmp[PATH_MAX], final[PATH_MAX];
    size_t files_new, files_reused;
} sink_ctx;

static int sink_begin(void *ud, const keel_file *f, bool *ret_skip, keel_error *err)
{
    sink_ctx *c = ud;
    char hex[KEEL_SHA256_HEX];
    int rc;
    keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
    if ((rc = hash_path(c->final, c->repo, "files", hex, err)))
        return rc;
    if (same_size(c->final, f->size)) {
        *ret_skip = true; /* identical files are stored once */
        c->files_reused++;
        return KEEL_OK;
    }
    if ((rc = mkdir_parent(c->final, err)))
        return rc;
    if (keel__snprintf(c->tmp, sizeof(c->tmp), "%s.tmp-XXXXXX", c->final))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", c->final);
    c->fd = mkstemp(c->tmp);
    if (c->fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "creating %s", c->tmp);
    return KEEL_OK;
}

static int sink_write(void *ud, const void *data, size_t len, keel_error *err)
{
    sink_ctx *c = ud;
    if (c->fd >= 0 && keel__fs_write_all(c->fd, data, len))
        return keel__err_errno(err, KEEL_EIO, errno, "writing %s", c->tmp);
    return KEEL_OK;
}

static int sink_end(void *ud, const keel_file *f, bool ok, keel_error *err)
{
    sink_ctx *c = ud;
    int rc = KEEL_OK;
    KEEL_UNUSED(f);
    if (c->fd < 0)
        return KEEL_OK;
    if (ok && (fchmod(c->fd, 0644) != 0 || keel__fs_fsync(c->fd) != 0))
        rc = keel__err_errno(err, KEEL_EIO, errno, "syncing %s", c->tmp);
    close(c->fd);
    c->fd = -1;
    if (ok && !rc && keel__fs_rename(c->tmp, c->final) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "renaming %s", c->tmp);
    if (!ok || rc) {
        unlink(c->tmp);
        return rc;
    }
    c->files_new++;
    return keel__fs_fsync_parent(c->final, err);
}

/* --- patches ------------------------------------------------------------------------ */

static int cmp_hash(const void *a, const void *b)
{
    return memcmp(a, b, KEEL_SHA256_LEN);
}

/* Reads REPO/packages/NAME/VERSION/keel.json. */
static int load_manifest(const char *repo, const char *name, const char *version,
                         keel_manifest **ret, keel_error *err)
{
    char path[PATH_MAX], *data = NULL;
    size_t len = 0;
    int rc;
    if (keel__snprintf(path, sizeof(path), "%s/packages/%s/%s/keel.json", repo, name, version))
        return keel__err(err, KEEL_ETOOBIG, "path too long under %s", repo);
    if ((rc = keel__fs_read(path, 1u << 30, &data, &len, err)))
        return rc;
    rc = keel_manifest_parse(data, len, NULL, ret, err);
    free(data);
    return rc;
}

static bool has_patch(const cJSON *arr, const char *from, const char *to)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        const char *f = str_of(it, "from"), *t = str_of(it, "to");
        if (f && t && !strcmp(f, from) && !strcmp(t, to))
            return true;
    }
    return false;
}

/* Patches for each file of m against the same path in base: offered only
 * when smaller than the bytes of chunks base's files lack. */
static int patch_against(const char *repo, const keel_manifest *m, const keel_manifest *base,
                         cJSON *patches, keel__publish_result *res, keel_error *err)
{
    size_t nb = 0, k = 0;
    uint8_t(*have)[KEEL_SHA256_LEN] = NULL;
    int rc = KEEL_OK;
    for (size_t i = 0; i < keel_manifest_nfiles(base); i++)
        nb += keel_manifest_file(base, i)->nchunks;
    have = calloc(nb ? nb : 1, KEEL_SHA256_LEN);
    if (!have)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < keel_manifest_nfiles(base); i++) {
        const keel_file *f = keel_manifest_file(base, i);
        for (size_t j = 0; j < f->nchunks; j++)
            memcpy(have[k++], f->chunks[j].sha256, KEEL_SHA256_LEN);
    }
    qsort(have, nb, KEEL_SHA256_LEN, cmp_hash);
    for (size_t i = 0; !rc && i < keel_manifest_nfiles(m); i++) {
        const keel_file *f = keel_manifest_file(m, i);
        const keel_file *bf = keel_manifest_find(base, f->path);
        char fhex[KEEL_SHA256_HEX], bhex[KEEL_SHA256_HEX], from[72], to[72];
        char bpath[PATH_MAX], tpath[PATH_MAX], out[PATH_MAX], phex[KEEL_SHA256_HEX];
        uint8_t psum[KEEL_SHA256_LEN];
        uint64_t lack = 0, psize = 0;
        if (!bf || !memcmp(bf->sha256, f->sha256, KEEL_SHA256_LEN) || bf->size == 0)
            continue; /* identical files never get a patch */
        for (size_t j = 0; j < f->nchunks; j++)
            if (!bsearch(f->chunks[j].sha256, have, nb, KEEL_SHA256_LEN, cmp_hash))
                lack += f->chunks[j].len;
        if (lack == 0)
            continue;
        keel_hex_encode(f->sha256, KEEL_SHA256_LEN, fhex);
        keel_hex_encode(bf->sha256, KEEL_SHA256_LEN, bhex);
        snprintf(from, sizeof(from), "sha256:%s", bhex);
        snprintf(to, sizeof(to), "sha256:%s", fhex);
        if (has_patch(patches, from, to))
            continue;
        if ((rc = hash_path(bpath, repo, "files", bhex, err)) ||
            (rc = hash_path(tpath, repo, "files", fhex, err)))
            break;
        if (keel__snprintf(out, sizeof(out), "%s/patches/.new-%s", repo, fhex)) {
            rc = keel__err(err, KEEL_ETOOBIG, "path too long under %s", repo);
            break;
        }
        if ((rc = mkdir_parent(out, err)))
            break;
        if ((rc = keel__patch_make(bpath, tpath, out, err))) {
            keel__err_prefix(err, "making a patch %s -> %s for %s", bhex, fhex, f->path);
            unlink(out);
            break;
        }
        if ((rc = keel_sha256_file(out, psum, &psize, err))) {
            unlink(out);
            break;
        }
        res->chunk_bytes += lack;
        if (psize >= lack) {
            unlink(out); /* chunks are cheaper: no patch */
            continue;
        }
        keel_hex_encode(psum, sizeof(psum), phex);
        char final[PATH_MAX];
        if ((rc = hash_path(final, repo, "patches", phex, err)) || (rc = mkdir_parent(final, err)))
            break;
        if (keel__fs_rename(out, final) != 0) {
            rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "renaming %s", out);
            unlink(out);
            break;
        }
        if ((rc = keel__fs_fsync_parent(final, err)))
            break;
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddStringToObject(e, "from", from) ||
            !cJSON_AddStringToObject(e, "to", to) || !cJSON_AddStringToObject(e, "sha256", phex) ||
            !cJSON_AddNumberToObject(e, "size", (double)psize) ||
            !cJSON_AddStringToObject(e, "codec", KEEL__PATCH_CODEC) ||
            !cJSON_AddItemToArray(patches, e)) {
            cJSON_Delete(e);
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            break;
        }
        res->patches++;
        res->patch_bytes += psize;
    }
    free(have);
    return rc;
}

typedef struct vref {
    const char *version;
} vref;

static int cmp_vref_desc(const void *a, const void *b)
{
    return keel_semver_cmp(((const vref *)b)->version, ((const vref *)a)->version);
}

/* Patches from the newest `n` published, unpulled versions below version. */
static int make_patches(const char *repo, const keel_manifest *m, const cJSON *versions, unsigned n,
                        cJSON *patches, keel__publish_result *res, keel_error *err)
{
    const char *version = keel_manifest_version(m);
    size_t nv = 0, k = 0;
    const cJSON *it;
    int rc = KEEL_OK;
    if (n == 0)
        return KEEL_OK;
    cJSON_ArrayForEach(it, versions) nv++;
    vref *refs = calloc(nv ? nv : 1, sizeof(*refs));
    if (!refs)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    cJSON_ArrayForEach(it, versions)
    {
        const cJSON *pulled = cJSON_GetObjectItemCaseSensitive(it, "pulled");
        if (keel_semver_cmp(it->string, version) < 0 && !cJSON_IsTrue(pulled))
            refs[k++].version = it->string;
    }
    qsort(refs, k, sizeof(*refs), cmp_vref_desc);
    for (size_t i = 0; !rc && i < k && i < n; i++) {
        keel_manifest *base = NULL;
        if ((rc = load_manifest(repo, keel_manifest_name(m), refs[i].version, &base, err))) {
            keel__err_prefix(err, "reading version %s to patch from", refs[i].version);
            break;
        }
        rc = patch_against(repo, m, base, patches, res, err);
        keel_manifest_free(base);
    }
    free(refs);
    return rc;
}

/* Refuses keys the trust would not accept for the index or the timestamp,
 * before anything is written: a dummy document signed by them must pass. */
static int check_signers(const keel__publish_opts *o, const keel_trust *t, keel_error *err)
{
    static const char probe[] = "{}";
    for (int k = 0; k < 2; k++) {
        const keel_key *const *keys = k && o->ntimestamp_keys ? o->timestamp_keys : o->index_keys;
        size_t n = k && o->ntimestamp_keys ? o->ntimestamp_keys : o->nindex_keys;
        const char *ctx = k ? KEEL_SIGCTX_TIMESTAMP : KEEL_SIGCTX_INDEX;
        char *sj = NULL;
        keel_sigset sigs;
        int rc = sign_doc(keys, n, ctx, probe, 2, &sj, err);
        if (!rc)
            rc = keel_sigset_parse(sj, strlen(sj), &sigs, err);
        if (!rc)
            rc = keel_trust_check_doc(t, k ? KEEL_ROLE_TIMESTAMP : KEEL_ROLE_INDEX, ctx,
                                      k ? "a timestamp signed with these keys"
                                        : "an index signed with these keys",
                                      probe, 2, &sigs, err);
        free(sj);
        if (rc)
            return rc;
    }
    return KEEL_OK;
}

/* --- publish -------------------------------------------------------------------------- */

int keel__publish_package(const keel__publish_opts *o, const char *pkg_path,
                          const keel__publish_args *a, keel__publish_result *ret, keel_error *err)
{
    keel_pkg *p = NULL;
    cJSON *doc = NULL;
    char path[PATH_MAX], *sj = NULL;
    keel__publish_result res;
    sink_ctx sink = {.repo = o->repo, .fd = -1};
    int lock = -1, rc;
    memset(&res, 0, sizeof(res));
    if (a->channel && a->rollout >= 0 &&
        (!(a->rollout <= 100) || fabs(a->rollout * 100 - (double)llround(a->rollout * 100)) > 1e-6))
        return keel__err(err, KEEL_EINVALID,
                         "rollout %g is not a percent 0..100 with at most two decimals",
                         a->rollout);
    if ((rc = keel_pkg_open(pkg_path, NULL, &p, err)))
        return keel__err_prefix(err, "%s", pkg_path);
    const keel_manifest *m = keel_pkg_manifest(p);
    const char *name = keel_manifest_name(m), *version = keel_manifest_version(m);
    size_t mlen = 0;
    const uint8_t *mbytes = keel_manifest_bytes(m, &mlen);
    keel__strlcpy(res.name, name, sizeof(res.name));
    keel__strlcpy(res.version, version, sizeof(res.version));
    keel_manifest_digest_str(m, res.digest);
    if (keel_pkg_sigs(p)->count == 0) {
        rc = keel__err(err, KEEL_EUNTRUSTED,
                       "%s is not signed: devices would refuse it; sign it first with `keel sign "
                       "%s --key KEY`",
                       pkg_path, pkg_path);
        goto out;
    }
    if (a->trust && (rc = keel_pkg_check_trust(p, a->trust, err))) {
        keel__err_prefix(err, "%s: devices trusting that root would refuse it", pkg_path);
        goto out;
    }
    if (a->trust && (rc = check_signers(o, a->trust, err)))
        goto out;
    if ((lock = lock_repo(o->repo, true, err)) < 0) {
        rc = err ? err->code : KEEL_EBUSY;
        goto out;
    }
    if ((rc = load_index(o->repo, true, &doc, err)))
        goto out;
    cJSON *pkgs = get_or_add_object(doc, "packages");
    cJSON *pk = pkgs ? get_or_add_object(pkgs, name) : NULL;
    cJSON *versions = pk ? get_or_add_object(pk, "versions") : NULL;
    if (!versions) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    cJSON *existing = cJSON_GetObjectItemCaseSensitive(versions, version);
    if (existing) {
        const char *d = str_of(existing, "digest");
        if (!d || strcmp(d, res.digest) != 0) {
            rc = keel__err(err, KEEL_ECONFLICT,
                           "%s %s is published already with another digest (%s, this package "
                           "is %s): a published version never changes; give this build a new "
                           "version",
                           name, version, d ? d : "?", res.digest);
            goto out;
        }
        res.already = true;
    }
    cJSON *chans = a->channel ? get_or_add_object(pk, "channels") : NULL;
    cJSON *ch = chans ? cJSON_GetObjectItemCaseSensitive(chans, a->channel) : NULL;
    const char *cur = ch ? str_of(ch, "version") : NULL;
    if (cur && keel_semver_cmp(version, cur) < 0) {
        if (!a->force) {
            rc = keel__err(err, KEEL_EDOWNGRADE,
                           "%s %s is below %s, the version channel \"%s\" offers now: devices "
                           "never go back this way; to move the channel back anyway, pass "
                           "--force [--reason TEXT] (devices that took %s keep it)",
                           name, version, cur, a->channel, cur);
            goto out;
        }
        KEEL_LOG_W("publish", "moving channel %s of %s back from %s to %s (--force): %s",
                   a->channel, name, cur, version,
                   a->reason && a->reason[0] ? a->reason : "no reason given");
    }
    /* Files first (checked byte by byte against the manifest), then the
     * package's own copies, then patches, then the metadata. */
    keel_pkg_sink s = {sink_begin, sink_write, sink_end, &sink};
    if ((rc = keel_pkg_extract(p, &s, err))) {
        keel__err_prefix(err, "%s", pkg_path);
        goto out;
    }
    char rel[PATH_MAX];
    if (keel__snprintf(rel, sizeof(rel), "packages/%s/%s/keel.json", name, version) ||
        (rc = repo_path(path, o->repo, rel, err)) || (rc = write_file(path, mbytes, mlen, err)) ||
        (rc = keel_sigset_format(keel_pkg_sigs(p), &sj, err)) ||
        keel__snprintf(rel, sizeof(rel), "packages/%s/%s/keel.sig", name, version) ||
        (rc = repo_path(path, o->repo, rel, err)) || (rc = write_file(path, sj, strlen(sj), err)) ||
        keel__snprintf(rel, sizeof(rel), "packages/%s/%s/%s-%s.keel", name, version, name,
                       version) ||
        (rc = repo_path(path, o->repo, rel, err)) || (rc = copy_file(pkg_path, path, err))) {
        if (!rc)
            rc = keel__err(err, KEEL_ETOOBIG, "path too long under %s", o->repo);
        goto out;
    }
    cJSON *entry = existing;
    if (!entry) {
        entry = cJSON_CreateObject();
        if (!entry || !cJSON_AddStringToObject(entry, "digest", res.digest) ||
            !cJSON_AddNumberToObject(entry, "manifest_size", (double)mlen) ||
            !cJSON_AddFalseToObject(entry, "pulled") || !cJSON_AddArrayToObject(entry, "patches") ||
            !cJSON_AddItemToObject(versions, version, entry)) {
            cJSON_Delete(entry);
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            goto out;
        }
    }
    cJSON *patches = get_or_add_object(entry, "patches");
    if (!cJSON_IsArray(patches)) {
        cJSON_DeleteItemFromObjectCaseSensitive(entry, "patches");
        patches = cJSON_AddArrayToObject(entry, "patches");
    }
    if (!patches) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = make_patches(o->repo, m, versions, a->patch_from, patches, &res, err)))
        goto out;
    bool keep = cur && !strcmp(cur, version) && a->rollout < 0;
    if (keep) {
        const char *b = str_of(ch, "base");
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(ch, "rollout");
        keel__strlcpy(res.base, b ? b : "", sizeof(res.base));
        res.rollout = cJSON_IsNumber(r) ? r->valuedouble : 0;
        res.kept = true;
    }
    if (a->channel && !keep) {
        double rollout = a->rollout < 0 ? 100 : a->rollout;
        res.rollout = rollout;
        cJSON *nc = cJSON_CreateObject();
        bool moved = cur && strcmp(cur, version) != 0;
        const char *oldbase = ch ? str_of(ch, "base") : NULL;
        const char *base = rollout < 100 ? (moved ? cur : oldbase) : NULL;
        if (base)
            keel__strlcpy(res.base, base, sizeof(res.base));
        if (!nc || !cJSON_AddStringToObject(nc, "version", version) ||
            !cJSON_AddNumberToObject(nc, "rollout", rollout) ||
            !cJSON_AddFalseToObject(nc, "halted") ||
            (base && !cJSON_AddStringToObject(nc, "base", res.base))) {
            cJSON_Delete(nc);
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = set_item(chans, a->channel, nc, err)))
            goto out;
    }
    rc = commit_index(o, doc, &res.index_version, &res.timestamp_version, err);
    res.files_new = sink.files_new;
    res.files_reused = sink.files_reused;
out:
    if (sink.fd >= 0) {
        close(sink.fd);
        unlink(sink.tmp);
    }
    unlock_repo(lock);
    free(sj);
    cJSON_Delete(doc);
    keel_pkg_close(p);
    if (!rc && ret)
        *ret = res;
    return rc;
}

/* --- rollout and timestamp ------------------------------------------------------------- */

int keel__publish_rollout(const keel__publish_opts *o, const char *name, const char *channel,
                          keel__rollout_action act, double percent, const char *version,
                          keel_error *err)
{
    cJSON *doc = NULL;
    int lock = lock_repo(o->repo, false, err), rc;
    if (lock < 0)
        return err ? err->code : KEEL_EBUSY;
    if ((rc = load_index(o->repo, false, &doc, err)))
        goto out;
    cJSON *pk =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "packages"), name);
    if (!cJSON_IsObject(pk)) {
        rc = keel__err(err, KEEL_ENOTFOUND, "%s has no package \"%s\" (publish it first)", o->repo,
                       name);
        goto out;
    }
    if (act == KEEL__ROLLOUT_PULL) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(pk, "versions"), version ? version : "");
        if (!cJSON_IsObject(v)) {
            rc = keel__err(err, KEEL_ENOTFOUND, "package \"%s\" has no version \"%s\"", name,
                           version ? version : "");
            goto out;
        }
        rc = set_item(v, "pulled", cJSON_CreateTrue(), err);
    } else {
        cJSON *ch = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(pk, "channels"), channel ? channel : "");
        if (!cJSON_IsObject(ch)) {
            rc = keel__err(err, KEEL_ENOTFOUND,
                           "package \"%s\" has no channel \"%s\" (`keel publish --channel` "
                           "creates one)",
                           name, channel ? channel : "");
            goto out;
        }
        if (act == KEEL__ROLLOUT_SET &&
            (!(percent >= 0 && percent <= 100) ||
             fabs(percent * 100 - (double)llround(percent * 100)) > 1e-6)) {
            rc = keel__err(err, KEEL_EINVALID,
                           "rollout %g is not a percent 0..100 with at most two decimals", percent);
            goto out;
        }
        if (act == KEEL__ROLLOUT_SET)
            rc = set_item(ch, "rollout", cJSON_CreateNumber(percent), err);
        else if (act == KEEL__ROLLOUT_HALT || act == KEEL__ROLLOUT_RESUME)
            rc = set_item(ch, "halted", cJSON_CreateBool(act == KEEL__ROLLOUT_HALT), err);
        else if (act == KEEL__ROLLOUT_PROMOTE) {
            if (!(rc = set_item(ch, "rollout", cJSON_CreateNumber(100), err)) &&
                !(rc = set_item(ch, "halted", cJSON_CreateFalse(), err)))
                cJSON_DeleteItemFromObjectCaseSensitive(ch, "base");
        } else
            rc = keel__err(err, KEEL_EINVALID, "unknown rollout action %d", (int)act);
    }
    if (!rc)
        rc = commit_index(o, doc, NULL, NULL, err);
out:
    cJSON_Delete(doc);
    unlock_repo(lock);
    return rc;
}

int keel__publish_timestamp(const keel__publish_opts *o, uint64_t *ret_version, keel_error *err)
{
    char path[PATH_MAX], *data = NULL;
    size_t len = 0;
    keel__repo_index *ix = NULL;
    int lock = lock_repo(o->repo, false, err), rc;
    if (lock < 0)
        return err ? err->code : KEEL_EBUSY;
    if (!(rc = repo_path(path, o->repo, "index.json", err)) &&
        !(rc = keel__fs_read(path, KEEL__REPO_INDEX_MAX, &data, &len, err)) &&
        !(rc = keel__repo_index_parse_doc(data, len, &ix, err)))
        rc = write_timestamp(o, data, len, keel__repo_index_version(ix), ret_version, err);
    keel__repo_index_free(ix);
    free(data);
    unlock_repo(lock);
    return rc;
}

/* --- verify ------------------------------------------------------------------------------ */

static int read_pair(const char *repo, const char *doc, const char *sig, size_t max, char **d,
                     size_t *dl, char **s, size_t *sl, keel_error *err)
{
    char p[PATH_MAX];
    int rc;
    *d = *s = NULL;
    if ((rc = repo_path(p, repo, doc, err)) || (rc = keel__fs_read(p, max, d, dl, err)) ||
        (rc = repo_path(p, repo, sig, err)) ||
        (rc = keel__fs_read(p, KEEL__REPO_SIG_MAX, s, sl, err))) {
        free(*d);
        *d = NULL;
        return rc;
    }
    return KEEL_OK;
}

static void note(keel_buf *r, unsigned *bad, const char *fmt, ...) KEEL_PRINTF(3, 4);
static void note(keel_buf *r, unsigned *bad, const char *fmt, ...)
{
    char line[KEEL_ERROR_MSG_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (bad)
        (*bad)++;
    if (r && keel__buf_appendf(r, "%s%s\n", bad ? "FAIL " : "ok   ", line)) {
        /* a full report is cut; the count is not */
    }
}

static bool check_blob(const char *repo, const char *kind, const char *hex, uint64_t size,
                       const char *what, keel_buf *r, unsigned *bad)
{
    char p[PATH_MAX];
    uint8_t sum[KEEL_SHA256_LEN];
    char got[KEEL_SHA256_HEX];
    uint64_t n = 0;
    keel_error e;
    if (hash_path(p, repo, kind, hex, &e) || keel_sha256_file(p, sum, &n, &e)) {
        note(r, bad, "%s: %s/sha256/%.2s/%s: %s", what, kind, hex, hex, e.msg);
        return false;
    }
    keel_hex_encode(sum, sizeof(sum), got);
    if (n != size || strcmp(got, hex) != 0) {
        note(r, bad,
             "%s: %s/sha256/%.2s/%s holds %llu bytes with sha256 %.16s..., expected %llu "
             "bytes with its name as hash",
             what, kind, hex, hex, (unsigned long long)n, got, (unsigned long long)size);
        return false;
    }
    return true;
}

static void verify_entry(const char *repo, const keel_trust *t, const keel__repo_entry *en,
                         keel_buf *r, unsigned *bad)
{
    char p[PATH_MAX], *data = NULL, *sig = NULL, digest[72];
    size_t len = 0, slen = 0;
    keel_manifest *m = NULL;
    keel_sigset sigs;
    keel_pkg *pkg = NULL;
    keel_error e;
    uint8_t sum[KEEL_SHA256_LEN];
    char hex[KEEL_SHA256_HEX];
    unsigned before = *bad;
    if (keel__snprintf(p, sizeof(p), "%s/packages/%s/%s/keel.json", repo, en->name, en->version) ||
        keel__fs_read(p, (size_t)en->manifest_size, &data, &len, &e)) {
        note(r, bad, "%s %s: keel.json: %s", en->name, en->version,
             keel__fs_exists(p) ? e.msg : "missing");
        goto out;
    }
    keel_sha256_buf(data, len, sum);
    keel_hex_encode(sum, sizeof(sum), hex);
    snprintf(digest, sizeof(digest), "sha256:%s", hex);
    if (len != en->manifest_size || strcmp(digest, en->digest) != 0) {
        note(r, bad, "%s %s: keel.json is not the one index.json names (digest %s, expected %s)",
             en->name, en->version, digest, en->digest);
        goto out;
    }
    if (keel_manifest_parse(data, len, NULL, &m, &e)) {
        note(r, bad, "%s %s: keel.json: %s", en->name, en->version, e.msg);
        goto out;
    }
    if (strcmp(keel_manifest_name(m), en->name) || strcmp(keel_manifest_version(m), en->version)) {
        note(r, bad, "%s %s: keel.json is package %s %s", en->name, en->version,
             keel_manifest_name(m), keel_manifest_version(m));
        goto out;
    }
    if (keel__snprintf(p, sizeof(p), "%s/packages/%s/%s/keel.sig", repo, en->name, en->version) ||
        keel__fs_read(p, KEEL__REPO_SIG_MAX, &sig, &slen, &e) ||
        keel_sigset_parse(sig, slen, &sigs, &e) ||
        keel_trust_check_package(t, en->name, data, len, &sigs, &e)) {
        note(r, bad, "%s %s: keel.sig: %s", en->name, en->version, e.msg);
        goto out;
    }
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++) {
        const keel_file *f = keel_manifest_file(m, i);
        char fh[KEEL_SHA256_HEX], what[KEEL_PATH_MAX + 160];
        keel_hex_encode(f->sha256, KEEL_SHA256_LEN, fh);
        snprintf(what, sizeof(what), "%s %s: %s", en->name, en->version, f->path);
        check_blob(repo, "files", fh, f->size, what, r, bad);
    }
    for (size_t i = 0; i < en->npatches; i++) {
        const keel__repo_patch *pt = &en->patches[i];
        char what[300];
        bool target = false;
        for (size_t j = 0; j < keel_manifest_nfiles(m) && !target; j++) {
            char fh[KEEL_SHA256_HEX];
            keel_hex_encode(keel_manifest_file(m, j)->sha256, KEEL_SHA256_LEN, fh);
            target = !strcmp(fh, pt->to);
        }
        snprintf(what, sizeof(what), "%s %s: patch %.16s...", en->name, en->version, pt->sha256);
        if (!target)
            note(r, bad, "%s: \"to\" %.16s... is no file of this version", what, pt->to);
        check_blob(repo, "patches", pt->sha256, pt->size, what, r, bad);
    }
    if (keel__snprintf(p, sizeof(p), "%s/packages/%s/%s/%s-%s.keel", repo, en->name, en->version,
                       en->name, en->version) ||
        keel_pkg_open(p, NULL, &pkg, &e) || keel_pkg_check_trust(pkg, t, &e) ||
        keel_pkg_extract(pkg, NULL, &e)) {
        note(r, bad, "%s %s: %s-%s.keel: %s", en->name, en->version, en->name, en->version, e.msg);
        goto out;
    }
    keel_manifest_digest_str(keel_pkg_manifest(pkg), digest);
    if (strcmp(digest, en->digest) != 0)
        note(r, bad, "%s %s: %s-%s.keel holds another build (digest %s)", en->name, en->version,
             en->name, en->version, digest);
out:
    if (*bad == before)
        note(r, NULL, "%s %s%s: %zu files, %zu patches", en->name, en->version,
             en->pulled ? " (pulled)" : "", m ? keel_manifest_nfiles(m) : 0, en->npatches);
    keel_pkg_close(pkg);
    keel_manifest_free(m);
    free(data);
    free(sig);
}

int keel__publish_verify(const char *repo, const keel_trust *t, keel__repo_state *st, int64_t now,
                         keel_buf *report, keel_error *err)
{
    char *td = NULL, *ts_sig = NULL, *id = NULL, *is = NULL;
    size_t tl = 0, tsl = 0, il = 0, isl = 0;
    keel__repo_timestamp ts;
    keel__repo_index *ix = NULL;
    unsigned bad = 0;
    int rc;
    if ((rc = read_pair(repo, "timestamp.json", "timestamp.sig", KEEL__REPO_TIMESTAMP_MAX, &td, &tl,
                        &ts_sig, &tsl, err)) ||
        (rc = keel__repo_check_timestamp(t, td, tl, ts_sig, tsl, st, now, &ts, err)) ||
        (rc = read_pair(repo, "index.json", "index.sig", KEEL__REPO_INDEX_MAX, &id, &il, &is, &isl,
                        err)) ||
        (rc = keel__repo_index_parse(t, id, il, is, isl, &ts, st, now, &ix, err)))
        goto out;
    note(report, NULL, "timestamp.json version %llu, index.json version %llu",
         (unsigned long long)ts.version, (unsigned long long)keel__repo_index_version(ix));
    keel__repo_entry en;
    for (size_t i = 0; keel__repo_index_entry(ix, i, &en); i++)
        verify_entry(repo, t, &en, report, &bad);
    if (bad) {
        rc = keel__err(err, KEEL_ECORRUPT,
                       "%s: %u problem%s (listed above): a device would refuse what they touch; "
                       "publish again or restore the files",
                       repo, bad, bad == 1 ? "" : "s");
        goto out;
    }
    if (st) {
        st->timestamp_version = ts.version;
        st->index_version = keel__repo_index_version(ix);
        keel__strlcpy(st->index_sha256, ts.index_sha256, sizeof(st->index_sha256));
    }
out:
    keel__repo_index_free(ix);
    free(td);
    free(ts_sig);
    free(id);
    free(is);
    return rc;
}
