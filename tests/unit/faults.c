/* faults.c - the fault-injecting shim of faults.h. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "faults.h"

static struct {
    pthread_mutex_t mu;
    unsigned ops, nth, calls, fired;
    bool sticky, armed, pending_nospc;
    double p;
    uint64_t rng;
    tf_kind kind;
    char first[256];
} tf = {.mu = PTHREAD_MUTEX_INITIALIZER};

const char *tf_kind_name(tf_kind k)
{
    static const char *const n[] = {"EIO", "ENOSPC", "torn write", "partial write"};
    return n[k];
}

static double next_rand(void)
{
    tf.rng ^= tf.rng << 13;
    tf.rng ^= tf.rng >> 7;
    tf.rng ^= tf.rng << 17;
    return (double)(tf.rng >> 11) / 9007199254740992.0;
}

/* Counts a call of kind op; true when it must fail. */
static bool hit(unsigned op, const char *what)
{
    bool fail = false;
    pthread_mutex_lock(&tf.mu);
    if (tf.armed && (tf.ops & op)) {
        tf.calls++;
        if (tf.nth)
            fail = tf.calls == tf.nth || (tf.sticky && tf.calls > tf.nth);
        else
            fail = next_rand() < tf.p;
        if (fail && tf.fired++ == 0)
            snprintf(tf.first, sizeof(tf.first), "%s at call %u: %.200s", tf_kind_name(tf.kind),
                     tf.calls, what);
    }
    pthread_mutex_unlock(&tf.mu);
    return fail;
}

void tf_arm_nth(unsigned ops, unsigned nth, tf_kind kind, bool sticky)
{
    pthread_mutex_lock(&tf.mu);
    tf.ops = ops;
    tf.nth = nth;
    tf.kind = kind;
    tf.sticky = sticky;
    tf.calls = tf.fired = 0;
    tf.first[0] = '\0';
    tf.pending_nospc = false;
    tf.armed = true;
    pthread_mutex_unlock(&tf.mu);
}

void tf_arm_random(unsigned ops, double p, uint64_t seed, tf_kind kind)
{
    tf_arm_nth(ops, 0, kind, false);
    pthread_mutex_lock(&tf.mu);
    tf.p = p;
    tf.rng = seed ? seed : 0x9e3779b97f4a7c15ull;
    pthread_mutex_unlock(&tf.mu);
}

void tf_disarm(void)
{
    pthread_mutex_lock(&tf.mu);
    tf.armed = false;
    tf.pending_nospc = false;
    pthread_mutex_unlock(&tf.mu);
}

unsigned tf_calls(void)
{
    return tf.calls;
}

unsigned tf_fired(void)
{
    return tf.fired;
}

const char *tf_first(void)
{
    return tf.first;
}

/* --- keel's own file code ------------------------------------------------------ */

static ssize_t f_write(int fd, const void *buf, size_t len)
{
    char what[64];
    pthread_mutex_lock(&tf.mu);
    bool pending = tf.pending_nospc;
    tf.pending_nospc = false;
    pthread_mutex_unlock(&tf.mu);
    if (pending) { /* the rest of a torn write: the disk is full */
        errno = ENOSPC;
        return -1;
    }
    snprintf(what, sizeof(what), "write(fd %d, %zu bytes)", fd, len);
    if (!hit(TF_WRITE, what))
        return write(fd, buf, len);
    if ((tf.kind == TF_TORN || tf.kind == TF_PARTIAL) && len > 1) {
        ssize_t w = write(fd, buf, len / 2);
        if (tf.kind == TF_TORN) {
            pthread_mutex_lock(&tf.mu);
            tf.pending_nospc = true;
            pthread_mutex_unlock(&tf.mu);
        }
        return w;
    }
    if (tf.kind == TF_PARTIAL)
        return write(fd, buf, len);
    errno = tf.kind == TF_EIO ? EIO : ENOSPC;
    return -1;
}

static int f_fsync(int fd)
{
    char what[32];
    snprintf(what, sizeof(what), "fsync(fd %d)", fd);
    if (!hit(TF_SYNC, what) || tf.kind == TF_PARTIAL)
        return fsync(fd);
    errno = tf.kind == TF_ENOSPC ? ENOSPC : EIO;
    return -1;
}

static int f_rename(const char *from, const char *to)
{
    char what[PATH_MAX];
    snprintf(what, sizeof(what), "rename(%s)", to);
    if (!hit(TF_RENAME, what) || tf.kind == TF_PARTIAL)
        return rename(from, to);
    errno = tf.kind == TF_ENOSPC ? ENOSPC : EIO;
    return -1;
}

static const keel__fs_ops fault_ops = {f_write, f_fsync, f_rename};

/* --- SQLite: a VFS that forwards to "unix" ------------------------------------------ */

typedef struct tf_file {
    sqlite3_file base;
    sqlite3_file *real; /* lives right after this struct */
    char name[200];
} tf_file;

static sqlite3_vfs *real_vfs;
static sqlite3_vfs fault_vfs;

