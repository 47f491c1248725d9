/* test_bundle.c - USB bundles (lib/update/bundle.c: what a folder holds,
 * the order it is applied in, refusals by item, bundle.json, writing one)
 * and the LAN peer table and beacon datagram (lib/update/peers.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"
#include "update/bundle.h"
#include "update/peers.h"

/* A signed package NAME-VERSION.keel in dir; returns its path. */
static const char *pkg(const char *dir, const char *file, const char *name, const char *version)
{
    char src[4096];
    snprintf(src, sizeof(src), "%s/src-%s-%s", th_tmpdir(), name, version);
    th_make_src(src, name, version, 3000);
    const char *out = th_path(dir, file);
    th_pack(src, out, NULL);
    return out;
}

static void test_plan_order(void **state)
{
    const char *d = th_tmpdir();
    keel_error e = {0};
    keel__bundle *b = NULL;
    pkg(d, "z.keel", "vad", "1.10.0");
    pkg(d, "a.keel", "vad", "1.2.0");
    pkg(d, "m.keel", "vad", "2.0.0-rc.1");
    pkg(d, "iris.keel", "iris", "1.0.0");
    th_write_str(d, "junk.keel", "not a tar");
    th_write_str(d, "root.json", "{}");
    th_write_str(d, "root.json.sig", "{}");
    th_write_str(d, "revoked.json", "{}"); /* no .sig */
    th_write_str(d, "README.txt", "hello");
    th_write_str(d, ".hidden.keel", "x");
    th_write_str(d, "repo/index.json", "{}");
    assert_int_equal(symlink("/etc/passwd", th_path(d, "link.keel")), 0);
    assert_int_equal(keel__bundle_scan(d, 0, &b, &e), KEEL_OK);
    static const struct {
        const char *entry, *name, *version;
        bool refused, newest;
    } want[] = {
        {"root.json", "", "", false, false},         {"revoked.json", "", "", true, false},
        {"junk.keel", "", "", true, false},          {"link.keel", "", "", true, false},
        {"iris.keel", "iris", "1.0.0", false, true}, {"a.keel", "vad", "1.2.0", false, false},
        {"z.keel", "vad", "1.10.0", false, false},   {"m.keel", "vad", "2.0.0-rc.1", false, true},
        {"repo/index.json", "", "", false, false},
    };
    assert_int_equal(b->n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < b->n; i++) {
        const keel__bundle_item *it = &b->items[i];
        if (strcmp(it->entry, want[i].entry) || strcmp(it->name, want[i].name) ||
            strcmp(it->version, want[i].version) || it->refused != want[i].refused ||
            it->newest != want[i].newest)
            fail_msg("item %zu: %s %s %s refused=%d newest=%d (%s); want %s", i, it->entry,
                     it->name, it->version, it->refused, it->newest, it->why, want[i].entry);
    }
    assert_non_null(strstr(b->items[1].why, "revoked.json.sig is missing"));
    assert_non_null(strstr(b->items[2].why, "not a readable keel package"));
    assert_non_null(strstr(b->items[3].why, "not a regular file"));
    assert_int_equal(b->items[8].kind, KEEL__BUNDLE_REPO);
    assert_int_equal(b->ignored, 1); /* README.txt */
    assert_false(b->manifest);
    keel__bundle_free(b);
    th_cleanup();
}

static void test_single_and_errors(void **state)
{
    const char *d = th_tmpdir();
    keel_error e = {0};
    keel__bundle *b = NULL;
    const char *p = pkg(d, "one.keel", "iris", "1.0.0");
    assert_int_equal(keel__bundle_scan(p, 0, &b, &e), KEEL_OK);
    assert_true(b->single);
    assert_int_equal(b->n, 1);
    assert_true(b->items[0].newest);
    assert_string_equal(b->items[0].name, "iris");
    keel__bundle_free(b);
    /* over max_package */
    assert_int_equal(keel__bundle_scan(p, 100, &b, &e), KEEL_OK);
    assert_true(b->items[0].refused);
    assert_non_null(strstr(b->items[0].why, "over the limit"));
    keel__bundle_free(b);
    /* an empty folder, a missing path, a file that is not a package */
    const char *empty = th_path(d, "empty");
    assert_int_equal(mkdir(empty, 0755), 0);
    th_expect_err(keel__bundle_scan(empty, 0, &b, &e), &e, KEEL_ENOTFOUND, "holds nothing");
    th_expect_err(keel__bundle_scan(th_path(d, "nope"), 0, &b, &e), &e, KEEL_ENOTFOUND,
                  "cannot read bundle");
    th_write_str(d, "x.txt", "x");
    th_expect_err(keel__bundle_scan(th_path(d, "x.txt"), 0, &b, &e), &e, KEEL_EINVALID,
                  "neither a bundle folder");
    th_cleanup();
}

