/*
 * api_chunks.c - LAN peers: GET /api/chunks/sha256/HEX serves a file this
 * device holds, by its SHA-256, when peer_serve is on: only a blob of an
 * installed version whose verification stamp still holds. Single byte
 * ranges (206, Content-Range; 416 outside the file); the bytes go out
 * from the file as the client reads them. Peers are untrusted mirrors:
 * the fetcher checks every byte against the signed manifest.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http/api.h"

/* Parses a Range header against size. 0: serve [*off, *off + *len);
 * 1: no usable range (absent, several, another unit): the whole file;
 * -1: unsatisfiable (416). */
static int parse_range(const char *h, uint64_t size, uint64_t *off, uint64_t *len)
{
    if (!h || strncmp(h, "bytes=", 6) || strchr(h, ','))
        return 1;
    const char *p = h + 6;
    char *end;
    while (*p == ' ')
        p++;
    if (*p == '-') { /* the last N bytes */
        if (p[1] < '0' || p[1] > '9')
            return 1;
        unsigned long long n = strtoull(p + 1, &end, 10);
        if (*end)
            return 1;
        if (!n || !size)
            return -1;
        if (n > size)
            n = size;
        *off = size - n;
        *len = n;
        return 0;
    }
    if (*p < '0' || *p > '9')
        return 1;
    unsigned long long a = strtoull(p, &end, 10), b;
    if (*end != '-')
        return 1;
    p = end + 1;
    if (!*p) {
        b = size ? size - 1 : 0;
    } else {
        if (*p < '0' || *p > '9')
            return 1;
        b = strtoull(p, &end, 10);
        if (*end || b < a)
            return 1;
    }
    if (a >= size)
        return -1;
    if (b >= size)
        b = size - 1;
    *off = a;
    *len = b - a + 1;
    return 0;
}

void keel__api_chunks_get(keel__hreq *q)
{
    keel__runtime *rt = keel__hreq_runtime(q);
    keel_error e = {0};
    char path[PATH_MAX];
    uint64_t size = 0, off = 0, len = 0;
    const char *hex = keel__hreq_param(q, "hex");
    if (!keel__runtime_setting_bool(rt, "peer_serve")) {
        keel__reply_error(q, 404, KEEL_ENOTFOUND,
                          "this keeld does not serve files to peers (set peer_serve = true in "
                          "keeld.conf and reload)");
        return;
    }
    if (keel_store_blob_path(keel__runtime_store(rt), hex, path, sizeof(path), &size, &e)) {
        if (e.code == KEEL_EINVALID)
            keel__reply_error(q, 400, KEEL_EINVALID, e.msg);
        else /* unknown and unverified alike: not served */
            keel__reply_error(q, 404, KEEL_ENOTFOUND, e.msg);
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || (uint64_t)st.st_size != size) {
        if (fd >= 0)
            close(fd);
        keel__reply_error(q, 404, KEEL_ENOTFOUND,
                          "the file changed on disk since it was verified; not served");
        return;
    }
    char cr[96], slen[32];
    int r = parse_range(keel__hreq_header(q, "Range"), size, &off, &len);
    if (r < 0) {
        close(fd);
        snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
        char msg[160];
        snprintf(msg, sizeof(msg), "the range is outside the file (%" PRIu64 " bytes)", size);
        keel_buf b;
        keel__buf_init(&b, 0);
        if (keel__buf_appendf(&b, "{\"error\":{\"code\":\"INVALID\",\"message\":\"%s\"}}\n", msg)) {
            keel__buf_done(&b);
            keel__reply_error(q, 500, KEEL_ENOMEM, "out of memory");
            return;
        }
        const char *hdrs[] = {"Content-Range", cr, NULL};
        size_t bl = b.len;
        keel__reply(q, 416, "application/json", keel__buf_steal(&b), bl, hdrs);
        return;
    }
    if (r > 0) {
        off = 0;
        len = size;
    }
    snprintf(slen, sizeof(slen), "%" PRIu64, len);
    snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, off, off + len - 1, size);
    const char *hdrs[] = {"Accept-Ranges",
                          "bytes",
                          "Cache-Control",
                          "public, max-age=31536000, immutable",
                          r == 0 ? "Content-Range" : NULL,
                          cr,
                          NULL};
    keel__reply_fd(q, r == 0 ? 206 : 200, "application/octet-stream", fd, off, len, hdrs);
}
