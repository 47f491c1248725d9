/*
 * fuzz_health.c - probation's readers of bytes keel did not write itself:
 * a manifest's `health` and `baseline` sections (keel__health_from_manifest)
 * and the statistics of STATE_DIR/update/probation.json
 * (keel__probation_stats_parse). Oracles: an accepted health section is
 * within its documented ranges; accepted statistics add up, and the
 * decision on them (against themselves as the previous version) runs and
 * says something.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "update/probation.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel__health h;
    bool has = false;
    keel_error e;
    keel__health_defaults(&h, 100, 0);
    if (keel__health_from_manifest(data, size, &h, &has, &e) == KEEL_OK) {
        if (h.max_error_rate > 1 || h.max_fallback_rate > 1 || h.min_mean_confidence > 1 ||
            h.p95_ratio < 1 || !isfinite(h.max_p95_ms) || h.tol_error < 0 || h.tol_error > 1 ||
            (h.requests && h.min_requests > h.requests))
            __builtin_trap();
    }
    cJSON *j = NULL;
    if (keel__json_parse(data, size, "fuzz", &j, &e) == KEEL_OK) {
        keel__probation_stats s;
        if (keel__probation_stats_parse(j, &s, &e) == KEEL_OK) {
            char why[512];
            if (s.errors > s.requests)
                __builtin_trap();
            keel__health_defaults(&h, 10, 60);
            (void)keel__probation_decide(&h, &s, &s, "1.0.0", s.started + 30, why, sizeof(why));
            if (!why[0])
                __builtin_trap();
        }
        cJSON_Delete(j);
    }
    return 0;
}
