#!/usr/bin/env bash
# ort_ref_check.sh ORT_REF MODE EXPECTED MODEL DATA...: runs ort_ref MODE on
# MODEL and DATA (paths relative to the reference models and data: KEEL_SHARED,
# else ../shared beside the source tree) and expects EXPECTED as a line of
# its output ("9891/10000"). Without the reference files it skips (exit 77,
# CTest: Skipped); when CI is set (every dependency is there) that fails.
set -euo pipefail
ort_ref=$1 mode=$2 want=$3
shift 3
root=${KEEL_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/../shared}
args=()
for f in "$@"; do
    if [[ ! -f $root/$f ]]; then
        if [[ -n ${CI:-} ]]; then
            echo "FAIL: would skip, but CI is set (CI=$CI: every dependency must be there): no $root/$f" >&2
            exit 1
        fi
        echo "SKIPPED: no $root/$f (../shared or KEEL_SHARED)"
        exit 77
    fi
    args+=("$root/$f")
done
out=$("$ort_ref" "$mode" "${args[@]}") || { echo "FAIL: ort_ref $mode failed" >&2; exit 1; }
grep -qx "$want" <<<"$out" || { echo "FAIL: ort_ref $mode: expected a line '$want', got: $(tail -3 <<<"$out")" >&2; exit 1; }
echo "ort_ref $mode: $want"
