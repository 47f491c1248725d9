/*
 * writer.c - `keel pack` and `keel sign`: building a .keel tar.
 *
 * Output is deterministic for the same inputs: members in sorted order after
 * keel.json and keel.sig, pax headers with mode 0644, owner 0, and mtime from
 * SOURCE_DATE_EPOCH (0 when unset). The output file is written beside its
 * final name and renamed into place only when complete.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json.h"
#include "pkg/archive_dl.h"
#include "pkg/pkg_internal.h"

#define IO_BLOCK (1u << 20)

typedef struct strlist {
    char **v;
    size_t n, cap;
} strlist;

static void strlist_done(strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

static int strlist_add(strlist *l, const char *s)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return KEEL_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(s)))
        return KEEL_ENOMEM;
    l->n++;
    return KEEL_OK;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collects regular files under root/rel, relative paths. */
static int walk(const char *root, const char *rel, strlist *out, const keel_limits *lim,
                keel_error *err)
{
    char dir[PATH_MAX];
    int rc = KEEL_OK;
    if (keel__snprintf(dir, sizeof(dir), "%s%s%s", root, rel[0] ? "/" : "", rel))
        return keel__err(err, KEEL_ETOOBIG, "path too long under %s", root);
    DIR *d = opendir(dir);
    if (!d)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", dir);
    struct dirent *de;
    while ((de = readdir(d))) {
        char sub[PATH_MAX], full[PATH_MAX];
        struct stat st;
        const char *problem;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (!rel[0] &&
            (!strcmp(de->d_name, KEEL_MANIFEST_NAME) || !strcmp(de->d_name, KEEL_SIG_NAME)))
            continue;
        if (keel__snprintf(sub, sizeof(sub), "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) ||
            keel__snprintf(full, sizeof(full), "%s/%s", root, sub)) {
            rc = keel__err(err, KEEL_ETOOBIG, "path too long under %s", root);
            break;
        }
        if (lstat(full, &st) != 0) {
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot stat %s", full);
            break;
        }
        if ((problem = keel__pkg_path_problem(sub, strlen(sub)))) {
            rc = keel__err(err, KEEL_EINVALID, "%s: name not allowed in a package: %s", full,
                           problem);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            if ((rc = walk(root, sub, out, lim, err)))
                break;
        } else if (S_ISREG(st.st_mode)) {
            if (out->n >= lim->max_files) {
                rc = keel__err(err, KEEL_ETOOBIG, "%s holds more than %u files", root,
                               lim->max_files);
                break;
            }
            if ((rc = strlist_add(out, sub))) {
                rc = keel__err(err, rc, "out of memory");
                break;
            }
        } else {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s is a %s; packages hold only regular files (copy the target in)",
                           full, S_ISLNK(st.st_mode) ? "symbolic link" : "special file");
            break;
        }
    }
    closedir(d);
    return rc;
}

struct chunk_json {
    cJSON *arr;
    bool oom;
};

static void on_chunk(void *ud, const keel_chunk *c)
{
    struct chunk_json *cj = ud;
    char hex[KEEL_SHA256_HEX];
    cJSON *pair = cJSON_CreateArray();
    keel_hex_encode(c->sha256, KEEL_SHA256_LEN, hex);
    if (!pair || !cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)c->len)) ||
        !cJSON_AddItemToArray(pair, cJSON_CreateString(hex)) ||
        !cJSON_AddItemToArray(cj->arr, pair)) {
        cJSON_Delete(pair);
        cj->oom = true;
    }
}

