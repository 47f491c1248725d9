/*
 * oip.c - Open Inference Protocol (KServe v2) codec; see oip.h.
 *
 * Request:  {"id": "..", "parameters": {"tier": "secondary", "session": "mic-1",
 *            "binary_data_output": false},
 *            "inputs": [{"name", "shape", "datatype", "data" | parameters.binary_data_size}],
 *            "outputs": [{"name", "parameters": {"binary_data": true}}]}
 * With the binary extension the body is the JSON header followed by the
 * tensors' raw little-endian bytes, in input order; BYTES elements are a
 * 4-byte little-endian length and the bytes.
 */
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "http/oip.h"
#include "infer/infer.h"

static int dtype_of(const char *kserve)
{
    static const struct {
        const char *n;
        int dt;
    } t[] = {{"FP32", KEEL_DT_FLOAT32},  {"FP16", KEEL_DT_FLOAT16},  {"FP64", KEEL_DT_FLOAT64},
             {"BF16", KEEL_DT_BFLOAT16}, {"INT8", KEEL_DT_INT8},     {"INT16", KEEL_DT_INT16},
             {"INT32", KEEL_DT_INT32},   {"INT64", KEEL_DT_INT64},   {"UINT8", KEEL_DT_UINT8},
             {"UINT16", KEEL_DT_UINT16}, {"UINT32", KEEL_DT_UINT32}, {"UINT64", KEEL_DT_UINT64},
             {"BOOL", KEEL_DT_BOOL},     {"BYTES", KEEL_DT_STRING}};
    for (size_t i = 0; kserve && i < KEEL_ARRAY_LEN(t); i++)
        if (!strcmp(kserve, t[i].n))
            return t[i].dt;
    return 0;
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift;
        if ((man >> (shift - 1)) & 1u)
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (man >> 13);
    if (man & 0x1000u)
        h++; /* round half up (carry into the exponent is right) */
    return (uint16_t)h;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
    if (!exp) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    if (exp == 31)
        x = sign | 0x7f800000u | (man << 13);
    else
        x = sign | ((exp - 15 + 127) << 23) | (man << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* Flattens nested JSON arrays into a list of leaves (bounded). */
static int flatten(const cJSON *a, const cJSON **leaves, size_t max, size_t *n, unsigned depth,
                   const char *name, keel_error *err)
{
    const cJSON *e;
    if (depth > KEEL_TENSOR_MAX_DIMS)
        return keel__err(err, KEEL_EINVALID, "input \"%s\": data nests too deep", name);
    cJSON_ArrayForEach(e, a)
    {
        if (cJSON_IsArray(e)) {
            int rc = flatten(e, leaves, max, n, depth + 1, name, err);
            if (rc)
                return rc;
            continue;
        }
        if (*n == max)
            return keel__err(err, KEEL_EINVALID, "input \"%s\": more data than the shape holds",
                             name);
        leaves[(*n)++] = e;
    }
    return KEEL_OK;
}

/* --- fast path for large numeric "data" arrays -------------------------------------------- */

/*
 * A JSON request for an image carries hundreds of thousands of numbers; as
 * a cJSON tree that is one allocation per number. Before parsing, numeric
 * arrays that follow a "data" key are lifted out of the text: the copy that
 * cJSON parses holds {"$keel_span": N} in their place, and json_data reads
 * span N straight from the original text, without a tree.
 */
#define LIFT_MIN 2 /* every numeric array: 64-bit integers are read exactly from the text */

typedef struct span {
    const char *p;
    size_t n;
} span;

typedef struct lifted {
    char *text; /* what cJSON parses */
    size_t len;
    span *spans;
    size_t nspans, cap;
} lifted;

/* End of the JSON string starting at s[i] == '"' (index after the closing quote), or 0. */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

/* Length of a numeric (nested) array at s[i] == '[', or 0 if it holds
 * anything but numbers, true/false, commas, brackets and blanks. */
static size_t numeric_array(const char *s, size_t n, size_t i)
{
    int depth = 0;
    for (size_t j = i; j < n; j++) {
        char c = s[j];
        if (c == '[')
            depth++;
        else if (c == ']') {
            if (--depth == 0)
                return j + 1 - i;
        } else if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' ||
                     c == 'E' || c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t' ||
                     c == 't' || c == 'r' || c == 'u' || c == 'f' || c == 'a' || c == 'l' ||
                     c == 's'))
            return 0;
    }
    return 0;
}

