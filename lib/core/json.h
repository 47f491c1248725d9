/*
 * json.h - the adapter between keel and cJSON. Parsing is bounded by the
 * caller's length and cJSON's nesting limit; accessors check types and name
 * the field in their message ("keel.json: files[3].size: expected a
 * non-negative integer").
 */
#ifndef KEEL_CORE_JSON_H
#define KEEL_CORE_JSON_H

#include <cjson/cJSON.h>

#include "core/core.h"

/* Parses exactly len bytes. `what` names the document in messages. */
KEEL_WUR int keel__json_parse(const void *data, size_t len, const char *what, cJSON **ret,
                              keel_error *err);

/* Like keel__json_parse for a JSON object, but the top-level members named
 * `skip` are left out of the tree: their bytes are stepped over (strings
 * and brackets balanced), never parsed or checked further. For a package
 * manifest's "files" (a chunk list per file, ~1 MiB for a 1 GiB package)
 * when only its tiers and schemas are wanted: tens of thousands of cJSON
 * nodes fewer. A document that is not a well-formed object is parsed whole,
 * so its errors read as keel__json_parse's. */
KEEL_WUR int keel__json_parse_except(const void *data, size_t len, const char *skip,
                                     const char *what, cJSON **ret, keel_error *err);

/* Field accessors. `where` prefixes messages ("keel.json", "files[2]").
 * A missing optional field leaves *ret untouched and returns KEEL_OK. */
KEEL_WUR int keel__json_str(const cJSON *obj, const char *key, bool required, size_t maxlen,
                            const char **ret, const char *where, keel_error *err);
KEEL_WUR int keel__json_u64(const cJSON *obj, const char *key, bool required, uint64_t *ret,
                            const char *where, keel_error *err);
/* An array or object member of the given type (cJSON_Array/cJSON_Object). */
KEEL_WUR int keel__json_member(const cJSON *obj, const char *key, int type, bool required,
                               const cJSON **ret, const char *where, keel_error *err);
/* A number that is a non-negative integer <= 2^53. */
bool keel__json_is_uint(const cJSON *v, uint64_t *ret);
/* The header every keel document carries: a JSON object whose "format" is
 * 1 (higher: UNSUPPORTED, "upgrade keel") and whose "type" is type. */
KEEL_WUR int keel__json_doc_header(const cJSON *doc, const char *type, const char *what,
                                   keel_error *err);
/* Prints compactly (malloc'd). */
char *keel__json_print(const cJSON *v);
/* Appends s as a JSON string literal (with quotes) to b. */
KEEL_WUR int keel__json_quote(keel_buf *b, const char *s);

#endif
