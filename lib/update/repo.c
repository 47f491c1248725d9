/*
 * repo.c - repository metadata: timestamp.json and index.json parsed within
 * fixed bounds, checked against the trust's roles and against what this
 * device accepted before, and the staged-rollout rule that picks what a
 * channel offers a device. Formats and rules: docs/update.md, "Repository".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "keel/crypto.h"
#include "keel/pkg.h"
#include "pkg/pkg_internal.h"
#include "update/repo.h"

typedef struct rver {
    char version[KEEL_VERSION_MAX];
    char digest[72];
    uint64_t manifest_size;
    bool pulled;
    keel__repo_patch *patches;
    size_t npatches;
} rver;

typedef struct rchan {
    char name[KEEL__REPO_CHANNEL_LEN];
    char version[KEEL_VERSION_MAX];
    char base[KEEL_VERSION_MAX]; /* "" when absent */
    unsigned rollout_bp;         /* rollout percent * 100: 0..10000 */
    bool halted;
} rchan;

typedef struct rpkg {
    char name[KEEL_NAME_MAX];
    rver *versions;
    size_t nversions;
    rchan *channels;
    size_t nchannels;
} rpkg;

struct keel__repo_index {
    uint64_t version;
    int64_t expires;
    rpkg *pkgs;
    size_t npkgs;
};

/* --- small checks ---------------------------------------------------------- */

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (size_t i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool channel_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= KEEL__REPO_CHANNEL_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned mp = m > 2 ? m - 3 : m + 9;
    unsigned doy = (153 * mp + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int keel__repo_time_parse(const char *s, int64_t *ret)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    unsigned v[6] = {0}, k = 0;
    if (strlen(s) != sizeof(shape) - 1)
        return KEEL_EINVALID;
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd') {
            if (s[i] < '0' || s[i] > '9')
                return KEEL_EINVALID;
        } else if (s[i] != shape[i]) {
            return KEEL_EINVALID;
        }
    }
    static const unsigned at[6] = {0, 5, 8, 11, 14, 17}, width[6] = {4, 2, 2, 2, 2, 2};
    for (k = 0; k < 6; k++)
        for (unsigned j = 0; j < width[k]; j++)
            v[k] = v[k] * 10 + (unsigned)(s[at[k] + j] - '0');
    static const unsigned mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (v[0] < 1970 || v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > mdays[v[1] - 1] || v[3] > 23 ||
        v[4] > 59 || v[5] > 59)
        return KEEL_EINVALID;
    bool leap = (v[0] % 4 == 0 && v[0] % 100 != 0) || v[0] % 400 == 0;
    if (v[1] == 2 && v[2] == 29 && !leap)
        return KEEL_EINVALID;
    *ret = days_from_civil(v[0], v[1], v[2]) * 86400 + v[3] * 3600 + v[4] * 60 + v[5];
    return KEEL_OK;
}

void keel__repo_time_format(int64_t t, char out[21])
{
    keel__format_rfc3339(t, out, 21);
}

static int get_time(const cJSON *obj, const char *key, int64_t *ret, const char *where,
                    keel_error *err)
{
    const char *s = NULL;
    int rc = keel__json_str(obj, key, true, 32, &s, where, err);
    if (rc)
        return rc;
    if (keel__repo_time_parse(s, ret))
        return keel__err(err, KEEL_EINVALID,
                         "%s: \"%s\" must be an RFC 3339 UTC time like \"2026-12-05T00:00:00Z\"",
                         where, key);
    return KEEL_OK;
}

static int get_bool(const cJSON *obj, const char *key, bool *ret, const char *where,
                    keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return KEEL_OK;
    if (!cJSON_IsBool(v))
        return keel__err(err, KEEL_EINVALID, "%s: \"%s\" must be true or false", where, key);
    *ret = cJSON_IsTrue(v);
    return KEEL_OK;
}

