#!/usr/bin/env bash
# keel benchmarks for the foundation issue; each compares against a peer or a
# baseline in the same run and prints ratios (bench/RESULTS.md has numbers).
#   1. verification throughput of a 1 GiB file vs `openssl dgst -sha256`
#      (bench/verify_throughput.c)
#   2. keeld start-up to ready with a verified 1 GiB package vs an empty
#      store (bench/restart.sh, timing by bench/startup.c)
#   3. keeld idle RSS, empty and with the 1 GiB package (bench/idle_rss.sh)
#   4. the durable queue vs a raw SQLite loop and fdatasync (bench/queue.sh)
#   5. POST /api/events at 1 and 8 clients vs the queue library (bench/events_http.sh)
#   6. drain through keeld to mosquitto (bench/drain.sh)
#   7. inference serving vs raw ORT and Node.js (bench/infer.sh; needs ../shared, node)
#   8. bytes on the wire for a model update, keel's patch and chunks vs zstd,
#      xdelta3, bsdiff, casync; apply speed and RSS (bench/delta.sh; needs ../shared)
#   9. download of a 1 GiB package from nginx on loopback vs curl -o
#      (bench/download.sh)
#  10. with BEFORE=OLD/build/release: the same keeld measurements of an older
#      build beside this one (bench/before_after.sh)
# Each figure is printed with the machine's load beside it. The work files
# (2 GiB: the file and its package) go to bench/out/, or to KEEL_BENCH_OUT.
# Builds the release tree in build/release and the bench programs against its
# libkeel_static.a. Work files live in bench/out/ (ignored) and are reused.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
mkdir -p "$bin/bench"
libs="$(pkg-config --libs openssl sqlite3 libmicrohttpd libcjson libpng16 libzstd) -ljpeg"
for p in verify_throughput startup; do
    # shellcheck disable=SC2086
    gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I"$top/include" "$top/bench/$p.c" \
        -o "$bin/bench/$p" "$bin/libkeel_static.a" $libs -lpthread -ldl -lm
done

ensure_state
echo "== verification throughput (1 GiB, page cache warm, best of 3); $(machine_load)"
"$bin/bench/verify_throughput" "$big" "$out/big.keel" "$out/trust"
"$top/bench/restart.sh"
"$top/bench/idle_rss.sh"
"$top/bench/queue.sh" 8 3 256
"$top/bench/events_http.sh"
echo "== drain through keeld; $(machine_load)"
"$top/bench/drain.sh" 100000
"$top/bench/download.sh"
if [[ -d $top/../shared/models ]] && command -v node >/dev/null; then
    "$top/bench/infer.sh"
else
    echo "== inference: skipped (needs ../shared and node)"
fi
"$top/bench/delta.sh"
# before/after rows: BEFORE=path/to/an/older/tree/build/release make bench
if [[ -n ${BEFORE:-} ]]; then
    "$top/bench/before_after.sh"
fi
