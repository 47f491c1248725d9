#!/usr/bin/env bash
# keeld's resident memory with a queue of 1 million messages (target <= 15 MB):
# fills STATE/queue.db through the queue API (group commit), then starts
# keeld on it and reads VmRSS after start and after GET /api/queue.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
n=${1:-1000000}
cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
libs="$(pkg-config --libs openssl sqlite3 libarchive libmicrohttpd libcurl libcjson libpng16 libmosquitto libzstd) -ljpeg"
# shellcheck disable=SC2086
gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I"$top/include" "$top/bench/queue_fill.c" \
    -o "$bin/bench/queue_fill" "$bin/libkeel_static.a" $libs -lpthread -ldl -lm
st=$out/queue-rss
rm -rf "$st" && mkdir -p "$st"
t0=$(date +%s.%N)
"$bin/bench/queue_fill" "$st" "$n"
t1=$(date +%s.%N)
echo "== keeld RSS with a queue of $n messages (filled in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s, queue.db $(du -h "$st/queue.db" | cut -f1))"
port=$(free_port)
"$bin/keeld" --state-dir "$st" --port "$port" --log-level error &
pid=$!
sleep 2
r1=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
depth=$(curl -s "127.0.0.1:$port/api/queue" | jq -r .depth)
sleep 0.5
r2=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
kill "$pid"
wait "$pid" || true
printf 'queue depth %s; RSS 2 s after start %.1f MiB, after GET /api/queue %.1f MiB (target <= 15 MB)\n' \
    "$depth" "$(echo "$r1 / 1024" | bc -l)" "$(echo "$r2 / 1024" | bc -l)"
