/*
 * keeld - the keel daemon. Thin: read the config, open the runtime (the
 * device's state, lib/runtime), start the HTTP API on it, wait for signals.
 *   SIGTERM, SIGINT  graceful stop (requests in flight finish)
 *   SIGHUP           re-read the config file: package limits, max_body, trust_dir,
 *                    log_level and verify_interval apply at once; the rest
 *                    (addresses, threads, timeouts) needs a restart; the trust
 *                    dir is re-checked against what is installed
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
    "usage: keeld [--config FILE] [--state-dir DIR] [--listen ADDR[:PORT]] [--port N]\n"
    "             [--unix-socket PATH] [--log-level error|warn|info|debug]\n"
    "             [--print-config] [--version]\n"
    "Serves the packages installed in STATE_DIR (default /var/lib/keel) over HTTP on\n"
    "127.0.0.1:8480. --listen takes an address with an optional port: 0.0.0.0,\n"
    "127.0.0.1:8080, [::1]:8080. Flags override the config file (default " DEFAULT_CONFIG
    " if present).\n"
    "--print-config prints the settings in force, by module, as JSON, and exits.\n";

static bool print_config;

/* A flag overrides the file also when the port comes in another setting:
 * --listen 127.0.0.1:8080 beats the file's port, --port 8080 the port in
 * the file's listen. Both flags with two ports is the user's conflict,
 * reported when the server starts. */
static int listen_over_file(keel__conf *conf, bool flag_listen, bool flag_port)
{
    char host[KEEL__CONF_STR_MAX], num[8];
    unsigned port;
    keel_error e;
    if (keel__http_listen_split(keel__conf_str(conf, "listen"), host, sizeof(host), &port, &e)) {
        fprintf(stderr, "keeld: %s%s\n", flag_listen ? "--" : "", e.msg);
        return 1;
    }
    if (!port)
        return 0;
    if (flag_listen && flag_port) {
        if (port == keel__conf_u64(conf, "port"))
            return 0;
        fprintf(
            stderr, "keeld: --listen %s says port %u but --port says %llu: give the port once\n",
            keel__conf_str(conf, "listen"), port, (unsigned long long)keel__conf_u64(conf, "port"));
        return 1;
    }
    snprintf(num, sizeof(num), "%u", port);
    if (flag_listen ? keel__conf_set(conf, "port", num, &e)
                    : keel__conf_set(conf, "listen", host, &e)) {
        fprintf(stderr, "keeld: %s\n", e.msg);
        return 1;
    }
    return 0;
}

static int apply_flags(keel__conf *conf, int argc, char **argv, const char **ret_config,
                       bool only_config)
{
    static const struct option lo[] = {{"config", required_argument, 0, 'c'},
                                       {"state-dir", required_argument, 0, 's'},
                                       {"listen", required_argument, 0, 'l'},
                                       {"port", required_argument, 0, 'p'},
                                       {"unix-socket", required_argument, 0, 'u'},
                                       {"log-level", required_argument, 0, 'L'},
                                       {"foreground", no_argument, 0, 'f'},
                                       {"print-config", no_argument, 0, 'P'},
                                       {"version", no_argument, 0, 'V'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    static const char *const keys[128] = {['s'] = "state_dir",
                                          ['l'] = "listen",
                                          ['p'] = "port",
                                          ['u'] = "unix_socket",
                                          ['L'] = "log_level"};
    int c;
    bool flag_listen = false, flag_port = false;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:", lo, NULL)) != -1) {
        keel_error e;
        switch (c) {
        case 'c':
            *ret_config = optarg;
            break;
        case 'f':
            break;
        case 'P':
            print_config = true;
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
            if (!only_config && keel__conf_set(conf, keys[c], optarg, &e)) {
                fprintf(stderr, "keeld: --%s: %s\n", keys[c], e.msg);
                return 2;
            }
            flag_listen |= c == 'l';
            flag_port |= c == 'p';
        }
    }
    if (!only_config && (flag_listen || flag_port) &&
        listen_over_file(conf, flag_listen, flag_port))
        return 2;
    if (optind < argc) {
        fprintf(stderr, "keeld: unexpected argument %s\n%s", argv[optind], usage);
        return 2;
    }
    return 0;
}

/* Every setting keeld knows: the runtime's modules and the HTTP server. */
static int new_conf(keel__conf **ret, keel_error *e)
{
    const keel__option_set *sets[16];
    size_t n;
    const keel__option_set *const *rs = keel__runtime_option_sets(&n);
    for (size_t i = 0; i < n; i++)
        sets[i] = rs[i];
    sets[n++] = &keel__http_options;
    return keel__conf_new(sets, n, ret, e);
}

/* Defaults, then the file, then the flags. *ret is NULL on failure. */
static int load_config(keel__conf **ret, const char *path, bool explicit_path, int argc,
                       char **argv, keel_error *e)
{
    const char *dummy = NULL;
    keel__conf *c = NULL;
    int rc = new_conf(&c, e);
    if (!rc && path && (explicit_path || keel__fs_exists(path)))
        rc = keel__conf_load(c, path, e);
    if (!rc && apply_flags(c, argc, argv, &dummy, false))
        rc = KEEL_EINVALID;
    if (rc) {
        keel__conf_free(c);
        c = NULL;
    }
    *ret = c;
    return rc;
}

int main(int argc, char **argv)
{
    keel__conf *conf = NULL;
    keel_error e = {0};
    keel__runtime *rt = NULL;
    keel__http *http = NULL;
    const char *config_path = NULL;
    sigset_t set;
    int rc = 1;

    if (apply_flags(NULL, argc, argv, &config_path, true))
        return 2;
    bool explicit_path = config_path != NULL;
    if (!config_path)
        config_path = DEFAULT_CONFIG;
    if (load_config(&conf, config_path, explicit_path, argc, argv, &e)) {
        if (e.code)
            fprintf(stderr, "keeld: %s\n", e.msg);
        return 2;
    }
    if (print_config) {
        char *json = keel__conf_json(conf);
        printf("%s\n", json ? json : "{}");
        free(json);
        keel__conf_free(conf);
        return json ? 0 : 1;
    }
    keel_log_set_level((keel_log_level)keel__conf_u64(conf, "log_level"));
    keel_log_set_syslog(keel__conf_bool(conf, "syslog"), "keeld");

    /* Signals go to the main thread only: block them before any thread starts. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (keel__runtime_open(conf, &rt, &e) || keel__http_start(rt, &http, &e)) {
        KEEL_LOG_E(MOD, "%s", e.msg);
        goto out;
    }
    KEEL_LOG_I(MOD, "serving state %s", keel__runtime_state_dir(rt));

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            keel__conf *next = NULL;
            keel_error re = {0};
            if (load_config(&next, config_path, explicit_path, argc, argv, &re)) {
                KEEL_LOG_E(MOD, "reload: keeping the old config: %s",
                           re.code ? re.msg : "invalid command-line flags");
                continue;
            }
            keel__runtime_reload(rt, next);
            keel__conf_free(next);
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
    keel__conf_free(conf);
    return rc;
}