/* "sha256:<64 hex>" into hex (65 bytes). */
static int get_sha_ref(const cJSON *obj, const char *key, char *hex, const char *where,
                       keel_error *err)
{
    const char *s = NULL;
    int rc = keel__json_str(obj, key, true, 71, &s, where, err);
    if (rc)
        return rc;
    if (strncmp(s, "sha256:", 7) != 0 || !is_hex64(s + 7))
        return keel__err(err, KEEL_EINVALID,
                         "%s: \"%s\" must be \"sha256:\" and 64 lower-case hex digits", where, key);
    memcpy(hex, s + 7, 65);
    return KEEL_OK;
}

static int get_hex(const cJSON *obj, const char *key, char *hex, const char *where, keel_error *err)
{
    const char *s = NULL;
    int rc = keel__json_str(obj, key, true, 64, &s, where, err);
    if (rc)
        return rc;
    if (!is_hex64(s))
        return keel__err(err, KEEL_EINVALID, "%s: \"%s\" must be 64 lower-case hex digits", where,
                         key);
    memcpy(hex, s, 65);
    return KEEL_OK;
}

static int check_header(const cJSON *doc, const char *type, const char *what, uint64_t *version,
                        int64_t *expires, keel_error *err)
{
    int rc = keel__json_doc_header(doc, type, what, err);
    if (!rc && !(rc = keel__json_u64(doc, "version", true, version, what, err)))
        rc = get_time(doc, "expires", expires, what, err);
    return rc;
}

/* --- timestamp.json ---------------------------------------------------------- */

int keel__repo_timestamp_parse_doc(const void *doc, size_t len, keel__repo_timestamp *ret,
                                   keel_error *err)
{
    const char *what = "timestamp.json";
    cJSON *root = NULL;
    const cJSON *ix = NULL;
    keel__repo_timestamp ts;
    int rc;
    memset(&ts, 0, sizeof(ts));
    if (len > KEEL__REPO_TIMESTAMP_MAX)
        return keel__err(err, KEEL_ETOOBIG,
                         "timestamp.json is larger than %u bytes: not a keel repository's",
                         KEEL__REPO_TIMESTAMP_MAX);
    if ((rc = keel__json_parse(doc, len, what, &root, err)))
        return rc;
    if ((rc = check_header(root, "keel-timestamp", what, &ts.version, &ts.expires, err)) ||
        (rc = keel__json_member(root, "index", cJSON_Object, true, &ix, what, err)) ||
        (rc = keel__json_u64(ix, "version", true, &ts.index_version, "timestamp.json: index",
                             err)) ||
        (rc = keel__json_u64(ix, "size", true, &ts.index_size, "timestamp.json: index", err)) ||
        (rc = get_hex(ix, "sha256", ts.index_sha256, "timestamp.json: index", err)))
        goto out;
    if (ts.index_version < 1 || ts.index_size < 1 || ts.index_size > KEEL__REPO_INDEX_MAX) {
        rc = keel__err(err, KEEL_EINVALID,
                       "timestamp.json: index: \"version\" must be >= 1 and \"size\" 1..%u",
                       KEEL__REPO_INDEX_MAX);
        goto out;
    }
    *ret = ts;
out:
    cJSON_Delete(root);
    return rc;
}

static int check_sigs(const keel_trust *t, keel_trust_role role, const char *ctx, const char *what,
                      const void *doc, size_t len, const void *sig, size_t sig_len, keel_error *err)
{
    keel_sigset sigs;
    char sigfile[64];
    snprintf(sigfile, sizeof(sigfile), "%s",
             role == KEEL_ROLE_INDEX ? "index.sig" : "timestamp.sig");
    if (sig_len > KEEL__REPO_SIG_MAX)
        return keel__err(err, KEEL_ETOOBIG, "%s is larger than %u bytes", sigfile,
                         KEEL__REPO_SIG_MAX);
    if (keel_sigset_parse(sig, sig_len, &sigs, err))
        return keel__err_prefix(err, "%s", sigfile);
    return keel_trust_check_doc(t, role, ctx, what, doc, len, &sigs, err);
}

static int stale(const char *what, int64_t expires, int64_t now, keel_error *err)
{
    char e[21], n[21];
    keel__repo_time_format(expires, e);
    keel__repo_time_format(now, n);
    return keel__err(err, KEEL_EUNTRUSTED,
                     "%s is stale: it expired at %s and the time is %s (the repository or a "
                     "mirror serves frozen metadata; the publisher must re-sign it, e.g. `keel "
                     "repo timestamp`; or this device's clock is wrong)",
                     what, e, n);
}

