/*
 * log.h - leveled logging with a module tag, to stderr and optionally syslog.
 * Thread-safe: one line is written with one write(2).
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#include "keel/common.h"

typedef enum keel_log_level {
    KEEL_LOG_ERROR = 0,
    KEEL_LOG_WARN = 1,
    KEEL_LOG_INFO = 2,
    KEEL_LOG_DEBUG = 3,
} keel_log_level;

KEEL_API void keel_log_set_level(keel_log_level level);
KEEL_API keel_log_level keel_log_get_level(void);
/* "error", "warn", "info", "debug" -> level. Returns KEEL_EINVALID otherwise. */
/* "error", "warn", "info", "debug"; "unknown" otherwise. Static storage. */
KEEL_API const char *keel_log_level_name(keel_log_level level);
KEEL_API KEEL_WUR int keel_log_level_parse(const char *s, keel_log_level *ret_level);
/* Also send lines to syslog(3) under `ident` (borrowed; must outlive logging). */
KEEL_API void keel_log_set_syslog(bool on, const char *ident);
/* Silence stderr output (tests). */
KEEL_API void keel_log_set_stderr(bool on);

KEEL_API void keel_log(keel_log_level level, const char *module, const char *fmt, ...)
    KEEL_PRINTF(3, 4);

#define KEEL_LOG_E(mod, ...) keel_log(KEEL_LOG_ERROR, mod, __VA_ARGS__)
#define KEEL_LOG_W(mod, ...) keel_log(KEEL_LOG_WARN, mod, __VA_ARGS__)
#define KEEL_LOG_I(mod, ...) keel_log(KEEL_LOG_INFO, mod, __VA_ARGS__)
#define KEEL_LOG_D(mod, ...)                                                                       \
    do {                                                                                           \
        if (keel_log_get_level() >= KEEL_LOG_DEBUG)                                                \
            keel_log(KEEL_LOG_DEBUG, mod, __VA_ARGS__);                                            \
    } while (0)

#endif
