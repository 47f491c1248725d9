/*
 * core.h - internal helpers shared by every module: error setting, bounded
 * buffers, files (atomic writes, bounded reads, directories), time, and the
 * JSON adapter (json.h). Nothing here knows any keel concept above bytes.
 */
#ifndef KEEL_CORE_CORE_H
#define KEEL_CORE_CORE_H

#include <stdarg.h>
#include <sys/types.h>

#include "keel/common.h"
#include "keel/config.h"
#include "keel/error.h"
#include "keel/layout.h"
#include "keel/log.h"

#define KEEL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KEEL_UNUSED(x)    ((void)(x))

/* --- errors ---------------------------------------------------------------- */

/* Sets err (may be NULL) and returns code. */
int keel__err(keel_error *err, int code, const char *fmt, ...) KEEL_PRINTF(3, 4);
/* Same, appending ": strerror(errnum)". */
int keel__err_errno(keel_error *err, int code, int errnum, const char *fmt, ...) KEEL_PRINTF(4, 5);
/* Prefixes an existing message with context ("reading X: <old>"). Returns err->code. */
int keel__err_prefix(keel_error *err, const char *fmt, ...) KEEL_PRINTF(2, 3);
/* Maps an errno to the closest KEEL_E* class. */
int keel__err_from_errno(int errnum);
void keel__err_clear(keel_error *err);

/* --- invariant checks ---------------------------------------------------------- */

/*
 * KEEL_ASSERT(cond, fmt, ...): in debug builds (NDEBUG not defined) a false
 * cond aborts with file:line, the condition and the message; it guards
 * invariants (docs/internals/), never input a client or a file controls.
 * In release builds cond is not evaluated (only type-checked). Keep cond
 * cheap: deeper checks that query a database live in keel__<module>_check
 * helpers that tests call explicitly.
 */
#ifndef NDEBUG
#define KEEL_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond))                                                                               \
            keel__assert_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                             \
    } while (0)
#else
#define KEEL_ASSERT(cond, ...) ((void)sizeof(!(cond)))
#endif
_Noreturn void keel__assert_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    KEEL_PRINTF(4, 5);

/* --- bounded growable buffer ------------------------------------------------ */

typedef struct keel_buf {
    char *data; /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    size_t max; /* 0: unbounded */
} keel_buf;

void keel__buf_init(keel_buf *b, size_t max);
void keel__buf_done(keel_buf *b);
KEEL_WUR int keel__buf_append(keel_buf *b, const void *data, size_t len);
KEEL_WUR int keel__buf_appendf(keel_buf *b, const char *fmt, ...) KEEL_PRINTF(2, 3);
/* Hands the data to the caller (malloc'd, NUL-terminated) and resets b. */
char *keel__buf_steal(keel_buf *b);

/* --- strings ------------------------------------------------------------------ */

/* strlcpy semantics: returns strlen(src); truncates safely. */
size_t keel__strlcpy(char *dst, const char *src, size_t n);
/* snprintf that reports truncation as KEEL_ETOOBIG. */
KEEL_WUR int keel__snprintf(char *dst, size_t n, const char *fmt, ...) KEEL_PRINTF(3, 4);
/* Copies at most len bytes of s into a new NUL-terminated string. */
char *keel__strndup(const char *s, size_t len);
/* Outside bytes made safe to print in a log line or a message: printable
 * ASCII as is, backslash and double quote escaped, every other byte as \xNN
 * (so bad UTF-8, control characters and newlines show as what they are).
 * At most len bytes of s; out (n bytes) ends in "..." when cut. Returns out. */
const char *keel__escape(char *out, size_t n, const void *s, size_t len);

/* --- files --------------------------------------------------------------------- */

/* Reads a whole file of at most max bytes into *ret (malloc'd, NUL-terminated). */
KEEL_WUR int keel__fs_read(const char *path, size_t max, char **ret, size_t *ret_len,
                           keel_error *err);
/* write temp in the same dir, fsync, rename, fsync dir. */
KEEL_WUR int keel__fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                                   keel_error *err);
KEEL_WUR int keel__fs_mkdir_p(const char *path, mode_t mode, keel_error *err);
KEEL_WUR int keel__fs_fsync_dir(const char *dir, keel_error *err);
/* fsync the directory that contains path. */
KEEL_WUR int keel__fs_fsync_parent(const char *path, keel_error *err);
/* Writes all of len bytes, retrying on EINTR and short writes. */
KEEL_WUR int keel__fs_write_all(int fd, const void *data, size_t len);
/* Removes a directory tree (no symlink following). Missing is not an error. */
KEEL_WUR int keel__fs_rm_rf(const char *path, keel_error *err);
bool keel__fs_exists(const char *path);
/* Keeps a SQLite database readable by its owner only: creates path 0600
 * when it is missing (SQLite gives the -wal and -shm files it makes the
 * database's mode) and takes the group and other bits off path, path-wal
 * and path-shm where they are there already. */
KEEL_WUR int keel__fs_private_db(const char *path, keel_error *err);
/* fsync(2) and rename(2) through the hook table below. */
int keel__fs_fsync(int fd);
int keel__fs_rename(const char *from, const char *to);

/*
 * The system calls keel's own file code makes for durable writes (atomic
 * writes, blob writes, package output). Tests replace them to inject
 * ENOSPC, EIO, short writes and failed syncs or renames
 * (tests/unit/faults.c); every member is required. The default table calls
 * the system directly: the cost is one indirect call per system call.
 * Setting is not synchronized with I/O in flight: set it while no other
 * thread writes. NULL restores the system calls.
 */
typedef struct keel__fs_ops {
    ssize_t (*write)(int fd, const void *buf, size_t len);
    int (*fsync)(int fd);
    int (*rename)(const char *from, const char *to);
} keel__fs_ops;
void keel__fs_set_ops(const keel__fs_ops *ops);

/* --- time ------------------------------------------------------------------------ */

/* CLOCK_MONOTONIC nanoseconds: for durations. */
uint64_t keel__now_mono_ns(void);
/* Wall clock seconds: for display and records only, never for trust. */
int64_t keel__now_wall_s(void);
/* RFC 3339 UTC of a wall-clock second into out (>= 21 bytes). */
void keel__format_rfc3339(int64_t t, char *out, size_t n);

/* --- randomness ------------------------------------------------------------------ */

KEEL_WUR int keel__random_bytes(void *buf, size_t len, keel_error *err);

#endif
