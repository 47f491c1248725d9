/*
 * reader.c - reading a .keel tar safely with libarchive.
 *
 * Only tar formats are enabled. keel.json and keel.sig must be the first two
 * members; every other member must be a regular file listed in the manifest,
 * appear once, have the listed size, and hash to the listed SHA-256. Links,
 * devices, directories, absolute paths and `..` are refused by name. Nothing
 * is trusted until the caller checked the signatures (keel_pkg_check_trust).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "pkg/archive_dl.h"
#include "pkg/pkg_internal.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "keel/pkg.h"

#define READ_BLOCK (1u << 20)

struct keel_pkg {
    struct archive *ar;
    keel_limits lim;
    keel_manifest *manifest;
    keel_sigset sigs;
    char origin[256];
    bool extracted;
};

void keel_pkg_close(keel_pkg *p)
{
    if (!p)
        return;
    if (p->ar)
        archive_read_free(p->ar);
    keel_manifest_free(p->manifest);
    free(p);
}

const keel_manifest *keel_pkg_manifest(const keel_pkg *p)
{
    return p->manifest;
}

const keel_sigset *keel_pkg_sigs(const keel_pkg *p)
{
    return &p->sigs;
}

static int ar_err(keel_pkg *p, keel_error *err, const char *member)
{
    const char *why = archive_error_string(p->ar);
    return keel__err(err, KEEL_ECORRUPT, "%s: the package is truncated or not a valid tar%s%s: %s",
                     p->origin, member ? " at member " : "", member ? member : "",
                     why ? why : "unexpected end of data");
}

/* Next header; refuses anything but a regular file with a safe name. */
static int next_member(keel_pkg *p, struct archive_entry **ret, bool *ret_eof, keel_error *err)
{
    struct archive_entry *e;
    int r = archive_read_next_header(p->ar, &e);
    if (r == ARCHIVE_EOF) {
        *ret_eof = true;
        return KEEL_OK;
    }
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
        return ar_err(p, err, NULL);
    *ret_eof = false;
    const char *name = archive_entry_pathname(e);
    if (!name)
        return keel__err(err, KEEL_ECORRUPT, "%s: a member has no name", p->origin);
    if (archive_entry_hardlink(e) || archive_entry_filetype(e) == AE_IFLNK)
        return keel__err(err, KEEL_EINVALID,
                         "%s: member \"%s\" is a link; packages may hold only regular files",
                         p->origin, name);
    if (archive_entry_filetype(e) != AE_IFREG)
        return keel__err(err, KEEL_EINVALID,
                         "%s: member \"%s\" is not a regular file (directory, device or fifo); "
                         "packages may hold only regular files",
                         p->origin, name);
    const char *problem = keel__pkg_path_problem(name, strlen(name));
    if (problem)
        return keel__err(err, KEEL_EINVALID, "%s: member \"%.200s\" has an unsafe path: %s",
                         p->origin, name, problem);
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
        return keel__err(err, KEEL_ECORRUPT, "%s: member \"%s\" has no size", p->origin, name);
    *ret = e;
    return KEEL_OK;
}

/* Reads a small member fully (at most max bytes). */
static int read_small(keel_pkg *p, struct archive_entry *e, uint32_t max, char **ret,
                      size_t *ret_len, keel_error *err)
{
    const char *name = archive_entry_pathname(e);
    la_int64_t size = archive_entry_size(e);
    if ((uint64_t)size > max)
        return keel__err(err, KEEL_ETOOBIG, "%s: %s is %lld bytes, over the limit of %u", p->origin,
                         name, (long long)size, max);
    char *buf = malloc((size_t)size + 1);
    if (!buf)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    size_t got = 0;
    while (got < (size_t)size) {
        la_ssize_t r = archive_read_data(p->ar, buf + got, (size_t)size - got);
        if (r <= 0) {
            free(buf);
            return ar_err(p, err, name);
        }
        got += (size_t)r;
    }
    buf[got] = '\0';
    *ret = buf;
    *ret_len = got;
    return KEEL_OK;
}

