/* mosq_dl.c - loads libmosquitto on first use (see mosq_dl.h). */
#define KEEL__MOSQ_DL_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "sync/mosq_dl.h"

#define KEEL_MOSQ_SONAME "libmosquitto.so.1"

keel__mosq_api keel__mosq;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load(void)
{
    void *h = dlopen(KEEL_MOSQ_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof(load_error),
                 "cannot load %s (install libmosquitto1, or use the http uplink): %s",
                 KEEL_MOSQ_SONAME, dlerror());
        return;
    }
    keel__mosq_api api;
#define KEEL__MOSQ_LOAD(f)                                                                         \
    *(void **)&api.f = dlsym(h, #f);                                                               \
    if (!api.f) {                                                                                  \
        snprintf(load_error, sizeof(load_error), "%s has no symbol %s (libmosquitto too old?)",    \
                 KEEL_MOSQ_SONAME, #f);                                                            \
        return;                                                                                    \
    }
    KEEL__MOSQ_FUNCS(KEEL__MOSQ_LOAD)
#undef KEEL__MOSQ_LOAD
    int rc = api.mosquitto_lib_init();
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(load_error, sizeof(load_error), "%s: mosquitto_lib_init: %s", KEEL_MOSQ_SONAME,
                 api.mosquitto_strerror(rc));
        return;
    }
    keel__mosq = api;
}

int keel__mosq_load(keel_error *err)
{
    pthread_once(&once, load);
    if (load_error[0])
        return keel__err(err, KEEL_EUNSUPPORTED, "%s", load_error);
    return KEEL_OK;
}
