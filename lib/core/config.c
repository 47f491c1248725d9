/* config.c - keeld's config file: `key = value` lines, bounded and strict. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

#define CONFIG_FILE_MAX (1024 * 1024)
#define CONFIG_LINE_MAX 4096

void keel_limits_default(keel_limits *ret)
{
    ret->max_package_bytes = 16ull << 30; /* 16 GiB: large LLMs fit */
    ret->max_file_bytes = 16ull << 30;
    ret->max_manifest_bytes = 64u << 20; /* chunk lists of a 16 GiB package fit */
    ret->max_sig_bytes = 64u << 10;
    ret->max_files = 10000;
}

void keel_config_default(keel_config *ret)
{
    memset(ret, 0, sizeof(*ret));
    keel__strlcpy(ret->state_dir, "/var/lib/keel", sizeof(ret->state_dir));
    keel__strlcpy(ret->listen, "127.0.0.1", sizeof(ret->listen));
    ret->port = 8480;
    ret->threads = 2;
    ret->max_body_bytes = 1u << 20;
    ret->max_infer_body_bytes = 64u << 20;
    ret->max_sessions = 1024;
    ret->session_idle_s = 300;
    ret->queue_sync = false;
    ret->queue_max_bytes = 256u << 20;
    ret->queue_max_rows = 1000000;
    ret->queue_min_free = 64u << 20;
    keel__strlcpy(ret->uplink, "none", sizeof(ret->uplink));
    keel__strlcpy(ret->sync_window, "always", sizeof(ret->sync_window));
    if (gethostname(ret->device_id, sizeof(ret->device_id)) || !ret->device_id[0])
        keel__strlcpy(ret->device_id, "keel", sizeof(ret->device_id));
    ret->device_id[sizeof(ret->device_id) - 1] = 0;
    ret->request_timeout_s = 30;
    ret->max_connections = 64;
    ret->verify_interval_s = 86400;
    ret->log_level = KEEL_LOG_INFO;
    ret->syslog = false;
    keel_limits_default(&ret->limits);
}

void keel_config_trust_dir(const keel_config *cfg, char *buf, size_t n)
{
    if (cfg->trust_dir[0])
        keel__strlcpy(buf, cfg->trust_dir, n);
    else
        snprintf(buf, n, "%s/trust", cfg->state_dir);
}

static int parse_u64(const char *v, uint64_t max, const char *suffixes, uint64_t *ret)
{
    char *end;
    if (!isdigit((unsigned char)v[0]))
        return KEEL_EINVALID;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno)
        return KEEL_EINVALID;
    uint64_t mul = 1;
    if (*end && strchr(suffixes, *end) && end[1] == '\0') {
        switch (*end) {
        case 'K':
            mul = 1024;
            break;
        case 'M':
            mul = 1024 * 1024;
            break;
        case 'G':
            mul = 1024ull * 1024 * 1024;
            break;
        case 's':
            mul = 1;
            break;
        case 'm':
            mul = 60;
            break;
        case 'h':
            mul = 3600;
            break;
        case 'd':
            mul = 86400;
            break;
        default:
            return KEEL_EINVALID;
        }
    } else if (*end) {
        return KEEL_EINVALID;
    }
    if (x > max / mul)
        return KEEL_ETOOBIG;
    *ret = (uint64_t)x * mul;
    return KEEL_OK;
}

enum kind { K_PATH, K_STR64, K_PORT, K_UINT, K_SIZE, K_DUR, K_BOOL, K_LEVEL, K_SIZE32, K_COUNT32 };

struct key {
    const char *name;
    enum kind kind;
    size_t off;
    uint64_t min, max;
    const char *help;
};

