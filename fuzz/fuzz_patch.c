/* fuzz_patch.c - the patch reader (lib/update/patch.c, keel-tpatch-1):
 * header, table, segments and the inverse transforms, applied to a fixed
 * base (an ONNX-like model built here; the corpus was made against it).
 * The base's hash is not compared, so inputs reach the frames. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "update/patch_format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The base: a protobuf ModelProto{graph{initializer{float tensor}}} of 4 KiB. */
static const uint8_t *fuzz_base(size_t *len)
{
    static uint8_t buf[4200];
    static size_t n;
    if (n == 0) {
        size_t raw = 4096, i = 0;
        /* TensorProto: data_type=1, raw_data(9) */
        uint8_t tensor_hdr[] = {0x10, 0x01, 0x4a, 0x80, 0x20};
        size_t tlen = sizeof(tensor_hdr) + raw;
        buf[i++] = 0x08, buf[i++] = 0x08; /* ir_version 8 */
        buf[i++] = 0x3a;                  /* graph (7) */
        buf[i++] = (uint8_t)((tlen + 3) | 0x80), buf[i++] = (uint8_t)((tlen + 3) >> 7);
        buf[i++] = 0x2a; /* initializer (5) */
        buf[i++] = (uint8_t)(tlen | 0x80), buf[i++] = (uint8_t)(tlen >> 7);
        memcpy(buf + i, tensor_hdr, sizeof(tensor_hdr));
        i += sizeof(tensor_hdr);
        uint32_t s = 1;
        for (size_t k = 0; k < raw; k++) {
            s = s * 1103515245u + 12345u;
            buf[i++] = (k % 4 == 3) ? 0x3d : (uint8_t)(s >> 16);
        }
        n = i;
    }
    *len = n;
    return buf;
}

static int sink(void *ctx, const uint8_t *p, size_t n, keel_error *err)
{
    size_t *total = ctx;
    (void)p;
    *total += n;
    if (*total > (64u << 20))
        return keel__err(err, KEEL_ETOOBIG, "fuzz output over 64 MiB");
    return KEEL_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t blen, total = 0;
    const uint8_t *base = fuzz_base(&blen);
    uint8_t sha[32];
    keel_error e;
    if (getenv("KEEL_FUZZ_PATCH_BASE")) { /* writes the base, for making seeds */
        FILE *f = fopen(getenv("KEEL_FUZZ_PATCH_BASE"), "wb");
        if (f) {
            fwrite(base, 1, blen, f);
            fclose(f);
        }
    }
    int rc = keel__patch_apply_mem(base, blen, data, size, false, sink, &total, sha, &e);
    if (rc == KEEL_OK && total == 0 && size < KEEL__PATCH_HEADER_SIZE)
        abort(); /* a short input can never be a valid patch */
    if (rc != KEEL_OK && e.msg[0] == '\0')
        abort(); /* every refusal says why */
    return 0;
}
