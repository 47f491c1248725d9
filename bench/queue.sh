#!/usr/bin/env bash
# The durable queue's enqueue rate against its peers in the same run
# (bench/queue_bench.c says what each row compares):
#   1. group commit with N producers vs a plain SQLite insert loop with the
#      same batch size, schema and pragmas (target >= 0.8x)
#   2. sync mode vs 4 KiB write + fdatasync on the same disk (target >= 0.8x)
#   3. group commit with one producer vs sync mode (information)
# Usage: bench/queue.sh [PRODUCERS [SECONDS [PAYLOAD_BYTES]]]
# QUEUE_BENCH_DIR picks the directory (and so the disk); default bench/out/queue.
# Builds the release tree in build/release and the bench program against its
# libkeel_static.a.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
mkdir -p "$bin/bench"
libs="$(pkg-config --libs openssl sqlite3 libarchive libmicrohttpd libcurl libcjson libpng16) -ljpeg"
# shellcheck disable=SC2086
gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Wconversion -Wsign-conversion -Wshadow \
    -I"$top/include" "$top/bench/queue_bench.c" -o "$bin/bench/queue_bench" \
    "$bin/libkeel_static.a" $libs -lpthread -ldl -lm

dir=${QUEUE_BENCH_DIR:-$out/queue}
mkdir -p "$dir"
echo "== durable queue: $(df -h --output=source,fstype "$dir" 2>/dev/null | tail -1); $(machine_load)"
"$bin/bench/queue_bench" "$dir" "${1:-8}" "${2:-3}" "${3:-256}"
