/* log.c - leveled logging to stderr and syslog. One write(2) per line. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"

static _Atomic int log_level = KEEL_LOG_INFO;
static _Atomic bool log_stderr = true;
static _Atomic bool log_syslog = false;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void keel_log_set_level(keel_log_level level)
{
    atomic_store(&log_level, (int)level);
}

keel_log_level keel_log_get_level(void)
{
    return (keel_log_level)atomic_load(&log_level);
}

const char *keel_log_level_name(keel_log_level level)
{
    return (unsigned)level < KEEL_ARRAY_LEN(level_names) ? level_names[level] : "unknown";
}

int keel_log_level_parse(const char *s, keel_log_level *ret_level)
{
    for (size_t i = 0; i < KEEL_ARRAY_LEN(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *ret_level = (keel_log_level)i;
            return KEEL_OK;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *ret_level = KEEL_LOG_WARN;
        return KEEL_OK;
    }
    return KEEL_EINVALID;
}

void keel_log_set_syslog(bool on, const char *ident)
{
    if (on && !atomic_load(&log_syslog))
        openlog(ident ? ident : "keel", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    else if (!on && atomic_load(&log_syslog))
        closelog();
    atomic_store(&log_syslog, on);
}

void keel_log_set_stderr(bool on)
{
    atomic_store(&log_stderr, on);
}

void keel_log(keel_log_level level, const char *module, const char *fmt, ...)
{
    char line[2048];
    char ts[32];
    struct timespec now;
    struct tm tm;
    va_list ap;
    int n, m;

    if ((int)level > atomic_load(&log_level))
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line, sizeof(line), "%s.%03ldZ %-5s %s: ", ts, now.tv_nsec / 1000000L,
                 level_names[level], module ? module : "keel");
    if (n < 0)
        return;
    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    if (atomic_load(&log_syslog)) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        line[len] = '\0';
        syslog(prio[level], "%s", line + 25); /* without our timestamp */
    }
    if (atomic_load(&log_stderr)) {
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
    }
}
