/* fs.c - files: bounded reads, atomic writes, directories; time; randomness. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"

static const keel__fs_ops sys_ops = {write, fsync, rename};
static const keel__fs_ops *fs_ops = &sys_ops;

void keel__fs_set_ops(const keel__fs_ops *ops)
{
    fs_ops = ops ? ops : &sys_ops;
}

int keel__fs_fsync(int fd)
{
    return fs_ops->fsync(fd);
}

int keel__fs_rename(const char *from, const char *to)
{
    return fs_ops->rename(from, to);
}

int keel__fs_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t w = fs_ops->write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int keel__fs_read(const char *path, size_t max, char **ret, size_t *ret_len, keel_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = KEEL_OK;
    keel_buf b;
    keel__buf_init(&b, max);
    if (fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", path);
    for (;;) {
        char chunk[65536];
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot read %s", path);
            goto out;
        }
        if (r == 0)
            break;
        if (keel__buf_append(&b, chunk, (size_t)r)) {
            rc =
                keel__err(err, KEEL_ETOOBIG, "%s is larger than the limit of %zu bytes", path, max);
            goto out;
        }
    }
    if (ret_len)
        *ret_len = b.len;
    *ret = keel__buf_steal(&b);
    if (!*ret)
        rc = keel__err(err, KEEL_ENOMEM, "out of memory reading %s", path);
out:
    keel__buf_done(&b);
    close(fd);
    return rc;
}

int keel__fs_fsync_dir(const char *dir, keel_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return keel__err_errno(err, KEEL_EIO, errno, "cannot open directory %s", dir);
    if (keel__fs_fsync(fd) != 0 && errno != EINVAL) {
        int e = errno;
        close(fd);
        return keel__err_errno(err, KEEL_EIO, e, "cannot fsync directory %s", dir);
    }
    close(fd);
    return KEEL_OK;
}

int keel__fs_fsync_parent(const char *path, keel_error *err)
{
    char dir[PATH_MAX];
    if (keel__snprintf(dir, sizeof(dir), "%s", path))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return keel__fs_fsync_dir(".", err);
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    return keel__fs_fsync_dir(dir, err);
}

int keel__fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                          keel_error *err)
{
    char tmp[PATH_MAX];
    int fd = -1, rc = KEEL_OK;
    if (keel__snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", path);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno,
                               "cannot create a temporary file beside %s", path);
    if (fchmod(fd, mode) != 0 || keel__fs_write_all(fd, data, len) != 0 ||
        keel__fs_fsync(fd) != 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot write %s", tmp);
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = keel__err_errno(err, KEEL_EIO, errno, "cannot close %s", tmp);
        goto fail;
    }
    fd = -1;
    if (keel__fs_rename(tmp, path) != 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot rename %s to %s", tmp,
                             path);
        goto fail;
    }
    return keel__fs_fsync_parent(path, err);
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

int keel__fs_mkdir_p(const char *path, mode_t mode, keel_error *err)
{
    char buf[PATH_MAX];
    if (keel__snprintf(buf, sizeof(buf), "%s", path))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, mode) != 0 && errno != EEXIST)
                return keel__err_errno(err, keel__err_from_errno(errno), errno,
                                       "cannot create directory %s", buf);
            *p = c;
            if (!c)
                break;
        }
    }
    return KEEL_OK;
}

bool keel__fs_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int keel__fs_private_db(const char *path, keel_error *err)
{
    static const char *const suffix[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        char p[PATH_MAX];
        struct stat st;
        if (keel__snprintf(p, sizeof(p), "%s%s", path, suffix[i]))
            return keel__err(err, KEEL_ETOOBIG, "path too long: %s", path);
        bool created = false;
        int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && i == 0) {
            fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_CREAT | O_EXCL, 0600);
            created = fd >= 0;
            if (fd < 0 && errno == EEXIST) /* another process made it meanwhile */
                fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (fd < 0 && errno == ENOENT && i > 0)
            continue; /* no -wal or -shm yet */
        if (fd < 0)
            return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", p);
        int rc = KEEL_OK;
        if (created) { /* what SQLite writes into it later must not lose its name */
            close(fd);
            if ((rc = keel__fs_fsync_parent(p, err)))
                return rc;
            continue;
        }
        if (fstat(fd, &st) != 0 || ((st.st_mode & 077) && fchmod(fd, st.st_mode & 0700) != 0))
            rc = keel__err_errno(err, keel__err_from_errno(errno), errno,
                                 "cannot make %s readable by its owner only (chmod 600 it)", p);
        close(fd);
        if (rc)
            return rc;
    }
    return KEEL_OK;
}

int keel__fs_rm_rf(const char *path, keel_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? KEEL_OK
                               : keel__err_errno(err, KEEL_EIO, errno, "cannot stat %s", path);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        if (!d)
            return keel__err_errno(err, KEEL_EIO, errno, "cannot open %s", path);
        while ((de = readdir(d))) {
            char sub[PATH_MAX];
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            if (keel__snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name)) {
                closedir(d);
                return keel__err(err, KEEL_ETOOBIG, "path too long under %s", path);
            }
            int rc = keel__fs_rm_rf(sub, err);
            if (rc) {
                closedir(d);
                return rc;
            }
        }
        closedir(d);
        if (rmdir(path) != 0)
            return keel__err_errno(err, KEEL_EIO, errno, "cannot remove %s", path);
        return KEEL_OK;
    }
    if (unlink(path) != 0 && errno != ENOENT)
        return keel__err_errno(err, KEEL_EIO, errno, "cannot remove %s", path);
    return KEEL_OK;
}

uint64_t keel__now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t keel__now_wall_s(void)
{
    return (int64_t)time(NULL);
}

void keel__format_rfc3339(int64_t t, char *out, size_t n)
{
    struct tm tm;
    time_t tt = (time_t)t;
    gmtime_r(&tt, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int keel__random_bytes(void *buf, size_t len, keel_error *err)
{
    unsigned char *p = buf;
    while (len) {
        ssize_t r = getrandom(p, len, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return keel__err_errno(err, KEEL_EIO, errno, "getrandom failed");
        }
        p += r;
        len -= (size_t)r;
    }
    return KEEL_OK;
}
