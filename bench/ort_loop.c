/*
 * ort_loop.c - the raw ONNX Runtime baseline for the serving-overhead
 * benchmark: the same MNIST model through keel's own ONNX Runtime adapter
 * (lib/infer/ort.h), called in a tight loop with no HTTP, JSON or queueing.
 * What keeld and the Node peer add on top of this is their overhead.
 *
 *   ort_loop [--model M.onnx] [--images IDX.gz] [--index K] [--threads N]
 *            [--duration S | --requests N] [--warmup N] [--intra N]
 *            [--session-per-thread]
 *
 * One session (intra-op threads 1, as keeld's) shared by N threads, which
 * call Run concurrently as a server's workers would; --session-per-thread
 * gives each thread its own. The input is MNIST test image K (default 0) as
 * raw 0-255 floats, the preprocessing the model expects. --warmup N runs per
 * thread are not measured; the clock starts when all threads are warm.
 * Latency is one keel__ort_run call, input tensor creation to outputs copied
 * out. Prints the same JSON as loadgen (tool "ort_loop", plus the top class).
 * The runtime comes from KEEL_ORT_LIB or .deps/onnxruntime (keel__ort_load).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "infer/ort.h"

#define MAX_THREADS 256

/* ../shared beside the checkout; CMake passes the absolute path */
#ifndef KEEL_BENCH_SHARED
#define KEEL_BENCH_SHARED "../shared"
#endif

static struct {
    const char *model, *images;
    int index, threads, warmup, intra, per_thread;
    double duration;
    long requests;
} opt = {.model = KEEL_BENCH_SHARED "/models/onnx/mnist/mnist_ort_cxx_example.onnx",
         .images = KEEL_BENCH_SHARED "/data/mnist/t10k-images-idx3-ubyte.gz",
         .threads = 1,
         .warmup = 100,
         .intra = 1,
         .duration = 10};

static float pixels[784];
static keel__ort_session *shared_session;
static const char *in_name;
static atomic_long budget;
static atomic_bool stop, reported; /* reported: the first run error is shown */
static pthread_barrier_t warm, go;
static double t_start, t_deadline;

typedef struct {
    keel__ort_session *s;
    uint64_t *lat;
    size_t n, cap;
    long errors;
    double t_end;
    int top; /* argmax of the last output */
} thread_stats;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

_Noreturn static void die(const char *what, const char *arg)
{
    fprintf(stderr, "ort_loop: %s%s\n", what, arg);
    exit(2);
}

/* Image K of an idx3 file, through gzip -dc (no zlib dependency here). */
static void load_image(const char *path, int k)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "gzip -dc '%s'", path);
    FILE *p = popen(cmd, "r");
    if (!p)
        die("cannot run gzip for ", path);
    unsigned char hdr[16], px[784];
    bool ok = fread(hdr, 1, 16, p) == 16 && hdr[2] == 8 && hdr[3] == 3;
    for (int i = 0; ok && i <= k; i++)
        ok = fread(px, 1, sizeof(px), p) == sizeof(px);
    pclose(p);
    if (!ok)
        die("no such MNIST image in ", path);
    for (int i = 0; i < 784; i++)
        pixels[i] = (float)px[i];
}

static bool take_ticket(void)
{
    if (atomic_load_explicit(&stop, memory_order_relaxed))
        return false;
    if (opt.requests)
        return atomic_fetch_sub(&budget, 1) > 0;
    if (now_s() >= t_deadline) {
        atomic_store(&stop, true);
        return false;
    }
    return true;
}

static void *worker(void *arg)
{
    thread_stats *st = arg;
    /* per-thread copy: nothing shared but the session */
    float px[784];
    memcpy(px, pixels, sizeof(px));
    keel__tensor in = {.name = in_name,
                       .dtype = KEEL_DT_FLOAT32,
                       .ndim = 4,
                       .shape = {1, 1, 28, 28},
                       .data = px,
                       .nbytes = sizeof(px)};
    keel_error e = {0};
    for (long i = -opt.warmup;; i++) {
        if (i == 0) {
            pthread_barrier_wait(&warm);
            pthread_barrier_wait(&go);
        }
        if (i >= 0 && !take_ticket())
            break;
        keel__tensor out;
        uint64_t t0 = now_ns();
        int rc = keel__ort_run(st->s, &in, 1, &out, &e);
        uint64_t dt = now_ns() - t0;
        if (rc) {
            if (i >= 0)
                st->errors++;
            if (!atomic_exchange(&reported, true))
                fprintf(stderr, "ort_loop: run: %s\n", e.msg);
            continue;
        }
        const float *l = out.data;
        int best = 0;
        for (int c = 1; c < 10 && (size_t)c * sizeof(float) < out.nbytes; c++)
            if (l[c] > l[best])
                best = c;
        st->top = best;
        keel__tensor_done(&out);
        if (i < 0)
            continue;
        if (st->n == st->cap) {
            size_t cap = st->cap ? st->cap * 2 : 65536;
            uint64_t *nl = realloc(st->lat, cap * sizeof(*nl));
            if (!nl)
                die("out of memory", "");
            st->lat = nl;
            st->cap = cap;
        }
        st->lat[st->n++] = dt;
    }
    st->t_end = now_s();
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n) in µs (as loadgen). */
static double pct_us(const uint64_t *v, size_t n, double p)
{
    if (!n)
        return 0;
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)v[k - 1] / 1e3;
}

