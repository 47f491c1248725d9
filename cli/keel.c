/*
 * keel - the command-line tool: offline package tools (keygen, pack, sign,
 * verify, inspect, trust) and a client for a running keeld (status, install,
 * activate, rollback, mark-good, packages). Thin: parse arguments, call libkeel.
 * Exit status: 0 success, 1 failure (message on stderr), 2 usage error.
 */
#include <getopt.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "delta.h"
#include "publish.h"
#include "infer/infer.h"
#include "infer/lint.h"
#include "sync/envelope.h"
#include "core/json.h"
#include "core/core.h"

#define MAX_KEYS 16

static int fail(const keel_error *e)
{
    fprintf(stderr, "keel: %s (%s)\n", e->msg, keel_errname(e->code));
    return 1;
}

static int usage_error(const char *fmt, ...) KEEL_PRINTF(1, 2);
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "keel: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun `keel help` for usage.\n");
    return 2;
}

static const char usage[] =
    "usage: keel COMMAND [ARGS]\n"
    "\n"
    "Package tools (offline):\n"
    "  keygen -o PREFIX                 new Ed25519 key: PREFIX.key (private), PREFIX.pub\n"
    "  pack SRC_DIR -o FILE [--key K]   build a package from SRC_DIR/keel.json + files\n"
    "                                   (refused when activation would refuse it: see lint)\n"
    "  lint DIR|keel.json|FILE.keel...  every problem activation would find in a manifest\n"
    "                                   (exit 0: none; 1: each listed on stderr)\n"
    "  sign FILE --key K                add a signature to a package\n"
    "  verify FILE [--trust DIR]        check hashes (and signatures against DIR)\n"
    "  verify --state-dir D [--deep]    check what is installed on this device\n"
    "                                   (--deep re-hashes every byte)\n"
    "  inspect FILE [--json]            show a package's manifest\n"
    "  hash FILE...                     SHA-256 of files, as sha256sum prints it\n"
    "  delta BASE TARGET -o PATCH | delta --apply BASE PATCH -o OUT [--sha256 HEX]\n"
    "  trust init DIR --key PUB [--key PUB ...] [--threshold N]\n"
    "             [--index-key PUB ...] [--timestamp-key PUB ...]   repository roles\n"
    "  trust sign DOC --key K --kind root|revocations   add a signature to DOC.sig\n"
    "  trust rotate DIR NEW_ROOT.json   accept a new root (signed in NEW_ROOT.json.sig)\n"
    "  trust revoke DIR REVOKED.json    install a signed revocation list\n"
    "\n"
    "Repository (publisher; docs/update.md):\n"
    "  publish PKG.keel --repo DIR --key INDEX.key [--timestamp-key TS.key] [--channel C]\n"
    "          [--rollout PCT] [--expires 30d] [--timestamp-expires 1d] [--patch-from N]\n"
    "  rollout NAME --repo DIR --channel C --key INDEX.key\n"
    "          (--set PCT | --halt | --resume | --pull VERSION | --promote)\n"
    "  repo timestamp --repo DIR --key TS.key [--expires 1d]   re-sign a fresh timestamp\n"
    "  repo verify --repo DIR --trust DIR [--state FILE]     check it as a device would\n"
    "  repo offer NAME --repo DIR --trust DIR --device ID [--channel C] [--current V]\n"
    "                                   the version the repository offers that device\n"
    "\n"
    "Device (talks to keeld; --offline --state-dir D works on the store directly):\n"
    "  status | packages | install FILE [--activate] | activate NAME [--version V]\n"
    "  rollback NAME | mark-good NAME | gc (drop versions in no slot, unused blobs)\n"
    "  update check | update apply     ask the repositories now (apply: download, validate,\n"
    "                                   activate what they offer); update status\n"
    "  infer NAME --input FILE|JSON [--tier T] [--session S]   one inference request\n"
    "  envelope decode FILE...          uplink batch envelopes as JSON lines (receivers)\n"
    "  selftest NAME [--version V] --state-dir D   run the package's validation set\n"
    "  import PATH [--no-wait]          a USB bundle folder or .keel file: trust changes,\n"
    "                                   packages installed, the newest of each activated\n"
    "  bundle create OUT --pkg A.keel [--pkg B.keel] [--revoked R.json] [--root ROOT.json]\n"
    "  common: --url URL --unix-socket PATH --token T --state-dir D --json\n";

