/* json.c - cJSON adapter with type-checked, bounded field access. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a key that appears twice in one object, anywhere in the tree. Two
 * parsers that pick different copies of a duplicated key would read a
 * different document from the same signed bytes, so duplicates are refused. */
static const char *find_duplicate(const cJSON *v)
{
    for (; v; v = v->next) {
        if (cJSON_IsObject(v)) {
            size_t n = 0, i = 0;
            const cJSON *c;
            for (c = v->child; c; c = c->next)
                n++;
            if (n > 1) {
                const char **names = malloc(n * sizeof(*names));
                if (!names)
                    return "(out of memory)";
                for (c = v->child; c; c = c->next)
                    names[i++] = c->string ? c->string : "";
                qsort(names, n, sizeof(*names), name_cmp);
                const char *dup = NULL;
                for (i = 1; i < n && !dup; i++)
                    if (!strcmp(names[i - 1], names[i]))
                        dup = names[i];
                free(names);
                if (dup)
                    return dup;
            }
        }
        if ((cJSON_IsObject(v) || cJSON_IsArray(v)) && v->child) {
            const char *d = find_duplicate(v->child);
            if (d)
                return d;
        }
    }
    return NULL;
}

/* Finds a NUL inside the JSON text before `end`: a raw byte, or the escape
 * \u0000. cJSON would keep it in the string and every C reader would see the
 * string cut there ("a\u0000b" read as "a"); so it is refused. A backslash
 * only means something inside a string, and outside one the text is
 * malformed anyway, so a flat scan suffices. Returns the offset, or -1. */
static long long find_nul(const char *s, size_t end)
{
    for (size_t i = 0; i < end; i++) {
        if (s[i] == '\0')
            return (long long)i;
        if (s[i] == '\\' && i + 1 < end) {
            if (s[i + 1] == 'u' && i + 5 < end && !memcmp(s + i + 2, "0000", 4))
                return (long long)i;
            i++; /* the escaped character, whatever it is */
        }
    }
    return -1;
}

int keel__json_parse(const void *data, size_t len, const char *what, cJSON **ret, keel_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, len, &end, false);
    if (!root) {
        const char *s = data;
        size_t off = end && end >= s && end <= s + len ? (size_t)(end - s) : 0;
        size_t line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (s[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        if (len == 0)
            return keel__err(err, KEEL_EINVALID, "%s: empty document, expected JSON", what);
        return keel__err(err, KEEL_EINVALID,
                         "%s: malformed JSON near line %zu column %zu (byte %zu of %zu)", what,
                         line, col, off, len);
    }
    /* Trailing bytes other than whitespace are an error. */
    if (end) {
        const char *s = data;
        for (const char *p = end; p < s + len; p++) {
            if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
                cJSON_Delete(root);
                return keel__err(err, KEEL_EINVALID,
                                 "%s: unexpected bytes after the JSON value at byte %zu", what,
                                 (size_t)(p - s));
            }
        }
    }
    const char *s = data;
    long long nul = find_nul(s, end && end >= s && end <= s + len ? (size_t)(end - s) : len);
    if (nul >= 0) {
        cJSON_Delete(root);
        return keel__err(err, KEEL_EINVALID,
                         "%s: a string holds a NUL character (%s at byte %lld); keel refuses "
                         "NUL in JSON strings (send binary data base64-encoded or as binary "
                         "tensor data)",
                         what, s[nul] ? "\\u0000" : "a zero byte", nul);
    }
    const char *dup = find_duplicate(root);
    if (dup) {
        int rc = keel__err(err, KEEL_EINVALID, "%s: key \"%.100s\" appears twice in one object",
                           what, dup);
        cJSON_Delete(root);
        return rc;
    }
    *ret = root;
    return KEEL_OK;
}

bool keel__json_is_uint(const cJSON *v, uint64_t *ret)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return false;
    *ret = (uint64_t)d;
    return true;
}

int keel__json_member(const cJSON *obj, const char *key, int type, bool required, const cJSON **ret,
                      const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        if (required)
            return keel__err(err, KEEL_EINVALID, "%s: required field \"%s\" is missing", where,
                             key);
        return KEEL_OK;
    }
    if ((v->type & 0xFF) != type)
        return keel__err(err, KEEL_EINVALID, "%s: field \"%s\" must be an %s", where, key,
                         type == cJSON_Array ? "array" : "object");
    *ret = v;
    return KEEL_OK;
}

int keel__json_str(const cJSON *obj, const char *key, bool required, size_t maxlen,
                   const char **ret, const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        if (required)
            return keel__err(err, KEEL_EINVALID, "%s: required field \"%s\" is missing", where,
                             key);
        return KEEL_OK;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return keel__err(err, KEEL_EINVALID, "%s: field \"%s\" must be a string", where, key);
    if (maxlen && strlen(v->valuestring) > maxlen)
        return keel__err(err, KEEL_ETOOBIG, "%s: field \"%s\" is longer than %zu bytes", where, key,
                         maxlen);
    *ret = v->valuestring;
    return KEEL_OK;
}

