/*
 * trust.c - the device's pinned trust: root document, signing rules,
 * revocations, rotation. See docs/security.md for the model.
 */
#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "keel/crypto.h"
#include "keel/trust.h"

#define TRUST_DOC_MAX     (1u << 20)
#define TRUST_KEYS_MAX    256
#define TRUST_RULES_MAX   256
#define TRUST_REVOKED_MAX 4096
#define PREFIX_MAX        128

typedef struct tkey {
    uint8_t id[KEEL_KEYID_LEN];
    keel_key *key;
} tkey;

typedef struct rule {
    char prefix[PREFIX_MAX];
    size_t nids;
    uint8_t (*ids)[KEEL_KEYID_LEN];
    unsigned threshold;
} rule;

struct keel_trust {
    uint64_t version;
    size_t nkeys;
    tkey *keys;
    rule root;
    rule index, timestamp; /* repository roles; nids == 0: absent (fallback) */
    size_t nrules;
    rule *rules;
    uint64_t rev_serial;
    size_t nrev_keys, nrev_pkgs;
    uint8_t (*rev_keys)[KEEL_KEYID_LEN];
    uint8_t (*rev_pkgs)[KEEL_SHA256_LEN];
};

void keel_trust_free(keel_trust *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nkeys; i++)
        keel_key_free(t->keys[i].key);
    free(t->keys);
    free(t->root.ids);
    free(t->index.ids);
    free(t->timestamp.ids);
    for (size_t i = 0; i < t->nrules; i++)
        free(t->rules[i].ids);
    free(t->rules);
    free(t->rev_keys);
    free(t->rev_pkgs);
    free(t);
}

uint64_t keel_trust_root_version(const keel_trust *t)
{
    return t->version;
}

uint64_t keel_trust_revocation_serial(const keel_trust *t)
{
    return t->rev_serial;
}

static const tkey *find_key(const keel_trust *t, const uint8_t id[KEEL_KEYID_LEN])
{
    for (size_t i = 0; i < t->nkeys; i++)
        if (memcmp(t->keys[i].id, id, KEEL_KEYID_LEN) == 0)
            return &t->keys[i];
    return NULL;
}

static bool is_revoked_key(const keel_trust *t, const uint8_t id[KEEL_KEYID_LEN])
{
    for (size_t i = 0; i < t->nrev_keys; i++)
        if (memcmp(t->rev_keys[i], id, KEEL_KEYID_LEN) == 0)
            return true;
    return false;
}

static bool rule_allows(const rule *r, const uint8_t id[KEEL_KEYID_LEN])
{
    for (size_t i = 0; i < r->nids; i++)
        if (memcmp(r->ids[i], id, KEEL_KEYID_LEN) == 0)
            return true;
    return false;
}

/* Parses a list of key ids that must all be in t->keys. */
static int parse_rule(const keel_trust *t, const cJSON *obj, rule *r, const char *where,
                      keel_error *err)
{
    const cJSON *ids = NULL, *it;
    uint64_t thr = 0;
    size_t n;
    int rc;
    if (!cJSON_IsObject(obj))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    if ((rc = keel__json_member(obj, "keys", cJSON_Array, true, &ids, where, err)) ||
        (rc = keel__json_u64(obj, "threshold", true, &thr, where, err)))
        return rc;
    n = (size_t)cJSON_GetArraySize(ids);
    if (n == 0 || n > TRUST_KEYS_MAX)
        return keel__err(err, KEEL_EINVALID, "%s: \"keys\" must list 1..%d key ids", where,
                         TRUST_KEYS_MAX);
    if (thr < 1 || thr > n)
        return keel__err(err, KEEL_EINVALID,
                         "%s: threshold %llu must be between 1 and the number of keys (%zu)", where,
                         (unsigned long long)thr, n);
    r->ids = calloc(n, sizeof(*r->ids));
    if (!r->ids)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    r->threshold = (unsigned)thr;
    cJSON_ArrayForEach(it, ids)
    {
        uint8_t id[KEEL_KEYID_LEN];
        if (!cJSON_IsString(it) ||
            keel_hex_decode(it->valuestring, strlen(it->valuestring), id, sizeof(id)))
            return keel__err(err, KEEL_EINVALID, "%s: key ids must be 64 hex digits", where);
        if (!find_key(t, id))
            return keel__err(err, KEEL_EINVALID, "%s: key %.16s... is not listed in \"keys\"",
                             where, it->valuestring);
        if (rule_allows(r, id))
            return keel__err(err, KEEL_EINVALID, "%s: key %.16s... listed twice", where,
                             it->valuestring);
        memcpy(r->ids[r->nids++], id, KEEL_KEYID_LEN);
    }
    return KEEL_OK;
}