static int lift(const char *s, size_t n, lifted *l)
{
    keel_buf b;
    size_t from = 0;
    keel__buf_init(&b, 0);
    memset(l, 0, sizeof(*l));
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '"')
            continue;
        size_t e = skip_string(s, n, i);
        if (!e)
            break; /* unterminated: let cJSON report it */
        bool is_data = e - i == 6 && !memcmp(s + i, "\"data\"", 6);
        i = e - 1;
        if (!is_data)
            continue;
        size_t j = e;
        while (j < n && (s[j] == ' ' || s[j] == '\n' || s[j] == '\r' || s[j] == '\t'))
            j++;
        if (j >= n || s[j] != ':')
            continue;
        for (j++; j < n && (s[j] == ' ' || s[j] == '\n' || s[j] == '\r' || s[j] == '\t'); j++) {
        }
        if (j >= n || s[j] != '[')
            continue;
        size_t alen = numeric_array(s, n, j);
        if (alen < LIFT_MIN)
            continue;
        if (l->nspans == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 8;
            span *g = realloc(l->spans, cap * sizeof(span));
            if (!g)
                goto nomem;
            l->spans = g;
            l->cap = cap;
        }
        l->spans[l->nspans] = (span){s + j, alen};
        if (keel__buf_append(&b, s + from, j - from) ||
            keel__buf_appendf(&b, "{\"$keel_span\":%zu}", l->nspans))
            goto nomem;
        l->nspans++;
        from = j + alen;
        i = from - 1;
    }
    if (!l->nspans) {
        keel__buf_done(&b);
        return KEEL_OK;
    }
    if (keel__buf_append(&b, s + from, n - from))
        goto nomem;
    l->len = b.len;
    l->text = keel__buf_steal(&b);
    return KEEL_OK;
nomem:
    keel__buf_done(&b);
    free(l->spans);
    l->spans = NULL;
    return KEEL_ENOMEM;
}

/* A JSON number at p (before end) into *ret, returning the end of it, or
 * NULL when it is not one. Numbers of at most 15 significant digits and a
 * decimal exponent within +-22 are exact in doubles, as are the powers of
 * ten up to 1e22, so one multiplication or division gives the correctly
 * rounded value (Clinger's fast path), the same as strtod; anything else
 * goes to strtod. Image tensors are mostly such numbers. */
static const char *parse_number(const char *p, const char *end, double *ret)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *q = p;
    bool neg = false;
    uint64_t mant = 0;
    int digits = 0, scale = 0;
    if (q < end && *q == '-') {
        neg = true;
        q++;
    }
    const char *first = q;
    while (q < end && *q >= '0' && *q <= '9') {
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(*q - '0');
            if (mant)
                digits++;
        } else {
            scale++;
        }
        q++;
    }
    if (q == first)
        return NULL;
    if (q < end && *q == '.') {
        const char *f = ++q;
        while (q < end && *q >= '0' && *q <= '9') {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*q - '0');
                if (mant)
                    digits++;
                scale--;
            }
            q++;
        }
        if (q == f)
            return NULL;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        const char *e = q + 1;
        bool eneg = false;
        int ex = 0, n = 0;
        if (e < end && (*e == '+' || *e == '-'))
            eneg = *e++ == '-';
        while (e < end && *e >= '0' && *e <= '9') {
            if (ex < 100000)
                ex = ex * 10 + (*e - '0');
            e++;
            n++;
        }
        if (!n)
            return NULL;
        scale += eneg ? -ex : ex;
        q = e;
    }
    if (digits <= 15 && scale >= -22 && scale <= 22) {
        double v = (double)mant;
        v = scale < 0 ? v / pow10[-scale] : v * pow10[scale];
        *ret = neg ? -v : v;
        return q;
    }
    char *se = NULL; /* strtod reads the same number (it stops where we did) */
    *ret = strtod(p, &se);
    return se == q ? q : NULL;
}

/* Reads up to max values of a lifted array into vals (doubles). */
static int span_values(const span *sp, double *vals, size_t max, size_t *ret_n, const char *name,
                       keel_error *err)
{
    const char *p = sp->p, *end = sp->p + sp->n;
    size_t n = 0;
    while (p < end) {
        char c = *p;
        if (c == '[' || c == ']' || c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            p++;
            continue;
        }
        if (n == max)
            return keel__err(err, KEEL_EINVALID, "input \"%s\": more data than the shape holds",
                             name);
        if (end - p >= 4 && !memcmp(p, "true", 4)) {
            vals[n++] = 1;
            p += 4;
            continue;
        }
        if (end - p >= 5 && !memcmp(p, "false", 5)) {
            vals[n++] = 0;
            p += 5;
            continue;
        }
        double d = 0;
        const char *q = parse_number(p, end, &d);
        if (!q || q >= end ||
            (*q != ',' && *q != ']' && *q != ' ' && *q != '\n' && *q != '\r' && *q != '\t'))
            return keel__err(err, KEEL_EINVALID, "input \"%s\": data [%zu] is not a number", name,
                             n);
        vals[n++] = d;
        p = q;
    }
    *ret_n = n;
    return KEEL_OK;
}

