/* test_repo.c - repository metadata: roles, freshness, expiry, bounds, the
 * staged-rollout rule (checked against SHA-256 computed here with OpenSSL),
 * halt and pull; and the publisher's refusals (conflict, downgrade). */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "update/publish.h"
#include "update/repo.h"

enum { K_ROOT, K_INDEX, K_TS, K_OTHER, NK };
static keel_key *keys[NK];

static int setup(void **state)
{
    keel_error e;
    KEEL_UNUSED(state);
    for (int i = 0; i < NK; i++)
        assert_int_equal(keel_key_generate(&keys[i], &e), 0);
    return 0;
}

static int teardown(void **state)
{
    KEEL_UNUSED(state);
    for (int i = 0; i < NK; i++)
        keel_key_free(keys[i]);
    th_cleanup();
    return 0;
}

static const char *idh(const keel_key *k)
{
    static char bufs[8][65];
    static int n;
    char *b = bufs[n++ & 7];
    keel_key_id_hex(k, b);
    return b;
}

/* A root with every key known; roles: bit 1 index rule, bit 2 timestamp rule. */
static keel_trust *trust_with(unsigned roles)
{
    keel_buf b;
    keel_trust *t = NULL;
    keel_error e;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__buf_appendf(&b, "{\"format\":1,\"type\":\"keel-root\",\"version\":1,"
                                           "\"keys\":{"),
                     0);
    for (int i = 0; i < NK; i++) {
        char pub[65];
        uint8_t raw[32];
        keel_key_raw_public(keys[i], raw);
        keel_hex_encode(raw, 32, pub);
        assert_int_equal(keel__buf_appendf(&b, "%s\"%s\":{\"alg\":\"ed25519\",\"public\":\"%s\"}",
                                           i ? "," : "", idh(keys[i]), pub),
                         0);
    }
    assert_int_equal(keel__buf_appendf(&b,
                                       "},\"root\":{\"keys\":[\"%s\"],\"threshold\":1},"
                                       "\"packages\":[{\"keys\":[\"%s\"],\"threshold\":1}]",
                                       idh(keys[K_ROOT]), idh(keys[K_ROOT])),
                     0);
    if (roles & 1)
        assert_int_equal(keel__buf_appendf(&b, ",\"index\":{\"keys\":[\"%s\"],\"threshold\":1}",
                                           idh(keys[K_INDEX])),
                         0);
    if (roles & 2)
        assert_int_equal(keel__buf_appendf(&b, ",\"timestamp\":{\"keys\":[\"%s\"],\"threshold\":1}",
                                           idh(keys[K_TS])),
                         0);
    assert_int_equal(keel__buf_appendf(&b, "}"), 0);
    assert_int_equal(keel_trust_from_root(b.data, b.len, &t, &e), 0);
    keel__buf_done(&b);
    return t;
}

/* Signature file over doc by key k with context ctx (malloc'd). */
static char *sig_by(const keel_key *k, const char *ctx, const char *doc)
{
    keel_sigset s;
    uint8_t sig[64], id[32];
    char *j = NULL;
    keel_error e;
    memset(&s, 0, sizeof(s));
    assert_int_equal(keel_key_sign(k, ctx, doc, strlen(doc), sig, &e), 0);
    keel_key_id(k, id);
    assert_int_equal(keel_sigset_add(&s, id, sig, &e), 0);
    assert_int_equal(keel_sigset_format(&s, &j, &e), 0);
    return j;
}

static const char *const INDEX_DOC =
    "{\"format\":1,\"type\":\"keel-index\",\"version\":%u,\"expires\":\"2030-01-01T00:00:00Z\","
    "\"packages\":{\"vad\":{\"versions\":{"
    "\"1.0.0\":{\"digest\":\"sha256:%064d\",\"manifest_size\":100},"
    "\"2.0.0\":{\"digest\":\"sha256:%064d\",\"manifest_size\":120,\"pulled\":%s,"
    "\"patches\":[{\"from\":\"sha256:%064d\",\"to\":\"sha256:%064d\",\"sha256\":\"%064d\","
    "\"size\":10,\"codec\":\"keel-tpatch-1\"}]}},"
    "\"channels\":{\"stable\":{\"version\":\"2.0.0\",\"rollout\":%s,\"halted\":%s%s}}}}}";

