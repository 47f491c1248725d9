/*
 * get.c - one small HTTP(S) GET with a size limit (get.h), through the
 * libcurl that libkeel loads on first use (core/curl_dl.h).
 */
#include <string.h>

#include "core/curl_dl.h"
#include "update/get.h"

typedef struct sink {
    keel_buf *out;
    bool over;
} sink;

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    sink *s = ud;
    if (keel__buf_append(s->out, p, sz * n)) {
        s->over = true;
        return 0; /* stops the transfer */
    }
    return sz * n;
}

int keel__update_get(const char *url, size_t max, unsigned timeout_s, keel_buf *out,
                     keel_error *err)
{
    int rc = keel__curl_load(err);
    if (rc)
        return rc;
    CURL *c = curl_easy_init();
    if (!c)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    sink s = {.out = out};
    out->max = max + 1; /* the buffer's NUL */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)(timeout_s < 10 ? timeout_s : 10));
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)timeout_s);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https,file");
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
    CURLcode cr = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (s.over || cr == CURLE_FILESIZE_EXCEEDED)
        rc = keel__err(err, KEEL_ETOOBIG, "%s is larger than %zu bytes; refusing it", url, max);
    else if (cr != CURLE_OK)
        rc = keel__err(err, KEEL_ENOCONN, "cannot reach %s: %s", url, curl_easy_strerror(cr));
    else if (!strncmp(url, "file:", 5))
        rc = KEEL_OK; /* no status: curl's error above says when the file is missing */
    else if (status == 404)
        rc = keel__err(err, KEEL_ENOTFOUND, "%s: not found (HTTP 404)", url);
    else if (status != 200)
        rc = keel__err(err, KEEL_EIO, "%s: HTTP %ld", url, status);
    curl_easy_cleanup(c);
    return rc;
}