#define REAL(f) (((tf_file *)(f))->real)

static int x_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int x_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int x_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    char what[300];
    snprintf(what, sizeof(what), "sqlite write(%s, %d bytes at %lld)", ((tf_file *)f)->name, n,
             (long long)off);
    if (!hit(TF_DB_WRITE, what) || tf.kind == TF_PARTIAL)
        return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
    if (tf.kind == TF_TORN && n > 1)
        (void)REAL(f)->pMethods->xWrite(REAL(f), buf, n / 2, off);
    return tf.kind == TF_EIO ? SQLITE_IOERR_WRITE : SQLITE_FULL;
}

static int x_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    char what[300];
    snprintf(what, sizeof(what), "sqlite truncate(%s)", ((tf_file *)f)->name);
    if (!hit(TF_DB_TRUNC, what) || tf.kind == TF_PARTIAL)
        return REAL(f)->pMethods->xTruncate(REAL(f), size);
    return SQLITE_IOERR_TRUNCATE;
}

static int x_sync(sqlite3_file *f, int flags)
{
    char what[300];
    snprintf(what, sizeof(what), "sqlite sync(%s)", ((tf_file *)f)->name);
    if (!hit(TF_DB_SYNC, what) || tf.kind == TF_PARTIAL)
        return REAL(f)->pMethods->xSync(REAL(f), flags);
    return SQLITE_IOERR_FSYNC;
}

static int x_file_size(sqlite3_file *f, sqlite3_int64 *ret)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), ret);
}

static int x_lock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xLock(REAL(f), l);
}

static int x_unlock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), l);
}

static int x_check_reserved(sqlite3_file *f, int *ret)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), ret);
}

static int x_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int x_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int x_device_chars(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int x_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}

static int x_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}

static void x_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int x_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int x_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}

static int x_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods fault_io = {
    3,
    x_close,
    x_read,
    x_write,
    x_truncate,
    x_sync,
    x_file_size,
    x_lock,
    x_unlock,
    x_check_reserved,
    x_file_control,
    x_sector_size,
    x_device_chars,
    x_shm_map,
    x_shm_lock,
    x_shm_barrier,
    x_shm_unmap,
    x_fetch,
    x_unfetch,
};

static int v_open(sqlite3_vfs *v, const char *name, sqlite3_file *file, int flags, int *out)
{
    tf_file *f = (tf_file *)file;
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    keel__strlcpy(f->name, name ? name : "(temp)", sizeof(f->name));
    int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out);
    f->base.pMethods = f->real->pMethods ? &fault_io : NULL;
    return rc;
}

static int v_delete(sqlite3_vfs *v, const char *name, int sync)
{
    return real_vfs->xDelete(real_vfs, name, sync);
}

static int v_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int v_full(sqlite3_vfs *v, const char *name, int n, char *out)
{
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static void *v_dlopen(sqlite3_vfs *v, const char *name)
{
    return real_vfs->xDlOpen(real_vfs, name);
}

static void v_dlerror(sqlite3_vfs *v, int n, char *out)
{
    real_vfs->xDlError(real_vfs, n, out);
}

static void (*v_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    return real_vfs->xDlSym(real_vfs, h, sym);
}

static void v_dlclose(sqlite3_vfs *v, void *h)
{
    real_vfs->xDlClose(real_vfs, h);
}

static int v_random(sqlite3_vfs *v, int n, char *out)
{
    return real_vfs->xRandomness(real_vfs, n, out);
}

static int v_sleep(sqlite3_vfs *v, int us)
{
    return real_vfs->xSleep(real_vfs, us);
}

static int v_time(sqlite3_vfs *v, double *out)
{
    return real_vfs->xCurrentTime(real_vfs, out);
}

static int v_last_error(sqlite3_vfs *v, int n, char *out)
{
    return real_vfs->xGetLastError(real_vfs, n, out);
}

static int v_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

void tf_install(void)
{
    keel__fs_set_ops(&fault_ops);
    if (real_vfs)
        return;
    real_vfs = sqlite3_vfs_find("unix");
    fault_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)((sizeof(tf_file) + 7) / 8 * 8) + real_vfs->szOsFile,
        .mxPathname = real_vfs->mxPathname,
        .zName = "keelfault",
        .xOpen = v_open,
        .xDelete = v_delete,
        .xAccess = v_access,
        .xFullPathname = v_full,
        .xDlOpen = v_dlopen,
        .xDlError = v_dlerror,
        .xDlSym = v_dlsym,
        .xDlClose = v_dlclose,
        .xRandomness = v_random,
        .xSleep = v_sleep,
        .xCurrentTime = v_time,
        .xGetLastError = v_last_error,
        .xCurrentTimeInt64 = v_time64,
    };
    sqlite3_vfs_register(&fault_vfs, 1);
}

void tf_uninstall(void)
{
    tf_disarm();
    keel__fs_set_ops(NULL);
    if (real_vfs) {
        sqlite3_vfs_unregister(&fault_vfs);
        real_vfs = NULL;
    }
}
