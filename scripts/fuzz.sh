#!/usr/bin/env bash
# Runs every libFuzzer target (or those in $TARGETS) for SECONDS (default 60)
# over its corpus. UBSan findings stop the run like ASan ones.
# New interesting inputs are merged into fuzz/corpus/<target>/; crashes are
# copied to fuzz/regressions/<target>/, which `make test` replays forever.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
build=$top/build/fuzz
CC=clang cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DKEEL_SANITIZE=OFF \
    -DKEEL_FUZZ=ON -DCMAKE_C_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined -g -O1" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
# every fuzz/fuzz_<target>.c (as fuzz/CMakeLists.txt globs them)
targets=()
for src in "$top"/fuzz/fuzz_*.c; do
    t=${src##*/fuzz_}
    targets+=("${t%.c}")
done
if [[ -n ${TARGETS:-} ]]; then read -ra targets <<<"$TARGETS"; fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null
status=0
for t in "${targets[@]}"; do
    corpus=$top/fuzz/corpus/$t new=$build/new-$t art=$build/crash-$t/
    rm -rf "$new" "$art" && mkdir -p "$new" "$art"
    echo "fuzz: $t for ${secs}s"
    if ! "$build/fuzz/fuzz_$t" -max_total_time="$secs" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$art" "$new" "$corpus" >"$build/fuzz-$t.log" 2>&1; then
        status=1
        mkdir -p "$top/fuzz/regressions/$t"
        cp "$art"* "$top/fuzz/regressions/$t/" 2>/dev/null || true
        echo "fuzz: $t FOUND A PROBLEM; input kept in fuzz/regressions/$t; log $build/fuzz-$t.log"
        grep -m3 -E 'ERROR|SUMMARY' "$build/fuzz-$t.log" || true
    fi
    # Keep the corpus small: a fresh set-cover merge of the old corpus and
    # the new inputs replaces it, on edge coverage (-use_counters=0: hit-count
    # buckets would keep ~3x more files for little gain). Hand-written seeds
    # (names that are not a SHA-1) always stay; their hash-named copies go.
    min=$build/min-$t
    rm -rf "$min" && mkdir -p "$min"
    if "$build/fuzz/fuzz_$t" -merge=1 -use_counters=0 -max_len=65536 "$min" "$corpus" "$new" \
        >/dev/null 2>&1; then
        find "$corpus" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
        for f in "$corpus"/*; do rm -f "$min/$(sha1sum <"$f" | cut -c1-40)"; done
        cp "$min"/* "$corpus"/ 2>/dev/null || true
    fi
    echo "fuzz: $t corpus now $(find "$corpus" -type f | wc -l) files"
    grep -E '^#[0-9]+.*DONE' "$build/fuzz-$t.log" | tail -1 || true
done
exit $status
