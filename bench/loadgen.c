/*
 * loadgen.c - a closed-loop HTTP/1.1 load generator for keel's serving
 * benchmarks: N threads, one keep-alive connection each, one request in
 * flight per connection, the same request every time. Plain POSIX sockets so
 * the client adds as little as possible to what it measures.
 *
 *   loadgen --url 127.0.0.1:8080/v2/models/mnist/infer --body req.json
 *           [--threads N] [--duration S | --requests N] [--warmup N]
 *           [--header 'Name: value']... [--content-type TYPE] [--method M]
 *           [--host H --port P --path /p] [--unix SOCKET] [--verbose]
 *
 * --body FILE is sent verbatim (POST by default; GET without a body).
 * --warmup N requests per connection are sent first and not measured; the
 * clock starts when every thread has finished its warm-up.
 * --requests N is the total over all threads; --duration S (default 10) the
 * time after warm-up. A request counts as an error on a non-2xx status, a
 * malformed response or a connection failure (the connection is reopened).
 * Latency is from the first byte written to the last byte of the response
 * body read, per successful request.
 *
 * Prints one JSON object on stdout:
 *   {"tool":"loadgen","target":..,"threads":..,"seconds":..,"requests":..,
 *    "errors":..,"throughput_rps":..,"p50_us":..,"p90_us":..,"p99_us":..,
 *    "max_us":..,"mean_us":..,"reconnects":..}
 * Exit status 0 when at least one request succeeded.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 32
#define MAX_THREADS 256

static struct {
    const char *host, *port, *path, *unix_path, *body_file, *ctype, *method;
    const char *headers[MAX_HEADERS];
    int nheaders, threads, warmup, verbose;
    double duration;
    long requests; /* 0: run for duration */
} opt = {.host = "127.0.0.1",
         .port = "80",
         .path = "/",
         .ctype = "application/json",
         .threads = 1,
         .duration = 10};

static char *req; /* the whole request, built once */
static size_t reqlen;
static struct addrinfo *addr;

static atomic_long budget; /* --requests: tickets left */
static atomic_bool stop;
static pthread_barrier_t warm, go; /* all warmed up; clock set */
static double t_start, t_deadline;

typedef struct {
    uint64_t *lat; /* ns of each successful measured request */
    size_t n, cap;
    long errors, connects;
    double t_end;
    bool first; /* --verbose: this thread shows its first response */
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
    fprintf(stderr, "loadgen: %s%s\n", what, arg);
    exit(2);
}

static int connect_once(void)
{
    int fd;
    if (opt.unix_path) {
        struct sockaddr_un su = {.sun_family = AF_UNIX};
        if (strlen(opt.unix_path) >= sizeof(su.sun_path))
            return -1;
        strcpy(su.sun_path, opt.unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&su, sizeof(su)) < 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    fd = socket(addr->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, addr->ai_addr, addr->ai_addrlen) < 0) {
        close(fd);
        return -1;
    }
    /* small request/response pairs: do not let Nagle hold the last segment */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* A response buffer; bytes past the current response stay for the next. */
typedef struct {
    char *b;
    size_t len, cap;
} buf;

static int fill(int fd, buf *rb)
{
    if (rb->cap - rb->len < 16384) {
        size_t cap = rb->cap ? rb->cap * 2 : 65536;
        char *nb = realloc(rb->b, cap);
        if (!nb)
            return -1;
        rb->b = nb;
        rb->cap = cap;
    }
    for (;;) {
        ssize_t r = recv(fd, rb->b + rb->len, rb->cap - rb->len - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r > 0)
            rb->len += (size_t)r;
        return r > 0 ? 1 : r == 0 ? 0 : -1;
    }
}

static const char *find_crlfcrlf(const char *p, size_t n)
{
    for (size_t i = 3; i < n; i++)
        if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r')
            return p + i + 1;
    return NULL;
}

/* Case-insensitive header value lookup in [h, end); NULL if absent. */
static const char *header(const char *h, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *line = h; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > nl && line[nl] == ':' && !strncasecmp(line, name, nl)) {
            const char *v = line + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol + 1;
    }
    return NULL;
}

