/* buf.c - bounded growable buffers and small string helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

void keel__buf_init(keel_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void keel__buf_done(keel_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(keel_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1)
        return KEEL_ETOOBIG;
    size_t need = b->len + extra + 1;
    if (b->max && need - 1 > b->max)
        return KEEL_ETOOBIG;
    if (need <= b->cap)
        return KEEL_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return KEEL_ENOMEM;
    b->data = p;
    b->cap = cap;
    return KEEL_OK;
}

int keel__buf_append(keel_buf *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return KEEL_OK;
}

int keel__buf_appendf(keel_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return KEEL_EINVALID;
    if ((size_t)n < sizeof(small))
        return keel__buf_append(b, small, (size_t)n);
    int rc = buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return KEEL_OK;
}

char *keel__buf_steal(keel_buf *b)
{
    char *p = b->data;
    if (!p)
        p = calloc(1, 1);
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

size_t keel__strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strlen(src);
    if (n) {
        size_t c = len < n - 1 ? len : n - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return len;
}

int keel__snprintf(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(dst, n, fmt, ap);
    va_end(ap);
    if (r < 0)
        return KEEL_EINVALID;
    return (size_t)r >= n ? KEEL_ETOOBIG : KEEL_OK;
}

char *keel__strndup(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

/* One byte as keel__escape shows it, into e (4 bytes); returns its length. */
static size_t escape_byte(unsigned char b, char *e)
{
    static const char hex[] = "0123456789abcdef";
    if (b == '\\' || b == '"') {
        e[0] = '\\';
        e[1] = (char)b;
        return 2;
    }
    if (b >= 0x20 && b < 0x7f) {
        e[0] = (char)b;
        return 1;
    }
    e[0] = '\\';
    e[1] = 'x';
    e[2] = hex[b >> 4];
    e[3] = hex[b & 15];
    return 4;
}

const char *keel__escape(char *out, size_t n, const void *s, size_t len)
{
    const unsigned char *p = s;
    size_t o = 0, total = 0;
    char e[4];
    if (!n)
        return out;
    for (size_t i = 0; i < len; i++)
        total += escape_byte(p[i], e);
    /* all of it when it fits; else as much as leaves room for "..." */
    size_t room = total < n ? n - 1 : (n > 4 ? n - 4 : 0);
    for (size_t i = 0; i < len; i++) {
        size_t k = escape_byte(p[i], e);
        if (o + k > room)
            break;
        memcpy(out + o, e, k);
        o += k;
    }
    if (total >= n) {
        size_t d = n - 1 - o < 3 ? n - 1 - o : 3;
        memcpy(out + o, "...", d);
        o += d;
    }
    out[o] = '\0';
    return out;
}
