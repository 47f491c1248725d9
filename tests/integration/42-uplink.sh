#!/usr/bin/env bash
# The store-and-forward path end to end with a real mosquitto broker:
# events of every class queued while the link to the broker is down arrive
# once it is up, critical and high before normal and bulk, each id at least once
# (nothing twice after dedup), on keel/DEVICE/PRIORITY/TOPIC; the queue is
# empty afterwards and /api/queue records the sync.
source "$(dirname "$0")/lib.sh"
command -v mosquitto >/dev/null && command -v mosquitto_sub >/dev/null && command -v mosquitto_pub >/dev/null ||
    skip "no mosquitto broker or clients (apt install mosquitto mosquitto-clients)"
bport=$(free_port)
cat >"$work/mosq.conf" <<C
listener $bport 127.0.0.1
allow_anonymous true
persistence false
log_type all
C
# The broker and a subscriber run throughout; keeld reaches the broker only
# through a TCP relay on lport, and "the link" is the relay: down at first.
lport=$(free_port)
mosquitto -c "$work/mosq.conf" >>"$work/mosq.log" 2>&1 &
mosq=$!
relay=""
trap 'kill $mosq $sub $relay 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$bport) 2>/dev/null && break; sleep 0.1; done
mosquitto_sub -h 127.0.0.1 -p "$bport" -q 1 -t 'keel/#' -F '%t %x' >"$work/sub.txt" 2>"$work/sub.err" &
sub=$!
for _ in $(seq 100); do grep -q "Sending SUBACK" "$work/mosq.log" && break; sleep 0.1; done
grep -q "Sending SUBACK" "$work/mosq.log" || die "the subscriber did not subscribe"
link_up() {
    "$PY" - "$lport" "$bport" <<'PY' &
import asyncio, sys
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(r, w):
    br, bw = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    await asyncio.gather(pipe(r, bw), pipe(br, w), return_exceptions=True)
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
asyncio.run(main())
PY
    relay=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$lport) 2>/dev/null && return; sleep 0.1; done
    die "the relay did not start"
}
cat >"$work/keeld.conf" <<C
state_dir = $state
device_id = it-device
uplink = mqtt
mqtt_host = 127.0.0.1
mqtt_port = $lport
sync_window = always
C
start_keeld --config "$work/keeld.conf"
token=$(cat "$state/token")
post() { # prio topic n
    curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
        -d "{\"topic\":\"$2\",\"priority\":\"$1\",\"payload\":{\"n\":$3}}" "$url/api/events"
}
# broker down: everything is accepted and waits
for i in $(seq 5); do
    for p in bulk normal high critical; do
        expect_eq "$(post "$p" "t/$p" "$i")" 202 "event $p $i while the broker is down"
    done
done
sleep 1
q=$(curl -s "$url/api/queue")
expect_eq "$(jq -r .depth <<<"$q")" 20 "queued while offline"
expect_has "$(curl -s "$url/api/status" | jq -c .uplink)" '"transport":"mqtt"' "uplink status"

# the link comes up
link_up
# keeld retries with backoff (1 s base); a critical event wakes it
expect_eq "$(post critical t/wake 0)" 202 "wake-up event"
ids=""
for _ in $(seq 120); do
    : >"$work/got.jsonl"
    n=0
    while read -r topic hex; do
        n=$((n + 1))
        xxd -r -p <<<"$hex" >"$work/env.$n"
        "$KEEL" envelope decode "$work/env.$n" | jq -c --arg t "$topic" '. + {mqtt_topic: $t}' >>"$work/got.jsonl"
    done <"$work/sub.txt"
    ids=$(jq -r .id "$work/got.jsonl" | sort -u | wc -l)
    [[ $ids -ge 21 ]] && break
    sleep 0.5
done
[[ $ids == 21 ]] || { cat "$work/sub.err" "$work/mosq.log" >&2; head -c 600 "$work/sub.txt" >&2; curl -s "$url/api/status" | jq -c .uplink >&2; die "distinct messages received: $ids of 21"; }
# topic layout and device
jq -e -s 'all(.[]; .mqtt_topic == "keel/it-device/\(.priority)/\(.topic)" and .device == "it-device")' \
    "$work/got.jsonl" >/dev/null || die "topic layout: $(head -3 "$work/got.jsonl")"
# strict priority: the first normal/bulk message came after every critical/high one
# (the wake-up event is left out: it was posted after the link came back,
# and may rightly arrive after everything queued before it)
order=$(jq -r 'select(.topic != "t/wake") | .priority' "$work/got.jsonl" | awk '{print NR, $1}')
last_hi=$(awk '$2 == "critical" || $2 == "high" {n = $1} END {print n}' <<<"$order")
first_lo=$(awk '($2 == "normal" || $2 == "bulk") && !f {print $1; f = 1}' <<<"$order")
[[ $last_hi -lt $first_lo ]] || die "priority order: critical/high after normal/bulk: $(tr '\n' ' ' <<<"$order")"
# payloads intact
expect_eq "$(jq -s -r '[.[] | select(.topic == "t/high") | .payload.n] | sort | join(",")' "$work/got.jsonl")" \
    "1,2,3,4,5" "high payloads"
# the queue drains (acks after PUBACK) and the sync is recorded
for _ in $(seq 40); do
    q=$(curl -s "$url/api/queue")
    [[ $(jq -r .depth <<<"$q") == 0 ]] && break
    sleep 0.25
done
expect_eq "$(jq -r .depth <<<"$q")" 0 "queue drained"
[[ $(jq -r .last_sync <<<"$q") != null ]] || die "last_sync not recorded: $q"
m=$(curl -s "$url/metrics")
promtool check metrics <<<"$m" >/dev/null 2>&1 || die "promtool: $(promtool check metrics <<<"$m" 2>&1 | head -5)"
expect_has "$m" 'keel_queue_depth{class="critical"} 0' "queue metrics"
stop_keeld
echo "42-uplink: $ids messages delivered in priority order"