/* INT64/UINT64 straight from the text: a double would round above 2^53. */
static int span_ints(const span *sp, keel__tensor *t, size_t count, keel_error *err)
{
    const char *p = sp->p, *end = sp->p + sp->n;
    bool is_signed = t->dtype == KEEL_DT_INT64;
    size_t n = 0;
    uint64_t *v = malloc((count ? count : 1) * sizeof(uint64_t));
    if (!v)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    while (p < end) {
        char c = *p;
        if (c == '[' || c == ']' || c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            p++;
            continue;
        }
        const char *q = p;
        while (q < end && *q != ',' && *q != ']' && *q != ' ' && *q != '\n' && *q != '\r' &&
               *q != '\t')
            q++;
        int len = (int)(q - p);
        if (n == count) {
            free(v);
            return keel__err(err, KEEL_EINVALID, "input \"%s\": more data than the shape holds",
                             t->name);
        }
        char buf[32], *e = NULL;
        bool ok = len > 0 && len < (int)sizeof(buf) && strspn(p, "-0123456789") >= (size_t)len;
        if (ok) {
            memcpy(buf, p, (size_t)len);
            buf[len] = 0;
            errno = 0;
            if (is_signed) {
                long long x = strtoll(buf, &e, 10);
                memcpy(&v[n], &(int64_t){(int64_t)x}, 8);
            } else {
                ok = buf[0] != '-';
                v[n] = (uint64_t)strtoull(buf, &e, 10);
            }
            ok = ok && !*e && errno == 0;
        }
        if (!ok) {
            free(v);
            return keel__err(err, KEEL_EINVALID,
                             "input \"%s\": data [%zu] = %.*s is not an integer within %s", t->name,
                             n, len > 40 ? 40 : len, p, keel__kserve_dtype(t->dtype));
        }
        n++;
        p = q;
    }
    if (n != count) {
        free(v);
        return keel__err(err, KEEL_EINVALID, "input \"%s\": %zu values for a shape of %zu elements",
                         t->name, n, count);
    }
    t->data = v;
    t->nbytes = count * 8;
    return KEEL_OK;
}

/* The values an integer dtype holds (BOOL as 0..255, as ONNX stores it).
 * The 64-bit bounds are the largest doubles inside the type. */
static bool int_range(int dtype, double *lo, double *hi)
{
    static const struct {
        int dt;
        double lo, hi;
    } r[] = {{KEEL_DT_INT8, -128, 127},
             {KEEL_DT_INT16, -32768, 32767},
             {KEEL_DT_INT32, -2147483648.0, 2147483647.0},
             {KEEL_DT_INT64, -9.2233720368547758e18, 9.2233720368547748e18},
             {KEEL_DT_UINT8, 0, 255},
             {KEEL_DT_BOOL, 0, 255},
             {KEEL_DT_UINT16, 0, 65535},
             {KEEL_DT_UINT32, 0, 4294967295.0},
             {KEEL_DT_UINT64, 0, 1.8446744073709550e19}};
    for (size_t i = 0; i < KEEL_ARRAY_LEN(r); i++)
        if (r[i].dt == dtype) {
            *lo = r[i].lo;
            *hi = r[i].hi;
            return true;
        }
    return false;
}

static int json_data(const cJSON *data, const lifted *lf, keel__tensor *t, size_t count,
                     keel_error *err)
{
    size_t es = keel__dtype_size(t->dtype), n = 0;
    double *vals = NULL;
    int rc = KEEL_OK;
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(data, "$keel_span");
    if (cJSON_IsObject(data) && cJSON_IsNumber(sp) && lf && sp->valuedouble >= 0 &&
        (size_t)sp->valuedouble < lf->nspans) {
        if (t->dtype == KEEL_DT_STRING)
            return keel__err(err, KEEL_EINVALID, "input \"%s\": BYTES data must be strings",
                             t->name);
        if (t->dtype == KEEL_DT_INT64 || t->dtype == KEEL_DT_UINT64)
            return span_ints(&lf->spans[(size_t)sp->valuedouble], t, count, err);
        if (!(vals = malloc((count + 1) * sizeof(double))))
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        rc = span_values(&lf->spans[(size_t)sp->valuedouble], vals, count, &n, t->name, err);
    } else {
        const cJSON **leaves = calloc(count + 1, sizeof(*leaves));
        if (!leaves)
            return keel__err(err, KEEL_ENOMEM, "out of memory");
        rc = cJSON_IsArray(data) ? flatten(data, leaves, count, &n, 0, t->name, err)
                                 : keel__err(err, KEEL_EINVALID,
                                             "input \"%s\": \"data\" must be an array", t->name);
        if (!rc && n == count && t->dtype == KEEL_DT_STRING) {
            keel_buf b;
            keel__buf_init(&b, 0);
            for (size_t i = 0; !rc && i < n; i++) {
                if (!cJSON_IsString(leaves[i]))
                    rc = keel__err(err, KEEL_EINVALID,
                                   "input \"%s\": BYTES data [%zu] is not a string", t->name, i);
                else if (keel__buf_append(&b, leaves[i]->valuestring,
                                          strlen(leaves[i]->valuestring) + 1))
                    rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            }
            free(leaves);
            if (rc) {
                keel__buf_done(&b);
                return rc;
            }
            t->nbytes = b.len;
            t->data = keel__buf_steal(&b);
            if (!t->data)
                t->data = calloc(1, 1);
            return t->data ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
        }
        if (!rc && !(vals = malloc((n + 1) * sizeof(double))))
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        for (size_t i = 0; !rc && i < n; i++) {
            const cJSON *v = leaves[i];
            if (cJSON_IsBool(v))
                vals[i] = cJSON_IsTrue(v) ? 1 : 0;
            else if (cJSON_IsNumber(v))
                vals[i] = v->valuedouble;
            else
                rc = keel__err(err, KEEL_EINVALID, "input \"%s\": data [%zu] is not a number",
                               t->name, i);
        }
        free(leaves);
    }
    if (!rc && n != count)
        rc = keel__err(err, KEEL_EINVALID, "input \"%s\": %zu values for a shape of %zu elements",
                       t->name, n, count);
    if (rc) {
        free(vals);
        return rc;
    }
    t->nbytes = count * es;
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->data) {
        free(vals);
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        double d = vals[i];
        bool integral = t->dtype != KEEL_DT_FLOAT32 && t->dtype != KEEL_DT_FLOAT64 &&
                        t->dtype != KEEL_DT_FLOAT16 && t->dtype != KEEL_DT_BFLOAT16;
        if (integral && d != floor(d)) {
            free(vals);
            return keel__err(err, KEEL_EINVALID,
                             "input \"%s\": data [%zu] = %g is not an integer for %s", t->name, i,
                             d, keel__kserve_dtype(t->dtype));
        }
        uint8_t *p = (uint8_t *)t->data + i * es;
        double lo, hi;
        if (t->dtype == KEEL_DT_FLOAT16) {
            uint16_t h = f32_to_f16((float)d);
            memcpy(p, &h, 2);
        } else if (t->dtype == KEEL_DT_BFLOAT16) {
            float f = (float)d;
            uint32_t x;
            memcpy(&x, &f, 4);
            uint16_t h = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
            memcpy(p, &h, 2);
        } else if (integral && int_range(t->dtype, &lo, &hi) && (d < lo || d > hi)) {
            goto range;
        } else if (!keel__tensor_set(t, i, d)) {
            free(vals);
            return keel__err(err, KEEL_EUNSUPPORTED, "input \"%s\": datatype %s from JSON", t->name,
                             keel__kserve_dtype(t->dtype));
        }
        continue;
    range:
        free(vals);
        return keel__err(err, KEEL_EINVALID, "input \"%s\": data [%zu] = %g is out of range for %s",
                         t->name, i, d, keel__kserve_dtype(t->dtype));
    }
    free(vals);
    return KEEL_OK;
}