/* --- argument helpers -------------------------------------------------------- */

typedef struct opts {
    const char *out, *trust, *state_dir, *kind, *version;
    const char *keys[MAX_KEYS], *index_keys[MAX_KEYS], *ts_keys[MAX_KEYS];
    size_t nkeys, nindex_keys, nts_keys;
    unsigned threshold;
    bool json, deep, installed, activate, offline;
    const char *pos[64];
    size_t npos;
} opts;

static int parse(int argc, char **argv, opts *o)
{
    static const struct option lo[] = {{"out", required_argument, 0, 'o'},
                                       {"key", required_argument, 0, 'k'},
                                       {"trust", required_argument, 0, 't'},
                                       {"state-dir", required_argument, 0, 's'},
                                       {"threshold", required_argument, 0, 'n'},
                                       {"kind", required_argument, 0, 'K'},
                                       {"version", required_argument, 0, 'V'},
                                       {"json", no_argument, 0, 'j'},
                                       {"deep", no_argument, 0, 'd'},
                                       {"installed", no_argument, 0, 'i'},
                                       {"activate", no_argument, 0, 'a'},
                                       {"offline", no_argument, 0, 'O'},
                                       {"index-key", required_argument, 0, 'X'},
                                       {"timestamp-key", required_argument, 0, 'Y'},
                                       {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof(*o));
    o->threshold = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:k:", lo, NULL)) != -1) {
        switch (c) {
        case 'o':
            o->out = optarg;
            break;
        case 'k':
            if (o->nkeys == MAX_KEYS)
                return usage_error("at most %s keys", "16");
            o->keys[o->nkeys++] = optarg;
            break;
        case 't':
            o->trust = optarg;
            break;
        case 's':
            o->state_dir = optarg;
            break;
        case 'n': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || v < 1 || v > 256)
                return usage_error("--threshold %s is not a number 1..256", optarg);
            o->threshold = (unsigned)v;
            break;
        }
        case 'K':
            o->kind = optarg;
            break;
        case 'V':
            o->version = optarg;
            break;
        case 'j':
            o->json = true;
            break;
        case 'd':
            o->deep = true;
            break;
        case 'i':
            o->installed = true;
            break;
        case 'a':
            o->activate = true;
            break;
        case 'O':
            o->offline = true;
            break;
        case 'X':
        case 'Y':
            if ((c == 'X' ? o->nindex_keys : o->nts_keys) == MAX_KEYS)
                return usage_error("at most %s keys", "16");
            if (c == 'X')
                o->index_keys[o->nindex_keys++] = optarg;
            else
                o->ts_keys[o->nts_keys++] = optarg;
            break;
        default:
            return 2;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (o->npos == KEEL_ARRAY_LEN(o->pos))
            return usage_error("too many arguments near %s", argv[i]);
        o->pos[o->npos++] = argv[i];
    }
    return 0;
}

static int load_keys(const opts *o, keel_key **keys, bool priv, keel_error *e)
{
    for (size_t i = 0; i < o->nkeys; i++) {
        int rc = priv ? keel_key_load_private(o->keys[i], &keys[i], e)
                      : keel_key_load_public(o->keys[i], &keys[i], e);
        if (rc)
            return rc;
    }
    return KEEL_OK;
}

static void free_keys(keel_key **keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        keel_key_free(keys[i]);
}

/* --- package tools ---------------------------------------------------------------- */