int keel_trust_from_root(const void *root_json, size_t len, keel_trust **ret, keel_error *err)
{
    const char *what = "root.json";
    cJSON *doc = NULL;
    const cJSON *keys = NULL, *rootrule = NULL, *pkgs = NULL, *it;
    keel_trust *t = NULL;
    int rc;
    if (len > TRUST_DOC_MAX)
        return keel__err(err, KEEL_ETOOBIG, "root.json is larger than %u bytes", TRUST_DOC_MAX);
    if ((rc = keel__json_parse(root_json, len, what, &doc, err)))
        return rc;
    if ((rc = keel__json_doc_header(doc, "keel-root", what, err)))
        goto out;
    t = calloc(1, sizeof(*t));
    if (!t) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = keel__json_u64(doc, "version", true, &t->version, what, err)) ||
        (rc = keel__json_member(doc, "keys", cJSON_Object, true, &keys, what, err)) ||
        (rc = keel__json_member(doc, "root", cJSON_Object, true, &rootrule, what, err)) ||
        (rc = keel__json_member(doc, "packages", cJSON_Array, true, &pkgs, what, err)))
        goto out;
    if (t->version < 1) {
        rc = keel__err(err, KEEL_EINVALID, "%s: version must be >= 1", what);
        goto out;
    }
    size_t nk = (size_t)cJSON_GetArraySize(keys);
    if (nk == 0 || nk > TRUST_KEYS_MAX) {
        rc = keel__err(err, KEEL_EINVALID, "%s: \"keys\" must hold 1..%d keys", what,
                       TRUST_KEYS_MAX);
        goto out;
    }
    t->keys = calloc(nk, sizeof(*t->keys));
    if (!t->keys) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(it, keys)
    {
        char where[128];
        const char *alg = NULL, *pub = NULL;
        uint8_t id[KEEL_KEYID_LEN], raw[KEEL_ED25519_PUB_LEN], calc[KEEL_KEYID_LEN];
        snprintf(where, sizeof(where), "%s: keys[\"%.16s...\"]", what, it->string);
        if (!cJSON_IsObject(it)) {
            rc = keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
            goto out;
        }
        if ((rc = keel__json_str(it, "alg", true, 32, &alg, where, err)) ||
            (rc = keel__json_str(it, "public", true, 64, &pub, where, err)))
            goto out;
        if (strcmp(alg, "ed25519") != 0) {
            rc = keel__err(err, KEEL_EUNSUPPORTED, "%s: algorithm \"%s\" is not supported", where,
                           alg);
            goto out;
        }
        if (keel_hex_decode(it->string, strlen(it->string), id, sizeof(id)) ||
            keel_hex_decode(pub, strlen(pub), raw, sizeof(raw))) {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s: key id and public key must be 64 hex digits each", where);
            goto out;
        }
        keel_sha256_buf(raw, sizeof(raw), calc);
        if (memcmp(calc, id, sizeof(id)) != 0) {
            rc = keel__err(err, KEEL_EINVALID, "%s: key id is not the SHA-256 of its public key",
                           where);
            goto out;
        }
        if (find_key(t, id)) {
            rc = keel__err(err, KEEL_EINVALID, "%s: key listed twice", where);
            goto out;
        }
        if ((rc = keel_key_from_raw(raw, &t->keys[t->nkeys].key, err))) {
            keel__err_prefix(err, "%s", where);
            goto out;
        }
        memcpy(t->keys[t->nkeys].id, id, sizeof(id));
        t->nkeys++;
    }
    if ((rc = parse_rule(t, rootrule, &t->root, "root.json: root", err)))
        goto out;
    for (int k = 0; k < 2; k++) {
        const char *role = k ? "timestamp" : "index";
        const cJSON *rr = NULL;
        char where[64];
        snprintf(where, sizeof(where), "root.json: %s", role);
        if ((rc = keel__json_member(doc, role, cJSON_Object, false, &rr, what, err)))
            goto out;
        if (rr && (rc = parse_rule(t, rr, k ? &t->timestamp : &t->index, where, err)))
            goto out;
    }
    size_t nr = (size_t)cJSON_GetArraySize(pkgs);
    if (nr > TRUST_RULES_MAX) {
        rc = keel__err(err, KEEL_ETOOBIG, "%s: more than %d package rules", what, TRUST_RULES_MAX);
        goto out;
    }
    t->rules = calloc(nr ? nr : 1, sizeof(*t->rules));
    if (!t->rules) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(it, pkgs)
    {
        char where[64];
        const char *prefix = "";
        snprintf(where, sizeof(where), "root.json: packages[%zu]", t->nrules);
        rule *r = &t->rules[t->nrules++];
        if ((rc = parse_rule(t, it, r, where, err)) ||
            (rc = keel__json_str(it, "prefix", false, PREFIX_MAX - 1, &prefix, where, err)))
            goto out;
        keel__strlcpy(r->prefix, prefix, sizeof(r->prefix));
        for (size_t j = 0; j + 1 < t->nrules; j++)
            if (strcmp(t->rules[j].prefix, r->prefix) == 0) {
                rc =
                    keel__err(err, KEEL_EINVALID, "%s: prefix \"%s\" has two rules", where, prefix);
                goto out;
            }
    }
    *ret = t;
    t = NULL;
