/*
 * client.c - the CLI's verbs that talk to a running keeld over HTTP
 * (libcurl): status, packages, install, activate, rollback, mark-good, gc.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "client.h"
#include "core/json.h"

typedef struct copts {
    const char *url, *unix_socket, *token, *state_dir, *version;
    bool json, activate;
    const char *pos[2];
    int npos;
} copts;

static const char common_usage[] =
    "options: --url URL (default $KEEL_URL or http://127.0.0.1:8480), --unix-socket PATH,\n"
    "         --token TOKEN (default $KEEL_TOKEN, else STATE_DIR/token), --state-dir DIR\n"
    "         (default $KEEL_STATE_DIR or /var/lib/keel), --json (print the raw answer)\n";

static const char *verb_usage(const char *verb)
{
    static const struct {
        const char *verb, *text;
    } u[] = {
        {"status", "keel status: is keeld ready, and what serves each package"},
        {"packages", "keel packages: the installed packages (JSON)"},
        {"install", "keel install FILE [--activate]: upload a .keel package to keeld"},
        {"activate", "keel activate NAME [--version V]: make V (default: the staged one) active"},
        {"rollback", "keel rollback NAME: go back to the previous (or known-good) version"},
        {"mark-good", "keel mark-good NAME: record the active version as known-good"},
        {"gc", "keel gc: remove versions in no slot and blobs nothing uses"},
        {"update", "keel update check|apply|status: ask the configured repositories now (apply:\n"
                   "  download, validate and activate what they offer), or show the last check"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(u); i++)
        if (!strcmp(u[i].verb, verb))
            return u[i].text;
    return "keel VERB";
}

static int usage_error(const char *verb, const char *what)
{
    fprintf(stderr, "keel: %s\nusage: %s\n%s", what, verb_usage(verb), common_usage);
    return 2;
}

/* String member s of o, or dflt. */
static const char *str_or(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : dflt;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    return keel__buf_append(ud, p, sz * n) ? 0 : sz * n;
}

int keel_cli_request(const keel_cli_conn *o, const char *method, const char *path,
                     const char *body_file, const char *body_json, long *ret_status, keel_buf *out)
{
    char url[2048], auth[128];
    struct curl_slist *hdr = NULL;
    FILE *f = NULL;
    CURL *c = curl_easy_init();
    int rc = 1;
    if (!c)
        return 1;
    snprintf(url, sizeof(url), "%s%s", o->url, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    if (o->unix_socket)
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
    if (o->token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->token);
        hdr = curl_slist_append(hdr, auth);
    }
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        if (body_file) {
            struct stat st;
            f = fopen(body_file, "rb");
            if (!f || fstat(fileno(f), &st) != 0) {
                fprintf(stderr, "keel: cannot open %s: %s\n", body_file, strerror(errno));
                goto out;
            }
            curl_easy_setopt(c, CURLOPT_READDATA, f); /* default read function: fread */
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)st.st_size);
            hdr = curl_slist_append(hdr, "Content-Type: application/octet-stream");
            hdr = curl_slist_append(hdr, "Expect:");
        } else {
            const char *b = body_json ? body_json : "";
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, b);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(b));
            hdr = curl_slist_append(hdr, "Content-Type: application/json");
        }
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    CURLcode cr = curl_easy_perform(c);
    if (cr != CURLE_OK) {
        if (cr == CURLE_COULDNT_CONNECT)
            fprintf(stderr,
                    "keel: cannot reach keeld at %s (is it running? start it with `keeld` or "
                    "`make run`)\n",
                    o->unix_socket ? o->unix_socket : o->url);
        else
            fprintf(stderr, "keel: request to %s failed: %s\n", url, curl_easy_strerror(cr));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, ret_status);
    rc = 0;
out:
    if (f)
        fclose(f);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    return rc;
}

int keel_cli_check(long status, const keel_buf *body)
{
    if (status >= 200 && status < 300)
        return 0;
    cJSON *j = NULL;
    const cJSON *err = NULL;
    if (body->data && keel__json_parse(body->data, body->len, "response", &j, NULL) == 0 &&
        (err = cJSON_GetObjectItemCaseSensitive(j, "error"))) {
        /* keel's routes: {"error":{"code","message"}}; /v2: {"error":"...","code"} */
        bool oip = cJSON_IsString(err);
        const cJSON *m = oip ? err : cJSON_GetObjectItemCaseSensitive(err, "message");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(oip ? j : err, "code");
        fprintf(stderr, "keel: %s (%s, HTTP %ld)\n", cJSON_IsString(m) ? m->valuestring : "?",
                cJSON_IsString(c) ? c->valuestring : "?", status);
    } else {
        fprintf(stderr, "keel: keeld answered HTTP %ld: %s\n", status,
                body->data ? body->data : "");
    }
    cJSON_Delete(j);
    return 1;
}

