/* options.c - the store's settings (conf.h): bounds on what a package may
 * make the device do. keel_limits carries them into keel_store_open. */
#include "core/conf.h"
#include "store/options.h"

static const keel__option opts[] = {
    {"max_package", KEEL__OPT_SIZE, "16G", 1024, 1ull << 50, true, "a size like 16G (>= 1K)"},
    {"max_file", KEEL__OPT_SIZE, "16G", 1, 1ull << 50, true, "a size like 8G"},
    {"max_manifest", KEEL__OPT_SIZE, "64M", 1024, 1u << 30, true, "a size like 64M (1K..1G)"},
    {"max_files", KEEL__OPT_UINT, "10000", 1, 1000000, true, "a count 1..1000000"},
};
const keel__option_set keel__store_options = {"store", opts, KEEL_ARRAY_LEN(opts)};

void keel__store_limits_from(const keel__conf *c, keel_limits *ret)
{
    keel_limits_default(ret);
    ret->max_package_bytes = keel__conf_u64(c, "max_package");
    ret->max_file_bytes = keel__conf_u64(c, "max_file");
    ret->max_manifest_bytes = (uint32_t)keel__conf_u64(c, "max_manifest");
    ret->max_files = (uint32_t)keel__conf_u64(c, "max_files");
}
