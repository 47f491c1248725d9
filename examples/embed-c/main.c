/*
 * embed-c - inference from a C program through libkeel alone: open the
 * state directory keeld uses, take the served "iris" package, classify one
 * flower, print the answer.
 *
 *   embed-c STATE_DIR [PACKAGE [v1 v2 v3 v4]]
 *
 * Only <keel/keel.h> and -lkeel; ONNX Runtime is found as keel finds it
 * (KEEL_ORT_LIB, or .deps/onnxruntime/lib/libonnxruntime.so.1).
 */
#include <keel/keel.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    keel_error err = {0};
    keel_store *store = NULL;
    keel_engine *eng = NULL;
    keel_model *model = NULL;
    keel_result *res = NULL;
    float x[4] = {6.7f, 3.0f, 5.2f, 2.3f};
    int rc = 1;
    if (argc < 2 || (argc > 3 && argc != 7)) {
        fprintf(stderr, "usage: %s STATE_DIR [PACKAGE [v1 v2 v3 v4]]\n", argv[0]);
        return 2;
    }
    const char *name = argc > 2 ? argv[2] : "iris";
    for (int i = 0; argc == 7 && i < 4; i++)
        x[i] = strtof(argv[3 + i], NULL);

    if (keel_store_open(argv[1], NULL, &store, &err) || keel_engine_open(store, NULL, &eng, &err) ||
        keel_engine_model(eng, name, &model, &err))
        goto out;
    size_t nin = 0;
    const keel_tensor *decl = keel_model_inputs(model, &nin);
    if (nin != 1) {
        fprintf(stderr, "embed-c: %s takes %zu inputs; this example feeds one\n", name, nin);
        goto out;
    }
    keel_tensor in = {.name = decl[0].name,
                      .dtype = KEEL_DTYPE_FLOAT32,
                      .ndim = 2,
                      .shape = {1, 4},
                      .data = x,
                      .nbytes = sizeof(x)};
    if (keel_model_run(model, &in, 1, &res, &err))
        goto out;
    printf("%s %s served by tier %s (%s)%s%s\n", keel_model_name(model), keel_model_version(model),
           keel_result_tier(res), keel_result_backend(res),
           keel_result_degraded(res) ? ", degraded: " : "",
           keel_result_degraded(res) ? keel_result_reason(res) : "");
    for (size_t i = 0; i < keel_result_noutputs(res); i++) {
        const keel_tensor *t = keel_result_output(res, i);
        printf("output %s: %s, %zu bytes\n", t->name, keel_dtype_name(t->dtype), t->nbytes);
    }
    printf("result: %s\n", keel_result_rows(res) ? keel_result_rows(res) : "null");
    rc = 0;
out:
    if (rc && err.code)
        fprintf(stderr, "embed-c: %s (%s)\n", err.msg, keel_errname(err.code));
    keel_result_free(res);
    keel_model_unref(model);
    keel_engine_close(eng);
    keel_store_close(store);
    return rc;
}
