/*
 * keel_fetch - drives lib/update/fetch.c without keeld, for integration
 * tests and bench/download.sh (built with the tests, not installed).
 *
 *   keel_fetch --state-dir D --trust T --repo URL [--peer URL]... --name N
 *              --version V --digest sha256:HEX [--install] [--activate]
 *              [--patch FROM:TO:SHA256:SIZE]... [--max-rate BYTES/S]
 *              [--timeout S]
 *
 * Downloads into D/update/downloads/<digest hex>; with --install, installs
 * from there (keel_store_install_dir) and removes the folder. Prints the
 * stats as one JSON line on stdout, also on failure (with "error"); exit 0
 * on success, 1 on failure, 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "keel/store.h"
#include "keel/trust.h"
#include "update/fetch.h"

#define MAX_LIST 16

static unsigned peer_bad_calls;

static void peer_bad(void *ctx, const char *peer, const char *why)
{
    (void)ctx;
    peer_bad_calls++;
    fprintf(stderr, "keel_fetch: peer %s marked bad: %s\n", peer, why);
}

static void print_json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static int usage(void)
{
    fprintf(stderr, "usage: keel_fetch --state-dir D --trust T --repo URL [--peer URL]... --name N "
                    "--version V --digest sha256:HEX [--install] [--activate] "
                    "[--patch FROM:TO:SHA256:SIZE]... [--max-rate B] [--timeout S]\n");
    return 2;
}

static int parse_patch(const char *arg, keel__repo_patch *p)
{
    unsigned long long size;
    memset(p, 0, sizeof(*p));
    if (sscanf(arg, "%64[0-9a-f]:%64[0-9a-f]:%64[0-9a-f]:%llu", p->from, p->to, p->sha256, &size) !=
        4)
        return -1;
    p->size = size;
    snprintf(p->codec, sizeof(p->codec), "keel-tpatch-1");
    return 0;
}

int main(int argc, char **argv)
{
    const char *state = NULL, *trust_dir = NULL, *name = NULL, *version = NULL, *digest = NULL;
    const char *repos[MAX_LIST], *peers[MAX_LIST];
    keel__repo_patch patches[MAX_LIST];
    size_t nrepos = 0, npeers = 0, npatches = 0;
    bool install = false, activate = false;
    uint64_t rate = 0;
    unsigned timeout = 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--install")) {
            install = true;
            continue;
        }
        if (!strcmp(a, "--activate")) {
            install = activate = true;
            continue;
        }
        if (!v)
            return usage();
        i++;
        if (!strcmp(a, "--state-dir"))
            state = v;
        else if (!strcmp(a, "--trust"))
            trust_dir = v;
        else if (!strcmp(a, "--repo") && nrepos < MAX_LIST)
            repos[nrepos++] = v;
        else if (!strcmp(a, "--peer") && npeers < MAX_LIST)
            peers[npeers++] = v;
        else if (!strcmp(a, "--name"))
            name = v;
        else if (!strcmp(a, "--version"))
            version = v;
        else if (!strcmp(a, "--digest"))
            digest = v;
        else if (!strcmp(a, "--max-rate"))
            rate = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--timeout"))
            timeout = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--patch") && npatches < MAX_LIST &&
                 !parse_patch(v, &patches[npatches]))
            npatches++;
        else
            return usage();
    }
    if (!state || !trust_dir || !nrepos || !name || !version || !digest || strlen(digest) != 7 + 64)
        return usage();

    keel_error err = {0};
    keel_store *store = NULL;
    keel_trust *trust = NULL;
    keel__fetch_stats st = {0};
    keel_install_result res = {0};
    keel_limits lim;
    char work[4096];
    int rc;
    keel_limits_default(&lim);
    snprintf(work, sizeof(work), "%s/update/downloads/%s", state, digest + 7);
    if (!(rc = keel_trust_load(trust_dir, &trust, &err)) &&
        !(rc = keel_store_open(state, &lim, &store, &err))) {
        keel__fetch_opts o = {.work_dir = work,
                              .origins = repos,
                              .norigins = nrepos,
                              .peers = peers,
                              .npeers = npeers,
                              .peer_bad = peer_bad,
                              .patches = npatches ? patches : NULL,
                              .npatches = npatches,
                              .store = store,
                              .max_bytes_per_s = rate,
                              .timeout_s = timeout};
        rc = keel__fetch_package(&o, name, version, digest, &st, &err);
        if (!rc && install) {
            rc = keel_store_install_dir(store, work, trust, activate ? KEEL_INSTALL_ACTIVATE : 0,
                                        &res, &err);
            if (!rc)
                rc = keel__fs_rm_rf(work, &err);
        }
    }
    printf("{\"ok\":%s,\"needed\":%llu,\"from_origin\":%llu,\"from_peers\":%llu,"
           "\"from_local\":%llu,\"from_patches\":%llu,\"wasted\":%llu,\"resumes\":%u,"
           "\"bad_chunks\":%u,\"patch_failures\":%u,\"peer_bad\":%u,\"installed\":%s,"
           "\"new_bytes\":%llu",
           rc ? "false" : "true", (unsigned long long)st.needed, (unsigned long long)st.from_origin,
           (unsigned long long)st.from_peers, (unsigned long long)st.from_local,
           (unsigned long long)st.from_patches, (unsigned long long)st.wasted, st.resumes,
           st.bad_chunks, st.patch_failures, peer_bad_calls, !rc && install ? "true" : "false",
           (unsigned long long)res.new_bytes);
    if (rc) {
        printf(",\"code\":\"%s\",\"error\":", keel_errname(rc));
        print_json_str(err.msg);
    }
    printf("}\n");
    if (rc)
        fprintf(stderr, "keel_fetch: %s\n", err.msg);
    keel_store_close(store);
    keel_trust_free(trust);
    return rc ? 1 : 0;
}
