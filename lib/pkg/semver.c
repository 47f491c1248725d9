/* semver.c - semantic version validation and precedence (semver.org 2.0.0). */
#include <string.h>

#include "core/core.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "keel/pkg.h"

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_ident(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* A numeric part: digits, no leading zero unless "0". Advances *p. */
static bool parse_num(const char **p)
{
    const char *s = *p;
    if (!is_digit(*s))
        return false;
    if (*s == '0' && is_digit(s[1]))
        return false;
    while (is_digit(*s))
        s++;
    if (s - *p > 18)
        return false; /* keeps comparisons within uint64 */
    *p = s;
    return true;
}

/* Dot-separated identifiers; numeric ones without leading zeros when strict. */
static bool parse_idents(const char **p, bool strict_numeric)
{
    const char *s = *p;
    for (;;) {
        const char *start = s;
        bool all_digits = true;
        while (is_ident(*s)) {
            if (!is_digit(*s))
                all_digits = false;
            s++;
        }
        if (s == start)
            return false;
        if (strict_numeric && all_digits && *start == '0' && s - start > 1)
            return false;
        if (*s != '.')
            break;
        s++;
    }
    *p = s;
    return true;
}

bool keel_semver_valid(const char *v)
{
    const char *p = v;
    if (!v || strlen(v) >= 64)
        return false;
    if (!parse_num(&p) || *p++ != '.' || !parse_num(&p) || *p++ != '.' || !parse_num(&p))
        return false;
    if (*p == '-') {
        p++;
        if (!parse_idents(&p, true))
            return false;
    }
    if (*p == '+') {
        p++;
        if (!parse_idents(&p, false))
            return false;
    }
    return *p == '\0';
}

static unsigned long long num_at(const char **p)
{
    unsigned long long n = 0;
    while (is_digit(**p))
        n = n * 10 + (unsigned long long)(*(*p)++ - '0');
    return n;
}

/* Compares one pre-release identifier [a, ae) with [b, be). */
static int ident_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    bool an = true, bn = true;
    for (size_t i = 0; i < al; i++)
        an = an && is_digit(a[i]);
    for (size_t i = 0; i < bl; i++)
        bn = bn && is_digit(b[i]);
    if (an && bn) {
        if (al != bl)
            return al < bl ? -1 : 1;
        int c = memcmp(a, b, al);
        return c < 0 ? -1 : c > 0;
    }
    if (an != bn)
        return an ? -1 : 1; /* numeric identifiers sort first */
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c)
        return c < 0 ? -1 : 1;
    return al == bl ? 0 : (al < bl ? -1 : 1);
}

int keel_semver_cmp(const char *a, const char *b)
{
    bool va = keel_semver_valid(a), vb = keel_semver_valid(b);
    if (!va || !vb)
        return va == vb ? 0 : (va ? 1 : -1);
    for (int i = 0; i < 3; i++) {
        unsigned long long x = num_at(&a), y = num_at(&b);
        if (x != y)
            return x < y ? -1 : 1;
        if (*a == '.')
            a++;
        if (*b == '.')
            b++;
    }
    /* Now at '-', '+' or end. A version with a pre-release sorts first. */
    bool pa = *a == '-', pb = *b == '-';
    if (!pa || !pb)
        return pa == pb ? 0 : (pa ? -1 : 1);
    a++;
    b++;
    for (;;) {
        size_t al = strcspn(a, ".+"), bl = strcspn(b, ".+");
        int c = ident_cmp(a, al, b, bl);
        if (c)
            return c;
        a += al;
        b += bl;
        bool ma = *a == '.', mb = *b == '.';
        if (!ma || !mb)
            return ma == mb ? 0 : (ma ? 1 : -1); /* more identifiers sort later */
        a++;
        b++;
    }
}
