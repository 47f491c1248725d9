/*
 * zz_pending_stubs.c - TEMPORARY: stand-ins for what issue 11's helper
 * branches (publish, fetch, probation, paths) implement, so main builds
 * while they land. Every function here fails or does nothing; this file
 * is deleted when those branches merge.
 */
#include "runtime/rt.h"
#include "update/fetch.h"
#include "update/repo.h"

int keel__fetch_package(const keel__fetch_opts *o, const char *name, const char *version,
                        const char *digest, keel__fetch_stats *st, keel_error *err)
{
    (void)o, (void)name, (void)version, (void)digest, (void)st;
    return keel__err(err, KEEL_EUNSUPPORTED, "fetch is not implemented yet");
}
int keel_store_install_dir(keel_store *s, const char *dir, const keel_trust *t, unsigned flags,
                           keel_install_result *ret, keel_error *err)
{
    (void)s, (void)dir, (void)t, (void)flags, (void)ret;
    return keel__err(err, KEEL_EUNSUPPORTED, "install_dir is not implemented yet");
}