int keel__repo_check_timestamp(const keel_trust *t, const void *doc, size_t len, const void *sig,
                               size_t sig_len, const keel__repo_state *st, int64_t now,
                               keel__repo_timestamp *ret, keel_error *err)
{
    keel__repo_timestamp ts;
    int rc;
    if (len > KEEL__REPO_TIMESTAMP_MAX)
        return keel__err(err, KEEL_ETOOBIG, "timestamp.json is larger than %u bytes",
                         KEEL__REPO_TIMESTAMP_MAX);
    if ((rc = check_sigs(t, KEEL_ROLE_TIMESTAMP, KEEL_SIGCTX_TIMESTAMP, "timestamp.json", doc, len,
                         sig, sig_len, err)) ||
        (rc = keel__repo_timestamp_parse_doc(doc, len, &ts, err)))
        return rc;
    if (st && ts.version < st->timestamp_version)
        return keel__err(err, KEEL_EDOWNGRADE,
                         "timestamp.json version %llu is below %llu, accepted before: replayed or "
                         "rolled-back repository metadata (a mirror serves an old copy)",
                         (unsigned long long)ts.version, (unsigned long long)st->timestamp_version);
    if (st && ts.index_version < st->index_version)
        return keel__err(err, KEEL_EDOWNGRADE,
                         "timestamp.json names index version %llu, below %llu accepted before: "
                         "replayed or rolled-back repository metadata",
                         (unsigned long long)ts.index_version,
                         (unsigned long long)st->index_version);
    if (now > 0 && ts.expires <= now)
        return stale("timestamp.json", ts.expires, now, err);
    *ret = ts;
    return KEEL_OK;
}

/* --- index.json ------------------------------------------------------------------- */

void keel__repo_index_free(keel__repo_index *ix)
{
    if (!ix)
        return;
    for (size_t i = 0; i < ix->npkgs; i++) {
        for (size_t j = 0; j < ix->pkgs[i].nversions; j++)
            free(ix->pkgs[i].versions[j].patches);
        free(ix->pkgs[i].versions);
        free(ix->pkgs[i].channels);
    }
    free(ix->pkgs);
    free(ix);
}

uint64_t keel__repo_index_version(const keel__repo_index *ix)
{
    return ix->version;
}

int64_t keel__repo_index_expires(const keel__repo_index *ix)
{
    return ix->expires;
}

static size_t nmembers(const cJSON *o)
{
    size_t n = 0;
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next)
        n++;
    return n;
}

static const rver *find_version(const rpkg *p, const char *v)
{
    for (size_t i = 0; i < p->nversions; i++)
        if (!strcmp(p->versions[i].version, v))
            return &p->versions[i];
    return NULL;
}

static int parse_patches(const cJSON *arr, rver *v, const char *where, keel_error *err)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    const cJSON *it;
    int rc;
    if (n > KEEL__REPO_PATCHES_MAX)
        return keel__err(err, KEEL_ETOOBIG, "%s: more than %d patches", where,
                         KEEL__REPO_PATCHES_MAX);
    if (!n)
        return KEEL_OK;
    v->patches = calloc(n, sizeof(*v->patches));
    if (!v->patches)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    cJSON_ArrayForEach(it, arr)
    {
        char w[256];
        const char *codec = NULL;
        keel__repo_patch *p = &v->patches[v->npatches];
        snprintf(w, sizeof(w), "%s[%zu]", where, v->npatches);
        if (!cJSON_IsObject(it))
            return keel__err(err, KEEL_EINVALID, "%s: expected an object", w);
        if ((rc = get_sha_ref(it, "from", p->from, w, err)) ||
            (rc = get_sha_ref(it, "to", p->to, w, err)) ||
            (rc = get_hex(it, "sha256", p->sha256, w, err)) ||
            (rc = keel__json_u64(it, "size", true, &p->size, w, err)) ||
            (rc = keel__json_str(it, "codec", true, sizeof(p->codec) - 1, &codec, w, err)))
            return rc;
        if (p->size < 1 || p->size > (1ull << 50))
            return keel__err(err, KEEL_EINVALID, "%s: \"size\" must be 1..2^50", w);
        if (!codec[0])
            return keel__err(err, KEEL_EINVALID, "%s: \"codec\" is empty", w);
        if (!strcmp(p->from, p->to))
            return keel__err(err, KEEL_EINVALID,
                             "%s: \"from\" and \"to\" are the same file (identical files never "
                             "get a patch)",
                             w);
        keel__strlcpy(p->codec, codec, sizeof(p->codec));
        v->npatches++;
    }
    return KEEL_OK;
}

