#!/usr/bin/env bash
# Drain through keeld to mosquitto on loopback: N inference-record-like
# messages are put in a fresh queue (bench/queue_fill), then keeld starts
# with an MQTT uplink to a local broker and the time until the queue is empty
# gives messages/s; the broker-side byte count (mosquitto_sub) gives bytes
# on the wire per message (zstd envelopes).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
n=${1:-100000}
cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
libs="$(pkg-config --libs openssl sqlite3 libarchive libmicrohttpd libcurl libcjson libpng16 libmosquitto libzstd) -ljpeg"
# shellcheck disable=SC2086
gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I"$top/include" "$top/bench/queue_fill.c" \
    -o "$bin/bench/queue_fill" "$bin/libkeel_static.a" $libs -lpthread -ldl -lm
st=$out/drain
rm -rf "$st" && mkdir -p "$st"
"$bin/bench/queue_fill" "$st" "$n"
bport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$bport" >"$out/drain-mosq.conf"
mosquitto -c "$out/drain-mosq.conf" >/dev/null 2>&1 &
mosq=$!
wait_for 10 "mosquitto on port $bport" bash -c "exec 3<>/dev/tcp/127.0.0.1/$bport"
mosquitto_sub -h 127.0.0.1 -p "$bport" -q 1 -t 'keel/#' -F '%l' >"$out/drain-sub.txt" &
sub=$!
trap 'kill $mosq $sub 2>/dev/null || true' EXIT
sleep 0.3
port=$(free_port)
printf 'state_dir = %s\ndevice_id = bench\nuplink = mqtt\nmqtt_host = 127.0.0.1\nmqtt_port = %s\nqueue_max_rows = 0\n' \
    "$st" "$bport" >"$out/drain.conf"
t0=$(date +%s.%N)
"$keeld" --config "$out/drain.conf" --port "$port" --log-level error &
pid=$!
trap 'kill $mosq $sub $pid 2>/dev/null || true' EXIT
wait_for 30 "keeld's /healthz on port $port" curl -sf "127.0.0.1:$port/healthz"
queue_empty() { [[ $(curl -s "127.0.0.1:$port/api/queue" | jq -r .depth) == 0 ]]; }
wait_for "${DRAIN_TIMEOUT:-600}" "the queue to drain to mosquitto on port $bport (DRAIN_TIMEOUT)" queue_empty
t1=$(date +%s.%N)
kill "$pid"
wait "$pid" || true
sleep 0.3
bytes=$(awk '{s += $1} END {print s}' "$out/drain-sub.txt")
pubs=$(wc -l <"$out/drain-sub.txt")
awk -v n="$n" -v a="$t0" -v b="$t1" -v by="$bytes" -v p="$pubs" -v l="$(machine_load)" 'BEGIN {
    printf "drained %d messages in %.2f s: %.0f msg/s through keeld (queue.db -> envelope -> QoS 1 PUBACK -> ack; %s)\n", n, b - a, n / (b - a), l;
    printf "%d publishes, %.1f payload bytes on the wire per message (zstd envelopes, ~200 B JSON records)\n", p, by / n }'
