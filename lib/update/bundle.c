/*
 * bundle.c - reading and planning USB / air-gap bundles, and writing them
 * for publishers (bundle.h; the format is in docs/update.md).
 */
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json.h"
#include "keel/crypto.h"
#include "keel/pkg.h"
#include "update/bundle.h"

static const char *const repo_names[] = {"timestamp.json", "timestamp.sig", "index.json",
                                         "index.sig"};

const char *keel__bundle_kind_name(keel__bundle_kind k)
{
    static const char *const n[] = {"root", "revocations", "package", "repository"};
    return (unsigned)k < KEEL_ARRAY_LEN(n) ? n[k] : "unknown";
}

void keel__bundle_free(keel__bundle *b)
{
    if (!b)
        return;
    free(b->items);
    free(b);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !memcmp(s + a - b, suffix, b);
}

static keel__bundle_item *add_item(keel__bundle *b, keel__bundle_kind kind, const char *entry,
                                   const char *path, keel_error *err)
{
    keel__bundle_item *it = realloc(b->items, (b->n + 1) * sizeof(*it));
    if (!it) {
        keel__err(err, KEEL_ENOMEM, "out of memory");
        return NULL;
    }
    b->items = it;
    it = &b->items[b->n++];
    memset(it, 0, sizeof(*it));
    it->kind = kind;
    keel__strlcpy(it->entry, entry, sizeof(it->entry));
    keel__strlcpy(it->path, path, sizeof(it->path));
    return it;
}

static void refuse(keel__bundle_item *it, const char *fmt, ...) KEEL_PRINTF(2, 3);
static void refuse(keel__bundle_item *it, const char *fmt, ...)
{
    va_list ap;
    if (it->refused)
        return; /* the first reason stands */
    it->refused = true;
    va_start(ap, fmt);
    vsnprintf(it->why, sizeof(it->why), fmt, ap);
    va_end(ap);
}

/* A regular file of at most max bytes, not a link; sets it->size or refuses. */
static bool regular(keel__bundle_item *it, uint64_t max)
{
    struct stat st;
    if (lstat(it->path, &st) != 0) {
        refuse(it, "cannot read %s: %s", it->entry, strerror(errno));
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        refuse(it, "%s is not a regular file (links and special files are refused)", it->entry);
        return false;
    }
    it->size = (uint64_t)st.st_size;
    if (it->size > max) {
        refuse(it, "%s is %llu bytes, over the limit of %llu", it->entry,
               (unsigned long long)it->size, (unsigned long long)max);
        return false;
    }
    return true;
}

/* NAME.keel: reads keel.json and keel.sig (not the payload: the store
 * checks every byte at install). */
static void read_package(keel__bundle_item *it, uint64_t max_package)
{
    keel_limits lim;
    keel_pkg *p = NULL;
    keel_error e;
    keel_limits_default(&lim);
    if (max_package)
        lim.max_package_bytes = max_package;
    if (!regular(it, lim.max_package_bytes))
        return;
    if (keel_pkg_open(it->path, &lim, &p, &e)) {
        refuse(it, "%s is not a readable keel package: %s", it->entry, e.msg);
        return;
    }
    const keel_manifest *m = keel_pkg_manifest(p);
    keel__strlcpy(it->name, keel_manifest_name(m), sizeof(it->name));
    keel__strlcpy(it->version, keel_manifest_version(m), sizeof(it->version));
    keel_manifest_digest_str(m, it->digest);
    keel_pkg_close(p);
}

/* DOC.json with DOC.json.sig beside it. */
static void read_doc(keel__bundle_item *it)
{
    if (keel__snprintf(it->sig_path, sizeof(it->sig_path), "%s.sig", it->path)) {
        refuse(it, "path too long: %s", it->path);
        return;
    }
    if (!regular(it, KEEL__BUNDLE_DOC_MAX))
        return;
    struct stat st;
    if (lstat(it->sig_path, &st) != 0 || !S_ISREG(st.st_mode)) {
        refuse(it,
               "%s has no signatures: %s.sig is missing (sign it with `keel trust sign %s "
               "--kind %s`)",
               it->entry, it->entry, it->entry,
               it->kind == KEEL__BUNDLE_ROOT ? "root" : "revocations");
        it->sig_path[0] = '\0';
        return;
    }
    if ((uint64_t)st.st_size > KEEL__BUNDLE_DOC_MAX)
        refuse(it, "%s.sig is %llu bytes, over the limit of %u", it->entry,
               (unsigned long long)st.st_size, KEEL__BUNDLE_DOC_MAX);
}