static int cmd_keygen(const opts *o)
{
    char priv[PATH_MAX], pub[PATH_MAX], id[KEEL_SHA256_HEX];
    keel_key *k = NULL;
    keel_error e;
    if (!o->out)
        return usage_error("keygen needs -o PREFIX%s", "");
    snprintf(priv, sizeof(priv), "%s.key", o->out);
    snprintf(pub, sizeof(pub), "%s.pub", o->out);
    if (keel__fs_exists(priv)) {
        fprintf(stderr, "keel: %s exists; refusing to overwrite a private key\n", priv);
        return 1;
    }
    if (keel_key_generate(&k, &e) || keel_key_save(k, priv, pub, &e)) {
        keel_key_free(k);
        return fail(&e);
    }
    keel_key_id_hex(k, id);
    printf("key id %s\nprivate key %s (keep it secret)\npublic key %s\n", id, priv, pub);
    keel_key_free(k);
    return 0;
}

/* Prints every problem activation would find in path's manifest; 0 when
 * there are none, 1 otherwise (or when the checks could not run). */
static int lint_one(const char *path, bool quiet_ok)
{
    keel__lint l;
    keel_error e;
    int rc = keel__lint_package(path, &l, &e);
    if (rc) {
        fprintf(stderr, "keel: %s: %s (%s)\n", path, e.msg, keel_errname(e.code));
    } else {
        for (size_t i = 0; i < l.n; i++)
            fprintf(stderr, "%s: %s\n", path, l.problems[i]);
        if (!l.n && !quiet_ok)
            printf("ok: %s\n", path);
    }
    int status = rc || l.n ? 1 : 0;
    keel__lint_done(&l);
    return status;
}

/* `keel lint DIR|MANIFEST|FILE.keel...`: for CI pipelines. */
static int cmd_lint(const opts *o)
{
    int status = 0;
    if (!o->npos)
        return usage_error("usage: keel lint DIR|keel.json|FILE.keel...%s", "");
    for (size_t i = 0; i < o->npos; i++)
        status |= lint_one(o->pos[i], false);
    return status;
}

static int cmd_pack(const opts *o)
{
    keel_key *keys[MAX_KEYS] = {0};
    keel_error e;
    int rc;
    if (o->npos != 1 || !o->out)
        return usage_error("usage: keel pack SRC_DIR -o FILE [--key KEY]...%s", "");
    /* what activation would refuse is refused here, before anything is written */
    if (lint_one(o->pos[0], true)) {
        fprintf(stderr, "keel: %s: not packed; fix the problems above\n", o->pos[0]);
        return 1;
    }
    if ((rc = load_keys(o, keys, true, &e)) ||
        (rc =
             keel_pack_dir(o->pos[0], o->out, (const keel_key *const *)keys, o->nkeys, NULL, &e))) {
        free_keys(keys, o->nkeys);
        return fail(&e);
    }
    free_keys(keys, o->nkeys);
    printf("packed %s%s\n", o->out, o->nkeys ? " (signed)" : " (unsigned: run `keel sign`)");
    return 0;
}

static int cmd_sign(const opts *o)
{
    keel_key *keys[MAX_KEYS] = {0};
    keel_error e;
    if (o->npos != 1 || o->nkeys == 0)
        return usage_error("usage: keel sign FILE --key KEY [--key KEY]...%s", "");
    if (load_keys(o, keys, true, &e))
        goto err;
    for (size_t i = 0; i < o->nkeys; i++)
        if (keel_pkg_sign(o->pos[0], keys[i], NULL, &e))
            goto err;
    free_keys(keys, o->nkeys);
    printf("signed %s\n", o->pos[0]);
    return 0;
err:
    free_keys(keys, o->nkeys);
    return fail(&e);
}

static int cmd_verify_installed(const opts *o)
{
    keel_store *s = NULL;
    keel_error e;
    bool ready = false;
    char why[KEEL_ERROR_MSG_MAX], *json = NULL;
    if (!o->state_dir)
        return usage_error("verify --installed needs --state-dir DIR%s", "");
    if (keel_store_open(o->state_dir, NULL, &s, &e) ||
        keel_store_resolve_all(s, o->deep ? KEEL_VERIFY_DEEP : 0, &ready, why, sizeof(why), &e) ||
        keel_store_status_json(s, &json, &e)) {
        keel_store_close(s);
        return fail(&e);
    }
    if (o->json)
        printf("%s\n", json);
    else if (ready && !why[0])
        printf("ok: everything installed verifies%s\n",
               o->deep ? " (deep: every byte re-hashed)" : "");
    else
        printf("%s%s\n", ready ? "PROBLEMS (still serving): " : "NOT READY: ", why);
    free(json);
    keel_store_close(s);
    return ready && !why[0] ? 0 : 1;
}