/* Hashes one file whole and in chunks; appends its entry to files. */
static int describe_file(const char *root, const char *rel, cJSON *files, unsigned char *buf,
                         keel_sha256 *h, keel_error *err)
{
    char full[PATH_MAX], hex[KEEL_SHA256_HEX];
    uint8_t digest[KEEL_SHA256_LEN];
    uint64_t size = 0;
    struct chunk_json cj = {NULL, false};
    keel_chunker *ck = NULL;
    cJSON *f = NULL;
    int rc = KEEL_OK, fd;
    if (keel__snprintf(full, sizeof(full), "%s/%s", root, rel))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", rel);
    fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", full);
    f = cJSON_CreateObject();
    cj.arr = cJSON_CreateArray();
    ck = keel_chunker_new(on_chunk, &cj);
    if (!f || !cj.arr || !ck) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf, IO_BLOCK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot read %s", full);
            goto out;
        }
        if (r == 0)
            break;
        keel_sha256_update(h, buf, (size_t)r);
        keel_chunker_update(ck, buf, (size_t)r);
        size += (uint64_t)r;
    }
    keel_chunker_finish(ck);
    keel_sha256_final(h, digest);
    keel_hex_encode(digest, sizeof(digest), hex);
    if (cj.oom || !cJSON_AddStringToObject(f, "path", rel) ||
        !cJSON_AddNumberToObject(f, "size", (double)size) ||
        !cJSON_AddStringToObject(f, "sha256", hex)) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    cJSON_AddItemToObject(f, "chunks", cj.arr);
    cj.arr = NULL;
    cJSON_AddItemToArray(files, f);
    f = NULL;
out:
    keel_chunker_free(ck);
    cJSON_Delete(cj.arr);
    cJSON_Delete(f);
    close(fd);
    return rc;
}

static int64_t source_epoch(void)
{
    const char *s = getenv("SOURCE_DATE_EPOCH");
    if (!s || !*s)
        return 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    return *end || v < 0 ? 0 : (int64_t)v;
}

/* --- tar output ------------------------------------------------------------ */

typedef struct tar_out {
    struct archive *ar;
    struct archive_entry *e;
    char tmp[PATH_MAX];
    const char *final;
    int fd;
} tar_out;

static int tar_open(tar_out *t, const char *path, keel_error *err)
{
    memset(t, 0, sizeof(*t));
    t->fd = -1;
    t->final = path;
    int rc = keel__archive_load(err);
    if (rc)
        return rc;
    if (keel__snprintf(t->tmp, sizeof(t->tmp), "%s.tmp.XXXXXX", path))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", path);
    t->fd = mkostemp(t->tmp, O_CLOEXEC);
    if (t->fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno,
                               "cannot create a file beside %s", path);
    if (fchmod(t->fd, 0644) != 0) {
        /* best effort: mkostemp made it 0600 */
    }
    t->ar = archive_write_new();
    t->e = archive_entry_new();
    if (!t->ar || !t->e || archive_write_set_format_pax_restricted(t->ar) != ARCHIVE_OK ||
        archive_write_open_fd(t->ar, t->fd) != ARCHIVE_OK)
        return keel__err(err, KEEL_EIO, "cannot start writing %s", path);
    return KEEL_OK;
}

static int tar_header(tar_out *t, const char *name, uint64_t size, keel_error *err)
{
    archive_entry_clear(t->e);
    archive_entry_set_pathname(t->e, name);
    archive_entry_set_size(t->e, (la_int64_t)size);
    archive_entry_set_filetype(t->e, AE_IFREG);
    archive_entry_set_perm(t->e, 0644);
    archive_entry_set_mtime(t->e, (time_t)source_epoch(), 0);
    if (archive_write_header(t->ar, t->e) != ARCHIVE_OK)
        return keel__err(err, KEEL_EIO, "cannot write %s into %s: %s", name, t->final,
                         archive_error_string(t->ar));
    return KEEL_OK;
}

static int tar_data(tar_out *t, const void *data, size_t len, keel_error *err)
{
    if (len && archive_write_data(t->ar, data, len) != (la_ssize_t)len)
        return keel__err(err, KEEL_EIO, "cannot write %s: %s", t->final,
                         archive_error_string(t->ar));
    return KEEL_OK;
}

static int tar_member(tar_out *t, const char *name, const void *data, size_t len, keel_error *err)
{
    int rc = tar_header(t, name, len, err);
    return rc ? rc : tar_data(t, data, len, err);
}

/* The first two members: keel.json (exact bytes) and keel.sig (sigs). */
static int tar_head(tar_out *t, const void *manifest, size_t len, const keel_sigset *sigs,
                    keel_error *err)
{
    char *sigjson = NULL;
    int rc = keel_sigset_format(sigs, &sigjson, err);
    if (!rc && !(rc = tar_member(t, KEEL_MANIFEST_NAME, manifest, len, err)))
        rc = tar_member(t, KEEL_SIG_NAME, sigjson, strlen(sigjson), err);
    free(sigjson);
    return rc;
}

