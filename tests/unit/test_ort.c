/* test_ort.c - the ONNX Runtime adapter against the real runtime: slot table,
 * session description, tensor run, error paths; MNIST accuracy when
 * ../shared is present. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "core/json.h"
#include "infer/ort.h"

#ifndef KEEL_TEST_DATA
#define KEEL_TEST_DATA "tests/data"
#endif

static void test_load_and_describe(void **state)
{
    keel_error e = {0};
    if (keel__ort_load(NULL, &e))
        fail_msg("%s", e.msg);
    assert_non_null(keel__ort_version());
    assert_string_equal(keel__ort_version(), "1.30.0");
    keel__ort_session *s = NULL;
    if (keel__ort_session_new(KEEL_TEST_DATA "/matmul.onnx", NULL, &s, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(keel__ort_ninputs(s), 2);
    assert_int_equal(keel__ort_noutputs(s), 1);
    const keel__tensor *a = keel__ort_input(s, 0), *c = keel__ort_output(s, 0);
    assert_string_equal(a->name, "a");
    assert_int_equal(a->dtype, KEEL_DT_FLOAT32);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 3);
    assert_int_equal(a->shape[1], 4);
    assert_string_equal(c->name, "c");
    assert_int_equal(c->shape[1], 3);

    float av[12], bv[12], want[9];
    for (int i = 0; i < 12; i++) {
        av[i] = (float)i * 0.5f - 2.0f;
        bv[i] = (float)(i % 5) - 1.5f;
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            float acc = 0;
            for (int k = 0; k < 4; k++)
                acc += av[i * 4 + k] * bv[k * 3 + j];
            want[i * 3 + j] = acc;
        }
    keel__tensor in[2] = {
        {.name = "a",
         .dtype = KEEL_DT_FLOAT32,
         .ndim = 2,
         .shape = {3, 4},
         .data = av,
         .nbytes = sizeof(av)},
        {.name = "b",
         .dtype = KEEL_DT_FLOAT32,
         .ndim = 2,
         .shape = {4, 3},
         .data = bv,
         .nbytes = sizeof(bv)},
    };
    keel__tensor out[1];
    if (keel__ort_run(s, in, 2, out, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(out[0].dtype, KEEL_DT_FLOAT32);
    assert_int_equal(out[0].ndim, 2);
    assert_int_equal(out[0].nbytes, sizeof(want));
    const float *got = out[0].data;
    for (int i = 0; i < 9; i++)
        assert_float_equal(got[i], want[i], 1e-5);
    keel__tensor_done(&out[0]);

    /* wrong byte count, wrong shape, unknown input: clear errors */
    in[0].nbytes = 8;
    th_expect_err(keel__ort_run(s, in, 2, out, &e), &e, KEEL_EINVALID, "bytes of data");
    in[0].nbytes = sizeof(av);
    in[0].shape[1] = 2;
    in[0].nbytes = 6 * sizeof(float);
    th_expect_err(keel__ort_run(s, in, 2, out, &e), &e, KEEL_EINVALID, "run");
    keel__ort_session_free(s);

    const char *d = th_tmpdir();
    th_write_str(d, "bad.onnx", "this is not a model");
    th_expect_err(keel__ort_session_new(th_path(d, "bad.onnx"), NULL, &s, &e), &e, KEEL_ECORRUPT,
                  "bad.onnx");
    th_cleanup();
}

/* MNIST through the adapter equals what the model's README states raw ORT
 * scores: 9891/10000. Needs ../shared (skipped without it). */
static unsigned char *gunzip(const char *path, size_t *len)
{
    char cmd[1100];
    snprintf(cmd, sizeof(cmd), "gzip -dc '%s'", path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return NULL;
    size_t cap = 8 << 20, n = 0;
    unsigned char *b = malloc(cap);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, p)) > 0)
        n += r;
    pclose(p);
    *len = n;
    return b;
}