static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++)
        if (!strncasecmp(v + i, tok, tl))
            return true;
    return false;
}

/* Length of a complete chunked body at p (n bytes available) including the
 * trailer, 0 if more bytes are needed, -1 if malformed. */
static long chunked_len(const char *p, size_t n)
{
    size_t i = 0;
    for (;;) {
        const char *eol = memchr(p + i, '\n', n - i);
        if (!eol)
            return 0;
        char *end;
        unsigned long sz = strtoul(p + i, &end, 16);
        if (end == p + i)
            return -1;
        i = (size_t)(eol - p) + 1;
        if (sz == 0) { /* trailer lines until an empty one */
            for (;;) {
                const char *e2 = memchr(p + i, '\n', n - i);
                if (!e2)
                    return 0;
                bool empty = e2 == p + i || (e2 == p + i + 1 && p[i] == '\r');
                i = (size_t)(e2 - p) + 1;
                if (empty)
                    return (long)i;
            }
        }
        if (n - i < sz + 2)
            return 0;
        i += sz + 2;
    }
}

/* Reads one response: its status (0 if malformed or the connection broke),
 * consuming it from rb. *close_after: the server will close the connection. */
static int read_response(int fd, buf *rb, bool *close_after, bool show)
{
    const char *hend;
    while (!(hend = find_crlfcrlf(rb->b, rb->len)))
        if (fill(fd, rb) <= 0)
            return 0;
    rb->b[rb->len] = 0;
    int status = 0;
    if (sscanf(rb->b, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    size_t hlen = (size_t)(hend - rb->b), vlen, total;
    const char *v;
    *close_after = false;
    if ((v = header(rb->b, hend, "connection", &vlen)) && has_token(v, vlen, "close"))
        *close_after = true;
    if (!strncmp(rb->b, "HTTP/1.0", 8) &&
        !((v = header(rb->b, hend, "connection", &vlen)) && has_token(v, vlen, "keep-alive")))
        *close_after = true;
    if ((v = header(rb->b, hend, "transfer-encoding", &vlen)) && has_token(v, vlen, "chunked")) {
        long cl;
        while (!(cl = chunked_len(rb->b + hlen, rb->len - hlen)))
            if (fill(fd, rb) <= 0)
                return 0;
        if (cl < 0)
            return 0;
        total = hlen + (size_t)cl;
    } else if ((v = header(rb->b, hend, "content-length", &vlen))) {
        total = hlen + strtoul(v, NULL, 10);
        while (rb->len < total)
            if (fill(fd, rb) <= 0)
                return 0;
    } else if (status == 204 || status == 304 || status / 100 == 1) {
        total = hlen;
    } else { /* body until the server closes */
        int r;
        while ((r = fill(fd, rb)) > 0)
            ;
        if (r < 0)
            return 0;
        total = rb->len;
        *close_after = true;
    }
    if (show) {
        fprintf(stderr, "loadgen: first response:\n%.*s\n", (int)total, rb->b);
    }
    memmove(rb->b, rb->b + total, rb->len - total);
    rb->len -= total;
    return status;
}

static bool take_ticket(void)
{
    if (atomic_load_explicit(&stop, memory_order_relaxed))
        return false;
    if (opt.requests)
        return atomic_fetch_sub(&budget, 1) > 0;
    return true;
}

static void *worker(void *arg)
{
    thread_stats *st = arg;
    buf rb = {0};
    int fd = -1;
    bool show = st->first;
    for (long i = -opt.warmup;; i++) {
        if (i == 0) {
            pthread_barrier_wait(&warm);
            pthread_barrier_wait(&go);
        }
        if (i >= 0) {
            if (!take_ticket())
                break;
            if (!opt.requests && now_s() >= t_deadline) {
                atomic_store(&stop, true);
                break;
            }
        }
        if (fd < 0) {
            if ((fd = connect_once()) < 0) {
                if (i >= 0)
                    st->errors++;
                usleep(10000); /* a server that is down: do not spin */
                continue;
            }
            rb.len = 0;
            st->connects++;
        }
        uint64_t t0 = now_ns();
        bool close_after = true;
        int status = write_all(fd, req, reqlen) ? read_response(fd, &rb, &close_after, show) : 0;
        uint64_t dt = now_ns() - t0;
        show = false;
        if (status == 0 || close_after) {
            close(fd);
            fd = -1;
        }
        if (i < 0)
            continue;
        if (status < 200 || status > 299) {
            st->errors++;
            continue;
        }
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
    if (fd >= 0)
        close(fd);
    free(rb.b);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n) in µs. */
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

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0, r;
    char *b = malloc(cap);
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb)
                free(b);
            b = nb;
        }
    }
    fclose(f);
    *len = n;
    return b;
}

