#!/usr/bin/env bash
# The HTTP layer over the runtime: the event bus as server-sent events
# (GET /api/bus, filtered by type, audit events of mutating routes), a
# client that goes away is noticed and unsubscribed, concurrent durable
# events answered after their commit (suspended, not holding a worker),
# auth classes (read_auth), and a clean stop with a stream open.
source "$(dirname "$0")/lib.sh"

mkdir -p "$state"
setup_trust
start_keeld --log-level warn
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")
subs() { jfield "$(curl -s "$url/api/status")" .bus.subscribers; }
base=$(subs)

# --- a stream of everything, and one of rollbacks only -----------------------------
curl -sN "$url/api/bus" >"$work/all.sse" 2>/dev/null &
all_pid=$!
curl -sN "$url/api/bus?types=rollback,shadow" >"$work/rb.sse" 2>/dev/null &
rb_pid=$!
for _ in $(seq 100); do
    [[ $(subs) == $((base + 2)) ]] && break
    sleep 0.05
done
expect_eq "$(subs)" $((base + 2)) "bus subscribers with two streams open"
expect_has "$(cat "$work/all.sse")" ": keel bus" "stream preamble"

p1=$(make_pkg demo 1.0.0)
p2=$(make_pkg demo 2.0.0)
r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$p1")
expect_eq "$(status_of "$r")" 201 "install 1.0.0"
r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$p2")
expect_eq "$(status_of "$r")" 201 "install 2.0.0"
r=$(http POST /api/packages/demo/rollback "${auth[@]}")
expect_eq "$(status_of "$r")" 200 "rollback"
expect_has "$(body_of "$r")" '"serving":"1.0.0"' "rollback serves 1.0.0"
r=$(http POST /api/packages/nope/rollback "${auth[@]}")
expect_eq "$(status_of "$r")" 404 "rollback of an unknown package"
for _ in $(seq 100); do
    grep -q '"status":404' "$work/all.sse" && break
    sleep 0.05
done
all=$(cat "$work/all.sse")
expect_has "$all" $'event: install\ndata: {"seq":' "install event"
expect_has "$all" '"type":"install","package":"demo","version":"2.0.0"' "install event fields"
expect_has "$all" '"type":"activate","package":"demo","version":"2.0.0"' "activate event"
expect_has "$all" '"type":"rollback","package":"demo","version":"1.0.0","detail":"active"' "rollback event"
expect_has "$all" '"type":"api","package":"demo","detail":"packages.rollback demo","ok":true,"status":200' "audit of the rollback"
expect_has "$all" '"detail":"packages.rollback nope","ok":false,"status":404' "audit of a refused rollback"
expect_has "$all" '"type":"ready"' "readiness event"
# seq increases along the stream
seqs=$(grep -o '"seq":[0-9]*' "$work/all.sse" | cut -d: -f2 | tr '\n' ' ')
expect_eq "$(tr ' ' '\n' <<<"$seqs" | sed '/^$/d' | sort -n | tr '\n' ' ')" "$seqs" "events in seq order"
rb=$(cat "$work/rb.sse")
expect_has "$rb" "event: rollback" "filtered stream has the rollback"
[[ $rb != *"event: install"* && $rb != *"event: api"* ]] || die "filtered stream has other types: $rb"
r=$(http GET '/api/bus?types=rollback,bogus')
expect_error "$r" 400 INVALID 'unknown event type "bogus"' "bad types filter"

# --- clients that go away are unsubscribed ------------------------------------------------
kill "$all_pid" "$rb_pid"
wait "$all_pid" "$rb_pid" 2>/dev/null || true
for i in $(seq 100); do
    [[ $(subs) == "$base" ]] && break
    # an event makes the server write to the dead streams and notice
    http POST /api/shadow "${auth[@]}" -d "{\"set\":{\"probe\":$i}}" >/dev/null
    sleep 0.05
done
expect_eq "$(subs)" "$base" "bus subscribers after the clients left"

# --- 64 concurrent durable events: every one answered 202 after its commit -------------------
pids=()
for i in $(seq 64); do
    curl -s -o "$work/ev$i" -w '%{http_code}' "${auth[@]}" -X POST "$url/api/events" \
        -d "{\"topic\":\"t/c\",\"priority\":\"normal\",\"payload\":{\"i\":$i}}" >"$work/st$i" &
    pids+=($!)
done
wait "${pids[@]}"
for i in $(seq 64); do
    expect_eq "$(cat "$work/st$i")" 202 "event $i status"
done
ids=$(cat "$work"/ev* | jq -r .id | sort -un | wc -l)
expect_eq "$ids" 64 "distinct ids of 64 events"
expect_eq "$(jfield "$(curl -s "$url/api/queue")" .classes.normal.depth)" 64 "normal depth"
r=$(http POST /api/events "${auth[@]}" -d '{"topic":"a+b","payload":1}')
expect_error "$r" 400 INVALID "wildcard" "event with a wildcard topic"

# --- the metrics registry as JSON (GET /api/metrics), beside the Prometheus text --------------
mj=$(curl -s "$url/api/metrics")
jq -e '.format == 1' <<<"$mj" >/dev/null || die "/api/metrics is not the registry's JSON: ${mj:0:200}"
expect_eq "$(jq -r '[.families[] | select(.name=="keel_up" or .name=="keel_ready") | .name] | join(",")' \
    <<<"$mj")" "keel_up,keel_ready" "/api/metrics families"
expect_eq "$(jq -r '.families[] | select(.name=="keel_queue_depth") | [.series[].labels.class] | join(",")' \
    <<<"$mj")" "critical,high,normal,bulk" "/api/metrics queue classes"
expect_eq "$(jq -r '.families[] | select(.name=="keel_queue_depth") | .series[] |
    select(.labels.class=="normal") | .value' <<<"$mj")" 64 "/api/metrics normal depth"
pm=$(curl -s "$url/metrics")
promtool check metrics <<<"$pm" >/dev/null 2>&1 || die "promtool: $(promtool check metrics <<<"$pm" 2>&1 | head -3)"
expect_eq "$(jq -r '[.families[].name] | join(" ")' <<<"$mj")" \
    "$(awk '$1 == "#" && $2 == "TYPE" { printf "%s%s", n++ ? " " : "", $3 }' <<<"$pm")" \
    "/api/metrics and /metrics render the same families"

# --- a stop with a stream open is clean --------------------------------------------------------
curl -sN "$url/api/bus" >/dev/null 2>&1 &
open_pid=$!
sleep 0.3
t0=$(date +%s%N)
stop_keeld
t1=$(date +%s%N)
(((t1 - t0) / 1000000 < 5000)) || die "stop with an open stream took $(((t1 - t0) / 1000000)) ms"
wait "$open_pid" 2>/dev/null || true

# --- read_auth: reading the device's state needs the token ---------------------------------------
printf 'read_auth = true\n' >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf" --log-level warn
for p in /api/status /api/packages /api/queue /api/shadow /api/bus /api/metrics; do
    expect_eq "$(status_of "$(http GET "$p")")" 401 "GET $p without a token"
done
expect_eq "$(status_of "$(http GET /api/status "${auth[@]}")")" 200 "GET /api/status with the token"
for p in /healthz /readyz /metrics /v2/health/live; do
    s=$(status_of "$(http GET "$p")")
    [[ $s == 200 || $s == 503 ]] || die "GET $p stays open: got $s"
done
stop_keeld
echo "45-api: ok"
