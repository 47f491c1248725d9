/* archive_dl.c - loads libarchive on first use (see archive_dl.h). */
#define KEEL__ARCHIVE_DL_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "pkg/archive_dl.h"

#define KEEL_ARCHIVE_SONAME "libarchive.so.13"

keel__archive_api keel__ar;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load(void)
{
    void *h = dlopen(KEEL_ARCHIVE_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof(load_error), "cannot load %s (install libarchive13): %s",
                 KEEL_ARCHIVE_SONAME, dlerror());
        return;
    }
    keel__archive_api api;
#define KEEL__AR_LOAD(f)                                                                           \
    *(void **)&api.f = dlsym(h, #f);                                                               \
    if (!api.f) {                                                                                  \
        snprintf(load_error, sizeof(load_error), "%s has no symbol %s", KEEL_ARCHIVE_SONAME, #f);  \
        return;                                                                                    \
    }
    KEEL__ARCHIVE_FUNCS(KEEL__AR_LOAD)
#undef KEEL__AR_LOAD
    keel__ar = api;
}

int keel__archive_load(keel_error *err)
{
    pthread_once(&once, load);
    if (load_error[0])
        return keel__err(err, KEEL_EUNSUPPORTED, "%s", load_error);
    return KEEL_OK;
}