out:
    keel_trust_free(t);
    cJSON_Delete(doc);
    return rc;
}

/* Counts distinct, valid, unrevoked signatures from keys the rule allows, and
 * describes the others in `notes`. */
static unsigned count_sigs(const keel_trust *t, const rule *r, const char *ctx, const void *msg,
                           size_t len, const keel_sigset *sigs, keel_buf *notes)
{
    unsigned good = 0;
    for (size_t i = 0; i < sigs->count; i++) {
        const keel_signature *s = &sigs->sigs[i];
        char hex[KEEL_SHA256_HEX];
        const tkey *k = find_key(t, s->keyid);
        const char *why = NULL;
        keel_hex_encode(s->keyid, KEEL_KEYID_LEN, hex);
        if (!k)
            why = "unknown key";
        else if (is_revoked_key(t, s->keyid))
            why = "revoked key";
        else if (!rule_allows(r, s->keyid))
            why = strcmp(ctx, KEEL_SIGCTX_INDEX) && strcmp(ctx, KEEL_SIGCTX_TIMESTAMP)
                      ? "key not allowed for this name"
                      : "key not allowed for this role";
        else if (!keel_key_verify(k->key, ctx, msg, len, s->sig))
            why = "invalid signature (the signed bytes were changed, or the wrong key)";
        if (!why) {
            good++;
        } else if (keel__buf_appendf(notes, "; %.16s...: %s", hex, why)) {
            /* notes are bounded; a long list is cut, the count is not */
        }
    }
    return good;
}

static const rule *match_rule(const keel_trust *t, const char *name)
{
    const rule *best = NULL;
    for (size_t i = 0; i < t->nrules; i++) {
        size_t pl = strlen(t->rules[i].prefix);
        if (strncmp(name, t->rules[i].prefix, pl) == 0 && (!best || pl > strlen(best->prefix)))
            best = &t->rules[i];
    }
    return best;
}

