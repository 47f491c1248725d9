/* shadow.c - the device shadow and its version-vector merge (shadow.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "sync/shadow.h"

#define MOD           "shadow"
#define MAX_KEYS      256
#define MAX_CONFLICTS 32

struct keel__shadow {
    pthread_mutex_t mu;
    char path[4096];
    cJSON *doc; /* {"device": d, "cloud_seen": c, "keys": {...}, "conflicts": [...]} */
};

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void set_num(cJSON *o, const char *k, double v)
{
    cJSON *old = cJSON_GetObjectItemCaseSensitive(o, k);
    if (old)
        cJSON_SetNumberValue(old, v);
    else
        cJSON_AddNumberToObject(o, k, v);
}

static int save(keel__shadow *s, keel_error *err)
{
    char *text = keel__json_print(s->doc);
    if (!text)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    int rc = keel__fs_write_atomic(s->path, text, strlen(text), 0600, err);
    free(text);
    return rc;
}

static cJSON *fresh(void)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "device", 0);
    cJSON_AddNumberToObject(d, "cloud_seen", 0);
    cJSON_AddObjectToObject(d, "keys");
    cJSON_AddArrayToObject(d, "conflicts");
    return d;
}

int keel__shadow_open(const char *path, keel__shadow **ret, keel_error *err)
{
    keel__shadow *s = calloc(1, sizeof(*s));
    char *text = NULL;
    size_t len = 0;
    if (!s)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    keel__strlcpy(s->path, path, sizeof(s->path));
    pthread_mutex_init(&s->mu, NULL);
    if (keel__fs_exists(path)) {
        int rc = keel__fs_read(path, 4u << 20, &text, &len, err);
        if (!rc)
            rc = keel__json_parse(text, len, "shadow.json", &s->doc, err);
        free(text);
        if (rc || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(s->doc, "keys"))) {
            KEEL_LOG_W(MOD, "%s is unreadable (%s); starting a new shadow", path,
                       rc ? err->msg : "no keys");
            cJSON_Delete(s->doc);
            s->doc = NULL;
        }
    }
    if (!s->doc && !(s->doc = fresh())) {
        keel__shadow_close(s);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    *ret = s;
    return KEEL_OK;
}

