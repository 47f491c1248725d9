/*
 * infer.c - `keel infer` and `keel selftest`.
 *
 *   keel infer NAME --input FILE|JSON [--tier T] [--session S]
 *       through keeld (--url, --unix-socket), or in this process with
 *       --offline --state-dir D. FILE may be a request JSON or an image.
 *   keel selftest NAME [--version V] --state-dir D
 *       the package's validation set through each tier (in this process).
 */
#include <curl/curl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "core/json.h"
#include "http/oip.h"
#include "infer/image.h"
#include "infer/infer.h"

typedef struct iopts {
    const char *url, *unix_socket, *state_dir, *input, *tier, *session, *version;
    bool offline;
    const char *name;
} iopts;

static int usage(const char *verb, const char *what)
{
    fprintf(stderr,
            "keel: %s\nusage: keel infer NAME --input FILE|JSON [--tier T] [--session S]\n"
            "                  [--url URL | --unix-socket PATH | --offline --state-dir D]\n"
            "       keel selftest NAME [--version V] [--state-dir D]\n",
            what);
    (void)verb;
    return 2;
}

static int parse_args(const char *verb, int argc, char **argv, iopts *o)
{
    static const struct option lo[] = {{"url", required_argument, 0, 'U'},
                                       {"unix-socket", required_argument, 0, 'S'},
                                       {"state-dir", required_argument, 0, 'D'},
                                       {"input", required_argument, 0, 'i'},
                                       {"tier", required_argument, 0, 't'},
                                       {"session", required_argument, 0, 's'},
                                       {"version", required_argument, 0, 'V'},
                                       {"offline", no_argument, 0, 'O'},
                                       {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof(*o));
    o->url = getenv("KEEL_URL") ? getenv("KEEL_URL") : "http://127.0.0.1:8480";
    o->state_dir = getenv("KEEL_STATE_DIR") ? getenv("KEEL_STATE_DIR") : "/var/lib/keel";
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:", lo, NULL)) != -1) {
        switch (c) {
        case 'U':
            o->url = optarg;
            break;
        case 'S':
            o->unix_socket = optarg;
            break;
        case 'D':
            o->state_dir = optarg;
            break;
        case 'i':
            o->input = optarg;
            break;
        case 't':
            o->tier = optarg;
            break;
        case 's':
            o->session = optarg;
            break;
        case 'V':
            o->version = optarg;
            break;
        case 'O':
            o->offline = true;
            break;
        default:
            return usage(verb, "unknown option");
        }
    }
    if (optind != argc - 1)
        return usage(verb, "name one package");
    o->name = argv[optind];
    if (!strcmp(verb, "infer") && !o->input)
        return usage(verb, "--input FILE|JSON is required");
    return 0;
}

/* The request body: the file's bytes, or the argument itself when it is
 * JSON. *is_image when the bytes are a PNG or JPEG. */
static int read_input(const char *in, char **ret, size_t *ret_len, bool *is_image, keel_error *err)
{
    const char *p = in;
    while (*p == ' ' || *p == '\n' || *p == '\t')
        p++;
    *is_image = false;
    if (*p == '{') {
        *ret = strdup(in);
        *ret_len = strlen(in);
        return *ret ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    int rc = keel__fs_read(in, 256u << 20, ret, ret_len, err);
    if (!rc)
        *is_image = keel__image_sniff(*ret, *ret_len) != KEEL__IMG_UNKNOWN;
    return rc;
}

/* A degraded answer is still an answer, but not a quiet one: says on stderr
 * which tier served and why the earlier ones did not. */
static void note_degraded(const char *json, size_t len)
{
    cJSON *j = NULL;
    if (keel__json_parse(json, len, "response", &j, NULL))
        return;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "parameters");
    const cJSON *tier = cJSON_GetObjectItemCaseSensitive(p, "tier"),
                *backend = cJSON_GetObjectItemCaseSensitive(p, "backend"),
                *why = cJSON_GetObjectItemCaseSensitive(p, "fallback_reason");
    bool has_why = cJSON_IsString(why) && *why->valuestring;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "degraded")))
        fprintf(stderr, "keel: degraded answer from tier %s (%s)%s%s\n",
                cJSON_IsString(tier) ? tier->valuestring : "?",
                cJSON_IsString(backend) ? backend->valuestring : "?",
                has_why ? "; the earlier tiers: " : "", has_why ? why->valuestring : "");
    cJSON_Delete(j);
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    return keel__buf_append(ud, p, sz * n) ? 0 : sz * n;
}