static int threshold_result(unsigned good, unsigned need, const keel_sigset *sigs, keel_buf *notes,
                            const char *what, keel_error *err)
{
    if (good >= need)
        return KEEL_OK;
    if (sigs->count == 0)
        return keel__err(err, KEEL_EUNTRUSTED,
                         "%s is not signed (needs %u valid signature%s; sign it with `keel "
                         "sign`)",
                         what, need, need == 1 ? "" : "s");
    /* An invalid signature by a known, allowed key is tampering: BADSIG. */
    bool bad = notes->data && strstr(notes->data, "invalid signature");
    return keel__err(err, bad ? KEEL_EBADSIG : KEEL_EUNTRUSTED,
                     "%s has %u valid signature%s of %u needed%s", what, good, good == 1 ? "" : "s",
                     need, notes->data ? notes->data : "");
}

int keel_trust_check_package(const keel_trust *t, const char *name, const void *manifest,
                             size_t len, const keel_sigset *sigs, keel_error *err)
{
    uint8_t digest[KEEL_SHA256_LEN];
    char what[200];
    keel_buf notes;
    int rc;
    const rule *r = match_rule(t, name);
    if (!r)
        return keel__err(err, KEEL_EUNTRUSTED,
                         "no trust rule covers package name \"%s\" (root.json \"packages\" "
                         "lists the name prefixes this device accepts)",
                         name);
    keel_sha256_buf(manifest, len, digest);
    for (size_t i = 0; i < t->nrev_pkgs; i++)
        if (memcmp(t->rev_pkgs[i], digest, KEEL_SHA256_LEN) == 0)
            return keel__err(err, KEEL_EUNTRUSTED,
                             "package \"%s\" (this exact build) has been revoked", name);
    keel__buf_init(&notes, 4096);
    unsigned good = count_sigs(t, r, KEEL_SIGCTX_PACKAGE, manifest, len, sigs, &notes);
    snprintf(what, sizeof(what), "package \"%s\"", name);
    rc = threshold_result(good, r->threshold, sigs, &notes, what, err);
    keel__buf_done(&notes);
    return rc;
}

static void err_append(keel_error *err, const char *fmt, ...) KEEL_PRINTF(2, 3);

static const rule *role_rule(const keel_trust *t, keel_trust_role role)
{
    if (role == KEEL_ROLE_TIMESTAMP && t->timestamp.nids)
        return &t->timestamp;
    return t->index.nids ? &t->index : &t->root;
}

bool keel_trust_has_role(const keel_trust *t, keel_trust_role role)
{
    return role == KEEL_ROLE_TIMESTAMP ? t->timestamp.nids > 0
           : role == KEEL_ROLE_INDEX   ? t->index.nids > 0
                                       : false;
}

int keel_trust_check_doc(const keel_trust *t, keel_trust_role role, const char *context,
                         const char *what, const void *doc, size_t len, const keel_sigset *sigs,
                         keel_error *err)
{
    keel_buf notes;
    int rc;
    if (role != KEEL_ROLE_INDEX && role != KEEL_ROLE_TIMESTAMP)
        return keel__err(err, KEEL_EINVALID, "unknown trust role %d", (int)role);
    const rule *r = role_rule(t, role);
    keel__buf_init(&notes, 4096);
    unsigned good = count_sigs(t, r, context, doc, len, sigs, &notes);
    rc = threshold_result(good, r->threshold, sigs, &notes, what, err);
    keel__buf_done(&notes);
    if (rc)
        err_append(err, " (the %s rule of root.json%s decides; sign with the %s key)",
                   r == &t->root    ? "root"
                   : r == &t->index ? "index"
                                    : "timestamp",
                   r == &t->root || (role == KEEL_ROLE_TIMESTAMP && r == &t->index)
                       ? ", standing in for an absent role"
                       : "",
                   role == KEEL_ROLE_TIMESTAMP ? "timestamp" : "index");
    return rc;
}

static int read_doc(const char *dir, const char *file, bool required, char **ret, size_t *len,
                    keel_error *err)
{
    char path[PATH_MAX];
    if (keel__snprintf(path, sizeof(path), "%s/%s", dir, file))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", dir);
    if (!required && !keel__fs_exists(path)) {
        *ret = NULL;
        *len = 0;
        return KEEL_OK;
    }
    return keel__fs_read(path, TRUST_DOC_MAX, ret, len, err);
}