/* BYTES in binary: 4-byte little-endian length + bytes, per element. */
static int binary_strings(const uint8_t *p, size_t len, keel__tensor *t, size_t count,
                          keel_error *err)
{
    keel_buf b;
    keel__buf_init(&b, 0);
    size_t o = 0;
    int rc = KEEL_OK;
    for (size_t i = 0; !rc && i < count; i++) {
        if (len - o < 4) {
            rc = keel__err(err, KEEL_EINVALID, "input \"%s\": binary BYTES element %zu truncated",
                           t->name, i);
            break;
        }
        uint32_t n = (uint32_t)p[o] | (uint32_t)p[o + 1] << 8 | (uint32_t)p[o + 2] << 16 |
                     (uint32_t)p[o + 3] << 24;
        o += 4;
        if (n > len - o || memchr(p + o, 0, n)) {
            rc = keel__err(err, KEEL_EINVALID,
                           "input \"%s\": binary BYTES element %zu is truncated or holds NUL",
                           t->name, i);
            break;
        }
        if ((rc = keel__buf_append(&b, p + o, n)) || (rc = keel__buf_append(&b, "", 1)))
            rc = keel__err(err, rc, "out of memory");
        o += n;
    }
    if (!rc && o != len)
        rc = keel__err(err, KEEL_EINVALID, "input \"%s\": %zu extra bytes after %zu BYTES elements",
                       t->name, len - o, count);
    if (rc) {
        keel__buf_done(&b);
        return rc;
    }
    t->nbytes = b.len;
    t->data = keel__buf_steal(&b);
    if (!t->data)
        t->data = calloc(1, 1);
    return t->data ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
}

static int base64_image(const char *s, keel__oip_req *r, keel_error *err)
{
    size_t n = strlen(s);
    if (n > (96u << 20))
        return keel__err(err, KEEL_ETOOBIG, "image: base64 text over 96 MiB");
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (!out)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (len < 0 || n % 4) {
        free(out);
        return keel__err(err, KEEL_EINVALID, "image: data is not valid base64");
    }
    while (n && s[n - 1] == '=') { /* EVP_DecodeBlock counts padding as zero bytes */
        n--;
        len--;
    }
    r->image = out;
    r->req.image = out;
    r->req.image_len = (size_t)len;
    return KEEL_OK;
}

static int parse_param_str(const cJSON *params, const char *key, char *out, size_t n,
                           keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(params, key);
    if (!v)
        return KEEL_OK;
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n)
        return keel__err(err, KEEL_EINVALID, "parameters.%s: expected a string under %zu bytes",
                         key, n);
    keel__strlcpy(out, v->valuestring, n);
    return KEEL_OK;
}

