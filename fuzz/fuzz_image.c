/* fuzz_image.c - PNG/JPEG decoding and the tensor conversion. */
#include <math.h>
#include <stdlib.h>

#include "infer/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel__image img;
    keel_error e;
    if (keel__image_decode(data, size, (size_t)1 << 20, &img, &e) != KEEL_OK) {
        if (img.pixels || e.msg[0] == '\0')
            __builtin_trap(); /* failures leave nothing and say why */
        return 0;
    }
    if (img.width < 1 || img.height < 1 || (size_t)img.width * (size_t)img.height > (1u << 20) ||
        (img.channels != 1 && img.channels != 3))
        __builtin_trap();

    static const keel__image_spec specs[] = {
        {.width = 32, .height = 32, .channels = 3, .nchw = 1, .scale = 1 / 255.f, .std = {1, 1, 1}},
        {.width = 7, .height = 5, .channels = 1, .scale = 1.0f, .invert = 1},
    };
    float out[32 * 32 * 3];
    for (size_t s = 0; s < sizeof(specs) / sizeof(specs[0]); s++) {
        if (keel__image_to_tensor(&img, &specs[s], out, &e) != KEEL_OK)
            __builtin_trap();
        size_t n = (size_t)specs[s].channels * (size_t)specs[s].width * (size_t)specs[s].height;
        float hi = specs[s].scale * 255.0f * 1.0001f;
        for (size_t i = 0; i < n; i++)
            if (!(out[i] >= -0.0001f && out[i] <= hi)) /* also catches NaN */
                __builtin_trap();
    }
    keel__image_free(&img);
    return 0;
}
