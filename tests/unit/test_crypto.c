/* test_crypto.c - SHA-256 vectors, hex, Ed25519 with domain separation, sigsets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static void test_sha256_vectors(void **state)
{
    static const struct {
        const char *in, *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < KEEL_ARRAY_LEN(v); i++) {
        uint8_t d[32];
        char hex[65];
        keel_sha256_buf(v[i].in, strlen(v[i].in), d);
        keel_hex_encode(d, 32, hex);
        assert_string_equal(hex, v[i].hex);
        /* streaming, byte by byte, equals one shot */
        keel_sha256 *h = keel_sha256_new();
        for (const char *p = v[i].in; *p; p++)
            keel_sha256_update(h, p, 1);
        uint8_t d2[32];
        keel_sha256_final(h, d2);
        keel_sha256_free(h);
        assert_memory_equal(d, d2, 32);
    }
    const char *dir = th_tmpdir();
    th_write_str(dir, "f", "abc");
    uint8_t d[32];
    uint64_t size;
    keel_error e;
    assert_int_equal(keel_sha256_file(th_path(dir, "f"), d, &size, &e), 0);
    assert_int_equal(size, 3);
    uint8_t want[32];
    assert_int_equal(keel_hex_decode(v[1].hex, 64, want, 32), 0);
    assert_memory_equal(d, want, 32);
    th_cleanup();
}

static void test_hex(void **state)
{
    uint8_t b[2];
    assert_int_equal(keel_hex_decode("aBff", 4, b, 2), 0);
    assert_int_equal(b[0], 0xab);
    assert_int_not_equal(keel_hex_decode("abf", 3, b, 2), 0);
    assert_int_not_equal(keel_hex_decode("zz00", 4, b, 2), 0);
}

static void test_keys(void **state)
{
    keel_key *k = NULL, *pub = NULL, *loaded = NULL;
    keel_error e;
    uint8_t sig[64];
    const char *d = th_tmpdir();
    assert_int_equal(keel_key_generate(&k, &e), 0);
    assert_int_equal(keel_key_sign(k, KEEL_SIGCTX_PACKAGE, "msg", 3, sig, &e), 0);
    assert_true(keel_key_verify(k, KEEL_SIGCTX_PACKAGE, "msg", 3, sig));
    /* another context, or other bytes, do not verify */
    assert_false(keel_key_verify(k, KEEL_SIGCTX_ROOT, "msg", 3, sig));
    assert_false(keel_key_verify(k, KEEL_SIGCTX_PACKAGE, "msh", 3, sig));
    assert_int_equal(keel_key_save(k, th_path(d, "k.key"), th_path(d, "k.pub"), &e), 0);
    assert_int_equal(keel_key_load_public(th_path(d, "k.pub"), &pub, &e), 0);
    assert_false(keel_key_has_private(pub));
    assert_true(keel_key_verify(pub, KEEL_SIGCTX_PACKAGE, "msg", 3, sig));
    th_expect_err(keel_key_sign(pub, KEEL_SIGCTX_PACKAGE, "m", 1, sig, &e), &e, KEEL_EINVALID,
                  "public key");
    assert_int_equal(keel_key_load_private(th_path(d, "k.key"), &loaded, &e), 0);
    char a[65], b[65];
    keel_key_id_hex(k, a);
    keel_key_id_hex(loaded, b);
    assert_string_equal(a, b);
    /* key id = SHA-256 of the raw public key */
    uint8_t raw[32], id[32], calc[32];
    keel_key_raw_public(k, raw);
    keel_key_id(k, id);
    keel_sha256_buf(raw, 32, calc);
    assert_memory_equal(id, calc, 32);
    th_write_str(d, "junk.pub", "not a key");
    keel_key *x = NULL;
    th_expect_err(keel_key_load_public(th_path(d, "junk.pub"), &x, &e), &e, KEEL_EINVALID,
                  "keel keygen");
    keel_key_free(k);
    keel_key_free(pub);
    keel_key_free(loaded);
    th_cleanup();
}

static const struct {
    const char *text;
    int rc;
    const char *msg;
} sig_cases[] = {
    {"{\"format\":1,\"signatures\":[]}", 0, NULL},
    {"{\"format\":2,\"signatures\":[]}", KEEL_EUNSUPPORTED, "format 2"},
    {"{\"format\":1}", KEEL_EINVALID, "\"signatures\" is missing"},
    {"{\"format\":1,\"signatures\":[{\"keyid\":\"00\",\"alg\":\"ed25519\",\"sig\":\"00\"}]}",
     KEEL_EINVALID, "64 hex"},
    {"{\"format\":1,\"signatures\":[{\"keyid\":\"0000000000000000000000000000000000000000000000"
     "000000000000000000\",\"alg\":\"rsa\",\"sig\":\"00\"}]}",
     KEEL_EUNSUPPORTED, "rsa"},
    {"[1,2]", KEEL_EINVALID, "object"},
    {"{\"format\":1,\"signatures\":[", KEEL_EINVALID, "malformed"},
};

static void test_sigset(void **state)
{
    for (size_t i = 0; i < KEEL_ARRAY_LEN(sig_cases); i++) {
        keel_sigset s;
        keel_error e = {0};
        int rc = keel_sigset_parse(sig_cases[i].text, strlen(sig_cases[i].text), &s, &e);
        th_expect_err(rc, &e, sig_cases[i].rc, sig_cases[i].msg);
    }
    /* round trip, and duplicates are refused */
    keel_sigset s = {0}, back;
    keel_error e;
    uint8_t id[32] = {1}, sig[64] = {2};
    assert_int_equal(keel_sigset_add(&s, id, sig, &e), 0);
    char *json;
    assert_int_equal(keel_sigset_format(&s, &json, &e), 0);
    assert_int_equal(keel_sigset_parse(json, strlen(json), &back, &e), 0);
    assert_int_equal(back.count, 1);
    assert_memory_equal(back.sigs[0].sig, sig, 64);
    char one[300], dup[700];
    snprintf(one, sizeof(one), "{\"keyid\":\"%064d\",\"alg\":\"ed25519\",\"sig\":\"%0128d\"}", 0,
             0);
    snprintf(dup, sizeof(dup), "{\"format\":1,\"signatures\":[%s,%s]}", one, one);
    th_expect_err(keel_sigset_parse(dup, strlen(dup), &back, &e), &e, KEEL_EINVALID,
                  "signed twice");
    free(json);
}

int main(void)
{
    keel_log_set_stderr(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_sigset),
    };
    return th_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
