/*
 * error.h - keel's error codes and the error record that carries context.
 *
 * Codes are classes a caller can act on; the message in a keel_error says
 * what failed, on what, and what to do. The table below is the single source
 * of truth: numbers are explicit and never reused.
 */
#ifndef KEEL_ERROR_H
#define KEEL_ERROR_H

#include "keel/common.h"

/* X(NAME, number, description) */
#define KEEL_ERROR_MAP(X)                                                                          \
    X(OK, 0, "success")                                                                            \
    X(NOMEM, 1, "out of memory")                                                                   \
    X(IO, 2, "input/output error")                                                                 \
    X(INVALID, 3, "invalid input")                                                                 \
    X(CORRUPT, 4, "data is corrupt")                                                               \
    X(BADSIG, 5, "signature check failed")                                                         \
    X(UNTRUSTED, 6, "not trusted by this device")                                                  \
    X(NOTFOUND, 7, "not found")                                                                    \
    X(EXISTS, 8, "already exists")                                                                 \
    X(TOOBIG, 9, "size limit exceeded")                                                            \
    X(UNSUPPORTED, 10, "unsupported format or version")                                            \
    X(DOWNGRADE, 11, "version rollback refused")                                                   \
    X(BUSY, 12, "resource busy")                                                                   \
    X(TIMEOUT, 13, "timed out")                                                                    \
    X(NOCONN, 14, "no connection")                                                                 \
    X(NOSPACE, 15, "no space left")                                                                \
    X(PERM, 16, "permission denied")                                                               \
    X(NOTREADY, 17, "not ready")                                                                   \
    X(CONFLICT, 18, "conflicting state")                                                           \
    X(INTERNAL, 19, "internal error")

enum {
#define KEEL__ERR_ENUM(name, num, desc) KEEL_E##name = num,
    KEEL_ERROR_MAP(KEEL__ERR_ENUM)
#undef KEEL__ERR_ENUM
};
#define KEEL_OK KEEL_EOK

#define KEEL_ERROR_MSG_MAX 1024

/* An error with its context. Plain data: embed it on the stack. */
typedef struct keel_error {
    int code;                     /* KEEL_E*; 0 when no error was set */
    char msg[KEEL_ERROR_MSG_MAX]; /* NUL-terminated, human readable */
} keel_error;

/* "signature check failed" etc. Static storage; unknown codes get a generic text. */
KEEL_API const char *keel_strerror(int code);
/* "BADSIG" etc. Static storage. */
KEEL_API const char *keel_errname(int code);

#endif
