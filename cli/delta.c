/*
 * delta.c - `keel delta`: make and apply per-file binary patches (codec
 * "keel-tpatch-1", docs/update.md "Patches").
 *
 *   keel delta BASE TARGET -o PATCH
 *   keel delta --apply BASE PATCH -o OUT [--sha256 HEX]
 *
 * Without --sha256, apply checks the result against the target hash the
 * patch itself records (which proves only that the patch is intact: a
 * device takes the expected hash from signed metadata).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "delta.h"
#include "core/core.h"
#include "keel/crypto.h"
#include "update/patch.h"
#include "update/patch_format.h"

static int usage(const char *what)
{
    fprintf(stderr,
            "keel: %s\n"
            "usage: keel delta BASE TARGET -o PATCH\n"
            "       keel delta --apply BASE PATCH -o OUT [--sha256 HEX]\n",
            what);
    return 2;
}

static int fail(const keel_error *e)
{
    fprintf(stderr, "keel: %s (%s)\n", e->msg, keel_errname(e->code));
    return 1;
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static int make(const char *base, const char *target, const char *out)
{
    keel_error e;
    keel__patch_info info;
    if (keel__patch_make(base, target, out, &e))
        return fail(&e);
    if (keel__patch_read_info(out, &info, &e))
        return fail(&e);
    long long psize = file_size(out);
    printf("%s: %lld bytes, %.2f%% of %s (%llu bytes); transform %s\n", out, psize,
           info.target_size ? 100.0 * (double)psize / (double)info.target_size : 0.0, target,
           (unsigned long long)info.target_size, keel__patch_transform_name(info.transform));
    keel__patch_info_done(&info);
    return 0;
}

static int apply(const char *base, const char *patch, const char *out, const char *hex)
{
    keel_error e;
    uint8_t want[32];
    if (hex) {
        if (strlen(hex) != 64 || keel_hex_decode(hex, 64, want, sizeof(want)))
            return usage("--sha256 needs 64 hex digits");
    } else {
        keel__patch_info info;
        if (keel__patch_read_info(patch, &info, &e))
            return fail(&e);
        memcpy(want, info.target_sha256, 32);
        keel__patch_info_done(&info);
    }
    if (keel__patch_apply(base, patch, out, want, &e))
        return fail(&e);
    return 0;
}

int keel_cli_delta(int argc, char **argv)
{
    static const struct option lo[] = {{"out", required_argument, 0, 'o'},
                                       {"apply", no_argument, 0, 'a'},
                                       {"sha256", required_argument, 0, 's'},
                                       {0, 0, 0, 0}};
    const char *out = NULL, *hex = NULL;
    bool do_apply = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:", lo, NULL)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'a':
            do_apply = true;
            break;
        case 's':
            hex = optarg;
            break;
        default:
            return usage("bad option");
        }
    }
    if (argc - optind != 2 || !out)
        return usage(argc - optind != 2 ? "needs two files" : "needs -o FILE");
    if (hex && !do_apply)
        return usage("--sha256 goes with --apply");
    if (do_apply)
        return apply(argv[optind], argv[optind + 1], out, hex);
    return make(argv[optind], argv[optind + 1], out);
}
