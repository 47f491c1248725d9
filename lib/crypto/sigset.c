/* sigset.c - the signature-set file format (keel.sig, root.sig, revoked.sig). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "keel/crypto.h"
#include "keel/trust.h"

int keel_sigset_add(keel_sigset *set, const uint8_t keyid[KEEL_KEYID_LEN],
                    const uint8_t sig[KEEL_ED25519_SIG_LEN], keel_error *err)
{
    for (size_t i = 0; i < set->count; i++) {
        if (memcmp(set->sigs[i].keyid, keyid, KEEL_KEYID_LEN) == 0) {
            memcpy(set->sigs[i].sig, sig, KEEL_ED25519_SIG_LEN);
            return KEEL_OK;
        }
    }
    if (set->count >= KEEL_SIGSET_MAX)
        return keel__err(err, KEEL_ETOOBIG, "more than %d signatures", KEEL_SIGSET_MAX);
    memcpy(set->sigs[set->count].keyid, keyid, KEEL_KEYID_LEN);
    memcpy(set->sigs[set->count].sig, sig, KEEL_ED25519_SIG_LEN);
    set->count++;
    return KEEL_OK;
}

int keel_sigset_parse(const void *data, size_t len, keel_sigset *ret, keel_error *err)
{
    cJSON *root = NULL;
    const cJSON *arr = NULL, *it;
    uint64_t format = 0;
    keel_sigset set;
    size_t i = 0;
    int rc = keel__json_parse(data, len, "signature file", &root, err);
    if (rc)
        return rc;
    set.count = 0;
    if (!cJSON_IsObject(root)) {
        rc = keel__err(err, KEEL_EINVALID, "signature file: expected a JSON object");
        goto out;
    }
    if ((rc = keel__json_u64(root, "format", true, &format, "signature file", err)))
        goto out;
    if (format != 1) {
        rc = keel__err(err, KEEL_EUNSUPPORTED,
                       "signature file: format %llu is not supported (this keel reads format 1; "
                       "upgrade keel)",
                       (unsigned long long)format);
        goto out;
    }
    if ((rc =
             keel__json_member(root, "signatures", cJSON_Array, true, &arr, "signature file", err)))
        goto out;
    cJSON_ArrayForEach(it, arr)
    {
        char where[48];
        const char *keyid = NULL, *alg = NULL, *sig = NULL;
        uint8_t kid[KEEL_KEYID_LEN], s[KEEL_ED25519_SIG_LEN];
        snprintf(where, sizeof(where), "signature file: signatures[%zu]", i++);
        if (!cJSON_IsObject(it)) {
            rc = keel__err(err, KEEL_EINVALID, "%s: expected an object", where);
            goto out;
        }
        if ((rc = keel__json_str(it, "keyid", true, 64, &keyid, where, err)) ||
            (rc = keel__json_str(it, "alg", true, 32, &alg, where, err)) ||
            (rc = keel__json_str(it, "sig", true, 128, &sig, where, err)))
            goto out;
        if (strcmp(alg, "ed25519") != 0) {
            rc = keel__err(err, KEEL_EUNSUPPORTED,
                           "%s: algorithm \"%s\" is not supported (only ed25519)", where, alg);
            goto out;
        }
        if (keel_hex_decode(keyid, strlen(keyid), kid, sizeof(kid))) {
            rc = keel__err(err, KEEL_EINVALID, "%s: keyid must be 64 hex digits", where);
            goto out;
        }
        if (keel_hex_decode(sig, strlen(sig), s, sizeof(s))) {
            rc = keel__err(err, KEEL_EINVALID, "%s: sig must be 128 hex digits", where);
            goto out;
        }
        for (size_t j = 0; j < set.count; j++) {
            if (memcmp(set.sigs[j].keyid, kid, sizeof(kid)) == 0) {
                rc = keel__err(err, KEEL_EINVALID, "%s: key %.16s... signed twice", where, keyid);
                goto out;
            }
        }
        if ((rc = keel_sigset_add(&set, kid, s, err)))
            goto out;
    }
    memcpy(ret, &set, sizeof(set));
out:
    cJSON_Delete(root);
    return rc;
}

int keel_sigset_format(const keel_sigset *set, char **ret_json, keel_error *err)
{
    keel_buf b;
    int rc;
    keel__buf_init(&b, 0);
    rc = keel__buf_append(&b, "{\"format\":1,\"signatures\":[", 26);
    for (size_t i = 0; !rc && i < set->count; i++) {
        char kid[KEEL_SHA256_HEX], sig[2 * KEEL_ED25519_SIG_LEN + 1];
        keel_hex_encode(set->sigs[i].keyid, KEEL_KEYID_LEN, kid);
        keel_hex_encode(set->sigs[i].sig, KEEL_ED25519_SIG_LEN, sig);
        rc = keel__buf_appendf(&b, "%s\n{\"keyid\":\"%s\",\"alg\":\"ed25519\",\"sig\":\"%s\"}",
                               i ? "," : "", kid, sig);
    }
    if (!rc)
        rc = keel__buf_append(&b, "]}\n", 3);
    if (rc) {
        keel__buf_done(&b);
        return keel__err(err, rc, "out of memory formatting signatures");
    }
    *ret_json = keel__buf_steal(&b);
    return KEEL_OK;
}