/* --- bundle.json ------------------------------------------------------------------ */

/* Checks bundle.json's listing against the items: every listed file present
 * with its size and SHA-256; a file it does not list is refused. */
static int check_listing(keel__bundle *b, const char *dir, keel_error *err)
{
    char path[PATH_MAX], *data = NULL;
    size_t len;
    cJSON *j = NULL;
    const cJSON *files = NULL, *f;
    int rc;
    if (keel__snprintf(path, sizeof(path), "%s/bundle.json", dir))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", dir);
    if ((rc = keel__fs_read(path, KEEL__BUNDLE_JSON_MAX, &data, &len, err)))
        return keel__err_prefix(err, "bundle.json");
    uint64_t format = 0;
    const char *type = NULL;
    rc = keel__json_parse(data, len, "bundle.json", &j, err);
    if (!rc)
        rc = keel__json_u64(j, "format", true, &format, "bundle.json", err);
    if (!rc && format != KEEL__BUNDLE_FORMAT)
        rc = keel__err(err, KEEL_EUNSUPPORTED,
                       "bundle.json has format %llu; this keel reads format %d",
                       (unsigned long long)format, KEEL__BUNDLE_FORMAT);
    if (!rc)
        rc = keel__json_str(j, "type", true, 64, &type, "bundle.json", err);
    if (!rc && strcmp(type, "keel-bundle"))
        rc = keel__err(err, KEEL_EINVALID, "bundle.json: type is \"%s\", expected \"keel-bundle\"",
                       type);
    if (!rc)
        rc = keel__json_member(j, "files", cJSON_Object, true, &files, "bundle.json", err);
    if (rc)
        goto out;
    /* every listed file must be there */
    cJSON_ArrayForEach(f, files)
    {
        bool found = false;
        for (size_t i = 0; i < b->n; i++)
            found |= !strcmp(b->items[i].entry, f->string) ||
                     (b->items[i].sig_path[0] && ends_with(f->string, ".sig") &&
                      strlen(f->string) == strlen(b->items[i].entry) + 4 &&
                      !strncmp(f->string, b->items[i].entry, strlen(b->items[i].entry)));
        if (!found) {
            rc = keel__err(err, KEEL_ECORRUPT,
                           "bundle.json lists %.200s, which is not in the bundle (copy the whole "
                           "bundle again)",
                           f->string);
            goto out;
        }
    }
    /* and every file must be listed, with its size and hash */
    for (size_t i = 0; i < b->n; i++) {
        keel__bundle_item *it = &b->items[i];
        const char *paths[2] = {it->path, it->sig_path};
        for (int k = 0; k < 2; k++) {
            char entry[300];
            if (!paths[k][0])
                continue;
            snprintf(entry, sizeof(entry), "%s%s", it->entry, k ? ".sig" : "");
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(files, entry);
            const char *want = NULL;
            uint64_t size = 0;
            keel_error le;
            if (!cJSON_IsObject(e)) {
                it->refused = false; /* this reason says more than the item's own */
                refuse(it, "%s is not listed in bundle.json", entry);
                break;
            }
            if (keel__json_str(e, "sha256", true, 64, &want, "bundle.json entry", &le) ||
                keel__json_u64(e, "size", true, &size, "bundle.json entry", &le)) {
                refuse(it, "bundle.json: %s: %s", entry, le.msg);
                break;
            }
            uint8_t got[KEEL_SHA256_LEN];
            char hex[KEEL_SHA256_HEX];
            uint64_t gs = 0;
            if (keel_sha256_file(paths[k], got, &gs, &le)) {
                refuse(it, "%s: %s", entry, le.msg);
                break;
            }
            keel_hex_encode(got, sizeof(got), hex);
            if (gs != size || strcmp(hex, want)) {
                it->refused = false; /* a damaged copy explains the item's own errors */
                refuse(it,
                       "%s does not match bundle.json (%llu bytes, sha256 %s; listed %llu bytes, "
                       "%.64s): the copy is damaged",
                       entry, (unsigned long long)gs, hex, (unsigned long long)size, want);
                break;
            }
        }
    }
    b->manifest = true;
out:
    cJSON_Delete(j);
    free(data);
    return rc;
}

/* --- scan and plan -------------------------------------------------------------------- */

static int rank(const keel__bundle_item *it)
{
    static const int r[] = {[KEEL__BUNDLE_ROOT] = 0,
                            [KEEL__BUNDLE_REVOKED] = 1,
                            [KEEL__BUNDLE_PACKAGE] = 2,
                            [KEEL__BUNDLE_REPO] = 3};
    return r[it->kind];
}