static int pkg_start(keel_pkg *p, keel_error *err)
{
    struct archive_entry *e;
    bool eof;
    char *data = NULL;
    size_t len;
    int rc;
    if ((rc = next_member(p, &e, &eof, err)))
        return rc;
    if (eof || strcmp(archive_entry_pathname(e), KEEL_MANIFEST_NAME) != 0)
        return keel__err(err, KEEL_EINVALID,
                         "%s: the first member must be keel.json (found %s); is this a keel "
                         "package? Make one with `keel pack`",
                         p->origin, eof ? "nothing" : archive_entry_pathname(e));
    if ((rc = read_small(p, e, p->lim.max_manifest_bytes, &data, &len, err)))
        return rc;
    rc = keel_manifest_parse(data, len, &p->lim, &p->manifest, err);
    free(data);
    if (rc)
        return keel__err_prefix(err, "%s", p->origin);
    if ((rc = next_member(p, &e, &eof, err)))
        return rc;
    if (eof || strcmp(archive_entry_pathname(e), KEEL_SIG_NAME) != 0)
        return keel__err(err, KEEL_EINVALID,
                         "%s: the second member must be keel.sig (found %s); sign the package "
                         "with `keel sign`",
                         p->origin, eof ? "nothing" : archive_entry_pathname(e));
    if ((rc = read_small(p, e, p->lim.max_sig_bytes, &data, &len, err)))
        return rc;
    rc = keel_sigset_parse(data, len, &p->sigs, err);
    free(data);
    if (rc)
        return keel__err_prefix(err, "%s: keel.sig", p->origin);
    return KEEL_OK;
}