/* Parses a revocation document and checks its signatures against t's root. */
static int apply_revocations(keel_trust *t, const char *doc, size_t len, const keel_sigset *sigs,
                             keel_error *err)
{
    const char *what = "revoked.json";
    cJSON *root = NULL;
    const cJSON *keys = NULL, *pkgs = NULL, *it;
    uint64_t serial = 0;
    keel_buf notes;
    int rc = keel__json_parse(doc, len, what, &root, err);
    keel__buf_init(&notes, 4096);
    if (rc)
        return rc;
    if ((rc = keel__json_doc_header(root, "keel-revocations", what, err)) ||
        (rc = keel__json_u64(root, "serial", true, &serial, what, err)) ||
        (rc = keel__json_member(root, "keys", cJSON_Array, false, &keys, what, err)) ||
        (rc = keel__json_member(root, "packages", cJSON_Array, false, &pkgs, what, err)))
        goto out;
    unsigned good = count_sigs(t, &t->root, KEEL_SIGCTX_REVOCATIONS, doc, len, sigs, &notes);
    if ((rc = threshold_result(good, t->root.threshold, sigs, &notes, "revocation list", err)))
        goto out;
    size_t nk = keys ? (size_t)cJSON_GetArraySize(keys) : 0;
    size_t np = pkgs ? (size_t)cJSON_GetArraySize(pkgs) : 0;
    if (nk > TRUST_REVOKED_MAX || np > TRUST_REVOKED_MAX) {
        rc = keel__err(err, KEEL_ETOOBIG, "%s: more than %d entries", what, TRUST_REVOKED_MAX);
        goto out;
    }
    uint8_t(*rk)[KEEL_KEYID_LEN] = calloc(nk + 1, KEEL_KEYID_LEN);
    uint8_t(*rp)[KEEL_SHA256_LEN] = calloc(np + 1, KEEL_SHA256_LEN);
    if (!rk || !rp) {
        free(rk);
        free(rp);
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    size_t i = 0;
    cJSON_ArrayForEach(it, keys)
    {
        if (!cJSON_IsString(it) ||
            keel_hex_decode(it->valuestring, strlen(it->valuestring), rk[i++], KEEL_KEYID_LEN)) {
            rc = keel__err(err, KEEL_EINVALID, "%s: keys[%zu] must be 64 hex digits", what, i - 1);
            break;
        }
    }
    i = 0;
    cJSON_ArrayForEach(it, pkgs)
    {
        const char *s = cJSON_IsString(it) ? it->valuestring : "";
        if (strncmp(s, "sha256:", 7) != 0 ||
            keel_hex_decode(s + 7, strlen(s + 7), rp[i++], KEEL_SHA256_LEN)) {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s: packages[%zu] must be a \"sha256:<64 hex>\" package digest", what,
                           i - 1);
            break;
        }
    }
    if (rc) {
        free(rk);
        free(rp);
        goto out;
    }
    free(t->rev_keys);
    free(t->rev_pkgs);
    t->rev_keys = rk;
    t->rev_pkgs = rp;
    t->nrev_keys = nk;
    t->nrev_pkgs = np;
    t->rev_serial = serial;
out:
    keel__buf_done(&notes);
    cJSON_Delete(root);
    return rc;
}

static int read_sigs(const char *dir, const char *file, keel_sigset *sigs, keel_error *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = read_doc(dir, file, true, &data, &len, err);
    if (!rc)
        rc = keel_sigset_parse(data, len, sigs, err);
    free(data);
    return rc ? keel__err_prefix(err, "%s/%s", dir, file) : KEEL_OK;
}

static int load_prev_revocations(keel_trust *t, const char *dir, keel_error *err)
{
    char *doc = NULL;
    size_t len = 0;
    keel_sigset sigs;
    int rc = read_doc(dir, "revoked.json.prev", false, &doc, &len, err);
    if (!rc && !doc)
        rc = keel__err(err, KEEL_ENOTFOUND, "no previous revocation list");
    if (!rc)
        rc = read_sigs(dir, "revoked.sig.prev", &sigs, err);
    if (!rc)
        rc = apply_revocations(t, doc, len, &sigs, err);
    free(doc);
    return rc;
}