int keel__oip_parse(const char *body, size_t len, size_t json_len, const char *image_input,
                    keel__oip_req *r, keel_error *err)
{
    cJSON *root = NULL;
    const cJSON *inputs = NULL, *it, *params;
    memset(r, 0, sizeof(*r));
    if (json_len > len)
        return keel__err(err, KEEL_EINVALID,
                         "Inference-Header-Content-Length %zu is larger than the body (%zu)",
                         json_len, len);
    lifted lf;
    if (lift(body, json_len, &lf))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    int rc = lf.text ? keel__json_parse(lf.text, lf.len, "request", &root, err)
                     : keel__json_parse(body, json_len, "request", &root, err);
    if (rc) {
        free(lf.text);
        free(lf.spans);
        return rc;
    }
    const char *id = NULL;
    if ((rc = keel__json_str(root, "id", false, sizeof(r->id) - 1, &id, "request", err)) ||
        (rc = keel__json_member(root, "inputs", cJSON_Array, true, &inputs, "request", err)))
        goto out;
    if (id)
        keel__strlcpy(r->id, id, sizeof(r->id));
    params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if (params && !cJSON_IsObject(params)) {
        rc = keel__err(err, KEEL_EINVALID, "parameters: expected an object");
        goto out;
    }
    if ((rc = parse_param_str(params, "tier", r->tier, sizeof(r->tier), err)) ||
        (rc = parse_param_str(params, "session", r->session, sizeof(r->session), err)))
        goto out;
    r->binary_all = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(params, "binary_data_output"));
    r->complex = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(params, "complex"));
    size_t off = json_len; /* binary data cursor */
    cJSON_ArrayForEach(it, inputs)
    {
        char where[32];
        snprintf(where, sizeof(where), "inputs[%zu]", r->ntensors);
        if (r->ntensors == KEEL__MAX_IO) {
            rc = keel__err(err, KEEL_ETOOBIG, "more than %d inputs", KEEL__MAX_IO);
            goto out;
        }
        const char *name = NULL, *dt = NULL;
        const cJSON *shape = NULL, *data, *ip, *d;
        if ((rc = keel__json_str(it, "name", true, 63, &name, where, err)) ||
            (rc = keel__json_str(it, "datatype", true, 8, &dt, where, err)) ||
            (rc = keel__json_member(it, "shape", cJSON_Array, true, &shape, where, err)))
            goto out;
        keel__tensor *t = &r->tensors[r->ntensors];
        memset(t, 0, sizeof(*t));
        t->name = cJSON_GetObjectItemCaseSensitive(it, "name")->valuestring;
        if (!(t->dtype = dtype_of(dt))) {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s.datatype: \"%s\" is not an Open Inference Protocol type (FP32, "
                           "INT64, BYTES, ...)",
                           where, dt);
            goto out;
        }
        size_t count = 1;
        cJSON_ArrayForEach(d, shape)
        {
            if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 1e9 ||
                d->valuedouble != floor(d->valuedouble) || t->ndim == KEEL_TENSOR_MAX_DIMS) {
                rc = keel__err(err, KEEL_EINVALID,
                               "%s.shape: expected up to %d non-negative integers", where,
                               KEEL_TENSOR_MAX_DIMS);
                goto out;
            }
            t->shape[t->ndim++] = (int64_t)d->valuedouble;
            count *= (size_t)d->valuedouble;
            if (count > (1u << 28)) {
                rc = keel__err(err, KEEL_ETOOBIG, "%s.shape: over 2^28 elements", where);
                goto out;
            }
        }
        ip = cJSON_GetObjectItemCaseSensitive(it, "parameters");
        data = cJSON_GetObjectItemCaseSensitive(it, "data");
        const cJSON *bsize = cJSON_GetObjectItemCaseSensitive(ip, "binary_data_size");
        bool is_image = image_input && !strcmp(name, image_input) && t->dtype == KEEL_DT_STRING;
        /* JSON values take 2 bytes at least ("0,"): a shape the text cannot
         * hold is refused before anything is allocated for it */
        if (!bsize && count > json_len / 2 + 1) {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s.shape: %zu elements, more than a %zu-byte request can carry", where,
                           count, json_len);
            goto out;
        }
        if (is_image && r->req.image) {
            rc = keel__err(err, KEEL_EINVALID, "%s: the image input is given twice", where);
            goto out;
        }
        r->owned[r->ntensors] = true;
        if (bsize) {
            uint64_t bs = 0;
            if (!keel__json_is_uint(bsize, &bs) || bs > len - off) {
                rc = keel__err(err, KEEL_EINVALID,
                               "%s.parameters.binary_data_size: %s; %zu bytes of binary data "
                               "are left",
                               where,
                               keel__json_is_uint(bsize, &bs) ? "runs past the body"
                                                              : "expected a byte count",
                               len - off);
                goto out;
            }
            const char *p = body + off;
            off += (size_t)bs;
            if (is_image) {
                /* BYTES in binary: a 4-byte length, then the bytes; bare bytes too */
                const uint8_t *u = (const uint8_t *)p;
                if (bs >= 4 && ((uint64_t)u[0] | (uint64_t)u[1] << 8 | (uint64_t)u[2] << 16 |
                                (uint64_t)u[3] << 24) == bs - 4) {
                    p += 4;
                    bs -= 4;
                }
                r->req.image = p;
                r->req.image_len = (size_t)bs;
                t->name = NULL; /* not a tensor */
                r->owned[r->ntensors] = false;
                continue;
            }
            if (t->dtype == KEEL_DT_STRING) {
                if ((rc = binary_strings((const uint8_t *)p, (size_t)bs, t, count, err)))
                    goto out;
            } else {
                size_t want = count * keel__dtype_size(t->dtype);
                if (bs != want) {
                    rc = keel__err(err, KEEL_EINVALID,
                                   "%s: binary_data_size %llu, but shape and %s need %zu bytes",
                                   where, (unsigned long long)bs, dt, want);
                    goto out;
                }
                t->nbytes = want;
                if ((uintptr_t)p % 8 == 0) { /* in place: the body outlives the request */
                    t->data = (void *)(uintptr_t)p;
                    r->owned[r->ntensors] = false;
                } else { /* misaligned for the element type: copy */
                    if (!(t->data = malloc(want ? want : 1))) {
                        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
                        goto out;
                    }
                    if (want)
                        memcpy(t->data, p, want);
                }
            }
        } else if (is_image) {
            const cJSON *first = cJSON_GetArrayItem(data, 0);
            while (cJSON_IsArray(first))
                first = cJSON_GetArrayItem(first, 0);
            if (!cJSON_IsString(first)) {
                rc = keel__err(err, KEEL_EINVALID, "%s: an image input takes one base64 string",
                               where);
                goto out;
            }
            if ((rc = base64_image(first->valuestring, r, err)))
                goto out;
            t->name = NULL; /* not a tensor */
            r->owned[r->ntensors] = false;
            continue;
        } else if (!data) {
            rc = keel__err(err, KEEL_EINVALID,
                           "%s: no \"data\" (or parameters.binary_data_size with binary data)",
                           where);
            goto out;
        } else if ((rc = json_data(data, &lf, t, count, err))) {
            goto out;
        }
        r->ntensors++;
    }
    if (off != len) {
        rc = keel__err(err, KEEL_EINVALID, "%zu bytes of binary data are not claimed by any input",
                       len - off);
        goto out;
    }
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(root, "outputs");
    if (outs && !cJSON_IsArray(outs)) {
        rc = keel__err(err, KEEL_EINVALID, "outputs: expected an array");
        goto out;
    }
    cJSON_ArrayForEach(it, outs)
    {
        const char *name = NULL;
        if (r->noutputs == KEEL__MAX_IO ||
            (rc = keel__json_str(it, "name", true, 63, &name, "outputs[]", err))) {
            rc = rc ? rc : keel__err(err, KEEL_ETOOBIG, "outputs: more than %d", KEEL__MAX_IO);
            goto out;
        }
        keel__strlcpy(r->outputs[r->noutputs], name, sizeof(r->outputs[0]));
        r->req.outputs[r->noutputs] = r->outputs[r->noutputs]; /* lib/infer checks the names */
        r->out_binary[r->noutputs] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(it, "parameters"), "binary_data"));
        r->noutputs++;
    }
