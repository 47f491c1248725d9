#!/usr/bin/env bash
# keeld start-up to ready with an already-verified 1 GiB package (and a rules
# tier to load), against an empty store, median of 5 runs each
# (bench/startup.c does the timing).
#
# What is measured: from just before fork+exec of
#   keeld --state-dir D --port P --listen 127.0.0.1 --log-level error
# to the arrival of the first HTTP status line that answers
#   - empty store:      GET /healthz with 200 (its /readyz stays 503: nothing
#                       is active, so "ready" there means "serving HTTP");
#   - 1 GiB package:    GET /readyz with 200 (the active package's files have
#                       been checked against their verification stamps).
# The poller connects every 100 us (plus the connect/refuse round trip), so
# the resolution is about 0.2 ms. The page cache is warm.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
need_release
ensure_state
runs=${1:-5}
echo "== keeld start-up to ready (median of $runs)"
e=$("$bin/bench/startup" "$keeld" "$out/empty" /healthz 200 "$runs" 2>/dev/null)
f=$("$bin/bench/startup" "$keeld" "$out/state" /readyz 200 "$runs" 2>/dev/null)
awk -v e="$e" -v f="$f" -v l="$(machine_load)" 'BEGIN {
    printf "empty store, first /healthz 200          %7.1f ms   (%s)\n", e, l
    printf "verified 1 GiB package, first /readyz 200 %7.1f ms\n", f
    printf "difference                               %+7.1f ms   (target <= +10 ms)\n", f - e
}'
