/* helpers.h - small fixtures for unit tests: temp dirs, files, keys, packages. */
#ifndef KEEL_TEST_HELPERS_H
#define KEEL_TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/core.h"
#include "keel/keel.h"

/* A fresh temp dir (static buffer per call slot); removed by th_cleanup. */
const char *th_tmpdir(void);
void th_cleanup(void);
/* Writes data to dir/rel (creating parents). */
void th_write(const char *dir, const char *rel, const void *data, size_t len);
void th_write_str(const char *dir, const char *rel, const char *s);
/* path = dir/rel into a static rotating buffer. */
const char *th_path(const char *dir, const char *rel);
/* Writes a package source dir with keel.json (name, version) and two files. */
void th_make_src(const char *dir, const char *name, const char *version, size_t model_bytes);
/* Packs src into out signed by key (may be NULL). Asserts success. */
void th_pack(const char *src, const char *out, const keel_key *key);
/* Trust dir pinning key. */
void th_trust(const char *dir, const keel_key *key);
/* Asserts rc == want and, when sub is not NULL, that err.msg contains sub. */
#define th_expect_err(rc, err, want, sub) th_expect_err_(rc, err, want, sub, __FILE__, __LINE__)
void th_expect_err_(int rc, const keel_error *err, int want, const char *sub, const char *file,
                    int line);

/* Skips the running test, saying why. th_exit then turns a run whose tests
 * passed or skipped into exit 77, which CTest shows as Skipped
 * (SKIP_RETURN_CODE). When CI is set (every dependency is there) a skip
 * fails the test instead. */
#define th_skip(why)                                                                               \
    do {                                                                                           \
        th_skip_(why, __FILE__, __LINE__);                                                         \
        skip();                                                                                    \
    } while (0)
void th_skip_(const char *why, const char *file, int line);
/* main's exit status from cmocka_run_group_tests' rc: rc when a test
 * failed, else 77 when one skipped, else 0. */
int th_exit(int rc);
/* path of rel in the reference models and data: $KEEL_SHARED, else the
 * ../shared beside the source tree (KEEL_SHARED=/nonexistent: run as on a
 * machine without it). Static rotating buffer. */
const char *th_shared(const char *rel);

#endif