static int plan_cmp(const void *pa, const void *pb)
{
    const keel__bundle_item *a = pa, *b = pb;
    if (rank(a) != rank(b))
        return rank(a) - rank(b);
    if (a->kind == KEEL__BUNDLE_PACKAGE) {
        /* refused ones (no name) first; then by name, then version */
        int c = strcmp(a->name, b->name);
        if (c)
            return c;
        bool va = keel_semver_valid(a->version), vb = keel_semver_valid(b->version);
        if (va && vb && (c = keel_semver_cmp(a->version, b->version)))
            return c;
    }
    return strcmp(a->entry, b->entry);
}

static void mark_newest(keel__bundle *b)
{
    for (size_t i = 0; i < b->n; i++) {
        keel__bundle_item *it = &b->items[i];
        if (it->kind != KEEL__BUNDLE_PACKAGE || it->refused)
            continue;
        it->newest = true;
        for (size_t k = i + 1; k < b->n; k++) /* sorted: a later one of the name is newer */
            if (b->items[k].kind == KEEL__BUNDLE_PACKAGE && !b->items[k].refused &&
                !strcmp(b->items[k].name, it->name))
                it->newest = false;
    }
    /* the same name@version twice (two file names): the second is refused */
    for (size_t i = 1; i < b->n; i++) {
        keel__bundle_item *a = &b->items[i - 1], *c = &b->items[i];
        if (a->kind == KEEL__BUNDLE_PACKAGE && c->kind == KEEL__BUNDLE_PACKAGE && !a->refused &&
            !c->refused && !strcmp(a->name, c->name) && !strcmp(a->version, c->version) &&
            strcmp(a->digest, c->digest))
            refuse(c, "%s holds %s %s as %s does, with different contents", c->entry, c->name,
                   c->version, a->entry);
    }
}

static int scan_dir(keel__bundle *b, const char *dir, uint64_t max_package, keel_error *err)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t seen = 0;
    bool listing = false;
    int rc = KEEL_OK;
    if (!d)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot read bundle %s",
                               dir);
    while (!rc && (de = readdir(d))) {
        const char *nm = de->d_name;
        char path[PATH_MAX];
        if (nm[0] == '.')
            continue; /* ., .., hidden files (._x from some systems) */
        if (++seen > KEEL__BUNDLE_MAX_ENTRIES) {
            rc = keel__err(err, KEEL_ETOOBIG, "bundle %s holds more than %d entries", dir,
                           KEEL__BUNDLE_MAX_ENTRIES);
            break;
        }
        if (keel__snprintf(path, sizeof(path), "%s/%s", dir, nm) || strlen(nm) >= 200) {
            rc = keel__err(err, KEEL_ETOOBIG, "name too long in bundle %s", dir);
            break;
        }
        keel__bundle_item *it = NULL;
        if (ends_with(nm, ".keel")) {
            if ((it = add_item(b, KEEL__BUNDLE_PACKAGE, nm, path, err)))
                read_package(it, max_package);
        } else if (!strcmp(nm, "root.json") || !strcmp(nm, "revoked.json")) {
            it =
                add_item(b, nm[1] == 'o' ? KEEL__BUNDLE_ROOT : KEEL__BUNDLE_REVOKED, nm, path, err);
            if (it)
                read_doc(it);
        } else if (!strcmp(nm, "root.json.sig") || !strcmp(nm, "revoked.json.sig")) {
            continue; /* read with their document */
        } else if (!strcmp(nm, "bundle.json")) {
            listing = true;
            continue;
        } else if (!strcmp(nm, "repo")) {
            for (size_t k = 0; k < KEEL_ARRAY_LEN(repo_names); k++) {
                char rp[PATH_MAX], entry[64];
                snprintf(entry, sizeof(entry), "repo/%s", repo_names[k]);
                if (keel__snprintf(rp, sizeof(rp), "%s/%s", path, repo_names[k]))
                    continue;
                if (!keel__fs_exists(rp))
                    continue;
                if ((it = add_item(b, KEEL__BUNDLE_REPO, entry, rp, err)))
                    (void)regular(it, KEEL__BUNDLE_REPO_MAX);
                else
                    break;
            }
            if (!it && err && err->code == KEEL_ENOMEM)
                rc = KEEL_ENOMEM;
            continue;
        } else {
            b->ignored++;
            continue;
        }
        if (!it)
            rc = KEEL_ENOMEM;
    }
    closedir(d);
    if (!rc && listing)
        rc = check_listing(b, dir, err);
    if (!rc && !b->n)
        rc = keel__err(err, KEEL_ENOTFOUND,
                       "bundle %s holds nothing to import (no .keel package, revoked.json, "
                       "root.json or repo/; docs/update.md describes the format)",
                       dir);
    return rc;
}

