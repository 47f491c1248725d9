/* config.c - default package limits (keel/config.h). The settings file is conf.c. */
#include "core/core.h"

void keel_limits_default(keel_limits *ret)
{
    ret->max_package_bytes = 16ull << 30; /* 16 GiB: large LLMs fit */
    ret->max_file_bytes = 16ull << 30;
    ret->max_manifest_bytes = 64u << 20; /* chunk lists of a 16 GiB package fit */
    ret->max_sig_bytes = 64u << 10;
    ret->max_files = 10000;
}
