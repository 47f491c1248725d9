/*
 * faults.h - a fault-injecting file system shim for unit tests. It reaches
 * keel's own file code through the keel__fs_ops hook table (lib/core/fs.c:
 * atomic writes, store blobs, package output) and SQLite through a wrapping
 * VFS ("keelfault") registered as the default, which forwards to "unix".
 * No system call is interposed, so ASan's interceptors are untouched.
 *
 * Armed, it counts the calls of the selected kinds and fails the Nth (or
 * each with a probability from a seed): ENOSPC, EIO, a torn write (half the
 * bytes written, then ENOSPC), or a partial write (half written, no error:
 * the caller must retry). Sticky: every later selected call fails too, like
 * a disk that stays full.
 */
#ifndef KEEL_TEST_FAULTS_H
#define KEEL_TEST_FAULTS_H

#include <stdbool.h>
#include <stdint.h>

enum {
    TF_WRITE = 1 << 0,    /* keel__fs_write_all's write(2) */
    TF_SYNC = 1 << 1,     /* keel__fs_fsync (files and directories) */
    TF_RENAME = 1 << 2,   /* keel__fs_rename */
    TF_DB_WRITE = 1 << 3, /* SQLite xWrite (database, WAL, journal) */
    TF_DB_SYNC = 1 << 4,  /* SQLite xSync */
    TF_DB_TRUNC = 1 << 5, /* SQLite xTruncate */
    TF_FS = TF_WRITE | TF_SYNC | TF_RENAME,
    TF_DB = TF_DB_WRITE | TF_DB_SYNC | TF_DB_TRUNC,
    TF_ALL = TF_FS | TF_DB,
};

typedef enum { TF_EIO, TF_ENOSPC, TF_TORN, TF_PARTIAL } tf_kind;

/* Installs the hooks and the VFS (idempotent); disarmed. */
void tf_install(void);
/* Restores the system calls and the default VFS. */
void tf_uninstall(void);
/* Fails the nth (1-based) selected call from now on. */
void tf_arm_nth(unsigned ops, unsigned nth, tf_kind kind, bool sticky);
/* Fails each selected call with probability p (xorshift seeded by seed). */
void tf_arm_random(unsigned ops, double p, uint64_t seed, tf_kind kind);
void tf_disarm(void);
/* Selected calls counted, and faults injected, since the last arm. */
unsigned tf_calls(void);
unsigned tf_fired(void);
/* A line describing the first fault injected since the last arm. */
const char *tf_first(void);
const char *tf_kind_name(tf_kind k);

#endif