void keel__shadow_close(keel__shadow *s)
{
    if (!s)
        return;
    cJSON_Delete(s->doc);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int check_key(const char *key, keel_error *err)
{
    size_t n = strlen(key);
    if (!n || n > 128 || strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789_.-") != n)
        return keel__err(err, KEEL_EINVALID, "shadow key \"%.40s\": use 1..128 of a-z 0-9 _ . -",
                         key);
    return KEEL_OK;
}

/* Writes key = value with vector (d, c). Lock held. Takes value. */
static int write_key(keel__shadow *s, const char *key, cJSON *value, double d, double c,
                     const char *source, keel_error *err)
{
    cJSON *keys = cJSON_GetObjectItemCaseSensitive(s->doc, "keys");
    if (!cJSON_GetObjectItemCaseSensitive(keys, key) && cJSON_GetArraySize(keys) >= MAX_KEYS) {
        cJSON_Delete(value);
        return keel__err(err, KEEL_ETOOBIG, "shadow: more than %d keys", MAX_KEYS);
    }
    cJSON *k = cJSON_CreateObject();
    cJSON_AddItemToObject(k, "value", value);
    cJSON_AddNumberToObject(k, "d", d);
    cJSON_AddNumberToObject(k, "c", c);
    cJSON_AddStringToObject(k, "source", source);
    cJSON_AddNumberToObject(k, "at", (double)keel__now_wall_s());
    cJSON_DeleteItemFromObjectCaseSensitive(keys, key);
    cJSON_AddItemToObject(keys, key, k);
    return KEEL_OK;
}

int keel__shadow_set_local(keel__shadow *s, const char *key, const char *value_json,
                           keel_error *err)
{
    cJSON *v = NULL;
    int rc = check_key(key, err);
    if (!rc)
        rc = keel__json_parse(value_json, strlen(value_json), "shadow value", &v, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&s->mu);
    double d = num(s->doc, "device") + 1;
    set_num(s->doc, "device", d);
    rc = write_key(s, key, v, d, num(s->doc, "cloud_seen"), "local", err);
    if (!rc)
        rc = save(s, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int keel__shadow_apply_desired(keel__shadow *s, const void *doc, size_t len, unsigned *ret_applied,
                               unsigned *ret_conflicts, keel_error *err)
{
    cJSON *j = NULL;
    uint64_t version = 0, seen = 0;
    const cJSON *set = NULL, *it;
    unsigned applied = 0, conflicts = 0;
    int rc = keel__json_parse(doc, len, "desired shadow", &j, err);
    if (!rc && !(rc = keel__json_u64(j, "version", true, &version, "desired", err)) &&
        !(rc = keel__json_u64(j, "device_seen", true, &seen, "desired", err)))
        rc = keel__json_member(j, "set", cJSON_Object, true, &set, "desired", err);
    cJSON_ArrayForEach(it, set)
    {
        if (!rc)
            rc = check_key(it->string, err);
    }
    if (rc) {
        cJSON_Delete(j);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    if ((double)version <= num(s->doc, "cloud_seen")) { /* a retained copy we applied */
        pthread_mutex_unlock(&s->mu);
        cJSON_Delete(j);
        *ret_applied = *ret_conflicts = 0;
        return KEEL_OK;
    }
    if ((double)seen > num(s->doc, "device")) {
        pthread_mutex_unlock(&s->mu);
        cJSON_Delete(j);
        return keel__err(err, KEEL_EINVALID,
                         "desired shadow: device_seen %llu is ahead of this device (%.0f); "
                         "the cloud holds another device's state?",
                         (unsigned long long)seen, num(s->doc, "device"));
    }
    cJSON *keys = cJSON_GetObjectItemCaseSensitive(s->doc, "keys");
    cJSON *cl = cJSON_GetObjectItemCaseSensitive(s->doc, "conflicts");
    cJSON_ArrayForEach(it, set)
    {
        const cJSON *cur = cJSON_GetObjectItemCaseSensitive(keys, it->string);
        const char *src =
            cur ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cur, "source")) : NULL;
        bool local_newer = cur && num(cur, "d") > (double)seen && src && !strcmp(src, "local");
        if (local_newer) { /* concurrent: the device's change wins, said out loud */
            conflicts++;
            cJSON *c = cJSON_CreateObject();
            cJSON_AddStringToObject(c, "key", it->string);
            cJSON_AddItemToObject(
                c, "kept_local",
                cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(cur, "value"), 1));
            cJSON_AddItemToObject(c, "remote", cJSON_Duplicate(it, 1));
            cJSON_AddNumberToObject(c, "remote_version", (double)version);
            cJSON_AddNumberToObject(c, "at", (double)keel__now_wall_s());
            cJSON_AddStringToObject(c, "rule", "local change made after the cloud's view wins");
            if (cJSON_GetArraySize(cl) >= MAX_CONFLICTS)
                cJSON_DeleteItemFromArray(cl, 0);
            cJSON_AddItemToArray(cl, c);
            char *lv = keel__json_print(cJSON_GetObjectItemCaseSensitive(cur, "value"));
            char *rv = keel__json_print(it);
            KEEL_LOG_W(MOD,
                       "conflict on \"%s\": kept the local %s over the cloud's %s (version %llu)",
                       it->string, lv ? lv : "?", rv ? rv : "?", (unsigned long long)version);
            free(lv);
            free(rv);
            continue;
        }
        cJSON *v = cJSON_Duplicate(it, 1);
        if (!v || (rc = write_key(s, it->string, v, (double)seen, (double)version, "cloud", err)))
            break;
        applied++;
    }
    if (!rc) {
        set_num(s->doc, "cloud_seen", (double)version);
        rc = save(s, err);
    }
    pthread_mutex_unlock(&s->mu);
    cJSON_Delete(j);
    *ret_applied = applied;
    *ret_conflicts = conflicts;
    return rc;
}

char *keel__shadow_get(keel__shadow *s, const char *key)
{
    pthread_mutex_lock(&s->mu);
    const cJSON *k =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s->doc, "keys"), key);
    char *v = k ? keel__json_print(cJSON_GetObjectItemCaseSensitive(k, "value")) : NULL;
    pthread_mutex_unlock(&s->mu);
    return v;
}

char *keel__shadow_json(keel__shadow *s)
{
    pthread_mutex_lock(&s->mu);
    char *v = keel__json_print(s->doc);
    pthread_mutex_unlock(&s->mu);
    return v;
}