static char *index_doc(unsigned version, const char *rollout, bool halted, bool pulled, bool base)
{
    char *d = malloc(4096);
    assert_non_null(d);
    snprintf(d, 4096, INDEX_DOC, version, 1, 2, pulled ? "true" : "false", 3, 4, 5, rollout,
             halted ? "true" : "false", base ? ",\"base\":\"1.0.0\"" : "");
    return d;
}

static char *timestamp_doc(unsigned version, const char *expires, const char *index,
                           unsigned index_version)
{
    uint8_t sum[32];
    char hex[65];
    char *d = malloc(1024);
    assert_non_null(d);
    keel_sha256_buf(index, strlen(index), sum);
    keel_hex_encode(sum, 32, hex);
    snprintf(d, 1024,
             "{\"format\":1,\"type\":\"keel-timestamp\",\"version\":%u,\"expires\":\"%s\","
             "\"index\":{\"version\":%u,\"size\":%zu,\"sha256\":\"%s\"}}",
             version, expires, index_version, strlen(index), hex);
    return d;
}

static int check_ts(const keel_trust *t, const char *doc, const char *sig,
                    const keel__repo_state *st, int64_t now, keel__repo_timestamp *ret,
                    keel_error *e)
{
    return keel__repo_check_timestamp(t, doc, strlen(doc), sig, strlen(sig), st, now, ret, e);
}

static int check_ix(const keel_trust *t, const char *doc, const char *sig,
                    const keel__repo_timestamp *ts, const keel__repo_state *st, int64_t now,
                    keel_error *e)
{
    keel__repo_index *ix = NULL;
    int rc = keel__repo_index_parse(t, doc, strlen(doc), sig, strlen(sig), ts, st, now, &ix, e);
    keel__repo_index_free(ix);
    return rc;
}