static void test_create_and_listing(void **state)
{
    const char *d = th_tmpdir();
    char out[4096];
    keel_error e = {0};
    keel__bundle *b = NULL;
    const char *p1 = pkg(d, "p1.keel", "iris", "1.0.0");
    char p1c[4096];
    snprintf(p1c, sizeof(p1c), "%s", p1);
    const char *p2 = pkg(d, "p2.keel", "vad", "2.0.0");
    th_write_str(d, "rev.json", "{\"format\":1}");
    th_write_str(d, "rev.json.sig", "{}");
    th_write_str(d, "nosig.json", "{}");
    snprintf(out, sizeof(out), "%s/usb", d);
    const char *pk[] = {p1c, p2};
    const char *rev = th_path(d, "rev.json");
    assert_int_equal(keel__bundle_create(out, pk, 2, rev, NULL, &e), KEEL_OK);
    /* a second bundle into the same folder, or a document without signatures: refused */
    th_expect_err(keel__bundle_create(out, pk, 1, NULL, NULL, &e), &e, KEEL_EEXISTS,
                  "already holds a bundle");
    char out2[4096];
    snprintf(out2, sizeof(out2), "%s/usb2", d);
    th_expect_err(keel__bundle_create(out2, NULL, 0, th_path(d, "nosig.json"), NULL, &e), &e,
                  KEEL_ENOTFOUND, "no signatures");
    th_expect_err(keel__bundle_create(out2, NULL, 0, NULL, NULL, &e), &e, KEEL_EINVALID,
                  "at least one");
    assert_int_equal(keel__bundle_scan(out, 0, &b, &e), KEEL_OK);
    assert_true(b->manifest);
    assert_int_equal(b->n, 3);
    assert_string_equal(b->items[0].entry, "revoked.json");
    assert_string_equal(b->items[1].entry, "iris-1.0.0.keel");
    assert_string_equal(b->items[2].entry, "vad-2.0.0.keel");
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].refused)
            fail_msg("%s refused: %s", b->items[i].entry, b->items[i].why);
    keel__bundle_free(b);
    /* a damaged copy and a file bundle.json does not list */
    FILE *f = fopen(th_path(out, "vad-2.0.0.keel"), "r+b");
    assert_non_null(f);
    fseek(f, 2000, SEEK_SET);
    fputc('!', f);
    fclose(f);
    pkg(out, "extra.keel", "extra", "1.0.0");
    assert_int_equal(keel__bundle_scan(out, 0, &b, &e), KEEL_OK);
    for (size_t i = 0; i < b->n; i++) {
        const keel__bundle_item *it = &b->items[i];
        if (!strcmp(it->entry, "vad-2.0.0.keel"))
            assert_non_null(strstr(it->why, "does not match bundle.json"));
        else if (!strcmp(it->entry, "extra.keel"))
            assert_non_null(strstr(it->why, "not listed in bundle.json"));
        else if (it->refused)
            fail_msg("%s refused: %s", it->entry, it->why);
    }
    keel__bundle_free(b);
    /* a listed file that is gone: the whole bundle is refused */
    assert_int_equal(unlink(th_path(out, "iris-1.0.0.keel")), 0);
    th_expect_err(keel__bundle_scan(out, 0, &b, &e), &e, KEEL_ECORRUPT, "not in the bundle");
    /* a malformed bundle.json */
    th_write_str(out, "bundle.json", "{\"format\": 2, \"type\": \"keel-bundle\", \"files\": {}}");
    th_expect_err(keel__bundle_scan(out, 0, &b, &e), &e, KEEL_EUNSUPPORTED, "format 2");
    th_cleanup();
}

/* --- peers ------------------------------------------------------------------------------ */

#define S 1000000000ull