int keel__bundle_scan(const char *path, uint64_t max_package, keel__bundle **ret, keel_error *err)
{
    struct stat st;
    int rc;
    if (!path || !path[0])
        return keel__err(err, KEEL_EINVALID, "no bundle path given");
    if (stat(path, &st) != 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot read bundle %s",
                               path);
    keel__bundle *b = calloc(1, sizeof(*b));
    if (!b)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    if (keel__snprintf(b->path, sizeof(b->path), "%s", path)) {
        keel__bundle_free(b);
        return keel__err(err, KEEL_ETOOBIG, "bundle path too long");
    }
    if (S_ISDIR(st.st_mode)) {
        rc = scan_dir(b, path, max_package, err);
    } else if (S_ISREG(st.st_mode) && ends_with(path, ".keel")) {
        const char *base = strrchr(path, '/');
        keel__bundle_item *it =
            add_item(b, KEEL__BUNDLE_PACKAGE, base ? base + 1 : path, path, err);
        b->single = true;
        rc = it ? KEEL_OK : KEEL_ENOMEM;
        if (it)
            read_package(it, max_package);
    } else {
        rc = keel__err(err, KEEL_EINVALID, "%s is neither a bundle folder nor a .keel package file",
                       path);
    }
    if (rc) {
        keel__bundle_free(b);
        return rc;
    }
    qsort(b->items, b->n, sizeof(*b->items), plan_cmp);
    mark_newest(b);
    *ret = b;
    return KEEL_OK;
}

/* --- writing a bundle (keel bundle create) ---------------------------------------------- */

/* Copies src to dst (temporary file, fsync, rename), hashing it; at most max bytes. */
static int copy_hashed(const char *src, const char *dst, uint64_t max, uint8_t h[KEEL_SHA256_LEN],
                       uint64_t *ret_len, keel_error *err)
{
    char tmp[PATH_MAX];
    int in = -1, out = -1, rc = KEEL_OK;
    uint64_t len = 0;
    keel_sha256 *sh = keel_sha256_new();
    char *buf = malloc(1u << 20);
    if (!sh || !buf) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if (keel__snprintf(tmp, sizeof(tmp), "%s.tmp", dst)) {
        rc = keel__err(err, KEEL_ETOOBIG, "path too long: %s", dst);
        goto out;
    }
    if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot read %s", src);
        goto out;
    }
    if ((out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot write %s", tmp);
        goto out;
    }
    for (;;) {
        ssize_t n = read(in, buf, 1u << 20);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "reading %s", src);
            goto out;
        }
        if (!n)
            break;
        len += (uint64_t)n;
        if (len > max) {
            rc = keel__err(err, KEEL_ETOOBIG, "%s is over the limit of %llu bytes", src,
                           (unsigned long long)max);
            goto out;
        }
        keel_sha256_update(sh, buf, (size_t)n);
        if (keel__fs_write_all(out, buf, (size_t)n)) {
            rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "writing %s", tmp);
            goto out;
        }
    }
    if (keel__fs_fsync(out) != 0 || close(out) != 0) {
        out = -1;
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "writing %s", tmp);
        goto out;
    }
    out = -1;
    if (keel__fs_rename(tmp, dst) != 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot rename %s", tmp);
        goto out;
    }
    rc = keel__fs_fsync_parent(dst, err);
    keel_sha256_final(sh, h);
    *ret_len = len;
out:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (rc)
        unlink(tmp);
    keel_sha256_free(sh);
    free(buf);
    return rc;
}

/* Copies src to dir/name atomically and lists it in files. */
static int put(const char *dir, const char *name, const char *src, uint64_t max, cJSON *files,
               keel_error *err)
{
    char dst[PATH_MAX], hex[KEEL_SHA256_HEX];
    uint64_t len = 0;
    uint8_t h[KEEL_SHA256_LEN];
    if (keel__snprintf(dst, sizeof(dst), "%s/%s", dir, name))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", dir);
    int rc = copy_hashed(src, dst, max, h, &len, err);
    if (rc)
        return rc;
    keel_hex_encode(h, sizeof(h), hex);
    cJSON *e = cJSON_AddObjectToObject(files, name);
    if (!e || !cJSON_AddStringToObject(e, "sha256", hex) ||
        !cJSON_AddNumberToObject(e, "size", (double)len))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    return KEEL_OK;
}