static void test_roles(void **state)
{
    KEEL_UNUSED(state);
    keel_error e;
    keel__repo_timestamp ts;
    keel_trust *t = trust_with(3);
    char *ix = index_doc(1, "100", false, false, false);
    char *td = timestamp_doc(1, "2030-01-01T00:00:00Z", ix, 1);
    char *ix_by_index = sig_by(keys[K_INDEX], KEEL_SIGCTX_INDEX, ix);
    char *ix_by_ts = sig_by(keys[K_TS], KEEL_SIGCTX_INDEX, ix);
    char *ix_by_root = sig_by(keys[K_ROOT], KEEL_SIGCTX_INDEX, ix);
    char *ix_wrong_ctx = sig_by(keys[K_INDEX], KEEL_SIGCTX_TIMESTAMP, ix);
    char *ts_by_ts = sig_by(keys[K_TS], KEEL_SIGCTX_TIMESTAMP, td);
    char *ts_by_index = sig_by(keys[K_INDEX], KEEL_SIGCTX_TIMESTAMP, td);
    char *ts_by_root = sig_by(keys[K_ROOT], KEEL_SIGCTX_TIMESTAMP, td);

    assert_int_equal(check_ts(t, td, ts_by_ts, NULL, 0, &ts, &e), 0);
    assert_int_equal(ts.version, 1);
    assert_int_equal(check_ix(t, ix, ix_by_index, &ts, NULL, 0, &e), 0);
    /* signatures by the wrong role */
    th_expect_err(check_ts(t, td, ts_by_index, NULL, 0, &ts, &e), &e, KEEL_EUNTRUSTED,
                  "key not allowed for this role");
    th_expect_err(check_ix(t, ix, ix_by_ts, NULL, NULL, 0, &e), &e, KEEL_EUNTRUSTED,
                  "key not allowed for this role");
    th_expect_err(check_ix(t, ix, ix_by_root, NULL, NULL, 0, &e), &e, KEEL_EUNTRUSTED,
                  "index rule");
    /* a signature with another context is no signature of this document */
    th_expect_err(check_ix(t, ix, ix_wrong_ctx, NULL, NULL, 0, &e), &e, KEEL_EBADSIG,
                  "invalid signature");
    th_expect_err(check_ix(t, ix, "{\"format\":1,\"signatures\":[]}", NULL, NULL, 0, &e), &e,
                  KEEL_EUNTRUSTED, "not signed");
    keel_trust_free(t);

    /* fallbacks: no timestamp rule -> the index rule signs it; no index
     * rule either -> the root rule signs both */
    t = trust_with(1);
    assert_false(keel_trust_has_role(t, KEEL_ROLE_TIMESTAMP));
    assert_int_equal(check_ts(t, td, ts_by_index, NULL, 0, &ts, &e), 0);
    th_expect_err(check_ts(t, td, ts_by_ts, NULL, 0, &ts, &e), &e, KEEL_EUNTRUSTED,
                  "standing in for an absent role");
    keel_trust_free(t);
    t = trust_with(0);
    assert_int_equal(check_ts(t, td, ts_by_root, NULL, 0, &ts, &e), 0);
    assert_int_equal(check_ix(t, ix, ix_by_root, &ts, NULL, 0, &e), 0);
    th_expect_err(check_ix(t, ix, ix_by_index, &ts, NULL, 0, &e), &e, KEEL_EUNTRUSTED, NULL);
    keel_trust_free(t);

    /* a revoked index key counts for nothing */
    const char *dir = th_tmpdir();
    const keel_key *rk[1] = {keys[K_ROOT]}, *ik[1] = {keys[K_INDEX]}, *tk[1] = {keys[K_TS]};
    assert_int_equal(keel_trust_init_roles(dir, rk, 1, 1, ik, 1, tk, 1, &e), 0);
    char rev[300];
    snprintf(rev, sizeof(rev),
             "{\"format\":1,\"type\":\"keel-revocations\",\"serial\":1,\"keys\":[\"%s\"]}",
             idh(keys[K_INDEX]));
    char *rsig = sig_by(keys[K_ROOT], KEEL_SIGCTX_REVOCATIONS, rev);
    th_write_str(dir, "revoked.json", rev);
    th_write_str(dir, "revoked.sig", rsig);
    assert_int_equal(keel_trust_load(dir, &t, &e), 0);
    assert_true(keel_trust_has_role(t, KEEL_ROLE_INDEX));
    th_expect_err(check_ix(t, ix, ix_by_index, NULL, NULL, 0, &e), &e, KEEL_EUNTRUSTED,
                  "revoked key");
    keel_trust_free(t);

    /* a role naming a key root.json does not list */
    char bad[1024], pub[65];
    uint8_t raw[32];
    keel_key_raw_public(keys[K_ROOT], raw);
    keel_hex_encode(raw, 32, pub);
    snprintf(bad, sizeof(bad),
             "{\"format\":1,\"type\":\"keel-root\",\"version\":1,\"keys\":{\"%s\":{\"alg\":"
             "\"ed25519\",\"public\":\"%s\"}},\"root\":{\"keys\":[\"%s\"],\"threshold\":1},"
             "\"packages\":[],\"timestamp\":{\"keys\":[\"%s\"],\"threshold\":1}}",
             idh(keys[K_ROOT]), pub, idh(keys[K_ROOT]), idh(keys[K_TS]));
    th_expect_err(keel_trust_from_root(bad, strlen(bad), &t, &e), &e, KEEL_EINVALID,
                  "root.json: timestamp: key");

    free(rsig);
    free(ix);
    free(td);
    free(ix_by_index);
    free(ix_by_ts);
    free(ix_by_root);
    free(ix_wrong_ctx);
    free(ts_by_ts);
    free(ts_by_index);
    free(ts_by_root);
}