static int parse_version(const cJSON *o, rver *v, const char *where, keel_error *err)
{
    const cJSON *patches = NULL;
    char hex[65];
    int rc;
    if (!cJSON_IsObject(o))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    if ((rc = get_sha_ref(o, "digest", hex, where, err)) ||
        (rc = keel__json_u64(o, "manifest_size", true, &v->manifest_size, where, err)) ||
        (rc = get_bool(o, "pulled", &v->pulled, where, err)) ||
        (rc = keel__json_member(o, "patches", cJSON_Array, false, &patches, where, err)))
        return rc;
    if (v->manifest_size < 1 || v->manifest_size > (1u << 30))
        return keel__err(err, KEEL_EINVALID, "%s: \"manifest_size\" must be 1..2^30", where);
    snprintf(v->digest, sizeof(v->digest), "sha256:%s", hex);
    if (patches) {
        char w[200];
        snprintf(w, sizeof(w), "%s.patches", where);
        return parse_patches(patches, v, w, err);
    }
    return KEEL_OK;
}

/* rollout: a number 0..100 with at most two decimals, as basis points. */
static int get_rollout(const cJSON *o, unsigned *ret, const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "rollout");
    if (!v)
        return keel__err(err, KEEL_EINVALID,
                         "%s: \"rollout\" is missing (a percent 0..100 of devices to offer "
                         "\"version\")",
                         where);
    double bp = cJSON_IsNumber(v) ? v->valuedouble * 100.0 : -1;
    if (!cJSON_IsNumber(v) || !(bp >= 0 && bp <= 10000.0) || fabs(bp - round(bp)) > 1e-6)
        return keel__err(err, KEEL_EINVALID,
                         "%s: \"rollout\" must be a percent 0..100 with at most two decimals",
                         where);
    *ret = (unsigned)llround(bp);
    return KEEL_OK;
}

static int parse_channel(const cJSON *o, const rpkg *p, rchan *c, const char *where,
                         keel_error *err)
{
    const char *ver = NULL, *base = NULL;
    int rc;
    if (!cJSON_IsObject(o))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    if ((rc = keel__json_str(o, "version", true, KEEL_VERSION_MAX - 1, &ver, where, err)) ||
        (rc = keel__json_str(o, "base", false, KEEL_VERSION_MAX - 1, &base, where, err)) ||
        (rc = get_rollout(o, &c->rollout_bp, where, err)) ||
        (rc = get_bool(o, "halted", &c->halted, where, err)))
        return rc;
    if (!find_version(p, ver))
        return keel__err(err, KEEL_EINVALID,
                         "%s: \"version\" \"%s\" is not among the package's \"versions\"", where,
                         ver);
    if (base && !find_version(p, base))
        return keel__err(err, KEEL_EINVALID,
                         "%s: \"base\" \"%s\" is not among the package's \"versions\"", where,
                         base);
    if (base && !strcmp(base, ver))
        return keel__err(err, KEEL_EINVALID, "%s: \"base\" is the same as \"version\"", where);
    keel__strlcpy(c->version, ver, sizeof(c->version));
    keel__strlcpy(c->base, base ? base : "", sizeof(c->base));
    return KEEL_OK;
}

