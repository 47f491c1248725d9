/* error.c - the error table, and helpers that fill a keel_error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

const char *keel_version(void)
{
    return KEEL_VERSION_STRING;
}

const char *keel_strerror(int code)
{
    switch (code) {
#define KEEL__ERR_STR(name, num, desc)                                                             \
    case num:                                                                                      \
        return desc;
        KEEL_ERROR_MAP(KEEL__ERR_STR)
#undef KEEL__ERR_STR
    default:
        return "unknown error";
    }
}

const char *keel_errname(int code)
{
    switch (code) {
#define KEEL__ERR_NAME(name, num, desc)                                                            \
    case num:                                                                                      \
        return #name;
        KEEL_ERROR_MAP(KEEL__ERR_NAME)
#undef KEEL__ERR_NAME
    default:
        return "UNKNOWN";
    }
}

void keel__err_clear(keel_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

static int err_vset(keel_error *err, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static int err_vset(keel_error *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    }
    return code;
}

int keel__err(keel_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int keel__err_errno(keel_error *err, int code, int errnum, const char *fmt, ...)
{
    va_list ap;
    if (!err)
        return code;
    va_start(ap, fmt);
    err_vset(err, code, fmt, ap);
    va_end(ap);
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", strerror(errnum));
    return code;
}

int keel__err_prefix(keel_error *err, const char *fmt, ...)
{
    char pre[KEEL_ERROR_MSG_MAX], old[KEEL_ERROR_MSG_MAX];
    va_list ap;
    if (!err)
        return KEEL_EINTERNAL;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof(pre), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    snprintf(err->msg, sizeof(err->msg), "%s: %s", pre, old);
    return err->code;
}

int keel__err_from_errno(int errnum)
{
    switch (errnum) {
    case ENOMEM:
        return KEEL_ENOMEM;
    case ENOENT:
    case ENOTDIR:
        return KEEL_ENOTFOUND;
    case EEXIST:
        return KEEL_EEXISTS;
    case EACCES:
    case EPERM:
    case EROFS:
        return KEEL_EPERM;
    case ENOSPC:
    case EDQUOT:
        return KEEL_ENOSPACE;
    case EFBIG:
    case ENAMETOOLONG:
        return KEEL_ETOOBIG;
    case EBUSY:
    case EAGAIN:
        return KEEL_EBUSY;
    case ETIMEDOUT:
        return KEEL_ETIMEOUT;
    case ECONNREFUSED:
    case ENETUNREACH:
    case EHOSTUNREACH:
        return KEEL_ENOCONN;
    case EINVAL:
        return KEEL_EINVALID;
    default:
        return KEEL_EIO;
    }
}

void keel__assert_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%d: invariant violated: %s: %s\n", file, line, cond, msg);
    fflush(stderr);
    abort();
}
