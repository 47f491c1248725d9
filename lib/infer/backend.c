/*
 * backend.c - the registry of backends: the one place that says which
 * backends this keel has. A tier's "backend" names one of them.
 *
 * The built-in table is fixed at compile time (onnx, rules, graph for
 * pipeline tiers; llama comes here when it lands). keel__backend_register adds one more at run
 * time, for tests and for embedders that bring their own; registered backends are looked up after
 * the built-in ones and live until the process ends.
 */
#include <pthread.h>
#include <string.h>

#include "infer/backend.h"

static const keel__backend *const builtin[] = {
    &keel__backend_onnx,
    &keel__backend_rules,
    &keel__backend_graph,
};

#define MAX_EXTRA 8

static pthread_mutex_t extra_mu = PTHREAD_MUTEX_INITIALIZER;
static const keel__backend *extra[MAX_EXTRA];
static size_t nextra;

const keel__backend *keel__backend_find(const char *name)
{
    const keel__backend *be = NULL;
    if (!name)
        return NULL;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(builtin); i++)
        if (!strcmp(builtin[i]->name, name))
            return builtin[i];
    pthread_mutex_lock(&extra_mu);
    for (size_t i = 0; i < nextra && !be; i++)
        if (!strcmp(extra[i]->name, name))
            be = extra[i];
    pthread_mutex_unlock(&extra_mu);
    return be;
}

int keel__backend_register(const keel__backend *be, keel_error *err)
{
    int rc = KEEL_OK;
    if (!be || !be->name || !be->load || !be->unload)
        return keel__err(err, KEEL_EINVALID, "a backend needs a name, load and unload");
    if ((be->caps & KEEL__CAP_RUN) && !be->run)
        return keel__err(err, KEEL_EINVALID, "backend %s declares RUN without run", be->name);
    if ((be->caps & KEEL__CAP_GENERATE) && !be->generate)
        return keel__err(err, KEEL_EINVALID, "backend %s declares GENERATE without generate",
                         be->name);
    if ((be->caps & KEEL__CAP_EMBED) && !be->embed)
        return keel__err(err, KEEL_EINVALID, "backend %s declares EMBED without embed", be->name);
    if ((be->caps & KEEL__CAP_TOKENIZE) && !be->tokenize)
        return keel__err(err, KEEL_EINVALID, "backend %s declares TOKENIZE without tokenize",
                         be->name);
    if ((be->caps & KEEL__CAP_SESSIONS) &&
        (!be->session_new || !be->session_free || !be->session_reset))
        return keel__err(err, KEEL_EINVALID,
                         "backend %s declares SESSIONS without session_new, session_free and "
                         "session_reset",
                         be->name);
    if (keel__backend_find(be->name))
        return keel__err(err, KEEL_EEXISTS, "a backend called %s is already registered", be->name);
    pthread_mutex_lock(&extra_mu);
    if (nextra == MAX_EXTRA)
        rc = keel__err(err, KEEL_ETOOBIG, "more than %d registered backends", MAX_EXTRA);
    else
        extra[nextra++] = be;
    pthread_mutex_unlock(&extra_mu);
    return rc;
}