#define OFF(f) offsetof(keel_config, f)
static const struct key keys[] = {
    {"state_dir", K_PATH, OFF(state_dir), 0, 0, "a directory path"},
    {"trust_dir", K_PATH, OFF(trust_dir), 0, 0, "a directory path"},
    {"unix_socket", K_PATH, OFF(unix_socket), 0, 0, "a socket path, or empty for none"},
    {"listen", K_STR64, OFF(listen), 0, 0, "an IPv4 or IPv6 address such as 127.0.0.1"},
    {"port", K_PORT, OFF(port), 0, 65535, "a TCP port 0..65535 (0 disables TCP)"},
    {"threads", K_UINT, OFF(threads), 1, 256, "a number of threads 1..256"},
    {"max_connections", K_UINT, OFF(max_connections), 1, 65536, "a count 1..65536"},
    {"read_auth", K_BOOL, OFF(read_auth), 0, 0,
     "true (GET /api/... needs the bearer token) or false (open to whoever reaches the "
     "listen address)"},
    {"request_timeout", K_DUR, OFF(request_timeout_s), 1, 86400, "a duration like 30s or 2m"},
    {"max_body", K_SIZE, OFF(max_body_bytes), 1024, 1ull << 32, "a size like 1M (>= 1K)"},
    {"max_infer_body", K_SIZE, OFF(max_infer_body_bytes), 1024, 1ull << 32,
     "a size like 64M (>= 1K)"},
    {"max_sessions", K_SIZE, OFF(max_sessions), 1, 1000000, "a count 1..1000000"},
    {"session_idle", K_DUR, OFF(session_idle_s), 1, 86400, "a duration like 5m"},
    {"device_id", K_STR64, OFF(device_id), 0, 0, "a name of 1..63 bytes"},
    {"queue_sync", K_BOOL, OFF(queue_sync), 0, 0,
     "true (fsync per message) or false (group commit; the same promise per message)"},
    {"queue_max_bytes", K_SIZE, OFF(queue_max_bytes), 0, 1ull << 50, "a size like 256M"},
    {"queue_max_rows", K_SIZE, OFF(queue_max_rows), 0, 1ull << 40, "a count"},
    {"queue_min_free", K_SIZE, OFF(queue_min_free), 0, 1ull << 50, "a size like 64M"},
    {"uplink", K_STR64, OFF(uplink), 0, 0, "none, mqtt or http"},
    {"mqtt_host", K_PATH, OFF(mqtt_host), 0, 0, "a host name or address"},
    {"mqtt_port", K_PORT, OFF(mqtt_port), 0, 65535, "a TCP port"},
    {"uplink_url", K_PATH, OFF(uplink_url), 0, 0, "an http:// or https:// URL"},
    {"uplink_ca", K_PATH, OFF(uplink_ca), 0, 0, "a CA certificate file (PEM)"},
    {"uplink_cert", K_PATH, OFF(uplink_cert), 0, 0, "a client certificate file (PEM)"},
    {"uplink_key", K_PATH, OFF(uplink_key), 0, 0, "a private key file (PEM)"},
    {"uplink_username", K_STR64, OFF(uplink_username), 0, 0, "a user name"},
    {"uplink_password_file", K_PATH, OFF(uplink_password_file), 0, 0,
     "a file holding the password"},
    {"sync_window", K_STR64, OFF(sync_window), 0, 0,
     "always, every 15m, 02:00-04:00, or both separated by a comma"},
    {"upstream_url", K_PATH, OFF(upstream_url), 0, 0,
     "an Open Inference Protocol endpoint like http://fog:8480, or empty"},
    {"uplink_bandwidth", K_SIZE, OFF(uplink_bandwidth), 0, 1ull << 40,
     "bytes per second like 64K, or 0 for no cap"},
    {"verify_interval", K_DUR, OFF(verify_interval_s), 0, 365ull * 86400,
     "a duration like 24h, or 0 to turn the background re-check off"},
    {"log_level", K_LEVEL, OFF(log_level), 0, 0, "one of error, warn, info, debug"},
    {"syslog", K_BOOL, OFF(syslog), 0, 0, "true or false"},
    {"max_package", K_SIZE, OFF(limits.max_package_bytes), 1024, 1ull << 50,
     "a size like 16G (>= 1K)"},
    {"max_file", K_SIZE, OFF(limits.max_file_bytes), 1, 1ull << 50, "a size like 8G"},
    {"max_manifest", K_SIZE32, OFF(limits.max_manifest_bytes), 1024, 1u << 30,
     "a size like 64M (1K..1G)"},
    {"max_files", K_COUNT32, OFF(limits.max_files), 1, 1000000, "a count 1..1000000"},
};
#undef OFF

