/* curl_dl.c - loads libcurl on first use (see curl_dl.h). */
#define KEEL__CURL_DL_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "core/curl_dl.h"

#define KEEL_CURL_SONAME "libcurl.so.4"

keel__curl_api keel__curl;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load(void)
{
    void *h = dlopen(KEEL_CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof(load_error),
                 "cannot load %s (install libcurl4, or configure no HTTP uplink or upstream): %s",
                 KEEL_CURL_SONAME, dlerror());
        return;
    }
    keel__curl_api api;
#define KEEL__CURL_LOAD(f)                                                                         \
    *(void **)&api.f = dlsym(h, #f);                                                               \
    if (!api.f) {                                                                                  \
        snprintf(load_error, sizeof(load_error), "%s has no symbol %s (libcurl too old?)",         \
                 KEEL_CURL_SONAME, #f);                                                            \
        return;                                                                                    \
    }
    KEEL__CURL_FUNCS(KEEL__CURL_LOAD)
#undef KEEL__CURL_LOAD
    CURLcode rc = api.curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        snprintf(load_error, sizeof(load_error), "%s: curl_global_init: %s", KEEL_CURL_SONAME,
                 api.curl_easy_strerror(rc));
        return;
    }
    keel__curl = api;
}

int keel__curl_load(keel_error *err)
{
    pthread_once(&once, load);
    if (load_error[0])
        return keel__err(err, KEEL_EUNSUPPORTED, "%s", load_error);
    return KEEL_OK;
}
