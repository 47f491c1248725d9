/*
 * startup.c - time from exec of keeld to its first HTTP answer with a given
 * status, without curl or an interpreter in the loop.
 *
 *   startup KEELD STATE_DIR URL_PATH STATUS RUNS
 *
 * Each run: pick a free loopback port, take the clock, fork+exec
 *   KEELD --state-dir STATE_DIR --port PORT --listen 127.0.0.1 --log-level error
 * then every 100 us connect, send `GET URL_PATH HTTP/1.0` and read the status
 * line, until it is STATUS (refused connections and other statuses retry).
 * The time stops when that status line arrives; keeld is then sent SIGTERM
 * and reaped. Prints each run in ms and the median. Gives up after 30 s.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_RUNS 101

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(s, (struct sockaddr *)&a, &n) == 0)
        port = ntohs(a.sin_port);
    if (s >= 0)
        close(s);
    return port;
}

/* One request; returns the HTTP status or -1 (not listening yet, reset). */
static int probe(int port, const char *path)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char req[512], resp[64];
    int s = socket(AF_INET, SOCK_STREAM, 0), status = -1;
    size_t got = 0;
    if (s < 0)
        return -1;
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0)
        goto out;
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(s, req, (size_t)n) != n)
        goto out;
    while (got < sizeof(resp) - 1) {
        ssize_t r = read(s, resp + got, sizeof(resp) - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (memchr(resp, '\n', got))
            break;
    }
    resp[got] = '\0';
    if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1)
        status = -1;
out:
    close(s);
    return status;
}

static double one_run(const char *keeld, const char *state, const char *path, int want)
{
    char portstr[16];
    int port = free_port();
    if (port < 0)
        return -1;
    snprintf(portstr, sizeof(portstr), "%d", port);
    double t0 = now_ms(), t = -1;
    pid_t pid = fork();
    if (pid == 0) {
        execl(keeld, keeld, "--state-dir", state, "--port", portstr, "--listen", "127.0.0.1",
              "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    if (pid < 0)
        return -1;
    while (now_ms() - t0 < 30000) {
        int st;
        if (probe(port, path) == want) {
            t = now_ms() - t0;
            break;
        }
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "startup: keeld exited early (status %d)\n", st);
            return -1;
        }
        usleep(100);
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return t;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    double t[MAX_RUNS];
    int runs;
    if (argc != 6 || (runs = atoi(argv[5])) < 1 || runs > MAX_RUNS) {
        fprintf(stderr, "usage: startup KEELD STATE_DIR URL_PATH STATUS RUNS(1-%d)\n", MAX_RUNS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < runs; i++) {
        t[i] = one_run(argv[1], argv[2], argv[3], atoi(argv[4]));
        if (t[i] < 0) {
            fprintf(stderr, "startup: no %s answer from %s on %s\n", argv[4], argv[3], argv[2]);
            return 1;
        }
        fprintf(stderr, "  run %d: %.2f ms\n", i + 1, t[i]);
    }
    qsort(t, (size_t)runs, sizeof(t[0]), cmp);
    printf("%.2f\n", runs % 2 ? t[runs / 2] : (t[runs / 2 - 1] + t[runs / 2]) / 2);
    return 0;
}