static void test_freshness(void **state)
{
    KEEL_UNUSED(state);
    keel_error e;
    keel__repo_timestamp ts;
    keel__repo_state st;
    keel_trust *t = trust_with(3);
    char *ix7 = index_doc(7, "100", false, false, false);
    char *ix6 = index_doc(6, "100", false, false, false);
    char *ix7b = index_doc(7, "50", false, false, true); /* same version, other bytes */
    char *s7 = sig_by(keys[K_INDEX], KEEL_SIGCTX_INDEX, ix7);
    char *s6 = sig_by(keys[K_INDEX], KEEL_SIGCTX_INDEX, ix6);
    char *s7b = sig_by(keys[K_INDEX], KEEL_SIGCTX_INDEX, ix7b);
    char *td = timestamp_doc(42, "2026-12-05T00:00:00Z", ix7, 7);
    char *tsig = sig_by(keys[K_TS], KEEL_SIGCTX_TIMESTAMP, td);
    int64_t expires = 0, before = 0, after = 0;
    assert_int_equal(keel__repo_time_parse("2026-12-05T00:00:00Z", &expires), 0);
    assert_int_equal(expires, 1796428800); /* date -d 2026-12-05T00:00:00Z +%s */
    assert_int_equal(keel__repo_time_parse("2026-12-04T23:59:59Z", &before), 0);
    assert_int_equal(keel__repo_time_parse("2026-12-05T00:00:01Z", &after), 0);
    assert_int_not_equal(keel__repo_time_parse("2026-12-05T00:00:00+01:00", &after), 0);
    assert_int_not_equal(keel__repo_time_parse("2026-02-29T00:00:00Z", &after), 0);
    assert_int_equal(keel__repo_time_parse("2028-02-29T00:00:00Z", &after), 0);
    assert_int_equal(keel__repo_time_parse("2026-12-05T00:00:01Z", &after), 0);

    memset(&st, 0, sizeof(st));
    /* replayed (older) timestamp */
    st.timestamp_version = 43;
    th_expect_err(check_ts(t, td, tsig, &st, 0, &ts, &e), &e, KEEL_EDOWNGRADE, "replayed");
    st.timestamp_version = 42; /* the same one again is fine */
    assert_int_equal(check_ts(t, td, tsig, &st, 0, &ts, &e), 0);
    st.index_version = 8; /* a timestamp naming an index older than accepted */
    th_expect_err(check_ts(t, td, tsig, &st, 0, &ts, &e), &e, KEEL_EDOWNGRADE, "index version 7");
    st.index_version = 0;

    /* expiry only when now > 0 */
    assert_int_equal(check_ts(t, td, tsig, &st, 0, &ts, &e), 0);
    assert_int_equal(check_ts(t, td, tsig, &st, before, &ts, &e), 0);
    th_expect_err(check_ts(t, td, tsig, &st, after, &ts, &e), &e, KEEL_EUNTRUSTED, "stale");
    assert_int_equal(check_ts(t, td, tsig, &st, 0, &ts, &e), 0);

    /* the index must be what the timestamp names */
    assert_int_equal(check_ix(t, ix7, s7, &ts, &st, 0, &e), 0);
    th_expect_err(check_ix(t, ix6, s6, &ts, &st, 0, &e), &e, KEEL_ECORRUPT,
                  "not the one timestamp.json names");
    th_expect_err(check_ix(t, ix7b, s7b, &ts, &st, 0, &e), &e, KEEL_ECORRUPT,
                  "not the one timestamp.json names");
    /* replayed (older) index */
    st.index_version = 7;
    th_expect_err(check_ix(t, ix6, s6, NULL, &st, 0, &e), &e, KEEL_EDOWNGRADE, "replayed");
    /* the same version with other bytes */
    uint8_t sum[32];
    keel_sha256_buf(ix7, strlen(ix7), sum);
    keel_hex_encode(sum, 32, st.index_sha256);
    assert_int_equal(check_ix(t, ix7, s7, NULL, &st, 0, &e), 0);
    th_expect_err(check_ix(t, ix7b, s7b, NULL, &st, 0, &e), &e, KEEL_EDOWNGRADE,
                  "differs from the copy");
    /* index expiry (2030) */
    int64_t late = 0;
    assert_int_equal(keel__repo_time_parse("2030-01-01T00:00:01Z", &late), 0);
    th_expect_err(check_ix(t, ix7, s7, NULL, &st, late, &e), &e, KEEL_EUNTRUSTED, "stale");
    assert_int_equal(check_ix(t, ix7, s7, NULL, &st, 0, &e), 0);

    keel_trust_free(t);
    free(ix7);
    free(ix6);
    free(ix7b);
    free(s7);
    free(s6);
    free(s7b);
    free(td);
    free(tsig);
}

