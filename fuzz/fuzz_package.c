/* fuzz_package.c - the .keel reader: open from memory, check trust, read
 * every member, with small limits. */
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"

static keel_trust *trust;

/* A fixed root with one key, so signature checking code runs too. */
static const char root[] =
    "{\"format\":1,\"type\":\"keel-root\",\"version\":1,\"keys\":{"
    "\"ed6b8c1b8d6c3bde3ba4bc20d1a7b1b5b1e9b4d2d3cf6d3c8ba2a0c9c1f0d7e2\":{\"alg\":\"ed25519\","
    "\"public\":\"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"}},"
    "\"root\":{\"keys\":[],\"threshold\":1},\"packages\":[]}";

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
        trust = NULL; /* the root above may be refused; the reader is still fuzzed */
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
