/*
 * common.h - macros shared by every public header: symbol export and
 * attributes. Owns nothing else.
 */
#ifndef KEEL_COMMON_H
#define KEEL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define KEEL_API          __attribute__((visibility("default")))
#define KEEL_WUR          __attribute__((warn_unused_result))
#define KEEL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KEEL_API
#define KEEL_WUR
#define KEEL_PRINTF(f, a)
#endif

/* Returns the library version, "MAJOR.MINOR.PATCH". Static storage. */
#define KEEL_VERSION_MAJOR  0
#define KEEL_VERSION_MINOR  1
#define KEEL_VERSION_PATCH  0
#define KEEL_VERSION_STRING "0.1.0"

KEEL_API const char *keel_version(void);

#endif
