/*
 * keeld - the keel daemon. Thin: read the config, open the runtime (the
 * device's state, lib/runtime), start the HTTP API on it, wait for signals.
 *   SIGTERM, SIGINT  graceful stop (requests in flight finish)
 *   SIGHUP           re-read the config file: package limits, max_body, trust_dir,
 *                    log_level and verify_interval apply at once; the rest
 *                    (addresses, threads, timeouts) needs a restart
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
#include "runtime/runtime.h"

#define MOD            "keeld"
#define DEFAULT_CONFIG "/etc/keel/keeld.conf"

static const char usage[] =
    "usage: keeld [--config FILE] [--state-dir DIR] [--listen ADDR] [--port N]\n"
    "             [--unix-socket PATH] [--log-level error|warn|info|debug] [--version]\n"
    "Serves the packages installed in STATE_DIR (default /var/lib/keel) over HTTP on\n"
    "127.0.0.1:8480. Flags override the config file (default " DEFAULT_CONFIG " if present).\n";

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
    keel__runtime *rt = NULL;
    keel__http *http = NULL;
    const char *config_path = NULL;
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

    if (keel__runtime_open(&cfg, &rt, &e) || keel__http_start(rt, &http, &e)) {
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
            keel__runtime_reload(rt, &next);
            KEEL_LOG_I(MOD, "reloaded %s", config_path);
            continue;
        }
        KEEL_LOG_I(MOD, "stopping on %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
    rc = 0;
out:
    keel__http_stop(http);
    keel__runtime_close(rt);
    return rc;
}
