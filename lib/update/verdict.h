/*
 * verdict.h - what the device decided about a package version, kept across
 * restarts in STATE_DIR/update/verdicts.json: versions rolled back by
 * probation or refused by validation (never retried: an update check skips
 * them) and versions probation promoted to known-good.
 *
 * Owns that one file: written atomically (temp, fsync, rename) on every
 * record, read with a size bound and every field checked. At most
 * KEEL__VERDICT_MAX entries; the oldest goes when a new one would pass it.
 * It decides nothing: probation (lib/runtime/probation.c) and validation
 * record, the update pipeline looks up.
 *
 * File: {"format":1,"type":"keel-verdicts","verdicts":[{"name":"vad",
 * "version":"3.0.0","kind":"rolled_back","reason":"...","at":1765000000},...]}
 *
 * Thread safety: every function may be called from any thread at once.
 */
#ifndef KEEL_UPDATE_VERDICT_H
#define KEEL_UPDATE_VERDICT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/core.h"

#define KEEL__VERDICT_MAX        4096
#define KEEL__VERDICT_REASON_MAX 512
#define KEEL__VERDICT_FILE_MAX   (4u << 20)

typedef enum keel__verdict_kind {
    KEEL__VERDICT_NONE = 0,    /* nothing recorded */
    KEEL__VERDICT_ROLLED_BACK, /* probation breached: not retried */
    KEEL__VERDICT_REFUSED,     /* validation failed on the device: not retried */
    KEEL__VERDICT_PROMOTED,    /* survived probation: known-good */
} keel__verdict_kind;

/* "none", "rolled_back", "refused", "promoted". */
const char *keel__verdict_kind_name(keel__verdict_kind k);
/* Whether an update may try this version again (none and promoted). */
bool keel__verdict_retry(keel__verdict_kind k);

typedef struct keel__verdicts keel__verdicts;

/* Reads path (absent: no verdicts yet; the file and its folder are made on
 * the first record). A corrupt file is an error naming it: keeld refuses to
 * forget which versions not to retry. */
KEEL_WUR int keel__verdict_load(const char *path, keel__verdicts **ret, keel_error *err);
/* Accepts NULL. */
void keel__verdict_free(keel__verdicts *v);
/* Records (replaces) the verdict on name@version and writes the file;
 * reason is copied (cut at KEEL__VERDICT_REASON_MAX). On a write error the
 * verdict is still kept in memory. */
KEEL_WUR int keel__verdict_record(keel__verdicts *v, const char *name, const char *version,
                                  keel__verdict_kind kind, const char *reason, keel_error *err);
/* The verdict on name@version; its reason into reason (n bytes; "" when none). */
keel__verdict_kind keel__verdict_lookup(keel__verdicts *v, const char *name, const char *version,
                                        char *reason, size_t n);
/* The verdicts as a JSON array (appended to b): name's only, or all (NULL). */
KEEL_WUR int keel__verdict_json(keel__verdicts *v, const char *name, keel_buf *b);

#endif