/* Adds what to do to the message in err. */
static void err_append(keel_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    size_t n = strlen(err->msg);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg + n, sizeof(err->msg) - n, fmt, ap);
    va_end(ap);
}

int keel_trust_load(const char *dir, keel_trust **ret, keel_error *err)
{
    char *root = NULL, *rev = NULL;
    size_t rlen = 0, vlen = 0;
    keel_trust *t = NULL;
    int rc = read_doc(dir, "root.json", true, &root, &rlen, err);
    if (rc) {
        if (rc == KEEL_ENOTFOUND)
            keel__err(err, rc,
                      "no trust root: %s/root.json does not exist (create one with `keel trust "
                      "init %s --key ROOT.pub`)",
                      dir, dir);
        goto out;
    }
    if ((rc = keel_trust_from_root(root, rlen, &t, err))) {
        keel__err_prefix(err, "%s", dir);
        err_append(err, "; put back the root.json this device was given (it changes only through "
                        "`keel trust rotate`)");
        goto out;
    }
    if ((rc = read_doc(dir, "revoked.json", false, &rev, &vlen, err)))
        goto out;
    if (rev) {
        keel_sigset sigs;
        if ((rc = read_sigs(dir, "revoked.sig", &sigs, err)) ||
            (rc = apply_revocations(t, rev, vlen, &sigs, err))) {
            /* An update of the list interrupted between its two files leaves
             * the previous pair beside them (write_doc_pair): use it. */
            keel_error pe;
            if (load_prev_revocations(t, dir, &pe) == KEEL_OK) {
                KEEL_LOG_W("trust",
                           "%s/revoked.json does not verify (%s); an update was interrupted: "
                           "using the previous list, serial %llu",
                           dir, err ? err->msg : "", (unsigned long long)t->rev_serial);
                rc = KEEL_OK;
            } else {
                keel__err_prefix(err,
                                 "%s (refusing every package until the revocation list is "
                                 "valid)",
                                 dir);
                err_append(err, "; put back the revoked.json and revoked.sig last installed "
                                "with `keel trust revoke`, as a pair");
                goto out;
            }
        }
    }
    *ret = t;
    t = NULL;
out:
    keel_trust_free(t);
    free(root);
    free(rev);
    return rc;
}

static int write_doc_pair(const char *dir, const char *doc_name, const void *doc, size_t len,
                          const char *sig_name, const keel_sigset *sigs, keel_error *err)
{
    char *sj = NULL;
    int rc;
    char doc_path[PATH_MAX], sig_path[PATH_MAX], doc_prev[PATH_MAX], sig_prev[PATH_MAX];
    if ((rc = keel_sigset_format(sigs, &sj, err)))
        return rc;
    if (keel__snprintf(doc_path, sizeof(doc_path), "%s/%s", dir, doc_name) ||
        keel__snprintf(sig_path, sizeof(sig_path), "%s/%s", dir, sig_name) ||
        keel__snprintf(doc_prev, sizeof(doc_prev), "%s.prev", doc_path) ||
        keel__snprintf(sig_prev, sizeof(sig_prev), "%s.prev", sig_path)) {
        free(sj);
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", dir);
    }
    /* Two files cannot be replaced in one step. Keep the current pair as
     * *.prev (hard links) until both new files are in place: a crash in
     * between leaves a pair that verifies, and the loader falls back to it. */
    unlink(doc_prev);
    unlink(sig_prev);
    bool kept = link(doc_path, doc_prev) == 0 && link(sig_path, sig_prev) == 0;
    if (kept)
        rc = keel__fs_fsync_dir(dir, err);
    if (!rc)
        rc = keel__fs_write_atomic(sig_path, sj, strlen(sj), 0644, err);
    if (!rc)
        rc = keel__fs_write_atomic(doc_path, doc, len, 0644, err);
    if (!rc) {
        unlink(doc_prev);
        unlink(sig_prev);
    }
    free(sj);
    return rc;
}