/* Finishes (commit=true: fsync + rename) or abandons the output. */
static int tar_close(tar_out *t, bool commit, keel_error *err)
{
    int rc = KEEL_OK;
    if (t->ar) {
        if (archive_write_close(t->ar) != ARCHIVE_OK && commit)
            rc = keel__err(err, KEEL_EIO, "cannot finish %s: %s", t->final,
                           archive_error_string(t->ar));
        archive_write_free(t->ar);
    }
    archive_entry_free(t->e);
    if (t->fd >= 0) {
        if (commit && !rc && keel__fs_fsync(t->fd) != 0)
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot fsync %s", t->tmp);
        close(t->fd);
    }
    if (commit && !rc) {
        if (keel__fs_rename(t->tmp, t->final) != 0)
            rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot rename to %s",
                                 t->final);
        else
            rc = keel__fs_fsync_parent(t->final, err);
    }
    if (!commit || rc)
        unlink(t->tmp);
    return rc;
}

/* Copies a source file into the tar, checking it still hashes the same. */
static int copy_file(tar_out *t, const char *root, const keel_file *f, unsigned char *buf,
                     keel_sha256 *h, keel_error *err)
{
    char full[PATH_MAX];
    uint8_t digest[KEEL_SHA256_LEN];
    uint64_t got = 0;
    int rc, fd;
    if (keel__snprintf(full, sizeof(full), "%s/%s", root, f->path))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", f->path);
    if ((rc = tar_header(t, f->path, f->size, err)))
        return rc;
    fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return keel__err_errno(err, KEEL_EIO, errno, "cannot open %s", full);
    while (!rc) {
        ssize_t r = read(fd, buf, IO_BLOCK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot read %s", full);
            break;
        }
        if (r == 0)
            break;
        got += (uint64_t)r;
        if (got > f->size)
            break;
        keel_sha256_update(h, buf, (size_t)r);
        rc = tar_data(t, buf, (size_t)r, err);
    }
    close(fd);
    if (rc)
        return rc;
    keel_sha256_final(h, digest);
    if (got != f->size || memcmp(digest, f->sha256, KEEL_SHA256_LEN) != 0)
        return keel__err(err, KEEL_ECONFLICT, "%s changed while it was being packed; pack again",
                         full);
    return KEEL_OK;
}

static int sign_all(const keel_manifest *m, const keel_key *const *keys, size_t nkeys,
                    keel_sigset *sigs, keel_error *err)
{
    size_t len;
    const uint8_t *bytes = keel_manifest_bytes(m, &len);
    for (size_t i = 0; i < nkeys; i++) {
        uint8_t sig[KEEL_ED25519_SIG_LEN], id[KEEL_KEYID_LEN];
        int rc = keel_key_sign(keys[i], KEEL_SIGCTX_PACKAGE, bytes, len, sig, err);
        if (rc)
            return rc;
        keel_key_id(keys[i], id);
        if ((rc = keel_sigset_add(sigs, id, sig, err)))
            return rc;
    }
    return KEEL_OK;
}