static void print_status(const char *json)
{
    cJSON *j = NULL;
    if (keel__json_parse(json, strlen(json), "status", &j, NULL)) {
        printf("%s\n", json);
        return;
    }
    const cJSON *rd = cJSON_GetObjectItemCaseSensitive(j, "readiness");
    const cJSON *ready = cJSON_GetObjectItemCaseSensitive(rd, "ready");
    const char *reason = str_or(rd, "reason", "");
    printf("keeld %s: %s%s%s\n", str_or(j, "keel_version", "?"),
           cJSON_IsTrue(ready) ? "ready" : "NOT READY", reason[0] ? ": " : "", reason);
    const cJSON *pkgs =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "store"), "packages");
    const cJSON *p;
    cJSON_ArrayForEach(p, pkgs)
    {
        const cJSON *sv = cJSON_GetObjectItemCaseSensitive(p, "serving");
        const cJSON *slots = cJSON_GetObjectItemCaseSensitive(p, "slots");
        printf("%s: serving %s (%s)%s\n", str_or(p, "name", "?"), str_or(sv, "version", "nothing"),
               str_or(sv, "slot", "-"),
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sv, "degraded")) ? " DEGRADED" : "");
        const cJSON *s;
        cJSON_ArrayForEach(s, slots) printf("  %-10s %s\n", s->string ? s->string : "?",
                                            cJSON_IsString(s) ? s->valuestring : "-");
        const char *why = str_or(sv, "reason", "");
        if (why[0])
            printf("  why: %s\n", why);
    }
    cJSON_Delete(j);
}

/* One check's result (api_updates.c): a line per package. 1 when the check failed. */
static int print_check(const cJSON *j, bool status)
{
    if (!cJSON_IsObject(j)) {
        printf("no check has run yet\n");
        return 0;
    }
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
    if (!cJSON_IsTrue(ok)) {
        if (status) { /* a report of the last check, not a failure of this command */
            printf("last check (%s) failed: %s\n", str_or(j, "at", "?"), str_or(j, "error", "?"));
            return 0;
        }
        fprintf(stderr, "keel: update check failed: %s\n", str_or(j, "error", "?"));
        return 1;
    }
    const cJSON *ix = cJSON_GetObjectItemCaseSensitive(j, "index_version");
    printf("%s: channel %s, index version %.0f\n", str_or(j, "repo", "?"),
           str_or(j, "channel", "?"), cJSON_IsNumber(ix) ? ix->valuedouble : 0.0);
    const cJSON *p;
    int failed = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(j, "packages"))
    {
        const char *why = str_or(p, "reason", ""), *st = str_or(p, "step", "?");
        printf("%s: %s -> %s: %s%s%s\n", str_or(p, "name", "?"), str_or(p, "current", "-"),
               str_or(p, "offered", "-"), st, why[0] ? ": " : "", why);
        failed |= !strcmp(st, "refused") || !strcmp(st, "interrupted");
    }
    /* a refused or interrupted update fails this command (not a status report) */
    return status ? 0 : failed;
}

static int print_update(const char *json, bool status)
{
    cJSON *j = NULL;
    if (keel__json_parse(json, strlen(json), "update answer", &j, NULL)) {
        printf("%s\n", json);
        return 0;
    }
    int rc;
    if (status) {
        printf("repositories: %s\nchannel: %s, phase: %s\n", str_or(j, "repos", ""),
               str_or(j, "channel", "?"), str_or(j, "phase", "?"));
        rc = print_check(cJSON_GetObjectItemCaseSensitive(j, "last"), true);
    } else {
        rc = print_check(j, false);
    }
    cJSON_Delete(j);
    return rc;
}

int keel_cli_token(const char *state_dir, char *buf, size_t n)
{
    char tp[PATH_MAX], *t = NULL;
    size_t tl;
    (void)keel_state_path(state_dir, KEEL_STATE_TOKEN, tp, sizeof(tp));
    if (keel__fs_read(tp, 100, &t, &tl, NULL)) {
        fprintf(stderr,
                "keel: no API token: pass --token, set KEEL_TOKEN, or make %s readable "
                "(--state-dir DIR)\n",
                tp);
        return 1;
    }
    snprintf(buf, n, "%.64s", t);
    free(t);
    return 0;
}