/* host[:port][/path], optionally after http:// */
static void parse_url(char *u)
{
    if (!strncmp(u, "http://", 7))
        u += 7;
    else if (strstr(u, "://"))
        die("only http:// URLs: ", u);
    char *slash = strchr(u, '/');
    static char path[4096];
    snprintf(path, sizeof(path), "/%s", slash ? slash + 1 : "");
    opt.path = path;
    if (slash)
        *slash = 0;
    char *colon = strrchr(u, ':');
    if (u[0] == '[') { /* [v6]:port */
        char *rb = strchr(u, ']');
        if (!rb)
            die("bad URL host: ", u);
        *rb = 0;
        opt.host = u + 1;
        opt.port = rb[1] == ':' ? rb + 2 : "80";
        return;
    }
    if (colon) {
        *colon = 0;
        opt.port = colon + 1;
    }
    opt.host = u;
}

_Noreturn static void usage(void)
{
    fputs("usage: loadgen (--url HOST:PORT/PATH | --host H --port P --path /P | --unix SOCK "
          "[--path /P])\n"
          "               [--body FILE] [--content-type T] [--header 'N: v']... [--method M]\n"
          "               [--threads N] [--duration S | --requests N] [--warmup N] [--verbose]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define ARG() (i + 1 < argc ? argv[++i] : (usage(), ""))
        if (!strcmp(a, "--url"))
            parse_url(ARG());
        else if (!strcmp(a, "--host"))
            opt.host = ARG();
        else if (!strcmp(a, "--port"))
            opt.port = ARG();
        else if (!strcmp(a, "--path"))
            opt.path = ARG();
        else if (!strcmp(a, "--unix"))
            opt.unix_path = ARG();
        else if (!strcmp(a, "--body"))
            opt.body_file = ARG();
        else if (!strcmp(a, "--content-type"))
            opt.ctype = ARG();
        else if (!strcmp(a, "--method"))
            opt.method = ARG();
        else if (!strcmp(a, "--header")) {
            if (opt.nheaders == MAX_HEADERS)
                die("too many --header", "");
            opt.headers[opt.nheaders++] = ARG();
        } else if (!strcmp(a, "--threads"))
            opt.threads = atoi(ARG());
        else if (!strcmp(a, "--duration"))
            opt.duration = atof(ARG());
        else if (!strcmp(a, "--requests"))
            opt.requests = atol(ARG());
        else if (!strcmp(a, "--warmup"))
            opt.warmup = atoi(ARG());
        else if (!strcmp(a, "--verbose") || !strcmp(a, "-v"))
            opt.verbose = 1;
        else
            usage();
#undef ARG
    }
    if (opt.threads < 1 || opt.threads > MAX_THREADS || opt.warmup < 0 || opt.requests < 0 ||
        (!opt.requests && opt.duration <= 0))
        usage();

    char *body = NULL;
    size_t blen = 0;
    if (opt.body_file && !(body = read_file(opt.body_file, &blen)))
        die("cannot read ", opt.body_file);
    if (!opt.method)
        opt.method = body ? "POST" : "GET";
    if (!opt.unix_path) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
        int rc = getaddrinfo(opt.host, opt.port, &hints, &addr);
        if (rc)
            die("cannot resolve host: ", gai_strerror(rc));
    }

    /* the request, once: head, extra headers, body */
    size_t cap = blen + 4096;
    for (int h = 0; h < opt.nheaders; h++)
        cap += strlen(opt.headers[h]) + 2;
    if (!(req = malloc(cap)))
        die("out of memory", "");
    int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: %s%s%s\r\nUser-Agent: keel-loadgen\r\n",
                     opt.method, opt.path, opt.unix_path ? "localhost" : opt.host,
                     opt.unix_path ? "" : ":", opt.unix_path ? "" : opt.port);
    for (int h = 0; h < opt.nheaders; h++)
        n += snprintf(req + n, cap - (size_t)n, "%s\r\n", opt.headers[h]);
    if (body)
        n += snprintf(req + n, cap - (size_t)n, "Content-Type: %s\r\nContent-Length: %zu\r\n",
                      opt.ctype, blen);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    if (body)
        memcpy(req + n, body, blen);
    reqlen = (size_t)n + blen;
    free(body);

    atomic_store(&budget, opt.requests);
    pthread_barrier_init(&warm, NULL, (unsigned)opt.threads + 1);
    pthread_barrier_init(&go, NULL, (unsigned)opt.threads + 1);
    thread_stats *st = calloc((size_t)opt.threads, sizeof(*st));
    pthread_t *tid = calloc((size_t)opt.threads, sizeof(*tid));
    if (!st || !tid)
        die("out of memory", "");
    st[0].first = opt.verbose;
    for (int t = 0; t < opt.threads; t++)
        if (pthread_create(&tid[t], NULL, worker, &st[t]))
            die("pthread_create failed", "");
    /* every connection warm: start the clock, then let them go (the second
     * barrier publishes t_deadline to the workers) */
    pthread_barrier_wait(&warm);
    t_start = now_s();
    t_deadline = t_start + opt.duration;
    pthread_barrier_wait(&go);

    size_t total = 0;
    long errors = 0, reconnects = 0;
    double t_end = t_start;
    for (int t = 0; t < opt.threads; t++) {
        pthread_join(tid[t], NULL);
        total += st[t].n;
        errors += st[t].errors;
        reconnects += st[t].connects > 1 ? st[t].connects - 1 : 0;
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
    char target[4200];
    if (opt.unix_path)
        snprintf(target, sizeof(target), "unix:%s%s", opt.unix_path, opt.path);
    else
        snprintf(target, sizeof(target), "%s:%s%s", opt.host, opt.port, opt.path);
    for (char *c = target; *c; c++) /* keep the JSON valid */
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
            *c = '_';
    printf("{\"tool\":\"loadgen\",\"target\":\"%s\",\"threads\":%d,\"seconds\":%.3f,"
           "\"requests\":%zu,\"errors\":%ld,\"throughput_rps\":%.1f,\"p50_us\":%.1f,"
           "\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,\"reconnects\":%ld}\n",
           target, opt.threads, secs, total, errors, secs > 0 ? (double)total / secs : 0,
           pct_us(all, total, 50), pct_us(all, total, 90), pct_us(all, total, 99),
           total ? (double)all[total - 1] / 1e3 : 0, total ? sum / (double)total / 1e3 : 0,
           reconnects);
    free(all);
    free(st);
    free(tid);
    free(req);
    if (addr)
        freeaddrinfo(addr);
    return total ? 0 : 1;
}