int keel_config_set(keel_config *cfg, const char *key, const char *value, keel_error *err)
{
    const struct key *k = NULL;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].name, key) == 0)
            k = &keys[i];
    if (!k) {
        if (strncmp(key, "x-", 2) == 0)
            return KEEL_OK;
        return keel__err(err, KEEL_EINVALID,
                         "unknown setting \"%s\" (check the spelling; see packaging/keeld.conf "
                         "for every setting)",
                         key);
    }
    char *field = (char *)cfg + k->off;
    uint64_t v = 0;
    int rc = KEEL_OK;
    switch (k->kind) {
    case K_PATH:
        if (strlen(value) >= KEEL_CONFIG_PATH_MAX)
            return keel__err(err, KEEL_ETOOBIG, "%s: path longer than %d bytes", key,
                             KEEL_CONFIG_PATH_MAX - 1);
        keel__strlcpy(field, value, KEEL_CONFIG_PATH_MAX);
        return KEEL_OK;
    case K_STR64:
        if (strlen(value) >= 64 || !value[0])
            return keel__err(err, KEEL_EINVALID, "%s: expected %s", key, k->help);
        keel__strlcpy(field, value, 64);
        return KEEL_OK;
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on") ||
            !strcmp(value, "1"))
            *(bool *)field = true;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off") ||
                 !strcmp(value, "0"))
            *(bool *)field = false;
        else
            return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is not %s", key, value, k->help);
        return KEEL_OK;
    case K_LEVEL: {
        keel_log_level lv;
        if (keel_log_level_parse(value, &lv))
            return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is not %s", key, value, k->help);
        *(keel_log_level *)field = lv;
        return KEEL_OK;
    }
    case K_PORT:
    case K_UINT:
    case K_COUNT32:
        rc = parse_u64(value, k->max ? k->max : UINT32_MAX, "", &v);
        break;
    case K_SIZE:
    case K_SIZE32:
        rc = parse_u64(value, k->max, "KMG", &v);
        break;
    case K_DUR:
        rc = parse_u64(value, k->max, "smhd", &v);
        break;
    }
    if (rc || v < k->min || (k->max && v > k->max))
        return keel__err(err, KEEL_EINVALID, "%s: \"%s\" is not %s", key, value, k->help);
    switch (k->kind) {
    case K_PORT:
        *(uint16_t *)field = (uint16_t)v;
        break;
    case K_UINT:
        *(unsigned *)field = (unsigned)v;
        break;
    case K_COUNT32:
    case K_SIZE32:
        *(uint32_t *)field = (uint32_t)v;
        break;
    case K_SIZE:
    case K_DUR:
        *(uint64_t *)field = v;
        break;
    default:
        break;
    }
    return KEEL_OK;
}

static void trim(const char **s, const char **e)
{
    while (*s < *e && isspace((unsigned char)**s))
        (*s)++;
    while (*e > *s && isspace((unsigned char)(*e)[-1]))
        (*e)--;
}

int keel_config_parse(keel_config *cfg, const char *data, size_t len, const char *origin,
                      keel_error *err)
{
    const char *p = data, *end = data + len;
    unsigned lineno = 0;
    if (len > CONFIG_FILE_MAX)
        return keel__err(err, KEEL_ETOOBIG, "%s: config is larger than %d bytes", origin,
                         CONFIG_FILE_MAX);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *s = p, *e = le;
        char key[64], val[CONFIG_LINE_MAX];
        lineno++;
        p = eol ? eol + 1 : end;
        if ((size_t)(le - s) >= CONFIG_LINE_MAX)
            return keel__err(err, KEEL_ETOOBIG, "%s:%u: line longer than %d bytes", origin, lineno,
                             CONFIG_LINE_MAX);
        if (memchr(s, '\0', (size_t)(e - s)))
            return keel__err(err, KEEL_EINVALID, "%s:%u: NUL byte in line", origin, lineno);
        trim(&s, &e);
        if (s == e || *s == '#')
            continue;
        const char *eq = memchr(s, '=', (size_t)(e - s));
        if (!eq)
            return keel__err(err, KEEL_EINVALID, "%s:%u: expected \"key = value\", got \"%.*s\"",
                             origin, lineno, (int)(e - s > 60 ? 60 : e - s), s);
        const char *ks = s, *ke = eq, *vs = eq + 1, *ve = e;
        trim(&ks, &ke);
        trim(&vs, &ve);
        if (ke == ks || (size_t)(ke - ks) >= sizeof(key))
            return keel__err(err, KEEL_EINVALID, "%s:%u: missing or overlong key", origin, lineno);
        /* A trailing comment after an unquoted value. */
        if (vs < ve && *vs != '"') {
            const char *hash = memchr(vs, '#', (size_t)(ve - vs));
            if (hash) {
                ve = hash;
                trim(&vs, &ve);
            }
        }
        if (vs < ve && *vs == '"') {
            if (ve - vs < 2 || ve[-1] != '"')
                return keel__err(err, KEEL_EINVALID, "%s:%u: unterminated quoted value", origin,
                                 lineno);
            vs++;
            ve--;
        }
        memcpy(key, ks, (size_t)(ke - ks));
        key[ke - ks] = '\0';
        memcpy(val, vs, (size_t)(ve - vs));
        val[ve - vs] = '\0';
        int rc = keel_config_set(cfg, key, val, err);
        if (rc)
            return keel__err_prefix(err, "%s:%u", origin, lineno);
    }
    return KEEL_OK;
}

int keel_config_load(keel_config *cfg, const char *path, keel_error *err)
{
    char *data;
    size_t len;
    int rc = keel__fs_read(path, CONFIG_FILE_MAX, &data, &len, err);
    if (rc)
        return rc;
    rc = keel_config_parse(cfg, data, len, path, err);
    free(data);
    return rc;
}