out:
    /* names point into root: keep copies */
    for (size_t i = 0; !rc && i < r->ntensors; i++) {
        char *copy = strdup(r->tensors[i].name);
        if (!copy) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            break;
        }
        r->tensors[i].name = copy;
    }
    if (rc) /* names (of the input being read too) point into the freed tree */
        for (size_t i = 0; i < KEEL__MAX_IO; i++)
            r->tensors[i].name = NULL;
    cJSON_Delete(root);
    free(lf.text);
    free(lf.spans);
    if (rc) {
        keel__oip_done(r);
        return rc;
    }
    r->req.inputs = r->tensors;
    r->req.ninputs = r->ntensors;
    r->req.noutputs = r->noutputs;
    r->req.tier = r->tier[0] ? r->tier : NULL;
    r->req.session = r->session[0] ? r->session : NULL;
    return KEEL_OK;
}

void keel__oip_done(keel__oip_req *r)
{
    for (size_t i = 0; i < KEEL__MAX_IO; i++) {
        if (r->owned[i])
            free(r->tensors[i].data);
        union {
            const char *c;
            char *m;
        } u = {r->tensors[i].name};
        free(u.m);
        r->tensors[i].name = NULL;
        r->tensors[i].data = NULL;
        r->owned[i] = false;
    }
    free(r->image);
    r->image = NULL;
}

/* --- responses ---------------------------------------------------------------------------- */

