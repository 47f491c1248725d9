/*
 * conf.h - settings declared by the modules that own them. Each module
 * lists its options (name, type, default, range, whether a reload applies
 * them at run time, and what a valid value looks like) in a table of its
 * own (lib/<module>/options.c); the runtime gathers the tables, parses the
 * config file against them, validates, and on reload tells which settings
 * changed and which of those need a restart. No settings struct crosses
 * the public API: a new setting is a new row, not a new ABI.
 *
 * The file format is small: one `key = value` per line, `#` starts a
 * comment (also after an unquoted value), blank lines ignored, values may
 * be "double quoted". Unknown keys are an error (a typo must not silently
 * change nothing), unless they start with `x-` (reserved for local tooling).
 * Sizes accept K/M/G suffixes (powers of 1024), durations s/m/h/d.
 *
 * Thread safety: a keel__conf is not locked; the runtime swaps whole
 * copies on reload.
 */
#ifndef KEEL_CORE_CONF_H
#define KEEL_CORE_CONF_H

#include "core/core.h"

#define KEEL__CONF_FILE_MAX (1024 * 1024)
#define KEEL__CONF_LINE_MAX 4096
#define KEEL__CONF_PATH_MAX 1024 /* PATH values, with the NUL */
#define KEEL__CONF_STR_MAX  64   /* STR values, with the NUL */

typedef enum keel__opt_kind {
    KEEL__OPT_PATH,  /* a path or URL, up to KEEL__CONF_PATH_MAX - 1 bytes, may be empty */
    KEEL__OPT_STR,   /* a word, 1..KEEL__CONF_STR_MAX - 1 bytes */
    KEEL__OPT_UINT,  /* a decimal number within [min, max] */
    KEEL__OPT_SIZE,  /* bytes, with K/M/G */
    KEEL__OPT_DUR,   /* seconds, with s/m/h/d */
    KEEL__OPT_BOOL,  /* true/yes/on/1, false/no/off/0 */
    KEEL__OPT_LEVEL, /* a log level name; read back as its number */
} keel__opt_kind;

typedef struct keel__option {
    const char *name;
    keel__opt_kind kind;
    const char *def; /* the default, as it would be written in the file */
    uint64_t min, max;
    bool reloadable;  /* a reload applies it at run time; otherwise it needs a restart */
    const char *help; /* "a size like 1M (>= 1K)": what a valid value looks like */
} keel__option;

/* One module's table. */
typedef struct keel__option_set {
    const char *module;
    const keel__option *opts;
    size_t n;
} keel__option_set;

typedef struct keel__conf keel__conf;

/* A conf over the given tables (borrowed; static storage), every option at
 * its default. KEEL_EINVALID when two tables declare one name or a default
 * does not parse (a bug in a table). */
KEEL_WUR int keel__conf_new(const keel__option_set *const *sets, size_t nsets, keel__conf **ret,
                            keel_error *err);
/* A deep copy (NULL when out of memory). */
keel__conf *keel__conf_copy(const keel__conf *c);
void keel__conf_free(keel__conf *c);

/* Sets one key from text (a config line, a command-line flag). */
KEEL_WUR int keel__conf_set(keel__conf *c, const char *key, const char *value, keel_error *err);
/* Parses config text (data, len; need not be NUL-terminated) over the
 * values already in c. origin names the source in messages ("FILE:LINE").
 * On error c may be partly updated: parse into a copy when that matters. */
KEEL_WUR int keel__conf_parse(keel__conf *c, const char *data, size_t len, const char *origin,
                              keel_error *err);
/* Reads (at most KEEL__CONF_FILE_MAX bytes) and parses a file. */
KEEL_WUR int keel__conf_load(keel__conf *c, const char *path, keel_error *err);

/* Values by name. Asking for an undeclared name, or with the wrong type,
 * is a bug (asserted in debug builds); it reads as "" / 0 / false. */
const char *keel__conf_str(const keel__conf *c, const char *name);
uint64_t keel__conf_u64(const keel__conf *c, const char *name);
bool keel__conf_bool(const keel__conf *c, const char *name);
/* Whether the file or a flag set name (false: it holds its default). */
bool keel__conf_is_set(const keel__conf *c, const char *name);
/* The declaration of name, or NULL. */
const keel__option *keel__conf_option(const keel__conf *c, const char *name);

/* The options whose values differ between a and b (same tables), at most
 * max of them into ret; returns how many differ. */
size_t keel__conf_changes(const keel__conf *a, const keel__conf *b, const keel__option **ret,
                          size_t max);
/* Copies into dst the values of src's options that are not reloadable
 * (what a reload leaves as it was). */
void keel__conf_keep_fixed(keel__conf *dst, const keel__conf *src);
/* {"module":{"key":value,...},...} (malloc'd): the settings in force. */
char *keel__conf_json(const keel__conf *c);

#endif