int keel_pack_dir(const char *src_dir, const char *out_path, const keel_key *const *keys,
                  size_t nkeys, const keel_limits *lim, keel_error *err)
{
    char path[PATH_MAX], created[32];
    char *tmpl = NULL, *text = NULL;
    size_t tlen;
    cJSON *doc = NULL, *files = NULL;
    strlist list = {0};
    keel_manifest *m = NULL;
    keel_sigset sigs = {0};
    keel_limits deflim;
    tar_out t = {.fd = -1};
    unsigned char *buf = malloc(IO_BLOCK);
    keel_sha256 *h = keel_sha256_new();
    bool opened = false;
    int rc;
    if (!lim) {
        keel_limits_default(&deflim);
        lim = &deflim;
    }
    if (!buf || !h) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = keel__snprintf(path, sizeof(path), "%s/%s", src_dir, KEEL_MANIFEST_NAME))) {
        rc = keel__err(err, rc, "path too long: %s", src_dir);
        goto out;
    }
    if ((rc = keel__fs_read(path, lim->max_manifest_bytes, &tmpl, &tlen, err))) {
        if (rc == KEEL_ENOTFOUND)
            keel__err(err, rc,
                      "%s has no keel.json; write one with at least format, name and version "
                      "(see docs/package-format.md)",
                      src_dir);
        goto out;
    }
    if ((rc = keel__json_parse(tmpl, tlen, path, &doc, err)))
        goto out;
    if (!cJSON_IsObject(doc)) {
        rc = keel__err(err, KEEL_EINVALID, "%s: expected a JSON object", path);
        goto out;
    }
    if ((rc = walk(src_dir, "", &list, lim, err)))
        goto out;
    qsort(list.v, list.n, sizeof(*list.v), str_cmp);
    files = cJSON_CreateArray();
    if (!files) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < list.n; i++)
        if ((rc = describe_file(src_dir, list.v[i], files, buf, h, err)))
            goto out;
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "files");
    cJSON_AddItemToObject(doc, "files", files);
    files = NULL;
    if (!cJSON_GetObjectItemCaseSensitive(doc, "format"))
        cJSON_AddNumberToObject(doc, "format", KEEL_PKG_FORMAT);
    if (!cJSON_GetObjectItemCaseSensitive(doc, "created")) {
        int64_t when = source_epoch();
        keel__format_rfc3339(when ? when : keel__now_wall_s(), created, sizeof(created));
        cJSON_AddStringToObject(doc, "created", created);
    }
    if (!(text = cJSON_Print(doc))) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = keel_manifest_parse(text, strlen(text), lim, &m, err))) {
        keel__err_prefix(err, "%s", path);
        goto out;
    }
    if ((rc = sign_all(m, keys, nkeys, &sigs, err)) || (rc = tar_open(&t, out_path, err)))
        goto out;
    opened = true;
    if ((rc = tar_head(&t, text, strlen(text), &sigs, err)))
        goto out;
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++)
        if ((rc = copy_file(&t, src_dir, keel_manifest_file(m, i), buf, h, err)))
            goto out;
    opened = false;
    rc = tar_close(&t, true, err);
out:
    if (opened)
        (void)tar_close(&t, false, NULL);
    keel_manifest_free(m);
    strlist_done(&list);
    cJSON_Delete(files);
    cJSON_Delete(doc);
    free(text);
    free(tmpl);
    free(buf);
    keel_sha256_free(h);
    return rc;
}

/* keel sign: re-write the package with one more signature, copying (and so
 * re-verifying) every member through the reader. */
static int sink_begin(void *ud, const keel_file *f, bool *ret_skip, keel_error *err)
{
    *ret_skip = false;
    return tar_header(ud, f->path, f->size, err);
}

static int sink_write(void *ud, const void *data, size_t len, keel_error *err)
{
    return tar_data(ud, data, len, err);
}

static int sink_end(void *ud, const keel_file *f, bool ok, keel_error *err)
{
    return KEEL_OK;
}

int keel_pkg_sign(const char *path, const keel_key *key, const keel_limits *lim, keel_error *err)
{
    keel_pkg *p = NULL;
    keel_sigset sigs;
    tar_out t = {.fd = -1};
    bool opened = false;
    size_t len;
    int rc = keel_pkg_open(path, lim, &p, err);
    if (rc)
        return rc;
    const keel_manifest *m = keel_pkg_manifest(p);
    const uint8_t *bytes = keel_manifest_bytes(m, &len);
    memcpy(&sigs, keel_pkg_sigs(p), sizeof(sigs));
    if ((rc = sign_all(m, &key, 1, &sigs, err)) || (rc = tar_open(&t, path, err)))
        goto out;
    opened = true;
    keel_pkg_sink sink = {sink_begin, sink_write, sink_end, &t};
    if ((rc = tar_head(&t, bytes, len, &sigs, err)) || (rc = keel_pkg_extract(p, &sink, err)))
        goto out;
    opened = false;
    rc = tar_close(&t, true, err);
out:
    if (opened)
        (void)tar_close(&t, false, NULL);
    keel_pkg_close(p);
    return rc;
}
