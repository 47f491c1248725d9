/*
 * keeld - the keel daemon. Thin: read the config, open the store, verify
 * what is about to serve, start the HTTP API, then wait for signals.
 *   SIGTERM, SIGINT  graceful stop (requests in flight finish)
 *   SIGHUP           re-read the config file: package limits, max_body, trust_dir,
 *                    log_level and verify_interval apply at once; the rest
 *                    (addresses, threads, timeouts) needs a restart
 * A background thread re-hashes every installed file each verify_interval.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"
#include "http/server.h"

#define MOD            "keeld"
#define DEFAULT_CONFIG "/etc/keel/keeld.conf"

static const char usage[] =
    "usage: keeld [--config FILE] [--state-dir DIR] [--listen ADDR] [--port N]\n"
    "             [--unix-socket PATH] [--log-level error|warn|info|debug] [--version]\n"
    "Serves the packages installed in STATE_DIR (default /var/lib/keel) over HTTP on\n"
    "127.0.0.1:8480. Flags override the config file (default " DEFAULT_CONFIG " if present).\n";

typedef struct checker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    bool changed; /* interval_s was reloaded: restart the wait */
    uint64_t interval_s;
    keel__http *http;
} checker;

static void *check_loop(void *arg)
{
    checker *c = arg;
    pthread_mutex_lock(&c->lock);
    while (!c->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t iv = c->interval_s ? c->interval_s : 3600;
        until.tv_sec += (time_t)iv;
        int rc = 0;
        c->changed = false;
        while (!c->stop && !c->changed && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&c->cond, &c->lock, &until);
        if (c->stop)
            break;
        if (c->changed)
            continue; /* a new interval counts from the reload */
        if (!c->interval_s)
            continue;
        pthread_mutex_unlock(&c->lock);
        KEEL_LOG_I(MOD, "background re-check: re-hashing every installed file");
        keel__http_refresh(c->http, KEEL_VERIFY_DEEP);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static int apply_flags(keel_config *cfg, int argc, char **argv, const char **ret_config,
                       bool only_config)
{
    static const struct option lo[] = {{"config", required_argument, 0, 'c'},
                                       {"state-dir", required_argument, 0, 's'},
                                       {"listen", required_argument, 0, 'l'},
                                       {"port", required_argument, 0, 'p'},
                                       {"unix-socket", required_argument, 0, 'u'},
                                       {"log-level", required_argument, 0, 'L'},
                                       {"foreground", no_argument, 0, 'f'},
                                       {"version", no_argument, 0, 'V'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    static const char *const keys[128] = {['s'] = "state_dir",
                                          ['l'] = "listen",
                                          ['p'] = "port",
                                          ['u'] = "unix_socket",
                                          ['L'] = "log_level"};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:", lo, NULL)) != -1) {
        keel_error e;
        switch (c) {
        case 'c':
            *ret_config = optarg;
            break;
        case 'f':
            break;
        case 'V':
            if (only_config) {
                printf("keeld %s\n", keel_version());
                exit(0);
            }
            break;
        case 'h':
            fputs(usage, stdout);
            exit(0);
        case '?':
            return 2;
        default:
            if (!only_config && keel_config_set(cfg, keys[c], optarg, &e)) {
                fprintf(stderr, "keeld: --%s: %s\n", keys[c], e.msg);
                return 2;
            }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "keeld: unexpected argument %s\n%s", argv[optind], usage);
        return 2;
    }
    return 0;
}

static int load_config(keel_config *cfg, const char *path, bool explicit_path, int argc,
                       char **argv, keel_error *e)
{
    const char *dummy = NULL;
    keel_config_default(cfg);
    if (path && (explicit_path || keel__fs_exists(path))) {
        int rc = keel_config_load(cfg, path, e);
        if (rc)
            return rc;
    }
    return apply_flags(cfg, argc, argv, &dummy, false) ? KEEL_EINVALID : KEEL_OK;
}

int main(int argc, char **argv)
{
    keel_config cfg;
    keel_error e = {0};
    keel_store *store = NULL;
    keel__http *http = NULL;
    const char *config_path = NULL;
    checker chk = {.lock = PTHREAD_MUTEX_INITIALIZER};
    sigset_t set;
    int rc = 1;

    if (apply_flags(&cfg, argc, argv, &config_path, true))
        return 2;
    bool explicit_path = config_path != NULL;
    if (!config_path)
        config_path = DEFAULT_CONFIG;
    if (load_config(&cfg, config_path, explicit_path, argc, argv, &e)) {
        if (e.code)
            fprintf(stderr, "keeld: %s\n", e.msg);
        return 2;
    }
    keel_log_set_level(cfg.log_level);
    keel_log_set_syslog(cfg.syslog, "keeld");

    /* Signals go to the main thread only: block them before any thread starts. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char staging[PATH_MAX];
    snprintf(staging, sizeof(staging), "%s/staging", cfg.state_dir);
    if (keel__fs_mkdir_p(cfg.state_dir, 0700, &e) || keel__fs_mkdir_p(staging, 0700, &e) ||
        keel_store_open(cfg.state_dir, &cfg.limits, &store, &e)) {
        KEEL_LOG_E(MOD, "%s", e.msg);
        goto out;
    }
    /* Start-up verification happens inside http_start (readiness). */
    if (keel__http_start(&cfg, store, &http, &e)) {
        KEEL_LOG_E(MOD, "%s", e.msg);
        goto out;
    }
    if (cfg.port) {
        bool v6 = strchr(cfg.listen, ':') != NULL; /* URLs bracket IPv6 literals */
        KEEL_LOG_I(MOD, "listening on http://%s%s%s:%u (state %s)", v6 ? "[" : "", cfg.listen,
                   v6 ? "]" : "", cfg.port, cfg.state_dir);
    }
    if (cfg.unix_socket[0])
        KEEL_LOG_I(MOD, "listening on unix:%s", cfg.unix_socket);

    /* The wait uses CLOCK_MONOTONIC: a wall clock that jumps (devices offline
     * for months drift) must not make the re-check spin or stall. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&chk.cond, &ca);
    pthread_condattr_destroy(&ca);
    chk.interval_s = cfg.verify_interval_s;
    chk.http = http;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&chk.thread, &attr, check_loop, &chk) != 0) {
        KEEL_LOG_E(MOD, "cannot start the background re-check thread");
        pthread_attr_destroy(&attr);
        goto out;
    }
    pthread_attr_destroy(&attr);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            keel_config next;
            keel_error re = {0};
            if (load_config(&next, config_path, explicit_path, argc, argv, &re)) {
                KEEL_LOG_E(MOD, "reload: keeping the old config: %s",
                           re.code ? re.msg : "invalid command-line flags");
                continue;
            }
            keel_log_set_level(next.log_level);
            keel__http_reload(http, &next);
            keel__http_refresh(http, 0); /* offline CLI changes: serve what is active now */
            pthread_mutex_lock(&chk.lock);
            if (chk.interval_s != next.verify_interval_s) {
                chk.interval_s = next.verify_interval_s;
                chk.changed = true;
            }
            pthread_cond_signal(&chk.cond);
            pthread_mutex_unlock(&chk.lock);
            KEEL_LOG_I(MOD, "reloaded %s", config_path);
            continue;
        }
        KEEL_LOG_I(MOD, "stopping on %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
    pthread_mutex_lock(&chk.lock);
    chk.stop = true;
    pthread_cond_signal(&chk.cond);
    pthread_mutex_unlock(&chk.lock);
    pthread_join(chk.thread, NULL);
    rc = 0;
out:
    keel__http_stop(http);
    keel_store_close(store);
    return rc;
}