static int num_json(keel_buf *b, const keel__tensor *t, size_t i)
{
    const uint8_t *p = (const uint8_t *)t->data;
    double d;
    switch (t->dtype) {
    case KEEL_DT_FLOAT32: {
        float f;
        memcpy(&f, p + i * 4, 4);
        return isfinite(f) ? keel__buf_appendf(b, "%.9g", (double)f)
                           : keel__buf_append(b, "null", 4);
    }
    case KEEL_DT_FLOAT64:
        memcpy(&d, p + i * 8, 8);
        return isfinite(d) ? keel__buf_appendf(b, "%.17g", d) : keel__buf_append(b, "null", 4);
    case KEEL_DT_FLOAT16:
    case KEEL_DT_BFLOAT16: {
        uint16_t h;
        memcpy(&h, p + i * 2, 2);
        float f = t->dtype == KEEL_DT_FLOAT16 ? f16_to_f32(h) : bf16_to_f32(h);
        return isfinite(f) ? keel__buf_appendf(b, "%.9g", (double)f)
                           : keel__buf_append(b, "null", 4);
    }
    case KEEL_DT_INT8:
        return keel__buf_appendf(b, "%d", ((const int8_t *)t->data)[i]);
    case KEEL_DT_INT16:
        return keel__buf_appendf(b, "%d", ((const int16_t *)t->data)[i]);
    case KEEL_DT_INT32:
        return keel__buf_appendf(b, "%d", ((const int32_t *)t->data)[i]);
    case KEEL_DT_INT64:
        return keel__buf_appendf(b, "%lld", (long long)((const int64_t *)t->data)[i]);
    case KEEL_DT_UINT8:
        return keel__buf_appendf(b, "%u", p[i]);
    case KEEL_DT_BOOL:
        return keel__buf_appendf(b, "%s", p[i] ? "true" : "false");
    case KEEL_DT_UINT16:
        return keel__buf_appendf(b, "%u", ((const uint16_t *)t->data)[i]);
    case KEEL_DT_UINT32:
        return keel__buf_appendf(b, "%u", ((const uint32_t *)t->data)[i]);
    case KEEL_DT_UINT64:
        return keel__buf_appendf(b, "%llu", (unsigned long long)((const uint64_t *)t->data)[i]);
    default:
        return KEEL_EUNSUPPORTED;
    }
}

static bool wants(const keel__oip_req *r, const char *name, bool *binary)
{
    *binary = r->binary_all;
    if (!r->noutputs)
        return true;
    for (size_t i = 0; i < r->noutputs; i++)
        if (!strcmp(r->outputs[i], name)) {
            *binary = r->binary_all || r->out_binary[i];
            return true;
        }
    return false;
}

int keel__oip_response(const keel__oip_req *r, const keel__infer_resp *resp, char **ret,
                       size_t *ret_len, size_t *ret_json_len, keel_error *err)
{
    keel_buf b, bin;
    keel__buf_init(&b, 0);
    keel__buf_init(&bin, 0);
    int rc = keel__buf_append(&b, "{\"model_name\":", 14);
    if (!rc)
        rc = keel__json_quote(&b, resp->model);
    if (!rc)
        rc = keel__buf_append(&b, ",\"model_version\":", 17);
    if (!rc)
        rc = keel__json_quote(&b, resp->version);
    if (!rc && r->id[0]) {
        rc = keel__buf_append(&b, ",\"id\":", 6);
        if (!rc)
            rc = keel__json_quote(&b, r->id);
    }
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"parameters\":{\"tier\":");
    if (!rc)
        rc = keel__json_quote(&b, resp->tier);
    if (!rc)
        rc = keel__buf_appendf(&b,
                               ",\"backend\":\"%s\",\"package\":\"%s@%s\","
                               "\"package_digest\":\"%s\",\"degraded\":%s,"
                               "\"fallback_reason\":",
                               resp->backend, resp->model, resp->version, resp->digest,
                               resp->degraded ? "true" : "false");
    if (!rc)
        rc = keel__json_quote(&b, resp->reason);
    if (!rc && resp->escalation[0]) {
        rc = keel__buf_append(&b, ",\"escalation\":", 14);
        if (!rc)
            rc = keel__json_quote(&b, resp->escalation);
    }
    if (!rc)
        rc = keel__buf_appendf(&b, ",\"latency_us\":%.1f},\"outputs\":[", (double)resp->ns / 1e3);
    size_t k = 0;
    for (size_t i = 0; !rc && i < resp->noutputs; i++) {
        const keel__tensor *t = &resp->outputs[i];
        bool binary = false;
        if (!wants(r, t->name, &binary))
            continue;
        rc = keel__buf_appendf(&b, "%s{\"name\":", k++ ? "," : "");
        if (!rc)
            rc = keel__json_quote(&b, t->name);
        if (t->dtype == KEEL_DT_JSON) { /* sequence/map output: its JSON, as is */
            cJSON *j = NULL;
            int count = 1;
            if (!keel__json_parse(t->data, t->nbytes, "output", &j, NULL) && cJSON_IsArray(j))
                count = cJSON_GetArraySize(j);
            cJSON_Delete(j);
            if (!rc)
                rc = keel__buf_appendf(&b,
                                       ",\"datatype\":\"BYTES\",\"shape\":[%d],\"data\":", count);
            if (!rc)
                rc = keel__buf_append(&b, t->data, t->nbytes);
            if (!rc)
                rc = keel__buf_append(&b, "}", 1);
            continue;
        }
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"datatype\":\"%s\",\"shape\":[",
                                   keel__kserve_dtype(t->dtype));
        size_t count = 1;
        for (size_t d = 0; !rc && d < t->ndim; d++) {
            rc = keel__buf_appendf(&b, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            count *= (size_t)t->shape[d];
        }
        if (!rc)
            rc = keel__buf_append(&b, "]", 1);
        if (!rc && binary) {
            size_t start = bin.len;
            if (t->dtype == KEEL_DT_STRING) {
                const char *s = t->data;
                for (size_t e = 0; !rc && e < count; e++) {
                    uint32_t n = (uint32_t)strlen(s);
                    uint8_t le[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16),
                                     (uint8_t)(n >> 24)};
                    rc = keel__buf_append(&bin, le, 4);
                    if (!rc)
                        rc = keel__buf_append(&bin, s, n);
                    s += n + 1;
                }
            } else {
                rc = keel__buf_append(&bin, t->data, t->nbytes);
            }
            if (!rc)
                rc = keel__buf_appendf(&b, ",\"parameters\":{\"binary_data_size\":%zu}}",
                                       bin.len - start);
            continue;
        }
        if (!rc)
            rc = keel__buf_append(&b, ",\"data\":[", 9);
        if (t->dtype == KEEL_DT_STRING) {
            const char *s = t->data;
            for (size_t e = 0; !rc && e < count; e++) {
                rc = e ? keel__buf_append(&b, ",", 1) : 0;
                if (!rc)
                    rc = keel__json_quote(&b, s);
                s += strlen(s) + 1;
            }
        } else {
            for (size_t e = 0; !rc && e < count; e++) {
                rc = e ? keel__buf_append(&b, ",", 1) : 0;
                if (!rc)
                    rc = num_json(&b, t, e);
            }
        }
        if (!rc)
            rc = keel__buf_append(&b, "]}", 2);
    }
    if (!rc)
        rc = keel__buf_append(&b, "]", 1);
    if (!rc && resp->result) {
        rc = keel__buf_append(&b, ",\"result\":", 10);
        if (!rc)
            rc = keel__buf_append(&b, resp->result, strlen(resp->result));
    }
    if (!rc)
        rc = keel__buf_append(&b, "}", 1);
    size_t json_len = b.len;
    if (!rc && bin.len)
        rc = keel__buf_append(&b, bin.data, bin.len);
    keel__buf_done(&bin);
    if (rc) {
        keel__buf_done(&b);
        return keel__err(err, rc, "cannot encode the response");
    }
    *ret_len = b.len;
    *ret_json_len = json_len;
    *ret = keel__buf_steal(&b);
    return KEEL_OK;
}

