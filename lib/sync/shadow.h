/*
 * shadow.h - the device shadow: settings the cloud side wants (desired)
 * and the device has (reported), merged with version vectors.
 *
 * Every key carries the vector of its last write: (d, c) = the device's and
 * the cloud's counters at that write. The device bumps d for each local
 * change (POST /api/shadow); a desired document from the cloud carries its
 * own counter c and the device counter it had seen, d_seen:
 *
 *   {"version": C, "device_seen": D, "set": {"key": value, ...}}
 *
 * For each key in it: if the key's local write is not newer than what the
 * cloud saw (key.d <= D), the cloud's value is applied. Otherwise both
 * sides changed the key without seeing the other's change: a conflict. The
 * rule: the device's local change wins (someone on site changed it while
 * the link was down and sees the machine), the conflict is logged, kept
 * and reported, so the cloud can decide again with the device's value in
 * view. Desired documents whose version is not newer than the last one
 * applied are ignored (retained messages arrive again on every connect).
 * Persisted in STATE_DIR/shadow.json (atomic writes).
 */
#ifndef KEEL_SYNC_SHADOW_H
#define KEEL_SYNC_SHADOW_H

#include "core/core.h"

typedef struct keel__shadow keel__shadow;

KEEL_WUR int keel__shadow_open(const char *path, keel__shadow **ret, keel_error *err);
void keel__shadow_close(keel__shadow *s);

/* A local change: value is any JSON text. */
KEEL_WUR int keel__shadow_set_local(keel__shadow *s, const char *key, const char *value_json,
                                    keel_error *err);
/* A desired document from the cloud (bytes as received). *ret_applied and
 * *ret_conflicts count the keys taken and the conflicts found. */
KEEL_WUR int keel__shadow_apply_desired(keel__shadow *s, const void *doc, size_t len,
                                        unsigned *ret_applied, unsigned *ret_conflicts,
                                        keel_error *err);
/* The current value of key as JSON text (malloc'd), or NULL. */
char *keel__shadow_get(keel__shadow *s, const char *key);
/* The whole shadow as JSON (malloc'd): {"device": d, "cloud_seen": c,
 * "keys": {k: {"value", "d", "c", "source"}}, "conflicts": [...]} */
char *keel__shadow_json(keel__shadow *s);

#endif
