/*
 * import.c - `keel import PATH` (a USB bundle folder or a .keel file, taken
 * by a running keeld: POST /api/import, then its result) and `keel bundle
 * create` (a bundle for a USB stick, offline). docs/update.md, "USB and
 * air-gapped sites".
 */
#include <curl/curl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "core/json.h"
#include "update/bundle.h"

static const char import_usage[] =
    "usage: keel import PATH [--no-wait] [--timeout SECONDS] [--url URL] [--unix-socket P]\n"
    "                        [--token T] [--state-dir D] [--json]\n"
    "  PATH: a bundle folder or a .keel file keeld can read. keeld applies a root rotation,\n"
    "  a revocation list, then every package (verified, installed, the newest of each name\n"
    "  activated after its validation set). Waits for the outcome unless --no-wait.\n";

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* One line per item; returns 0 when every item was applied. */
static int print_result(const cJSON *res)
{
    const cJSON *it, *err = cJSON_GetObjectItemCaseSensitive(res, "error");
    if (err) {
        fprintf(stderr, "keel: import refused: %s (%s)\n",
                str(err, "message") ? str(err, "message") : "?",
                str(err, "code") ? str(err, "code") : "?");
        return 1;
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(res, "items"))
    {
        const char *name = str(it, "name"), *act = str(it, "activation");
        const char *why = str(it, "reason"), *awhy = str(it, "activation_reason");
        printf("%s: ", str(it, "entry") ? str(it, "entry") : "?");
        if (name)
            printf("%s %s ", name, str(it, "version") ? str(it, "version") : "?");
        printf("%s", str(it, "outcome") ? str(it, "outcome") : "?");
        if (act)
            printf(", %s", act);
        if (why)
            printf(": %s", why);
        if (awhy)
            printf("%s%s", why ? "; " : ": ", awhy);
        printf("\n");
    }
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(res, "ok");
    return cJSON_IsTrue(ok) ? 0 : 1;
}

int keel_cli_import(int argc, char **argv)
{
    static const struct option lo[] = {
        {"url", required_argument, 0, 'U'},     {"unix-socket", required_argument, 0, 'S'},
        {"token", required_argument, 0, 'T'},   {"state-dir", required_argument, 0, 'D'},
        {"timeout", required_argument, 0, 't'}, {"json", no_argument, 0, 'j'},
        {"wait", no_argument, 0, 'w'},          {"no-wait", no_argument, 0, 'n'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    keel_cli_conn c = {.url = getenv("KEEL_URL") ? getenv("KEEL_URL") : "http://127.0.0.1:8480",
                       .token = getenv("KEEL_TOKEN")};
    const char *sd = getenv("KEEL_STATE_DIR") ? getenv("KEEL_STATE_DIR") : "/var/lib/keel";
    bool wait = true, json = false;
    unsigned long timeout = 3600;
    int o;
    char tokbuf[80];
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'U':
            c.url = optarg;
            break;
        case 'S':
            c.unix_socket = optarg;
            break;
        case 'T':
            c.token = optarg;
            break;
        case 'D':
            sd = optarg;
            break;
        case 't':
            timeout = strtoul(optarg, NULL, 10);
            break;
        case 'j':
            json = true;
            break;
        case 'w':
            wait = true;
            break;
        case 'n':
            wait = false;
            break;
        case 'h':
            fputs(import_usage, stdout);
            return 0;
        default:
            fputs(import_usage, stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "keel: import takes one PATH\n%s", import_usage);
        return 2;
    }
    char abs[PATH_MAX];
    if (!realpath(argv[optind], abs)) {
        fprintf(stderr, "keel: cannot find %s\n", argv[optind]);
        return 1;
    }
    if (c.unix_socket && !getenv("KEEL_URL"))
        c.url = "http://localhost";
    if (!c.token) {
        if (keel_cli_token(sd, tokbuf, sizeof(tokbuf)))
            return 1;
        c.token = tokbuf;
    }
    keel_buf body, b;
    keel__buf_init(&body, 0);
    keel__buf_init(&b, 0);
    long status = 0;
    int rc = 1;
    cJSON *j = NULL;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (keel__buf_append(&body, "{\"path\":", 8) || keel__json_quote(&body, abs) ||
        keel__buf_append(&body, "}", 2))
        goto out;
    if (keel_cli_request(&c, "POST", "/api/import", NULL, body.data, &status, &b))
        goto out;
    if (status != 202) {
        rc = keel_cli_check(status, &b);
        goto out;
    }
    uint64_t id = 0;
    if (keel__json_parse(b.data, b.len, "answer", &j, NULL) ||
        keel__json_u64(j, "id", true, &id, "answer", NULL)) {
        fprintf(stderr, "keel: unexpected answer: %s\n", b.data ? b.data : "");
        goto out;
    }
    cJSON_Delete(j);
    j = NULL;
    if (!wait) {
        printf("import %llu queued: keel import waits for it, or GET /api/import/%llu\n",
               (unsigned long long)id, (unsigned long long)id);
        rc = 0;
        goto out;
    }
    char path[64];
    snprintf(path, sizeof(path), "/api/import/%llu", (unsigned long long)id);
    time_t until = time(NULL) + (time_t)timeout;
    for (;;) {
        keel__buf_done(&b); /* each poll's answer alone */
        keel__buf_init(&b, 16u << 20);
        if (keel_cli_request(&c, "GET", path, NULL, NULL, &status, &b))
            goto out;
        if (status != 200) {
            rc = keel_cli_check(status, &b);
            goto out;
        }
        cJSON_Delete(j);
        j = NULL;
        if (keel__json_parse(b.data, b.len, "answer", &j, NULL)) {
            fprintf(stderr, "keel: unexpected answer: %s\n", b.data ? b.data : "");
            goto out;
        }
        if (str(j, "state") && !strcmp(str(j, "state"), "done"))
            break;
        if (time(NULL) > until) {
            fprintf(stderr, "keel: import %llu not done after %lus (still %s); see %s\n",
                    (unsigned long long)id, timeout, str(j, "state") ? str(j, "state") : "?", path);
            goto out;
        }
        usleep(200 * 1000);
    }
    if (json) {
        printf("%s", b.data);
        const cJSON *ok =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "result"), "ok");
        rc = cJSON_IsTrue(ok) ? 0 : 1;
    } else {
        rc = print_result(cJSON_GetObjectItemCaseSensitive(j, "result"));
    }