static void expect_bad_index(const char *doc, int code, const char *sub)
{
    keel__repo_index *ix = NULL;
    keel_error e;
    th_expect_err(keel__repo_index_parse_doc(doc, strlen(doc), &ix, &e), &e, code, sub);
    assert_null(ix);
}

#define HDR                                                                                        \
    "{\"format\":1,\"type\":\"keel-index\",\"version\":1,\"expires\":\"2030-01-01T00:00:00Z\","
#define D64 "sha256:0000000000000000000000000000000000000000000000000000000000000001"

static void test_parse_bounds(void **state)
{
    KEEL_UNUSED(state);
    keel__repo_index *ix = NULL;
    keel__repo_timestamp ts;
    keel_error e;
    const char *ok = HDR "\"packages\":{\"vad\":{\"versions\":{\"1.0.0\":{\"digest\":\"" D64
                         "\",\"manifest_size\":10}},\"channels\":{\"stable\":{\"version\":"
                         "\"1.0.0\",\"rollout\":12.5}}}}}";
    assert_int_equal(keel__repo_index_parse_doc(ok, strlen(ok), &ix, &e), 0);
    keel__repo_entry en;
    assert_true(keel__repo_index_entry(ix, 0, &en));
    assert_string_equal(en.name, "vad");
    assert_string_equal(en.digest, D64);
    assert_false(keel__repo_index_entry(ix, 1, &en));
    keel__repo_index_free(ix);

    expect_bad_index("{\"format\":2,\"type\":\"keel-index\"}", KEEL_EUNSUPPORTED, "upgrade keel");
    expect_bad_index(HDR "\"packages\":{},\"packages\":{}}", KEEL_EINVALID, "packages");
    expect_bad_index("{\"format\":1,\"type\":\"keel-index\",\"version\":1,\"expires\":"
                     "\"tomorrow\",\"packages\":{}}",
                     KEEL_EINVALID, "RFC 3339");
    expect_bad_index(HDR "\"packages\":{\"Bad Name\":{\"versions\":{}}}}", KEEL_EINVALID,
                     "not a package name");
    expect_bad_index(HDR "\"packages\":{\"vad\":{\"versions\":{\"one\":{}}}}}", KEEL_EINVALID,
                     "not a semantic version");
    expect_bad_index(HDR "\"packages\":{\"vad\":{\"versions\":{\"1.0.0\":{\"digest\":\"md5:1\","
                         "\"manifest_size\":10}}}}}",
                     KEEL_EINVALID, "digest");
    expect_bad_index(HDR "\"packages\":{\"vad\":{\"versions\":{\"1.0.0\":{\"digest\":\"" D64
                         "\",\"manifest_size\":10}},\"channels\":{\"stable\":{\"version\":"
                         "\"2.0.0\",\"rollout\":10}}}}}",
                     KEEL_EINVALID, "not among the package's");
    expect_bad_index(HDR "\"packages\":{\"vad\":{\"versions\":{\"1.0.0\":{\"digest\":\"" D64
                         "\",\"manifest_size\":10}},\"channels\":{\"stable\":{\"version\":"
                         "\"1.0.0\",\"rollout\":33.333}}}}}",
                     KEEL_EINVALID, "two decimals");
    expect_bad_index(HDR "\"packages\":{\"vad\":{\"versions\":{\"1.0.0\":{\"digest\":\"" D64
                         "\",\"manifest_size\":10}},\"channels\":{\"stable\":{\"version\":"
                         "\"1.0.0\",\"rollout\":101}}}}}",
                     KEEL_EINVALID, "rollout");
    expect_bad_index(HDR "\"packages\":{\"vad\":{\"versions\":{\"1.0.0\":{\"digest\":\"" D64
                         "\",\"manifest_size\":10,\"patches\":[{\"from\":\"" D64 "\",\"to\":\"" D64
                         "\",\"sha256\":\"0000000000000000000000000000000000000000000000000000000"
                         "000000001\",\"size\":3,\"codec\":\"x\"}]}}}}}",
                     KEEL_EINVALID, "same file");
    /* more packages than the limit */
    keel_buf b;
    keel__buf_init(&b, 0);
    assert_int_equal(keel__buf_appendf(&b, HDR "\"packages\":{"), 0);
    for (int i = 0; i <= KEEL__REPO_PACKAGES_MAX; i++)
        assert_int_equal(keel__buf_appendf(&b, "%s\"p%d\":{\"versions\":{}}", i ? "," : "", i), 0);
    assert_int_equal(keel__buf_appendf(&b, "}}"), 0);
    expect_bad_index(b.data, KEEL_ETOOBIG, "more than 4096 packages");
    keel__buf_done(&b);

    const char *tsd = "{\"format\":1,\"type\":\"keel-timestamp\",\"version\":3,\"expires\":"
                      "\"2030-01-01T00:00:00Z\",\"index\":{\"version\":2,\"size\":0,\"sha256\":"
                      "\"0000000000000000000000000000000000000000000000000000000000000001\"}}";
    th_expect_err(keel__repo_timestamp_parse_doc(tsd, strlen(tsd), &ts, &e), &e, KEEL_EINVALID,
                  "size");
    const char *tst = "{\"format\":1,\"type\":\"keel-index\",\"version\":3}";
    th_expect_err(keel__repo_timestamp_parse_doc(tst, strlen(tst), &ts, &e), &e, KEEL_EINVALID,
                  "expected \"keel-timestamp\"");
}