int keel_cli_client(const char *verb, int argc, char **argv)
{
    static const struct option lo[] = {{"url", required_argument, 0, 'U'},
                                       {"unix-socket", required_argument, 0, 'S'},
                                       {"token", required_argument, 0, 'T'},
                                       {"state-dir", required_argument, 0, 'D'},
                                       {"version", required_argument, 0, 'V'},
                                       {"json", no_argument, 0, 'j'},
                                       {"activate", no_argument, 0, 'a'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    copts o = {0};
    char tokbuf[128], path[512];
    int c;
    o.url = getenv("KEEL_URL") ? getenv("KEEL_URL") : "http://127.0.0.1:8480";
    o.token = getenv("KEEL_TOKEN");
    o.state_dir = getenv("KEEL_STATE_DIR") ? getenv("KEEL_STATE_DIR") : "/var/lib/keel";
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'U':
            o.url = optarg;
            break;
        case 'S':
            o.unix_socket = optarg;
            break;
        case 'T':
            o.token = optarg;
            break;
        case 'D':
            o.state_dir = optarg;
            break;
        case 'V':
            o.version = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'a':
            o.activate = true;
            break;
        case 'h':
            printf("usage: %s\n%s", verb_usage(verb), common_usage);
            return 0;
        default:
            return usage_error(verb, "unknown option");
        }
    }
    for (int i = optind; i < argc; i++) {
        if (o.npos == 2)
            return usage_error(verb, "too many arguments");
        o.pos[o.npos++] = argv[i];
    }
    if (o.unix_socket && !getenv("KEEL_URL"))
        o.url = "http://localhost";
    bool takes_arg = !strcmp(verb, "install") || !strcmp(verb, "activate") ||
                     !strcmp(verb, "rollback") || !strcmp(verb, "mark-good") ||
                     !strcmp(verb, "update");
    if (!strcmp(verb, "update") && o.npos == 1 && strcmp(o.pos[0], "check") &&
        strcmp(o.pos[0], "apply") && strcmp(o.pos[0], "status"))
        return usage_error(verb, "update takes check, apply or status");
    if (o.npos != (takes_arg ? 1 : 0))
        return usage_error(verb, takes_arg ? "wrong number of arguments" : "unexpected argument");
    bool mutating = strcmp(verb, "status") && strcmp(verb, "packages") &&
                    !(!strcmp(verb, "update") && !strcmp(o.pos[0], "status"));
    if (mutating && !o.token) {
        if (keel_cli_token(o.state_dir, tokbuf, sizeof(tokbuf)))
            return 1;
        o.token = tokbuf;
    }
    const keel_cli_conn conn = {o.url, o.unix_socket, o.token};
    keel_buf body, json;
    long status = 0;
    int rc = 0;
    keel__buf_init(&body, 64u << 20);
    keel__buf_init(&json, 1024);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (!strcmp(verb, "status")) {
        rc = keel_cli_request(&conn, "GET", "/api/status", NULL, NULL, &status, &body);
    } else if (!strcmp(verb, "packages")) {
        rc = keel_cli_request(&conn, "GET", "/api/packages", NULL, NULL, &status, &body);
    } else if (!strcmp(verb, "update")) {
        if (!strcmp(o.pos[0], "status"))
            rc = keel_cli_request(&conn, "GET", "/api/updates", NULL, NULL, &status, &body);
        else
            rc = keel_cli_request(&conn, "POST",
                                  !strcmp(o.pos[0], "apply") ? "/api/updates/check?wait=1&apply=1"
                                                             : "/api/updates/check?wait=1&apply=0",
                                  NULL, NULL, &status, &body);
    } else if (!strcmp(verb, "gc")) {
        rc = keel_cli_request(&conn, "POST", "/api/gc", NULL, NULL, &status, &body);
    } else if (!strcmp(verb, "install")) {
        rc = keel_cli_request(&conn, "POST",
                              o.activate ? "/api/packages?activate=1" : "/api/packages", o.pos[0],
                              NULL, &status, &body);
    } else {
        /* NAME goes into the path: escape it so it cannot reach another route. */
        char *name = curl_easy_escape(NULL, o.pos[0], 0);
        if (!name || keel__snprintf(path, sizeof(path), "/api/packages/%s/%s", name, verb)) {
            fprintf(stderr, "keel: package name too long: %s\n", o.pos[0]);
            rc = 1;
        }
        curl_free(name);
        if (!rc && o.version &&
            (keel__buf_append(&json, "{\"version\":", 11) || keel__json_quote(&json, o.version) ||
             keel__buf_append(&json, "}", 1))) {
            fprintf(stderr, "keel: --version too long: %s\n", o.version);
            rc = 1;
        }
        if (!rc)
            rc = keel_cli_request(&conn, "POST", path, NULL, o.version ? json.data : NULL, &status,
                                  &body);
    }
    if (!rc)
        rc = keel_cli_check(status, &body);
    if (!rc) {
        if (!strcmp(verb, "status") && !o.json)
            print_status(body.data ? body.data : "{}");
        else if (!strcmp(verb, "update") && !o.json)
            rc = print_update(body.data ? body.data : "{}", !strcmp(o.pos[0], "status"));
        else
            printf("%s%s", body.data ? body.data : "",
                   body.len && body.data[body.len - 1] == '\n' ? "" : "\n");
    }
    keel__buf_done(&body);
    keel__buf_done(&json);
    curl_global_cleanup();
    return rc;
}
