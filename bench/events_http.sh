#!/usr/bin/env bash
# Durable enqueue over HTTP (POST /api/events, group commit, 202 only once
# durable) at 1 and 8 clients, against the queue library's own group commit
# and a raw SQLite insert loop in the same run (bench/queue_bench.c), on the
# same disk. Target: 8 HTTP clients >= 0.8x the library's group commit.
# Env: SECONDS_EACH (default 3); KEELD_BEFORE=path of an older keeld binary
# to measure beside this one (the before/after rows of bench/RESULTS.md).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
secs=${SECONDS_EACH:-3}
cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
mkdir -p "$bin/bench"
libs="$(pkg-config --libs openssl sqlite3 libarchive libmicrohttpd libcurl libcjson libpng16 libzstd) -ljpeg"
# shellcheck disable=SC2086
gcc -std=c11 -D_GNU_SOURCE -O2 -I"$top/include" "$top/bench/queue_bench.c" \
    -o "$bin/bench/queue_bench" "$bin/libkeel_static.a" $libs -lpthread -ldl -lm
lg=$bin/bench/loadgen

payload=$(head -c 192 /dev/zero | tr '\0' x)
printf '{"topic":"bench/events","priority":"normal","payload":"%s"}' "$payload" >"$out/event.json"

run_keeld() { # label keeld-binary
    local label=$1 keeld=$2 st=$out/events-state port pid
    rm -rf "$st" && mkdir -p "$st"
    port=$(free_port)
    "$keeld" --state-dir "$st" --port "$port" --listen 127.0.0.1 --log-level error &
    pid=$!
    wait_for 30 "$label keeld's /healthz on port $port" curl -fsS "127.0.0.1:$port/healthz"
    local tok
    tok=$(cat "$st/token")
    for c in 1 8; do
        r=$("$lg" --url "127.0.0.1:$port/api/events" --body "$out/event.json" --threads "$c" \
            --duration "$secs" --warmup 20 --header "Authorization: Bearer $tok")
        echo "$label http clients=$c $(echo "$r" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("rps=%.0f p50_us=%.0f p99_us=%.0f errors=%d" % (j["throughput_rps"], j["p50_us"], j["p99_us"], j["errors"]))')"
    done
    kill "$pid"
    wait "$pid" || true
}

echo "== durable enqueue over HTTP vs the library ($(df -h --output=source,fstype "$out" | tail -1)); load: $(cut -d' ' -f1-3 /proc/loadavg)"
run_keeld after "$bin/keeld"
if [[ -n ${KEELD_BEFORE:-} ]]; then
    run_keeld before "$KEELD_BEFORE"
fi
mkdir -p "$out/events-lib"
"$bin/bench/queue_bench" "$out/events-lib" 8 "$secs" 192 | grep -E "group|sqlite|producers" || true
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