static int cmd_verify(const opts *o)
{
    keel_trust *t = NULL;
    keel_error e;
    if (o->installed || (o->npos == 0 && (o->deep || o->state_dir)))
        return cmd_verify_installed(o);
    if (o->npos != 1)
        return usage_error("usage: keel verify FILE [--trust DIR]%s", "");
    if (o->trust && keel_trust_load(o->trust, &t, &e))
        return fail(&e);
    int rc = keel_pkg_verify_file(o->pos[0], t, NULL, &e);
    keel_trust_free(t);
    if (rc)
        return fail(&e);
    printf("ok: %s: every file matches keel.json%s\n", o->pos[0],
           t || o->trust ? "; signatures satisfy the trust root"
                         : " (signatures not checked: pass --trust DIR)");
    return 0;
}

static void human_size(uint64_t b, char *out, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static int cmd_inspect(const opts *o)
{
    keel_pkg *p = NULL;
    keel_error e;
    char *json = NULL;
    if (o->npos != 1)
        return usage_error("usage: keel inspect FILE [--json]%s", "");
    if (keel_pkg_open(o->pos[0], NULL, &p, &e))
        return fail(&e);
    const keel_manifest *m = keel_pkg_manifest(p);
    if (o->json) {
        if (keel_manifest_summary_json(m, &json, &e)) {
            keel_pkg_close(p);
            return fail(&e);
        }
        printf("%s\n", json);
        free(json);
        keel_pkg_close(p);
        return 0;
    }
    char digest[72], size[32];
    keel_manifest_digest_str(m, digest);
    human_size(keel_manifest_total_bytes(m), size, sizeof(size));
    printf("package   %s %s\ndigest    %s\nformat    %d\ncreated   %s\ntask      %s\n"
           "about     %s\nsize      %s in %zu files\n",
           keel_manifest_name(m), keel_manifest_version(m), digest, keel_manifest_format(m),
           keel_manifest_created(m), keel_manifest_task(m), keel_manifest_description(m), size,
           keel_manifest_nfiles(m));
    for (size_t i = 0; i < keel_manifest_ntiers(m); i++)
        printf("tier %zu    %s: %s %s\n", i + 1, keel_manifest_tier_name(m, i),
               keel_manifest_tier_backend(m, i), keel_manifest_tier_model(m, i));
    const keel_sigset *sigs = keel_pkg_sigs(p);
    for (size_t i = 0; i < sigs->count; i++) {
        char id[KEEL_SHA256_HEX];
        keel_hex_encode(sigs->sigs[i].keyid, KEEL_KEYID_LEN, id);
        printf("signed by %s\n", id);
    }
    if (!sigs->count)
        printf("signed by nobody (run `keel sign`)\n");
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++) {
        const keel_file *f = keel_manifest_file(m, i);
        char hex[KEEL_SHA256_HEX];
        keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
        human_size(f->size, size, sizeof(size));
        printf("  %-40s %10s  %.16s...  %zu chunks\n", f->path, size, hex, f->nchunks);
    }
    keel_pkg_close(p);
    return 0;
}

/* `keel hash FILE...`: SHA-256 as sha256sum prints it, with keel's reader. */
static int cmd_hash(const opts *o)
{
    if (!o->npos)
        return usage_error("usage: keel hash FILE...");
    for (size_t i = 0; i < o->npos; i++) {
        uint8_t d[KEEL_SHA256_LEN];
        char hex[KEEL_SHA256_HEX];
        keel_error e;
        if (keel_sha256_file(o->pos[i], d, NULL, &e))
            return fail(&e);
        keel_hex_encode(d, sizeof(d), hex);
        printf("%s  %s\n", hex, o->pos[i]);
    }
    return 0;
}

/* --- trust -------------------------------------------------------------------------- */