static void test_mnist_accuracy(void **state)
{
    char model[1024], imgs[1024], labs[1024];
    snprintf(model, sizeof(model), "%s", th_shared("models/onnx/mnist/mnist_ort_cxx_example.onnx"));
    snprintf(imgs, sizeof(imgs), "%s", th_shared("data/mnist/t10k-images-idx3-ubyte.gz"));
    snprintf(labs, sizeof(labs), "%s", th_shared("data/mnist/t10k-labels-idx1-ubyte.gz"));
    if (!keel__fs_exists(model) || !keel__fs_exists(imgs)) {
        th_skip("no MNIST model and data (../shared or KEEL_SHARED)");
        return;
    }
    keel_error e = {0};
    keel__ort_session *s = NULL;
    keel__ort_opts o = {.intra_threads = 1, .opt_level = 99};
    if (keel__ort_session_new(model, &o, &s, &e))
        fail_msg("%s", e.msg);
    size_t il, ll;
    unsigned char *im = gunzip(imgs, &il), *lb = gunzip(labs, &ll);
    assert_non_null(im);
    assert_non_null(lb);
    assert_int_equal(il, 16 + 10000 * 784);
    assert_int_equal(ll, 8 + 10000);
    int correct = 0;
    float px[784];
    for (int n = 0; n < 10000; n++) {
        for (int i = 0; i < 784; i++)
            px[i] = (float)im[16 + (size_t)n * 784 + (size_t)i];
        keel__tensor in = {.name = keel__ort_input(s, 0)->name,
                           .dtype = KEEL_DT_FLOAT32,
                           .ndim = 4,
                           .shape = {1, 1, 28, 28},
                           .data = px,
                           .nbytes = sizeof(px)};
        keel__tensor out;
        if (keel__ort_run(s, &in, 1, &out, &e))
            fail_msg("%s", e.msg);
        const float *l = out.data;
        int best = 0;
        for (int k = 1; k < 10; k++)
            if (l[k] > l[best])
                best = k;
        correct += best == lb[8 + n];
        keel__tensor_done(&out);
    }
    free(im);
    free(lb);
    keel__ort_session_free(s);
    assert_int_equal(correct, 9891);
}

/* scikit-learn random forest with ZipMap: a tensor label output and a
 * sequence-of-maps probability output (as JSON). Raw ORT scores 149/150. */
static void test_iris_zipmap(void **state)
{
    char model[1024], csv[1024];
    snprintf(model, sizeof(model), "%s", th_shared("models/onnx/tabular/rf_iris.onnx"));
    snprintf(csv, sizeof(csv), "%s", th_shared("data/sklearn/iris.csv"));
    if (!keel__fs_exists(model) || !keel__fs_exists(csv)) {
        th_skip("no iris model and data (../shared or KEEL_SHARED)");
        return;
    }
    keel_error e = {0};
    char *text;
    size_t len;
    assert_int_equal(keel__fs_read(csv, 1 << 20, &text, &len, &e), 0);
    float x[150 * 4];
    int64_t truth[150];
    int n = 0;
    char *line = strchr(text, '\n') + 1; /* skip the header */
    while (n < 150 && line && *line) {
        float f[4];
        int y;
        assert_int_equal(sscanf(line, "%f,%f,%f,%f,%d", &f[0], &f[1], &f[2], &f[3], &y), 5);
        memcpy(&x[n * 4], f, sizeof(f));
        truth[n++] = y;
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    free(text);
    assert_int_equal(n, 150);
    keel__ort_session *s = NULL;
    if (keel__ort_session_new(model, NULL, &s, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(keel__ort_noutputs(s), 2);
    keel__tensor in = {.name = "float_input",
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 2,
                       .shape = {150, 4},
                       .data = x,
                       .nbytes = sizeof(x)};
    keel__tensor out[2];
    if (keel__ort_run(s, &in, 1, out, &e))
        fail_msg("%s", e.msg);
    assert_string_equal(out[0].name, "output_label");
    assert_int_equal(out[0].dtype, KEEL_DT_INT64);
    const int64_t *label = out[0].data;
    int correct = 0;
    for (int i = 0; i < 150; i++)
        correct += label[i] == truth[i];
    assert_int_equal(correct, 149);
    /* the probabilities: 150 objects {"0": p, "1": p, "2": p}, each summing to 1 */
    assert_int_equal(out[1].dtype, KEEL_DT_JSON);
    cJSON *j = cJSON_ParseWithLength(out[1].data, out[1].nbytes);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(j), 150);
    const cJSON *row;
    cJSON_ArrayForEach(row, j)
    {
        double sum = 0;
        assert_int_equal(cJSON_GetArraySize(row), 3);
        for (int k = 0; k < 3; k++) {
            char key[4];
            snprintf(key, sizeof(key), "%d", k);
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(row, key);
            assert_non_null(p);
            sum += p->valuedouble;
        }
        assert_float_equal(sum, 1.0, 1e-4);
    }
    cJSON_Delete(j);
    keel__tensor_done(&out[0]);
    keel__tensor_done(&out[1]);
    keel__ort_session_free(s);
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_and_describe),
        cmocka_unit_test(test_mnist_accuracy),
        cmocka_unit_test(test_iris_zipmap),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