int keel__json_u64(const cJSON *obj, const char *key, bool required, uint64_t *ret,
                   const char *where, keel_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        if (required)
            return keel__err(err, KEEL_EINVALID, "%s: required field \"%s\" is missing", where,
                             key);
        return KEEL_OK;
    }
    if (!keel__json_is_uint(v, ret))
        return keel__err(err, KEEL_EINVALID, "%s: field \"%s\" must be a non-negative integer",
                         where, key);
    return KEEL_OK;
}

char *keel__json_print(const cJSON *v)
{
    return cJSON_PrintUnformatted(v);
}

int keel__json_quote(keel_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    int rc = keel__buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; !rc && *p; p++) {
        char esc[7];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            rc = keel__buf_append(b, esc, 2);
        } else if (*p < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            rc = keel__buf_append(b, esc, 6);
        } else {
            rc = keel__buf_append(b, p, 1);
        }
    }
    return rc ? rc : keel__buf_append(b, "\"", 1);
}

/* --- parsing without some top-level members ----------------------------------- */

static size_t skip_ws(const char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is '"': returns the index just past the closing quote, or len. */
static size_t skip_string(const char *s, size_t i, size_t len)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* Returns the index just past the value starting at s[i], or len when it
 * does not end (unbalanced). Scalars end at ',', '}' or ']'. */
static size_t skip_value(const char *s, size_t i, size_t len)
{
    size_t depth = 0;
    if (i < len && s[i] == '"')
        return skip_string(s, i, len);
    while (i < len) {
        char c = s[i];
        if (c == '"') {
            i = skip_string(s, i, len);
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return i; /* the end of the enclosing object: a scalar ended */
            if (--depth == 0)
                return i + 1;
        } else if (c == ',' && depth == 0) {
            return i;
        }
        i++;
    }
    return len;
}

int keel__json_parse_except(const void *data, size_t len, const char *skip, const char *what,
                            cJSON **ret, keel_error *err)
{
    const char *s = data;
    size_t klen = strlen(skip), i = skip_ws(s, 0, len), o = 0;
    char *out = NULL;
    int rc;
    if (i >= len || s[i] != '{' || !(out = malloc(len)))
        goto whole;
    out[o++] = '{';
    for (i = skip_ws(s, i + 1, len); i < len && s[i] != '}';) {
        size_t key = i, kend, vend;
        if (s[i] != '"' || (kend = skip_string(s, i, len)) >= len)
            goto whole;
        i = skip_ws(s, kend, len);
        if (i >= len || s[i] != ':')
            goto whole;
        i = skip_ws(s, i + 1, len);
        if (i >= len || (vend = skip_value(s, i, len)) >= len)
            goto whole;
        if (!(kend - key == klen + 2 && memcmp(s + key + 1, skip, klen) == 0)) {
            if (o > 1)
                out[o++] = ',';
            memcpy(out + o, s + key, vend - key);
            o += vend - key;
        }
        i = skip_ws(s, vend, len);
        if (i < len && s[i] == ',') {
            i = skip_ws(s, i + 1, len);
            if (i >= len || s[i] != '"') /* a trailing comma */
                goto whole;
        } else if (i >= len || s[i] != '}') {
            goto whole;
        }
    }
    if (i >= len)
        goto whole;
    out[o++] = '}';
    /* What follows the object is checked by the whole parse's rules. */
    i = skip_ws(s, i + 1, len);
    while (i < len && s[i] == '\0')
        i++;
    if (i != len)
        goto whole;
    rc = keel__json_parse(out, o, what, ret, err);
    free(out);
    return rc;
whole:
    free(out);
    return keel__json_parse(data, len, what, ret, err);
}

int keel__json_doc_header(const cJSON *doc, const char *type, const char *what, keel_error *err)
{
    uint64_t format = 0;
    const char *ty = NULL;
    int rc;
    if (!cJSON_IsObject(doc))
        return keel__err(err, KEEL_EINVALID, "%s: expected a JSON object", what);
    if ((rc = keel__json_u64(doc, "format", true, &format, what, err)))
        return rc;
    if (format != 1)
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "%s: format %llu is newer than this keel supports (1); upgrade keel", what,
                         (unsigned long long)format);
    if ((rc = keel__json_str(doc, "type", true, 64, &ty, what, err)))
        return rc;
    if (strcmp(ty, type) != 0)
        return keel__err(err, KEEL_EINVALID, "%s: \"type\" is \"%s\", expected \"%s\"", what, ty,
                         type);
    return KEEL_OK;
}
