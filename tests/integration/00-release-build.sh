#!/usr/bin/env bash
# The release build has no warnings. gcc's flow-based warnings
# (-Wmaybe-uninitialized and the like) appear only when optimizing, so the
# debug build's -Werror does not see them: lib/sync/envelope.c once gave one
# in every `make release`. This builds the release configuration (library,
# keeld, keel; tests off) with -Werror beside the build under test, so later
# runs rebuild only what changed.
set -euo pipefail
: "${KEELD:?set KEELD to the keeld binary}"
src=$(cd "$(dirname "$0")/../.." && pwd)
out=$(dirname "$KEELD")/release-werror
log=$out/build.log
mkdir -p "$out"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
if ! cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DKEEL_WERROR=ON -DKEEL_TESTS=OFF \
    "${launcher[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "FAIL: configuring the release build" >&2
    exit 1
fi
if ! cmake --build "$out" -j "$(nproc)" >"$log" 2>&1; then
    grep -E "warning|error" "$log" | head -20 >&2
    echo "FAIL: the release build with -Werror (full log: $log)" >&2
    exit 1
fi
echo "00-release-build: release build, warnings as errors: clean"