/* The documented rule, computed independently with OpenSSL's EVP. */
static unsigned ref_bucket(const char *dev, const char *name, const char *version)
{
    char buf[256];
    unsigned char md[32];
    unsigned int mdlen = 0;
    size_t n = (size_t)snprintf(buf, sizeof(buf), "%s%c%s%c%s", dev, 0, name, 0, version);
    assert_int_equal(EVP_Digest(buf, n, md, &mdlen, EVP_sha256(), NULL), 1);
    unsigned long long x = 0;
    for (int i = 0; i < 8; i++)
        x = (x << 8) | md[i];
    return (unsigned)(x % 10000ull);
}

static keel__repo_index *parse_ok(const char *doc)
{
    keel__repo_index *ix = NULL;
    keel_error e;
    int rc = keel__repo_index_parse_doc(doc, strlen(doc), &ix, &e);
    if (rc)
        fail_msg("%s", e.msg);
    return ix;
}

static void test_canary(void **state)
{
    KEEL_UNUSED(state);
    keel_error e;
    keel__repo_offer o;
    char *d = index_doc(1, "25", false, false, true);
    keel__repo_index *ix = parse_ok(d);
    unsigned takers = 0;
    bool took[100];
    for (int i = 0; i < 100; i++) {
        char dev[32];
        snprintf(dev, sizeof(dev), "device-%03d", i);
        bool want = ref_bucket(dev, "vad", "2.0.0") < 2500;
        assert_int_equal(keel__repo_bucket(dev, "vad", "2.0.0"), ref_bucket(dev, "vad", "2.0.0"));
        assert_int_equal(keel__repo_takes(dev, "vad", "2.0.0", 25), want);
        assert_int_equal(keel__repo_offer_for(ix, "vad", "stable", dev, "1.0.0", &o, &e), 0);
        assert_string_equal(o.version, want ? "2.0.0" : "1.0.0");
        assert_false(o.current_pulled);
        if (want) {
            assert_int_equal(o.npatches, 1);
            assert_int_equal(o.manifest_size, 120);
        }
        took[i] = want;
        takers += want;
    }
    /* about a quarter, not all or none (the rule spreads devices) */
    assert_true(takers > 10 && takers < 40);
    keel__repo_index_free(ix);
    free(d);

    /* halted: no new takers; devices already on it keep it */
    d = index_doc(2, "25", true, false, true);
    ix = parse_ok(d);
    for (int i = 0; i < 100; i++) {
        char dev[32];
        snprintf(dev, sizeof(dev), "device-%03d", i);
        assert_int_equal(keel__repo_offer_for(ix, "vad", "stable", dev, "1.0.0", &o, &e), 0);
        assert_string_equal(o.version, "1.0.0");
        if (took[i]) {
            assert_int_equal(keel__repo_offer_for(ix, "vad", "stable", dev, "2.0.0", &o, &e), 0);
            assert_string_equal(o.version, "2.0.0");
        }
    }
    keel__repo_index_free(ix);
    free(d);

    /* pulled: offered to nobody; devices on it learn it is pulled */
    d = index_doc(3, "100", false, true, true);
    ix = parse_ok(d);
    assert_int_equal(keel__repo_offer_for(ix, "vad", "stable", "device-000", "2.0.0", &o, &e), 0);
    assert_string_equal(o.version, "1.0.0");
    assert_true(o.current_pulled);
    assert_int_equal(keel__repo_offer_for(ix, "vad", "stable", "device-001", NULL, &o, &e), 0);
    assert_string_equal(o.version, "1.0.0");
    assert_false(o.current_pulled);
    keel__repo_index_free(ix);
    free(d);

    /* outside the share with no base: nothing; 0 % and 100 % */
    d = index_doc(4, "0", false, false, false);
    ix = parse_ok(d);
    th_expect_err(keel__repo_offer_for(ix, "vad", "stable", "device-000", NULL, &o, &e), &e,
                  KEEL_ENOTFOUND, "no base version");
    th_expect_err(keel__repo_offer_for(ix, "vad", "beta", "device-000", NULL, &o, &e), &e,
                  KEEL_ENOTFOUND, "no channel \"beta\"");
    th_expect_err(keel__repo_offer_for(ix, "kws", "stable", "device-000", NULL, &o, &e), &e,
                  KEEL_ENOTFOUND, "no package");
    keel__repo_index_free(ix);
    free(d);
    for (int i = 0; i < 100; i++) {
        char dev[32];
        snprintf(dev, sizeof(dev), "device-%03d", i);
        assert_true(keel__repo_takes(dev, "vad", "2.0.0", 100));
        assert_false(keel__repo_takes(dev, "vad", "2.0.0", 0));
    }
}