static int infer_remote(const iopts *o, const char *body, size_t len, bool image)
{
    char url[2048], q[512] = "";
    keel_buf out;
    long status = 0;
    char *name = curl_easy_escape(NULL, o->name, 0);
    if (image && (o->tier || o->session)) {
        char *t = o->tier ? curl_easy_escape(NULL, o->tier, 0) : NULL;
        char *s = o->session ? curl_easy_escape(NULL, o->session, 0) : NULL;
        snprintf(q, sizeof(q), "?%s%s%s%s%s", t ? "tier=" : "", t ? t : "", t && s ? "&" : "",
                 s ? "session=" : "", s ? s : "");
        curl_free(t);
        curl_free(s);
    }
    snprintf(url, sizeof(url), "%s/v2/models/%s/infer%s", o->url, name ? name : "", q);
    curl_free(name);
    keel__buf_init(&out, 256u << 20);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(
        NULL, image ? (keel__image_sniff(body, len) == KEEL__IMG_PNG ? "Content-Type: image/png"
                                                                     : "Content-Type: image/jpeg")
                    : "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (o->unix_socket)
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    int rc = 0;
    if (cc != CURLE_OK) {
        fprintf(stderr, "keel: cannot reach keeld at %s: %s (is it running? --url, or --offline)\n",
                o->url, curl_easy_strerror(cc));
        rc = 1;
    } else {
        FILE *f = status >= 200 && status < 300 ? stdout : stderr;
        fprintf(f, "%s\n", out.data ? out.data : "");
        rc = status >= 200 && status < 300 ? 0 : 1;
        if (!rc && out.data)
            note_degraded(out.data, out.len);
    }
    keel__buf_done(&out);
    return rc;
}

/* Adds tier/session from the flags to a JSON request. */
static char *with_params(const char *body, size_t len, const iopts *o)
{
    cJSON *j = NULL;
    if (!o->tier && !o->session)
        return NULL;
    if (keel__json_parse(body, len, "request", &j, NULL))
        return NULL;
    cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "parameters");
    if (!p)
        p = cJSON_AddObjectToObject(j, "parameters");
    if (o->tier)
        cJSON_AddStringToObject(p, "tier", o->tier);
    if (o->session)
        cJSON_AddStringToObject(p, "session", o->session);
    char *s = keel__json_print(j);
    cJSON_Delete(j);
    return s;
}

static int open_engine(const iopts *o, keel_store **s, keel__infer **e, keel_error *err)
{
    char cache[PATH_MAX];
    (void)keel_state_path(o->state_dir, KEEL_STATE_CACHE_ONNX, cache, sizeof(cache));
    keel__infer_opts io = {.cache_dir = cache};
    int rc = keel_store_open(o->state_dir, NULL, s, err);
    if (!rc)
        rc = keel__infer_new(*s, &io, e, err);
    return rc;
}