int keel_trust_rotate(const char *dir, const void *new_root, size_t len, const keel_sigset *sigs,
                      keel_error *err)
{
    keel_trust *cur = NULL, *next = NULL;
    keel_buf notes;
    int rc;
    keel__buf_init(&notes, 4096);
    if ((rc = keel_trust_load(dir, &cur, err)))
        goto out;
    if ((rc = keel_trust_from_root(new_root, len, &next, err))) {
        keel__err_prefix(err, "new root");
        goto out;
    }
    if (next->version <= cur->version) {
        rc = keel__err(err, KEEL_EDOWNGRADE,
                       "new root version %llu is not higher than the current %llu",
                       (unsigned long long)next->version, (unsigned long long)cur->version);
        goto out;
    }
    unsigned good = count_sigs(cur, &cur->root, KEEL_SIGCTX_ROOT, new_root, len, sigs, &notes);
    if ((rc = threshold_result(good, cur->root.threshold, sigs, &notes,
                               "new root (by the current root keys)", err)))
        goto out;
    notes.len = 0;
    if (notes.data)
        notes.data[0] = '\0';
    good = count_sigs(next, &next->root, KEEL_SIGCTX_ROOT, new_root, len, sigs, &notes);
    if ((rc = threshold_result(good, next->root.threshold, sigs, &notes,
                               "new root (by its own root keys)", err)))
        goto out;
    if (cur->rev_keys) {
        /* The list is checked against the root at every load: rotating to
         * keys that did not sign it would make the device refuse everything. */
        char *rev = NULL;
        size_t rlen = 0;
        keel_sigset rsigs;
        keel_error re;
        int vr = read_doc(dir, "revoked.json", true, &rev, &rlen, &re);
        if (!vr)
            vr = read_sigs(dir, "revoked.sig", &rsigs, &re);
        if (!vr)
            vr = apply_revocations(next, rev, rlen, &rsigs, &re);
        free(rev);
        if (vr) {
            rc = keel__err(err, KEEL_ECONFLICT,
                           "the installed revocation list (serial %llu) is not signed by the new "
                           "root's keys (%s): sign a list with a higher serial by both the "
                           "current and the new root keys, install it with `keel trust revoke`, "
                           "then rotate",
                           (unsigned long long)cur->rev_serial, re.msg);
            goto out;
        }
    }
    rc = write_doc_pair(dir, "root.json", new_root, len, "root.sig", sigs, err);
out:
    keel__buf_done(&notes);
    keel_trust_free(cur);
    keel_trust_free(next);
    return rc;
}

int keel_trust_revoke_install(const char *dir, const void *revoked_json, size_t len,
                              const keel_sigset *sigs, keel_error *err)
{
    keel_trust *t = NULL;
    int rc = keel_trust_load(dir, &t, err);
    if (rc)
        return rc;
    uint64_t old = t->rev_serial;
    bool had = t->rev_keys != NULL;
    if ((rc = apply_revocations(t, revoked_json, len, sigs, err)))
        goto out;
    if (had && t->rev_serial <= old) {
        rc = keel__err(err, KEEL_EDOWNGRADE,
                       "revocation list serial %llu is not higher than the installed %llu",
                       (unsigned long long)t->rev_serial, (unsigned long long)old);
        goto out;
    }
    rc = write_doc_pair(dir, "revoked.json", revoked_json, len, "revoked.sig", sigs, err);
out:
    keel_trust_free(t);
    return rc;
}

static int key_listed(const keel_key *const *keys, size_t n, const keel_key *k)
{
    uint8_t a[KEEL_KEYID_LEN], b[KEEL_KEYID_LEN];
    keel_key_id(k, a);
    for (size_t i = 0; i < n; i++) {
        keel_key_id(keys[i], b);
        if (!memcmp(a, b, sizeof(a)))
            return 1;
    }
    return 0;
}

static int append_ids(keel_buf *b, const keel_key *const *keys, size_t n)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        char id[KEEL_SHA256_HEX];
        keel_key_id_hex(keys[i], id);
        rc = keel__buf_appendf(b, "%s\"%s\"", i ? ", " : "", id);
    }
    return rc;
}