static int put_doc(const char *dir, const char *name, const char *src, cJSON *files,
                   keel_error *err)
{
    char sig[PATH_MAX], sname[64];
    if (keel__snprintf(sig, sizeof(sig), "%s.sig", src))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", src);
    if (!keel__fs_exists(sig))
        return keel__err(err, KEEL_ENOTFOUND,
                         "%s has no signatures beside it (%s; sign it with `keel trust sign`)", src,
                         sig);
    snprintf(sname, sizeof(sname), "%s.sig", name);
    int rc = put(dir, name, src, KEEL__BUNDLE_DOC_MAX, files, err);
    return rc ? rc : put(dir, sname, sig, KEEL__BUNDLE_DOC_MAX, files, err);
}

int keel__bundle_create(const char *out_dir, const char *const *pkgs, size_t npkgs,
                        const char *revoked, const char *root, keel_error *err)
{
    char lp[PATH_MAX];
    cJSON *j = cJSON_CreateObject(), *files = NULL;
    int rc = KEEL_OK;
    if (!j || !cJSON_AddNumberToObject(j, "format", KEEL__BUNDLE_FORMAT) ||
        !cJSON_AddStringToObject(j, "type", "keel-bundle") ||
        !(files = cJSON_AddObjectToObject(j, "files"))) {
        cJSON_Delete(j);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    if (!npkgs && !revoked && !root)
        rc = keel__err(err, KEEL_EINVALID,
                       "a bundle needs at least one package, a revocation list or a root");
    if (!rc && keel__snprintf(lp, sizeof(lp), "%s/bundle.json", out_dir))
        rc = keel__err(err, KEEL_ETOOBIG, "path too long: %s", out_dir);
    if (!rc && keel__fs_exists(lp))
        rc = keel__err(err, KEEL_EEXISTS,
                       "%s already holds a bundle (bundle.json); use an empty or new folder",
                       out_dir);
    /* every input read before anything is written */
    char(*names)[KEEL_NAME_MAX + KEEL_VERSION_MAX + 8] = calloc(npkgs ? npkgs : 1, sizeof(*names));
    if (!rc && !names)
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < npkgs; i++) {
        keel_pkg *p = NULL;
        if ((rc = keel_pkg_open(pkgs[i], NULL, &p, err))) {
            keel__err_prefix(err, "%s", pkgs[i]);
            break;
        }
        const keel_manifest *m = keel_pkg_manifest(p);
        snprintf(names[i], sizeof(names[i]), "%s-%s.keel", keel_manifest_name(m),
                 keel_manifest_version(m));
        keel_pkg_close(p);
        for (size_t k = 0; !rc && k < i; k++)
            if (!strcmp(names[k], names[i]))
                rc = keel__err(err, KEEL_ECONFLICT, "%s: %s is in the bundle twice", pkgs[i],
                               names[i]);
    }
    const char *docs[2] = {revoked, root};
    for (int k = 0; !rc && k < 2; k++) {
        char sig[PATH_MAX];
        if (!docs[k])
            continue;
        if (keel__snprintf(sig, sizeof(sig), "%s.sig", docs[k]))
            rc = keel__err(err, KEEL_ETOOBIG, "path too long: %s", docs[k]);
        else if (!keel__fs_exists(docs[k]))
            rc = keel__err(err, KEEL_ENOTFOUND, "%s does not exist", docs[k]);
        else if (!keel__fs_exists(sig))
            rc = keel__err(err, KEEL_ENOTFOUND,
                           "%s has no signatures beside it (%s; sign it with `keel trust sign`)",
                           docs[k], sig);
    }
    if (!rc)
        rc = keel__fs_mkdir_p(out_dir, 0755, err);
    for (size_t i = 0; !rc && i < npkgs; i++)
        rc = put(out_dir, names[i], pkgs[i], UINT64_MAX, files, err);
    free(names);
    if (!rc && revoked)
        rc = put_doc(out_dir, "revoked.json", revoked, files, err);
    if (!rc && root)
        rc = put_doc(out_dir, "root.json", root, files, err);
    if (!rc) {
        char *text = keel__json_print(j);
        rc = text ? keel__fs_write_atomic(lp, text, strlen(text), 0644, err)
                  : keel__err(err, KEEL_ENOMEM, "out of memory");
        free(text);
    }
    cJSON_Delete(j);
    return rc;
}