static int infer_local(const iopts *o, const char *body, size_t len, bool image)
{
    keel_store *s = NULL;
    keel__infer *e = NULL;
    keel__model *m = NULL;
    keel_error err = {0};
    keel__oip_req r;
    keel__infer_resp resp;
    bool ready;
    char why[1024], *out = NULL;
    size_t olen = 0, jlen = 0;
    int rc = open_engine(o, &s, &e, &err);
    memset(&r, 0, sizeof(r));
    if (!rc)
        rc = keel_store_resolve_all(s, 0, &ready, why, sizeof(why), &err);
    if (!rc)
        rc = keel__infer_refresh(e, &err);
    if (!rc && !(m = keel__infer_get(e, o->name)))
        rc = keel__err(&err, KEEL_ENOTFOUND, "no model \"%s\" is served in %s", o->name,
                       o->state_dir);
    if (!rc && image) {
        r.req.image = body;
        r.req.image_len = len;
        r.req.tier = o->tier;
        r.req.session = o->session;
    } else if (!rc &&
               !(rc = keel__oip_parse(body, len, len, keel__model_image_input(m), &r, &err))) {
        if (o->tier)
            r.req.tier = o->tier;
        if (o->session)
            r.req.session = o->session;
    }
    if (!rc && !(rc = keel__model_run(m, &r.req, &resp, &err))) {
        rc = keel__oip_response(&r, &resp, &out, &olen, &jlen, &err);
        keel__infer_resp_done(&resp);
    }
    if (!rc)
        printf("%.*s\n", (int)jlen, out);
    if (!rc) {
        fflush(stdout);
        note_degraded(out, jlen);
    } else
        fprintf(stderr, "keel: %s (%s)\n", err.msg, keel_errname(err.code));
    free(out);
    keel__oip_done(&r);
    keel__model_unref(m);
    keel__infer_free(e);
    keel_store_close(s);
    return rc ? 1 : 0;
}

int keel_cli_infer(int argc, char **argv)
{
    iopts o;
    int rc = parse_args("infer", argc, argv, &o);
    if (rc)
        return rc;
    char *body = NULL, *patched = NULL;
    size_t len = 0;
    bool image = false;
    keel_error err = {0};
    if (read_input(o.input, &body, &len, &image, &err)) {
        fprintf(stderr, "keel: --input: %s\n", err.msg);
        return 1;
    }
    if (!image && !o.offline && (patched = with_params(body, len, &o))) {
        free(body);
        body = patched;
        len = strlen(body);
    }
    if (o.offline) {
        rc = infer_local(&o, body, len, image);
    } else {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        rc = infer_remote(&o, body, len, image);
        curl_global_cleanup();
    }
    free(body);
    return rc;
}

int keel_cli_selftest(int argc, char **argv)
{
    iopts o;
    int rc = parse_args("selftest", argc, argv, &o);
    if (rc)
        return rc;
    keel_store *s = NULL;
    keel__infer *e = NULL;
    keel__model *m = NULL;
    keel_error err = {0};
    keel_serving sv;
    char *report = NULL;
    rc = open_engine(&o, &s, &e, &err);
    const char *version = o.version;
    if (!rc && !version && !(rc = keel_store_resolve(s, o.name, 0, &sv, &err))) {
        if (sv.slot == KEEL_SLOT_NONE)
            rc = keel__err(&err, KEEL_ENOTFOUND,
                           "%s has no version to test (name one with --version)", o.name);
        version = sv.version;
    }
    if (!rc)
        rc = keel__model_load(e, o.name, version, &m, &err);
    if (!rc || rc == KEEL_ECORRUPT) {
        int trc = rc ? rc : keel__model_selftest(m, s, &report, &err);
        if (report)
            printf("%s\n", report);
        rc = trc;
    }
    if (rc)
        fprintf(stderr, "keel: selftest: %s (%s)\n", err.msg, keel_errname(err.code));
    free(report);
    keel__model_unref(m);
    keel__infer_free(e);
    keel_store_close(s);
    return rc ? 1 : 0;
}

/* The validator for offline installs and activations (the CLI's own
 * engine; keeld sets its own). */
int keel_cli_validator(keel_store *s, keel__infer **ret)
{
    keel_error err;
    if (keel__infer_new(s, NULL, ret, &err))
        return 1;
    keel_store_set_validator(s, keel__infer_validator, *ret);
    return 0;
}
