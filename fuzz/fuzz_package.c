/* fuzz_package.c - the .keel reader: open from memory, check trust, read
 * every member, with small limits. */
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"

static keel_trust *trust;

/* A fixed root with one key, so signature checking code runs too. */
static const char root[] =
    "{\"format\":1,\"type\":\"keel-root\",\"version\":1,\"keys\":{\"7261b73df0b6b40fdaac2a43837"
    "9d27ff567969e7387f24c3424020962d8ed47\":{\"alg\":\"ed25519\",\"public\":\"639270773edbaf6a"
    "0cf79334dc517e406a992b463d3d35f3d2b6ff8231c730c0\"}},\"root\":{\"keys\":[\"7261b73df0b6b40"
    "fdaac2a438379d27ff567969e7387f24c3424020962d8ed47\"],\"threshold\":1},\"packages\":[{\"pre"
    "fix\":\"\",\"keys\":[\"7261b73df0b6b40fdaac2a438379d27ff567969e7387f24c3424020962d8ed47\"]"
    ",\"threshold\":1}]}";

static int sink_begin(void *ud, const keel_file *f, bool *skip, keel_error *e)
{
    *skip = false;
    return 0;
}
static int sink_write(void *ud, const void *d, size_t n, keel_error *e)
{
    *(size_t *)ud += n;
    return 0;
}
static int sink_end(void *ud, const keel_file *f, bool ok, keel_error *e)
{
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel_limits lim;
    keel_pkg *p = NULL;
    keel_error e;
    size_t got = 0;
    keel_pkg_sink sink = {sink_begin, sink_write, sink_end, &got};
    keel_log_set_stderr(false);
    if (!trust && keel_trust_from_root(root, strlen(root), &trust, &e) != KEEL_OK)
        abort(); /* the fixed root must load, or signature checks go unfuzzed */
    keel_limits_default(&lim);
    lim.max_package_bytes = 1u << 20;
    lim.max_file_bytes = 1u << 20;
    lim.max_manifest_bytes = 256u << 10;
    lim.max_files = 64;
    if (keel_pkg_open_mem(data, size, &lim, &p, &e) == KEEL_OK) {
        if (trust && keel_pkg_check_trust(p, trust, &e) != KEEL_OK) {
            /* expected for nearly every input */
        }
        if (keel_pkg_extract(p, &sink, &e) != KEEL_OK) {
            /* refused members end here */
        }
    }
    keel_pkg_close(p);
    return 0;
}