static int pkg_new(const keel_limits *lim, const char *origin, keel_pkg **ret, keel_error *err)
{
    int rc = keel__archive_load(err);
    if (rc)
        return rc;
    keel_pkg *p = calloc(1, sizeof(*p));
    if (!p || !(p->ar = archive_read_new())) {
        free(p);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    if (lim)
        p->lim = *lim;
    else
        keel_limits_default(&p->lim);
    keel__strlcpy(p->origin, origin, sizeof(p->origin));
    archive_read_support_format_tar(p->ar);
    *ret = p;
    return KEEL_OK;
}

/* Opens from a file (path) or from memory (data, len), then reads keel.json
 * and keel.sig. The size limit applies before anything is parsed. */
static int pkg_open_any(const char *path, const void *data, size_t len, const keel_limits *lim,
                        keel_pkg **ret, keel_error *err)
{
    keel_pkg *p = NULL;
    struct stat st;
    int rc = pkg_new(lim, path ? path : "package", &p, err);
    if (rc)
        return rc;
    if (path && stat(path, &st) != 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", path);
        goto fail;
    }
    uint64_t size = path ? (uint64_t)st.st_size : (uint64_t)len;
    if (size > p->lim.max_package_bytes) {
        rc = keel__err(err, KEEL_ETOOBIG, "%s is %llu bytes, over the package limit of %llu",
                       p->origin, (unsigned long long)size,
                       (unsigned long long)p->lim.max_package_bytes);
        goto fail;
    }
    if ((path ? archive_read_open_filename(p->ar, path, READ_BLOCK)
              : archive_read_open_memory(p->ar, data, len)) != ARCHIVE_OK) {
        rc = ar_err(p, err, NULL);
        goto fail;
    }
    if ((rc = pkg_start(p, err)))
        goto fail;
    *ret = p;
    return KEEL_OK;
fail:
    keel_pkg_close(p);
    return rc;
}

int keel_pkg_open(const char *path, const keel_limits *lim, keel_pkg **ret, keel_error *err)
{
    return pkg_open_any(path, NULL, 0, lim, ret, err);
}

int keel_pkg_open_mem(const void *data, size_t len, const keel_limits *lim, keel_pkg **ret,
                      keel_error *err)
{
    return pkg_open_any(NULL, data, len, lim, ret, err);
}

int keel_pkg_check_trust(const keel_pkg *p, const keel_trust *trust, keel_error *err)
{
    size_t len;
    const uint8_t *bytes = keel_manifest_bytes(p->manifest, &len);
    int rc =
        keel_trust_check_package(trust, keel_manifest_name(p->manifest), bytes, len, &p->sigs, err);
    return rc ? keel__err_prefix(err, "%s", p->origin) : KEEL_OK;
}

static int extract_one(keel_pkg *p, const keel_file *f, const keel_pkg_sink *sink,
                       unsigned char *buf, keel_sha256 *h, keel_error *err)
{
    bool skip = sink == NULL;
    uint64_t got = 0;
    uint8_t digest[KEEL_SHA256_LEN];
    int rc;
    if (sink && (rc = sink->begin(sink->ud, f, &skip, err)))
        return rc;
    for (;;) {
        la_ssize_t r = archive_read_data(p->ar, buf, READ_BLOCK);
        if (r < 0) {
            rc = ar_err(p, err, f->path);
            goto fail;
        }
        if (r == 0)
            break;
        got += (uint64_t)r;
        if (got > f->size) {
            rc = keel__err(err, KEEL_ECORRUPT, "%s: %s is longer than the %llu bytes listed",
                           p->origin, f->path, (unsigned long long)f->size);
            goto fail;
        }
        keel_sha256_update(h, buf, (size_t)r);
        if (!skip && (rc = sink->write(sink->ud, buf, (size_t)r, err)))
            goto fail;
    }
    keel_sha256_final(h, digest);
    if (got != f->size) {
        rc = keel__err(err, KEEL_ECORRUPT,
                       "%s: %s is %llu bytes but keel.json lists %llu (truncated package?)",
                       p->origin, f->path, (unsigned long long)got, (unsigned long long)f->size);
        goto fail;
    }
    if (memcmp(digest, f->sha256, KEEL_SHA256_LEN) != 0) {
        char want[KEEL_SHA256_HEX], have[KEEL_SHA256_HEX];
        keel_hex_encode(f->sha256, KEEL_SHA256_LEN, want);
        keel_hex_encode(digest, KEEL_SHA256_LEN, have);
        rc = keel__err(err, KEEL_ECORRUPT,
                       "%s: %s does not match its hash in keel.json (expected sha256 %s, got "
                       "%s): the file was changed after signing",
                       p->origin, f->path, want, have);
        goto fail;
    }
    if (sink)
        return sink->end(sink->ud, f, true, err);
    return KEEL_OK;
fail:
    if (sink)
        (void)sink->end(sink->ud, f, false, NULL);
    return rc;
}

int keel_pkg_extract(keel_pkg *p, const keel_pkg_sink *sink, keel_error *err)
{
    const keel_manifest *m = p->manifest;
    size_t n = keel_manifest_nfiles(m), seen_count = 0;
    bool *seen = calloc(n ? n : 1, sizeof(bool));
    unsigned char *buf = malloc(READ_BLOCK);
    keel_sha256 *h = keel_sha256_new();
    int rc = KEEL_OK;
    if (p->extracted) {
        rc = keel__err(err, KEEL_EINVALID, "%s: members were already read", p->origin);
        goto out;
    }
    p->extracted = true;
    if (!seen || !buf || !h) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        struct archive_entry *e;
        bool eof;
        if ((rc = next_member(p, &e, &eof, err)))
            goto out;
        if (eof)
            break;
        const char *name = archive_entry_pathname(e);
        const keel_file *f = keel_manifest_find(m, name);
        if (!f) {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s: member \"%.200s\" is not listed in keel.json; refusing the "
                           "package",
                           p->origin, name);
            goto out;
        }
        size_t idx = (size_t)(f - keel_manifest_file(m, 0));
        if (seen[idx]) {
            rc = keel__err(err, KEEL_EINVALID, "%s: member \"%s\" appears twice", p->origin, name);
            goto out;
        }
        seen[idx] = true;
        seen_count++;
        if ((uint64_t)archive_entry_size(e) != f->size) {
            rc = keel__err(err, KEEL_ECORRUPT,
                           "%s: member \"%s\" is %lld bytes in the tar but keel.json lists %llu",
                           p->origin, name, (long long)archive_entry_size(e),
                           (unsigned long long)f->size);
            goto out;
        }
        if ((rc = extract_one(p, f, sink, buf, h, err)))
            goto out;
    }
    if (seen_count != n) {
        for (size_t i = 0; i < n; i++)
            if (!seen[i]) {
                rc = keel__err(err, KEEL_ECORRUPT,
                               "%s: \"%s\" is listed in keel.json but missing from the package "
                               "(truncated?)",
                               p->origin, keel_manifest_file(m, i)->path);
                break;
            }
    }
out:
    keel_sha256_free(h);
    free(buf);
    free(seen);
    return rc;
}

int keel_pkg_verify_file(const char *path, const keel_trust *trust, const keel_limits *lim,
                         keel_error *err)
{
    keel_pkg *p = NULL;
    int rc = keel_pkg_open(path, lim, &p, err);
    if (!rc && trust)
        rc = keel_pkg_check_trust(p, trust, err);
    if (!rc)
        rc = keel_pkg_extract(p, NULL, err);
    keel_pkg_close(p);
    return rc;
}