static int read_doc_and_sigs(const char *doc, char **data, size_t *len, keel_sigset *sigs,
                             bool sigs_required, keel_error *e)
{
    char sp[PATH_MAX], *sd = NULL;
    size_t sl;
    int rc = keel__fs_read(doc, 1u << 20, data, len, e);
    if (rc)
        return rc;
    snprintf(sp, sizeof(sp), "%s.sig", doc);
    memset(sigs, 0, sizeof(*sigs));
    if (!sigs_required && !keel__fs_exists(sp))
        return KEEL_OK;
    if ((rc = keel__fs_read(sp, 1u << 20, &sd, &sl, e)) == KEEL_OK)
        rc = keel_sigset_parse(sd, sl, sigs, e);
    free(sd);
    if (rc) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

static int cmd_trust(int argc, char **argv)
{
    opts o;
    keel_error e;
    keel_key *keys[MAX_KEYS] = {0};
    int prc = parse(argc, argv, &o);
    if (prc)
        return prc;
    const char *sub = o.npos ? o.pos[0] : "";
    if (!strcmp(sub, "init")) {
        if (o.npos != 2 || !o.nkeys)
            return usage_error("usage: keel trust init DIR --key PUB [--key PUB]... "
                               "[--threshold N] [--index-key PUB]... [--timestamp-key PUB]...%s",
                               "");
        keel_key *ik[MAX_KEYS] = {0}, *tk[MAX_KEYS] = {0};
        int rc = load_keys(&o, keys, false, &e);
        for (size_t i = 0; !rc && i < o.nindex_keys; i++)
            rc = keel_key_load_public(o.index_keys[i], &ik[i], &e);
        for (size_t i = 0; !rc && i < o.nts_keys; i++)
            rc = keel_key_load_public(o.ts_keys[i], &tk[i], &e);
        if (!rc)
            rc = keel_trust_init_roles(o.pos[1], (const keel_key *const *)keys, o.nkeys,
                                       o.threshold, (const keel_key *const *)ik, o.nindex_keys,
                                       (const keel_key *const *)tk, o.nts_keys, &e);
        free_keys(keys, o.nkeys);
        free_keys(ik, o.nindex_keys);
        free_keys(tk, o.nts_keys);
        if (rc)
            return fail(&e);
        printf("trust root written to %s/root.json\n", o.pos[1]);
        return 0;
    }
    if (!strcmp(sub, "sign")) {
        char *data = NULL, *sj = NULL, sp[PATH_MAX];
        size_t len;
        keel_sigset sigs;
        const char *ctx = o.kind && !strcmp(o.kind, "root")          ? KEEL_SIGCTX_ROOT
                          : o.kind && !strcmp(o.kind, "revocations") ? KEEL_SIGCTX_REVOCATIONS
                                                                     : NULL;
        if (o.npos != 2 || !o.nkeys || !ctx)
            return usage_error("usage: keel trust sign DOC --key K --kind root|revocations%s", "");
        int rc = load_keys(&o, keys, true, &e);
        if (!rc)
            rc = read_doc_and_sigs(o.pos[1], &data, &len, &sigs, false, &e);
        for (size_t i = 0; !rc && i < o.nkeys; i++) {
            uint8_t sig[KEEL_ED25519_SIG_LEN], id[KEEL_KEYID_LEN];
            keel_key_id(keys[i], id);
            if (!(rc = keel_key_sign(keys[i], ctx, data, len, sig, &e)))
                rc = keel_sigset_add(&sigs, id, sig, &e);
        }
        snprintf(sp, sizeof(sp), "%s.sig", o.pos[1]);
        if (!rc && !(rc = keel_sigset_format(&sigs, &sj, &e)))
            rc = keel__fs_write_atomic(sp, sj, strlen(sj), 0644, &e);
        free(sj);
        free(data);
        free_keys(keys, o.nkeys);
        if (rc)
            return fail(&e);
        printf("signatures in %s\n", sp);
        return 0;
    }
    if (!strcmp(sub, "rotate") || !strcmp(sub, "revoke")) {
        char *data = NULL;
        size_t len;
        keel_sigset sigs;
        if (o.npos != 3)
            return usage_error("usage: keel trust rotate|revoke DIR DOC.json (signatures in "
                               "DOC.json.sig)%s",
                               "");
        int rc = read_doc_and_sigs(o.pos[2], &data, &len, &sigs, true, &e);
        if (!rc)
            rc = !strcmp(sub, "rotate") ? keel_trust_rotate(o.pos[1], data, len, &sigs, &e)
                                        : keel_trust_revoke_install(o.pos[1], data, len, &sigs, &e);
        free(data);
        if (rc)
            return fail(&e);
        printf("%s accepted into %s\n", !strcmp(sub, "rotate") ? "new root" : "revocation list",
               o.pos[1]);
        return 0;
    }
    return usage_error("unknown trust command \"%s\" (init, sign, rotate, revoke)", sub);
}

/* --- envelopes ------------------------------------------------------------------------ */

/* keel envelope decode FILE...: one JSON line per message, for receivers
 * and tests (docs/uplink.md has the format). Payloads that are JSON are
 * embedded as is; others as text when printable, else base64. */
static int cmd_envelope(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "decode"))
        return usage_error("usage: keel envelope decode FILE...%s", "");
    int status = 0;
    for (int i = 2; i < argc; i++) {
        char *data = NULL;
        size_t len = 0;
        keel_error e = {0};
        keel__envelope *env = NULL;
        if (keel__fs_read(argv[i], 256u << 20, &data, &len, &e) ||
            keel__envelope_decode(data, len, NULL, &env, &e)) {
            fprintf(stderr, "keel: %s: %s\n", argv[i], e.msg);
            free(data);
            status = 1;
            continue;
        }
        for (size_t k = 0; k < env->n; k++) {
            const keel__sync_msg *m = &env->msgs[k];
            cJSON *o = cJSON_CreateObject(), *pj = NULL;
            cJSON_AddStringToObject(o, "device", env->device);
            cJSON_AddNumberToObject(o, "seq", (double)env->seq);
            cJSON_AddNumberToObject(o, "id", (double)m->id);
            cJSON_AddStringToObject(o, "priority", keel__prio_name(m->priority));
            cJSON_AddNumberToObject(o, "created", (double)m->created);
            cJSON_AddStringToObject(o, "topic", m->topic);
            cJSON_AddStringToObject(o, "content_type", m->content_type);
            if (!keel__json_parse(m->payload, m->len, "payload", &pj, NULL))
                cJSON_AddItemToObject(o, "payload", pj);
            else {
                char *t = keel__strndup(m->payload, m->len);
                cJSON_AddStringToObject(o, "payload_text", t ? t : "");
                free(t);
            }
            char *line = keel__json_print(o);
            printf("%s\n", line ? line : "{}");
            free(line);
            cJSON_Delete(o);
        }
        keel__envelope_free(env);
        free(data);
    }
    return status;
}

