/*
 * archive_dl.h - libarchive, loaded with dlopen on first use.
 *
 * keeld spends its life serving, not reading tars: linking libarchive at
 * start-up would map it and its dependencies (libxml2, ICU, libstdc++, ...)
 * into every daemon for ~2 MiB of RSS (bench/RESULTS.md). lib/pkg includes
 * this header instead of calling libarchive directly; each call goes through
 * a table filled by keel__archive_load(), which must succeed first.
 */
#ifndef KEEL_PKG_ARCHIVE_DL_H
#define KEEL_PKG_ARCHIVE_DL_H

#include <archive.h>
#include <archive_entry.h>

#include "core/core.h"

#define KEEL__ARCHIVE_FUNCS(X)                                                                     \
    X(archive_entry_clear)                                                                         \
    X(archive_entry_filetype)                                                                      \
    X(archive_entry_free)                                                                          \
    X(archive_entry_hardlink)                                                                      \
    X(archive_entry_new)                                                                           \
    X(archive_entry_pathname)                                                                      \
    X(archive_entry_set_filetype)                                                                  \
    X(archive_entry_set_mtime)                                                                     \
    X(archive_entry_set_pathname)                                                                  \
    X(archive_entry_set_perm)                                                                      \
    X(archive_entry_set_size)                                                                      \
    X(archive_entry_size)                                                                          \
    X(archive_entry_size_is_set)                                                                   \
    X(archive_error_string)                                                                        \
    X(archive_read_data)                                                                           \
    X(archive_read_free)                                                                           \
    X(archive_read_new)                                                                            \
    X(archive_read_next_header)                                                                    \
    X(archive_read_open_filename)                                                                  \
    X(archive_read_open_memory)                                                                    \
    X(archive_read_support_format_tar)                                                             \
    X(archive_write_close)                                                                         \
    X(archive_write_data)                                                                          \
    X(archive_write_free)                                                                          \
    X(archive_write_header)                                                                        \
    X(archive_write_new)                                                                           \
    X(archive_write_open_fd)                                                                       \
    X(archive_write_set_format_pax_restricted)

typedef struct keel__archive_api {
#define KEEL__AR_MEMBER(f) __typeof__(&f) f;
    KEEL__ARCHIVE_FUNCS(KEEL__AR_MEMBER)
#undef KEEL__AR_MEMBER
} keel__archive_api;

extern keel__archive_api keel__ar;

/* Loads libarchive once (thread-safe). Fails with a message naming the
 * library to install. */
KEEL_WUR int keel__archive_load(keel_error *err);

#ifndef KEEL__ARCHIVE_DL_IMPL
#define archive_entry_clear                     (keel__ar.archive_entry_clear)
#define archive_entry_filetype                  (keel__ar.archive_entry_filetype)
#define archive_entry_free                      (keel__ar.archive_entry_free)
#define archive_entry_hardlink                  (keel__ar.archive_entry_hardlink)
#define archive_entry_new                       (keel__ar.archive_entry_new)
#define archive_entry_pathname                  (keel__ar.archive_entry_pathname)
#define archive_entry_set_filetype              (keel__ar.archive_entry_set_filetype)
#define archive_entry_set_mtime                 (keel__ar.archive_entry_set_mtime)
#define archive_entry_set_pathname              (keel__ar.archive_entry_set_pathname)
#define archive_entry_set_perm                  (keel__ar.archive_entry_set_perm)
#define archive_entry_set_size                  (keel__ar.archive_entry_set_size)
#define archive_entry_size                      (keel__ar.archive_entry_size)
#define archive_entry_size_is_set               (keel__ar.archive_entry_size_is_set)
#define archive_error_string                    (keel__ar.archive_error_string)
#define archive_read_data                       (keel__ar.archive_read_data)
#define archive_read_free                       (keel__ar.archive_read_free)
#define archive_read_new                        (keel__ar.archive_read_new)
#define archive_read_next_header                (keel__ar.archive_read_next_header)
#define archive_read_open_filename              (keel__ar.archive_read_open_filename)
#define archive_read_open_memory                (keel__ar.archive_read_open_memory)
#define archive_read_support_format_tar         (keel__ar.archive_read_support_format_tar)
#define archive_write_close                     (keel__ar.archive_write_close)
#define archive_write_data                      (keel__ar.archive_write_data)
#define archive_write_free                      (keel__ar.archive_write_free)
#define archive_write_header                    (keel__ar.archive_write_header)
#define archive_write_new                       (keel__ar.archive_write_new)
#define archive_write_open_fd                   (keel__ar.archive_write_open_fd)
#define archive_write_set_format_pax_restricted (keel__ar.archive_write_set_format_pax_restricted)
#endif

#endif