static int parse_package(const cJSON *o, rpkg *p, keel_error *err)
{
    char where[256], esc[96];
    const cJSON *versions = NULL, *channels = NULL, *it;
    int rc;
    snprintf(where, sizeof(where), "index.json: packages[\"%s\"]", p->name);
    if (!cJSON_IsObject(o))
        return keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
    if ((rc = keel__json_member(o, "versions", cJSON_Object, true, &versions, where, err)) ||
        (rc = keel__json_member(o, "channels", cJSON_Object, false, &channels, where, err)))
        return rc;
    size_t nv = nmembers(versions), nc = nmembers(channels);
    if (nv > KEEL__REPO_VERSIONS_MAX || nc > KEEL__REPO_CHANNELS_MAX)
        return keel__err(err, KEEL_ETOOBIG, "%s: more than %d versions or %d channels", where,
                         KEEL__REPO_VERSIONS_MAX, KEEL__REPO_CHANNELS_MAX);
    p->versions = calloc(nv ? nv : 1, sizeof(*p->versions));
    p->channels = calloc(nc ? nc : 1, sizeof(*p->channels));
    if (!p->versions || !p->channels)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    cJSON_ArrayForEach(it, versions)
    {
        char w[400];
        rver *v = &p->versions[p->nversions];
        if (strlen(it->string) >= KEEL_VERSION_MAX || !keel_semver_valid(it->string))
            return keel__err(err, KEEL_EINVALID,
                             "%s.versions: \"%s\" is not a semantic version (like 1.2.0)", where,
                             keel__escape(esc, sizeof(esc), it->string, strlen(it->string)));
        keel__strlcpy(v->version, it->string, sizeof(v->version));
        snprintf(w, sizeof(w), "%s.versions[\"%s\"]", where, v->version);
        p->nversions++;
        if ((rc = parse_version(it, v, w, err)))
            return rc;
    }
    cJSON_ArrayForEach(it, channels)
    {
        char w[400];
        rchan *c = &p->channels[p->nchannels];
        if (!channel_name_valid(it->string))
            return keel__err(err, KEEL_EINVALID,
                             "%s.channels: \"%s\" is not a channel name (1..63 of a-z 0-9 . _ -)",
                             where, keel__escape(esc, sizeof(esc), it->string, strlen(it->string)));
        keel__strlcpy(c->name, it->string, sizeof(c->name));
        snprintf(w, sizeof(w), "%s.channels[\"%s\"]", where, c->name);
        p->nchannels++;
        if ((rc = parse_channel(it, p, c, w, err)))
            return rc;
    }
    return KEEL_OK;
}

int keel__repo_index_parse_doc(const void *doc, size_t len, keel__repo_index **ret, keel_error *err)
{
    const char *what = "index.json";
    cJSON *root = NULL;
    const cJSON *pkgs = NULL, *it;
    keel__repo_index *ix = NULL;
    int rc;
    if (len > KEEL__REPO_INDEX_MAX)
        return keel__err(err, KEEL_ETOOBIG, "index.json is larger than %u bytes",
                         KEEL__REPO_INDEX_MAX);
    if ((rc = keel__json_parse(doc, len, what, &root, err)))
        return rc;
    ix = calloc(1, sizeof(*ix));
    if (!ix) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = check_header(root, "keel-index", what, &ix->version, &ix->expires, err)) ||
        (rc = keel__json_member(root, "packages", cJSON_Object, true, &pkgs, what, err)))
        goto out;
    size_t np = nmembers(pkgs);
    if (np > KEEL__REPO_PACKAGES_MAX) {
        rc = keel__err(err, KEEL_ETOOBIG, "index.json: more than %d packages",
                       KEEL__REPO_PACKAGES_MAX);
        goto out;
    }
    ix->pkgs = calloc(np ? np : 1, sizeof(*ix->pkgs));
    if (!ix->pkgs) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(it, pkgs)
    {
        char esc[96];
        rpkg *p = &ix->pkgs[ix->npkgs];
        if (!keel__pkg_name_valid(it->string)) {
            rc = keel__err(err, KEEL_EINVALID,
                           "index.json: packages: \"%s\" is not a package name (1..127 of a-z 0-9 "
                           ". _ -, starting with a letter or digit)",
                           keel__escape(esc, sizeof(esc), it->string, strlen(it->string)));
            goto out;
        }
        keel__strlcpy(p->name, it->string, sizeof(p->name));
        ix->npkgs++;
        if ((rc = parse_package(it, p, err)))
            goto out;
    }
    *ret = ix;
    ix = NULL;