/* --- offline device verbs ----------------------------------------------------------- */

static int offline(const char *verb, const opts *o)
{
    keel_store *s = NULL;
    keel_trust *t = NULL;
    keel_error e;
    char tdir[PATH_MAX], *json = NULL;
    int rc;
    if (!o->state_dir)
        return usage_error("--offline needs --state-dir DIR%s", "");
    if ((rc = keel_store_open(o->state_dir, NULL, &s, &e)))
        return fail(&e);
    struct keel__infer *eng = NULL;
    if (keel_cli_validator(s, &eng)) {
        keel_store_close(s);
        return 1;
    }
    if (!strcmp(verb, "install")) {
        keel_install_result r;
        if (o->npos != 1) {
            keel_store_close(s);
            return usage_error("usage: keel install FILE [--activate]%s", "");
        }
        (void)keel_state_path(o->state_dir, KEEL_STATE_TRUST, tdir, sizeof(tdir));
        if (!(rc = keel_trust_load(o->trust ? o->trust : tdir, &t, &e)) &&
            !(rc = keel_store_install(s, o->pos[0], t, o->activate ? KEEL_INSTALL_ACTIVATE : 0, &r,
                                      &e)))
            printf("installed %s %s (%s)%s\n", r.name, r.version, r.digest,
                   r.activated ? ", active" : ", staged");
    } else if (!strcmp(verb, "activate") || !strcmp(verb, "rollback") ||
               !strcmp(verb, "mark-good")) {
        if (o->npos != 1) {
            keel_store_close(s);
            return usage_error("usage: keel %s NAME", verb);
        }
        rc = !strcmp(verb, "activate")   ? keel_store_activate(s, o->pos[0], o->version, &e)
             : !strcmp(verb, "rollback") ? keel_store_rollback(s, o->pos[0], &e)
                                         : keel_store_mark_good(s, o->pos[0], &e);
        if (!rc)
            printf("%s: done\n", o->pos[0]);
    } else if (!strcmp(verb, "status")) {
        bool ready;
        char why[KEEL_ERROR_MSG_MAX];
        if (!(rc = keel_store_resolve_all(s, 0, &ready, why, sizeof(why), &e)) &&
            !(rc = keel_store_status_json(s, &json, &e)))
            printf("%s\n", json);
    } else if (!strcmp(verb, "packages")) {
        if (!(rc = keel_store_list_json(s, &json, &e)))
            printf("%s\n", json);
    } else if (!strcmp(verb, "gc")) {
        uint64_t freed;
        if (!(rc = keel_store_gc(s, &freed, &e)))
            printf("freed %llu bytes\n", (unsigned long long)freed);
    }
    free(json);
    keel_trust_free(t);
    keel_store_set_validator(s, NULL, NULL);
    keel__infer_free(eng);
    keel_store_close(s);
    return rc ? fail(&e) : 0;
}