int keel_trust_init(const char *dir, const keel_key *const *keys, size_t nkeys, unsigned threshold,
                    keel_error *err)
{
    return keel_trust_init_roles(dir, keys, nkeys, threshold, NULL, 0, NULL, 0, err);
}

int keel_trust_init_roles(const char *dir, const keel_key *const *keys, size_t nkeys,
                          unsigned threshold, const keel_key *const *index_keys, size_t nindex,
                          const keel_key *const *timestamp_keys, size_t ntimestamp, keel_error *err)
{
    char path[PATH_MAX];
    keel_buf b, ids;
    int rc;
    const keel_key *all[3 * 256];
    size_t nall = 0;
    if (nkeys == 0 || threshold < 1 || threshold > nkeys)
        return keel__err(err, KEEL_EINVALID,
                         "threshold %u must be between 1 and the number of keys (%zu)", threshold,
                         nkeys);
    if (nkeys > 256 || nindex > 256 || ntimestamp > 256)
        return keel__err(err, KEEL_ETOOBIG, "at most 256 keys per role");
    for (size_t i = 0; i < nkeys + nindex + ntimestamp; i++) {
        const keel_key *k = i < nkeys            ? keys[i]
                            : i < nkeys + nindex ? index_keys[i - nkeys]
                                                 : timestamp_keys[i - nkeys - nindex];
        if (!key_listed(all, nall, k))
            all[nall++] = k;
    }
    if ((rc = keel__fs_mkdir_p(dir, 0755, err)))
        return rc;
    if (keel__snprintf(path, sizeof(path), "%s/root.json", dir))
        return keel__err(err, KEEL_ETOOBIG, "path too long: %s", dir);
    if (keel__fs_exists(path))
        return keel__err(err, KEEL_EEXISTS,
                         "%s already exists; rotate roots with `keel trust rotate` instead", path);
    keel__buf_init(&b, 0);
    keel__buf_init(&ids, 0);
    rc = keel__buf_appendf(&b, "{\n  \"format\": 1,\n  \"type\": \"keel-root\",\n"
                               "  \"version\": 1,\n  \"keys\": {");
    for (size_t i = 0; !rc && i < nall; i++) {
        char id[KEEL_SHA256_HEX], pub[KEEL_SHA256_HEX];
        uint8_t raw[KEEL_ED25519_PUB_LEN];
        keel_key_id_hex(all[i], id);
        keel_key_raw_public(all[i], raw);
        keel_hex_encode(raw, sizeof(raw), pub);
        rc = keel__buf_appendf(&b, "%s\n    \"%s\": {\"alg\": \"ed25519\", \"public\": \"%s\"}",
                               i ? "," : "", id, pub);
    }
    if (!rc)
        rc = append_ids(&ids, keys, nkeys);
    if (!rc)
        rc = keel__buf_appendf(&b,
                               "\n  },\n  \"root\": {\"keys\": [%s], \"threshold\": %u},\n"
                               "  \"packages\": [\n    {\"prefix\": \"\", \"keys\": [%s], "
                               "\"threshold\": %u}\n  ]",
                               ids.data, threshold, ids.data, threshold);
    for (int k = 0; !rc && k < 2; k++) {
        const keel_key *const *rk = k ? timestamp_keys : index_keys;
        size_t n = k ? ntimestamp : nindex;
        if (!n)
            continue;
        ids.len = 0;
        ids.data[0] = '\0';
        rc = append_ids(&ids, rk, n);
        if (!rc)
            rc = keel__buf_appendf(&b, ",\n  \"%s\": {\"keys\": [%s], \"threshold\": 1}",
                                   k ? "timestamp" : "index", ids.data);
    }
    if (!rc)
        rc = keel__buf_appendf(&b, "\n}\n");
    if (rc)
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
    else
        rc = keel__fs_write_atomic(path, b.data, b.len, 0644, err);
    keel__buf_done(&b);
    keel__buf_done(&ids);
    return rc;
}