out:
    keel__repo_index_free(ix);
    cJSON_Delete(root);
    return rc;
}

int keel__repo_index_parse(const keel_trust *t, const void *doc, size_t len, const void *sig,
                           size_t sig_len, const keel__repo_timestamp *ts,
                           const keel__repo_state *st, int64_t now, keel__repo_index **ret,
                           keel_error *err)
{
    keel__repo_index *ix = NULL;
    uint8_t sum[KEEL_SHA256_LEN];
    char hex[KEEL_SHA256_HEX];
    int rc;
    if (len > KEEL__REPO_INDEX_MAX)
        return keel__err(err, KEEL_ETOOBIG, "index.json is larger than %u bytes",
                         KEEL__REPO_INDEX_MAX);
    keel_sha256_buf(doc, len, sum);
    keel_hex_encode(sum, sizeof(sum), hex);
    if (ts && (len != ts->index_size || strcmp(hex, ts->index_sha256) != 0))
        return keel__err(err, KEEL_ECORRUPT,
                         "index.json (%zu bytes, sha256 %.16s...) is not the one timestamp.json "
                         "names (%llu bytes, sha256 %.16s...): changed in transit or on a "
                         "mirror, or fetched while the publisher was writing; check again later",
                         len, hex, (unsigned long long)ts->index_size, ts->index_sha256);
    if ((rc = check_sigs(t, KEEL_ROLE_INDEX, KEEL_SIGCTX_INDEX, "index.json", doc, len, sig,
                         sig_len, err)) ||
        (rc = keel__repo_index_parse_doc(doc, len, &ix, err)))
        return rc;
    if (ts && ix->version != ts->index_version) {
        rc = keel__err(err, KEEL_ECORRUPT,
                       "index.json version %llu is not the %llu timestamp.json names",
                       (unsigned long long)ix->version, (unsigned long long)ts->index_version);
        goto out;
    }
    if (st && ix->version < st->index_version) {
        rc = keel__err(err, KEEL_EDOWNGRADE,
                       "index.json version %llu is below %llu, accepted before: replayed or "
                       "rolled-back repository metadata (a mirror serves an old copy)",
                       (unsigned long long)ix->version, (unsigned long long)st->index_version);
        goto out;
    }
    if (st && st->index_sha256[0] && ix->version == st->index_version &&
        strcmp(hex, st->index_sha256) != 0) {
        rc = keel__err(err, KEEL_EDOWNGRADE,
                       "index.json version %llu differs from the copy of the same version "
                       "accepted before: the publisher bumps the version on every change, so "
                       "this is replayed or forged metadata",
                       (unsigned long long)ix->version);
        goto out;
    }
    if (now > 0 && ix->expires <= now) {
        rc = stale("index.json", ix->expires, now, err);
        goto out;
    }
    *ret = ix;
    ix = NULL;
out:
    keel__repo_index_free(ix);
    return rc;
}

bool keel__repo_index_entry(const keel__repo_index *ix, size_t i, keel__repo_entry *ret)
{
    for (size_t p = 0; p < ix->npkgs; p++) {
        if (i >= ix->pkgs[p].nversions) {
            i -= ix->pkgs[p].nversions;
            continue;
        }
        const rver *v = &ix->pkgs[p].versions[i];
        ret->name = ix->pkgs[p].name;
        ret->version = v->version;
        ret->digest = v->digest;
        ret->manifest_size = v->manifest_size;
        ret->pulled = v->pulled;
        ret->patches = v->patches;
        ret->npatches = v->npatches;
        return true;
    }
    return false;
}

/* --- staged rollout and offers ------------------------------------------------- */