/* --- model metadata and datatype names ------------------------------------------------ */

static const char *kserve_dtype(int dt)
{
    switch (dt) {
    case KEEL_DT_FLOAT32:
        return "FP32";
    case KEEL_DT_FLOAT16:
        return "FP16";
    case KEEL_DT_FLOAT64:
        return "FP64";
    case KEEL_DT_BFLOAT16:
        return "BF16";
    case KEEL_DT_INT8:
        return "INT8";
    case KEEL_DT_INT16:
        return "INT16";
    case KEEL_DT_INT32:
        return "INT32";
    case KEEL_DT_INT64:
        return "INT64";
    case KEEL_DT_UINT8:
        return "UINT8";
    case KEEL_DT_UINT16:
        return "UINT16";
    case KEEL_DT_UINT32:
        return "UINT32";
    case KEEL_DT_UINT64:
        return "UINT64";
    case KEEL_DT_BOOL:
        return "BOOL";
    case KEEL_DT_STRING:
        return "BYTES";
    default:
        return "BYTES"; /* JSON outputs travel as text */
    }
}

const char *keel__kserve_dtype(int dt)
{
    return kserve_dtype(dt);
}

static cJSON *decls_json(const keel__tensor *t, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++) {
        cJSON *o = cJSON_CreateObject(), *sh = cJSON_CreateArray();
        cJSON_AddStringToObject(o, "name", t[i].name);
        cJSON_AddStringToObject(o, "datatype", kserve_dtype(t[i].dtype));
        for (size_t d = 0; d < t[i].ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
        cJSON_AddItemToObject(o, "shape", sh);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

char *keel__model_metadata_json(const keel__model *m)
{
    keel__model_desc d;
    keel__model_describe(m, &d);
    cJSON *o = cJSON_CreateObject(), *v = cJSON_CreateArray(), *tiers = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "name", d.name);
    cJSON_AddItemToArray(v, cJSON_CreateString(d.version));
    cJSON_AddItemToObject(o, "versions", v);
    cJSON_AddStringToObject(o, "platform", "keel");
    cJSON_AddItemToObject(o, "inputs", decls_json(d.inputs, d.ninputs));
    cJSON_AddItemToObject(o, "outputs", decls_json(d.outputs, d.noutputs));
    cJSON *p = cJSON_AddObjectToObject(o, "parameters");
    cJSON_AddStringToObject(p, "package_digest", d.digest);
    if (d.image_input)
        cJSON_AddStringToObject(p, "image_input", d.image_input);
    for (size_t i = 0; i < d.ntiers; i++)
        cJSON_AddItemToArray(tiers, cJSON_CreateString(d.tiers[i]));
    cJSON_AddItemToObject(p, "tiers", tiers);
    char *s = keel__json_print(o);
    cJSON_Delete(o);
    return s;
}