_Noreturn static void usage(void)
{
    fputs("usage: ort_loop [--model M.onnx] [--images IDX.gz] [--index K] [--threads N]\n"
          "                [--duration S | --requests N] [--warmup N] [--intra N]\n"
          "                [--session-per-thread]\n",
          stderr);
    exit(2);
}

static keel__ort_session *new_session(void)
{
    keel_error e = {0};
    keel__ort_session *s = NULL;
    keel__ort_opts o = {.intra_threads = opt.intra, .opt_level = 99};
    if (keel__ort_session_new(opt.model, &o, &s, &e))
        die("session: ", e.msg);
    return s;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define ARG() (i + 1 < argc ? argv[++i] : (usage(), ""))
        if (!strcmp(a, "--model"))
            opt.model = ARG();
        else if (!strcmp(a, "--images"))
            opt.images = ARG();
        else if (!strcmp(a, "--index"))
            opt.index = atoi(ARG());
        else if (!strcmp(a, "--threads"))
            opt.threads = atoi(ARG());
        else if (!strcmp(a, "--duration"))
            opt.duration = atof(ARG());
        else if (!strcmp(a, "--requests"))
            opt.requests = atol(ARG());
        else if (!strcmp(a, "--warmup"))
            opt.warmup = atoi(ARG());
        else if (!strcmp(a, "--intra"))
            opt.intra = atoi(ARG());
        else if (!strcmp(a, "--session-per-thread"))
            opt.per_thread = 1;
        else
            usage();
#undef ARG
    }
    if (opt.threads < 1 || opt.threads > MAX_THREADS || opt.warmup < 0 || opt.requests < 0 ||
        opt.index < 0 || opt.index >= 10000 || (!opt.requests && opt.duration <= 0))
        usage();

    keel_error e = {0};
    if (keel__ort_load(NULL, &e))
        die("loading ONNX Runtime: ", e.msg);
    load_image(opt.images, opt.index);
    shared_session = new_session();
    if (keel__ort_ninputs(shared_session) != 1)
        die("expected a model with one input: ", opt.model);
    in_name = keel__ort_input(shared_session, 0)->name;

    atomic_store(&budget, opt.requests);
    pthread_barrier_init(&warm, NULL, (unsigned)opt.threads + 1);
    pthread_barrier_init(&go, NULL, (unsigned)opt.threads + 1);
    thread_stats *st = calloc((size_t)opt.threads, sizeof(*st));
    pthread_t *tid = calloc((size_t)opt.threads, sizeof(*tid));
    if (!st || !tid)
        die("out of memory", "");
    for (int t = 0; t < opt.threads; t++) {
        st[t].s = opt.per_thread && t ? new_session() : shared_session;
        if (pthread_create(&tid[t], NULL, worker, &st[t]))
            die("pthread_create failed", "");
    }
    /* all warm: set the clock, then release them (the barrier publishes it) */
    pthread_barrier_wait(&warm);
    t_start = now_s();
    t_deadline = t_start + opt.duration;
    pthread_barrier_wait(&go);

    size_t total = 0;
    long errors = 0;
    double t_end = t_start;
    for (int t = 0; t < opt.threads; t++) {
        pthread_join(tid[t], NULL);
        total += st[t].n;
        errors += st[t].errors;
        if (st[t].t_end > t_end)
            t_end = st[t].t_end;
    }
    uint64_t *all = malloc((total ? total : 1) * sizeof(*all));
    if (!all)
        die("out of memory", "");
    size_t k = 0;
    double sum = 0;
    for (int t = 0; t < opt.threads; t++) {
        if (st[t].n) /* lat is NULL when nothing succeeded */
            memcpy(all + k, st[t].lat, st[t].n * sizeof(*all));
        k += st[t].n;
        for (size_t j = 0; j < st[t].n; j++)
            sum += (double)st[t].lat[j];
        free(st[t].lat);
    }
    qsort(all, total, sizeof(*all), cmp_u64);
    double secs = t_end - t_start;
    printf("{\"tool\":\"ort_loop\",\"target\":\"ort %s intra=%d %s\",\"threads\":%d,"
           "\"seconds\":%.3f,\"requests\":%zu,\"errors\":%ld,\"throughput_rps\":%.1f,"
           "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,"
           "\"top_class\":%d}\n",
           keel__ort_version(), opt.intra, opt.per_thread ? "session-per-thread" : "shared-session",
           opt.threads, secs, total, errors, secs > 0 ? (double)total / secs : 0,
           pct_us(all, total, 50), pct_us(all, total, 90), pct_us(all, total, 99),
           total ? (double)all[total - 1] / 1e3 : 0, total ? sum / (double)total / 1e3 : 0,
           st[0].top);
    for (int t = 1; t < opt.threads; t++)
        if (st[t].s != shared_session)
            keel__ort_session_free(st[t].s);
    keel__ort_session_free(shared_session);
    free(all);
    free(st);
    free(tid);
    return total ? 0 : 1;
}