int main(int argc, char **argv)
{
    opts o;
    int rc;
    keel_log_set_level(KEEL_LOG_WARN);
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "--version") || !strcmp(verb, "version")) {
        printf("keel %s\n", keel_version());
        return 0;
    }
    if (!strcmp(verb, "trust"))
        return cmd_trust(argc - 1, argv + 1);
    if (!strcmp(verb, "publish"))
        return keel_cli_publish(argc - 1, argv + 1);
    if (!strcmp(verb, "rollout"))
        return keel_cli_rollout(argc - 1, argv + 1);
    if (!strcmp(verb, "repo"))
        return keel_cli_repo(argc - 1, argv + 1);
    if (!strcmp(verb, "envelope"))
        return cmd_envelope(argc - 1, argv + 1);
    if (!strcmp(verb, "infer"))
        return keel_cli_infer(argc - 1, argv + 1);
    if (!strcmp(verb, "delta"))
        return keel_cli_delta(argc - 1, argv + 1);
    if (!strcmp(verb, "selftest"))
        return keel_cli_selftest(argc - 1, argv + 1);
    if (!strcmp(verb, "import"))
        return keel_cli_import(argc - 1, argv + 1);
    if (!strcmp(verb, "bundle"))
        return keel_cli_bundle(argc - 1, argv + 1);
    static const char *const client_verbs[] = {"status",    "install",  "activate", "rollback",
                                               "mark-good", "packages", "gc",       "update"};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(client_verbs); i++) {
        if (strcmp(verb, client_verbs[i]))
            continue;
        bool off = false;
        for (int j = 2; j < argc; j++)
            off = off || !strcmp(argv[j], "--offline");
        if (!off)
            return keel_cli_client(verb, argc - 1, argv + 1);
        if ((rc = parse(argc - 1, argv + 1, &o)))
            return rc;
        return offline(verb, &o);
    }
    if ((rc = parse(argc - 1, argv + 1, &o)))
        return rc;
    if (!strcmp(verb, "keygen"))
        return cmd_keygen(&o);
    if (!strcmp(verb, "pack"))
        return cmd_pack(&o);
    if (!strcmp(verb, "lint"))
        return cmd_lint(&o);
    if (!strcmp(verb, "sign"))
        return cmd_sign(&o);
    if (!strcmp(verb, "verify"))
        return cmd_verify(&o);
    if (!strcmp(verb, "inspect"))
        return cmd_inspect(&o);
    if (!strcmp(verb, "hash"))
        return cmd_hash(&o);
    return usage_error("unknown command \"%s\"", verb);
}