static void test_peers_table(void **state)
{
    keel__peers *p = keel__peers_new();
    keel_error e = {0};
    char u[KEEL__PEERS_MAX][KEEL__PEER_URL_MAX];
    static const char *const bad[] = {"ftp://a:1", "http://",      "http://a:1/x", "http:// a",
                                      "a:8480",    "http://a b:1", "https://a:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        th_expect_err(keel__peers_configure(p, bad[i], &e), &e, KEEL_EINVALID,
                      "not a peer base URL");
    assert_int_equal(keel__peers_configure(p, "http://a:1/, http://b:2,,http://a:1", &e), KEEL_OK);
    assert_int_equal(keel__peers_usable(p, 1 * S, u, KEEL__PEERS_MAX), 2);
    assert_string_equal(u[0], "http://a:1");
    assert_string_equal(u[1], "http://b:2");
    /* discovered: after the configured ones, most recent first; gone after their TTL */
    assert_true(keel__peers_seen(p, "http://c:3", "dev-c", 30, 1 * S));
    assert_true(keel__peers_seen(p, "http://d:4", "dev-d", 30, 2 * S));
    assert_false(keel__peers_seen(p, "http://c:3", "dev-c", 30, 3 * S)); /* refreshed */
    assert_false(keel__peers_seen(p, "not a url", "x", 30, 3 * S));
    assert_int_equal(keel__peers_usable(p, 4 * S, u, KEEL__PEERS_MAX), 4);
    assert_string_equal(u[2], "http://c:3");
    assert_string_equal(u[3], "http://d:4");
    assert_int_equal(keel__peers_usable(p, 4 * S, u, 1), 1);
    /* backoff */
    keel__peers_set_backoff(p, 60);
    keel__peers_bad(p, "http://a:1/", "bad chunk", 5 * S);
    assert_int_equal(keel__peers_usable(p, 6 * S, u, KEEL__PEERS_MAX), 3);
    assert_string_equal(u[0], "http://b:2");
    char *j = keel__peers_json(p, 6 * S);
    assert_non_null(strstr(j, "\"why\":\"bad chunk\""));
    assert_non_null(strstr(j, "\"source\":\"discovered\""));
    free(j);
    assert_int_equal(keel__peers_usable(p, 66 * S, u, KEEL__PEERS_MAX), 2); /* c, d expired */
    assert_string_equal(u[0], "http://a:1");
    /* a new list keeps discovered peers, drops configured ones no longer listed */
    assert_true(keel__peers_seen(p, "http://c:3", "dev-c", 30, 70 * S));
    assert_int_equal(keel__peers_configure(p, "http://e:5", &e), KEEL_OK);
    assert_int_equal(keel__peers_usable(p, 71 * S, u, KEEL__PEERS_MAX), 2);
    assert_string_equal(u[0], "http://e:5");
    assert_string_equal(u[1], "http://c:3");
    /* a full table drops the discovered peer seen longest ago */
    assert_int_equal(keel__peers_configure(p, "", &e), KEEL_OK);
    for (unsigned i = 0; i < KEEL__PEERS_MAX + 5; i++) {
        char url[64];
        snprintf(url, sizeof(url), "http://10.0.0.%u:8480", i);
        keel__peers_seen(p, url, "d", 1000, (100 + i) * S);
    }
    assert_int_equal(keel__peers_usable(p, 200 * S, u, KEEL__PEERS_MAX), KEEL__PEERS_MAX);
    assert_string_equal(u[0], "http://10.0.0.68:8480");
    keel__peers_free(p);
}

static void test_beacon(void **state)
{
    keel__beacon b;
    keel_error e = {0};
    char buf[KEEL__BEACON_MAX];
    size_t n = keel__beacon_format("pump-7", "http://10.0.0.7:8480", buf, sizeof(buf));
    assert_true(n > 0);
    assert_int_equal(keel__beacon_parse(buf, n, &b, &e), KEEL_OK);
    assert_string_equal(b.device, "pump-7");
    assert_string_equal(b.url, "http://10.0.0.7:8480");
    assert_int_equal(keel__beacon_format("d", "http://x:1", buf, 10), 0);
    static const struct {
        const char *doc;
        int code;
        const char *msg;
    } bad[] = {
        {"", KEEL_EINVALID, NULL},
        {"[]", KEEL_EINVALID, NULL},
        {"{\"keel\":2,\"device\":\"d\",\"url\":\"http://a:1\"}", KEEL_EUNSUPPORTED, "version 2"},
        {"{\"keel\":1,\"url\":\"http://a:1\"}", KEEL_EINVALID, "device"},
        {"{\"keel\":1,\"device\":\"d\",\"url\":\"file:///etc\"}", KEEL_EINVALID, "url"},
        {"{\"keel\":1,\"device\":\"d\",\"url\":\"http://a:1/api/x\"}", KEEL_EINVALID, "url"},
        {"{\"keel\":1,\"keel\":1,\"device\":\"d\",\"url\":\"http://a:1\"}", KEEL_EINVALID, NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = keel__beacon_parse(bad[i].doc, strlen(bad[i].doc), &b, &e);
        if (rc != bad[i].code || (bad[i].msg && !strstr(e.msg, bad[i].msg)))
            fail_msg("beacon %s: rc %d (%s)", bad[i].doc, rc, e.msg);
    }
    char big[KEEL__BEACON_MAX + 2];
    memset(big, ' ', sizeof(big));
    th_expect_err(keel__beacon_parse(big, sizeof(big), &b, &e), &e, KEEL_ETOOBIG, "beacon");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_order),
        cmocka_unit_test(test_single_and_errors),
        cmocka_unit_test(test_create_and_listing),
        cmocka_unit_test(test_peers_table),
        cmocka_unit_test(test_beacon),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