out:
    cJSON_Delete(j);
    keel__buf_done(&body);
    keel__buf_done(&b);
    curl_global_cleanup();
    return rc;
}

static const char bundle_usage[] =
    "usage: keel bundle create OUT_DIR --pkg A.keel [--pkg B.keel ...] [--revoked REVOKED.json]\n"
    "                          [--root ROOT.json]\n"
    "  writes a bundle for a USB stick: the packages as NAME-VERSION.keel, the signed\n"
    "  revocation list and root (their .sig files beside them), and bundle.json with the\n"
    "  SHA-256 of each file. Carry OUT_DIR over; on the device: keel import OUT_DIR.\n";

int keel_cli_bundle(int argc, char **argv)
{
    static const struct option lo[] = {{"pkg", required_argument, 0, 'p'},
                                       {"revoked", required_argument, 0, 'r'},
                                       {"root", required_argument, 0, 'R'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    const char *pkgs[256], *revoked = NULL, *root = NULL;
    size_t np = 0;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'p':
            if (np == KEEL_ARRAY_LEN(pkgs)) {
                fprintf(stderr, "keel: at most 256 packages in one bundle\n");
                return 2;
            }
            pkgs[np++] = optarg;
            break;
        case 'r':
            revoked = optarg;
            break;
        case 'R':
            root = optarg;
            break;
        case 'h':
            fputs(bundle_usage, stdout);
            return 0;
        default:
            fputs(bundle_usage, stderr);
            return 2;
        }
    }
    if (optind != argc - 2 || strcmp(argv[optind], "create")) {
        fputs(bundle_usage, stderr);
        return 2;
    }
    keel_error e;
    if (keel__bundle_create(argv[optind + 1], pkgs, np, revoked, root, &e)) {
        fprintf(stderr, "keel: %s (%s)\n", e.msg, keel_errname(e.code));
        return 1;
    }
    printf("bundle written to %s (%zu package%s%s%s)\n", argv[optind + 1], np, np == 1 ? "" : "s",
           revoked ? ", a revocation list" : "", root ? ", a root" : "");
    return 0;
}
