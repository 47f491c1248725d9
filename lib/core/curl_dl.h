/*
 * curl_dl.h - libcurl, loaded with dlopen on first use.
 *
 * keeld needs an HTTP client only when an HTTP uplink (lib/sync) or a hybrid
 * routing upstream (lib/infer/router.c) is configured. Linked at start-up,
 * libcurl maps ~39 shared libraries (gnutls, krb5, ldap, ssh2, ...) into
 * every daemon, costing RSS and start-up time whether or not it is used.
 * Library code includes this header instead of <curl/curl.h>; each call goes
 * through a table filled by keel__curl_load(), which must succeed first and
 * also runs curl_global_init once. It lives in core so that infer and sync
 * can both use it; it knows nothing of either. The CLI links libcurl itself
 * and does not use this header.
 *
 * curl's compile-time option type checks (typecheck-gcc.h) work on the
 * function names, so they are off here: pass the documented types.
 */
#ifndef KEEL_CORE_CURL_DL_H
#define KEEL_CORE_CURL_DL_H

#ifndef CURL_DISABLE_TYPECHECK
#define CURL_DISABLE_TYPECHECK 1
#endif
#include <curl/curl.h>

#include "core/core.h"

#define KEEL__CURL_FUNCS(X)                                                                        \
    X(curl_easy_cleanup)                                                                           \
    X(curl_easy_escape)                                                                            \
    X(curl_easy_getinfo)                                                                           \
    X(curl_easy_init)                                                                              \
    X(curl_easy_perform)                                                                           \
    X(curl_easy_reset)                                                                             \
    X(curl_easy_setopt)                                                                            \
    X(curl_easy_strerror)                                                                          \
    X(curl_free)                                                                                   \
    X(curl_global_init)                                                                            \
    X(curl_share_cleanup)                                                                          \
    X(curl_share_init)                                                                             \
    X(curl_share_setopt)                                                                           \
    X(curl_slist_append)                                                                           \
    X(curl_slist_free_all)

typedef struct keel__curl_api {
#define KEEL__CURL_MEMBER(f) __typeof__(&f) f;
    KEEL__CURL_FUNCS(KEEL__CURL_MEMBER)
#undef KEEL__CURL_MEMBER
} keel__curl_api;

extern keel__curl_api keel__curl;

/* Loads libcurl once (thread-safe) and runs curl_global_init; never
 * unloaded. Fails with a message naming the package to install. */
KEEL_WUR int keel__curl_load(keel_error *err);

#ifndef KEEL__CURL_DL_IMPL
#undef curl_easy_getinfo
#undef curl_easy_setopt
#undef curl_share_setopt
#define curl_easy_cleanup   (keel__curl.curl_easy_cleanup)
#define curl_easy_escape    (keel__curl.curl_easy_escape)
#define curl_easy_getinfo   (keel__curl.curl_easy_getinfo)
#define curl_easy_init      (keel__curl.curl_easy_init)
#define curl_easy_perform   (keel__curl.curl_easy_perform)
#define curl_easy_reset     (keel__curl.curl_easy_reset)
#define curl_easy_setopt    (keel__curl.curl_easy_setopt)
#define curl_easy_strerror  (keel__curl.curl_easy_strerror)
#define curl_free           (keel__curl.curl_free)
#define curl_global_init    (keel__curl.curl_global_init)
#define curl_share_cleanup  (keel__curl.curl_share_cleanup)
#define curl_share_init     (keel__curl.curl_share_init)
#define curl_share_setopt   (keel__curl.curl_share_setopt)
#define curl_slist_append   (keel__curl.curl_slist_append)
#define curl_slist_free_all (keel__curl.curl_slist_free_all)
#endif

#endif