static void test_publisher_refusals(void **state)
{
    KEEL_UNUSED(state);
    keel_error e;
    const char *dir = th_tmpdir();
    char src[512], repo[512], tdir[512], p1[512], p2[512], p1b[512], p0[512];
    snprintf(src, sizeof(src), "%s/src", dir);
    snprintf(repo, sizeof(repo), "%s/repo", dir);
    snprintf(tdir, sizeof(tdir), "%s/trust", dir);
    snprintf(p0, sizeof(p0), "%s/vad-0.9.0.keel", dir);
    snprintf(p1, sizeof(p1), "%s/vad-1.0.0.keel", dir);
    snprintf(p1b, sizeof(p1b), "%s/vad-1.0.0b.keel", dir);
    snprintf(p2, sizeof(p2), "%s/vad-2.0.0.keel", dir);
    th_make_src(src, "vad", "1.0.0", 50000);
    th_pack(src, p1, keys[K_ROOT]);
    th_make_src(src, "vad", "1.0.0", 60000);
    th_pack(src, p1b, keys[K_ROOT]);
    th_make_src(src, "vad", "2.0.0", 50000);
    th_pack(src, p2, keys[K_ROOT]);
    th_make_src(src, "vad", "0.9.0", 50000);
    th_pack(src, p0, keys[K_ROOT]);
    const keel_key *rk[1] = {keys[K_ROOT]}, *ik[1] = {keys[K_INDEX]}, *tk[1] = {keys[K_TS]};
    assert_int_equal(keel_trust_init_roles(tdir, rk, 1, 1, ik, 1, tk, 1, &e), 0);

    keel__publish_opts o = {.repo = repo,
                            .index_keys = ik,
                            .nindex_keys = 1,
                            .timestamp_keys = tk,
                            .ntimestamp_keys = 1};
    keel__publish_args a = {.channel = "stable", .rollout = 100, .patch_from = 2};
    keel__publish_result r;
    assert_int_equal(keel__publish_package(&o, p1, &a, &r, &e), 0);
    assert_int_equal(r.index_version, 1);
    assert_int_equal(keel__publish_package(&o, p1, &a, &r, &e), 0); /* again: fine */
    assert_true(r.already);
    assert_int_equal(r.index_version, 2);
    th_expect_err(keel__publish_package(&o, p1b, &a, &r, &e), &e, KEEL_ECONFLICT, "another digest");
    a.rollout = 10;
    assert_int_equal(keel__publish_package(&o, p2, &a, &r, &e), 0);
    assert_string_equal(r.base, "1.0.0");
    a.rollout = -1; /* the same build again without a rollout: the channel stays */
    assert_int_equal(keel__publish_package(&o, p2, &a, &r, &e), 0);
    assert_true(r.kept);
    assert_true(r.rollout == 10);
    assert_string_equal(r.base, "1.0.0");
    a.rollout = 10;
    th_expect_err(keel__publish_package(&o, p0, &a, &r, &e), &e, KEEL_EDOWNGRADE, "--force");
    a.force = true;
    a.reason = "2.0.0 breaks old boards";
    assert_int_equal(keel__publish_package(&o, p0, &a, &r, &e), 0);

    /* what was written verifies as a device would see it, and a replay of
     * an earlier state is refused */
    keel_trust *t = NULL;
    keel__repo_state st;
    memset(&st, 0, sizeof(st));
    assert_int_equal(keel_trust_load(tdir, &t, &e), 0);
    assert_int_equal(keel__publish_verify(repo, t, &st, keel__now_wall_s(), NULL, &e), 0);
    assert_int_equal(st.index_version, 5);
    assert_int_equal(keel__publish_rollout(&o, "vad", "stable", KEEL__ROLLOUT_HALT, 0, NULL, &e),
                     0);
    assert_int_equal(keel__publish_verify(repo, t, &st, keel__now_wall_s(), NULL, &e), 0);
    assert_int_equal(st.index_version, 6);
    st.timestamp_version++;
    th_expect_err(keel__publish_verify(repo, t, &st, 0, NULL, &e), &e, KEEL_EDOWNGRADE, "replayed");
    th_expect_err(keel__publish_rollout(&o, "vad", "beta", KEEL__ROLLOUT_SET, 5, NULL, &e), &e,
                  KEEL_ENOTFOUND, "no channel");
    /* a timestamp signed with the index key is refused by a device whose
     * root names a timestamp role */
    o.ntimestamp_keys = 0;
    assert_int_equal(keel__publish_timestamp(&o, NULL, &e), 0);
    memset(&st, 0, sizeof(st));
    th_expect_err(keel__publish_verify(repo, t, &st, 0, NULL, &e), &e, KEEL_EUNTRUSTED,
                  "timestamp");
    keel_trust_free(t);
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_freshness),
        cmocka_unit_test(test_parse_bounds),
        cmocka_unit_test(test_canary),
        cmocka_unit_test(test_publisher_refusals),
    };
    return th_exit(cmocka_run_group_tests(tests, setup, teardown));
}