unsigned keel__repo_bucket(const char *device_id, const char *name, const char *version)
{
    keel_sha256 *h = keel_sha256_new();
    uint8_t d[KEEL_SHA256_LEN];
    uint64_t x = 0;
    if (!h) {
        /* No memory for a hash context: hash one buffer instead. */
        size_t a = strlen(device_id), b = strlen(name), c = strlen(version);
        char *buf = malloc(a + b + c + 2);
        if (!buf)
            return 9999; /* last bucket: offered only at 100 % */
        memcpy(buf, device_id, a);
        buf[a] = '\0';
        memcpy(buf + a + 1, name, b);
        buf[a + 1 + b] = '\0';
        memcpy(buf + a + b + 2, version, c);
        keel_sha256_buf(buf, a + b + c + 2, d);
        free(buf);
    } else {
        keel_sha256_update(h, device_id, strlen(device_id) + 1);
        keel_sha256_update(h, name, strlen(name) + 1);
        keel_sha256_update(h, version, strlen(version));
        keel_sha256_final(h, d);
        keel_sha256_free(h);
    }
    for (int i = 0; i < 8; i++)
        x = (x << 8) | d[i];
    return (unsigned)(x % 10000u);
}

bool keel__repo_takes(const char *device_id, const char *name, const char *version,
                      double rollout_percent)
{
    if (!(rollout_percent > 0))
        return false;
    if (rollout_percent > 100)
        rollout_percent = 100;
    return keel__repo_bucket(device_id, name, version) < (unsigned)llround(rollout_percent * 100);
}

static void fill_offer(const rpkg *p, const rver *v, keel__repo_offer *o)
{
    keel__strlcpy(o->name, p->name, sizeof(o->name));
    keel__strlcpy(o->version, v->version, sizeof(o->version));
    keel__strlcpy(o->digest, v->digest, sizeof(o->digest));
    o->manifest_size = v->manifest_size;
    o->patches = v->patches;
    o->npatches = v->npatches;
}

int keel__repo_offer_for(const keel__repo_index *ix, const char *name, const char *channel,
                         const char *device_id, const char *current, keel__repo_offer *ret,
                         keel_error *err)
{
    const rpkg *p = NULL;
    const rchan *c = NULL;
    memset(ret, 0, sizeof(*ret));
    for (size_t i = 0; i < ix->npkgs && !p; i++)
        if (!strcmp(ix->pkgs[i].name, name))
            p = &ix->pkgs[i];
    if (!p)
        return keel__err(err, KEEL_ENOTFOUND, "the repository has no package \"%s\"", name);
    if (current) {
        const rver *cv = find_version(p, current);
        ret->current_pulled = cv && cv->pulled;
    }
    for (size_t i = 0; i < p->nchannels && !c; i++)
        if (!strcmp(p->channels[i].name, channel))
            c = &p->channels[i];
    if (!c)
        return keel__err(err, KEEL_ENOTFOUND,
                         "package \"%s\" has no channel \"%s\" in the repository (check "
                         "update_channel)",
                         name, channel);
    const rver *target = find_version(p, c->version);
    const char *why = NULL;
    char whybuf[160];
    if (target->pulled)
        why = "its version is pulled";
    else if (current && !strcmp(current, c->version))
        why = NULL; /* already on it: keeps it, halted or not */
    else if (c->halted)
        why = "the rollout is halted";
    else if (keel__repo_bucket(device_id, name, c->version) >= c->rollout_bp) {
        snprintf(whybuf, sizeof(whybuf), "this device is outside the %u.%02u %% rollout share",
                 c->rollout_bp / 100, c->rollout_bp % 100);
        why = whybuf;
    }
    if (!why) {
        fill_offer(p, target, ret);
        return KEEL_OK;
    }
    const rver *base = c->base[0] ? find_version(p, c->base) : NULL;
    if (!base)
        return keel__err(
            err, KEEL_ENOTFOUND,
            "channel \"%s\" of \"%s\" does not offer %s to this device: %s, and the channel "
            "has no base version",
            channel, name, c->version, why);
    if (base->pulled)
        return keel__err(err, KEEL_ENOTFOUND,
                         "channel \"%s\" of \"%s\" offers nothing to this device: %s, and its "
                         "base %s is pulled",
                         channel, name, why, base->version);
    fill_offer(p, base, ret);
    return KEEL_OK;
}
