#!/usr/bin/env bash
# Hybrid routing between two keelds on loopback: an edge keeld escalates
# iris requests whose confidence is low to a fog keeld and returns its
# answer (tier "upstream"); with the fog node stopped, the edge answers
# locally (marked), its upstream breaker opens, the requests are kept for
# re-processing, and after the fog node returns each one becomes a
# correction event in the edge's queue.
source "$(dirname "$0")/lib.sh"
setup_trust
fog_state=$work/fog
fog_port=$(free_port)
fog_pid=""
start_fog() {
    "$KEELD" --state-dir "$fog_state" --port "$fog_port" >>"$work/fog.log" 2>&1 &
    fog_pid=$!
    for _ in $(seq 200); do curl -sf "127.0.0.1:$fog_port/healthz" >/dev/null && return; sleep 0.05; done
    die "fog keeld did not start: $(tail -5 "$work/fog.log")"
}
trap 'kill -9 $fog_pid 2>/dev/null || true; cleanup' EXIT

# the fog node serves plain iris
mkdir -p "$fog_state"
cp -r "$state/trust" "$fog_state/trust"
"$KEEL" pack "$keel_src/examples/iris" -o "$work/iris.keel" --key "$work/k.key" >/dev/null
"$KEEL" install "$work/iris.keel" --activate --offline --state-dir "$fog_state" >/dev/null
start_fog

# the edge: iris that escalates when its confidence is below 0.9 (the
# logistic-regression-only variant answers with less than that for the
# boundary flowers), or when the request says complex
mkdir -p "$work/edge-iris"
cp -r "$keel_src/examples/iris/." "$work/edge-iris/"
jq '.routing = {"mode": "escalate", "confidence_below": 0.9, "deadline_ms": 500}' \
    "$keel_src/examples/iris/keel.json" >"$work/edge-iris/keel.json"
"$KEEL" pack "$work/edge-iris" -o "$work/edge-iris.keel" --key "$work/k.key" >/dev/null
"$KEEL" install "$work/edge-iris.keel" --activate --offline --state-dir "$state" >/dev/null
printf 'state_dir = %s\nupstream_url = http://127.0.0.1:%s\n' "$state" "$fog_port" >"$work/edge.conf"
start_keeld --config "$work/edge.conf"

sure='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
hard='{"parameters":{"complex":true},"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[6.0,2.7,5.1,1.6]}]}'
# a confident answer stays local
r=$(infer iris "$sure")
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" primary "confident: local"
# a complex one goes upstream and comes back as the fog node's answer
r=$(infer iris "$hard")
expect_eq "$(status_of "$r")" 200 "escalated"
b=$(body_of "$r")
expect_eq "$(jfield "$b" .parameters.tier)" upstream "escalated: tier"
expect_eq "$(jfield "$b" .parameters.upstream_tier)" primary "escalated: the fog node's tier"
expect_eq "$(header_of X-Keel-Tier)" upstream "X-Keel-Tier"
expect_has "$(jfield "$b" .result[0].label)" "versicolor" "escalated answer"

# the fog node goes away: local answers, marked; the breaker opens
kill -9 "$fog_pid"
wait "$fog_pid" 2>/dev/null || true
fog_pid=""
for i in 1 2 3 4; do
    r=$(infer iris "$hard")
    expect_eq "$(status_of "$r")" 200 "fog down: still answered ($i)"
    b=$(body_of "$r")
    expect_eq "$(jfield "$b" .parameters.tier)" primary "fog down: local tier ($i)"
    expect_has "$(jfield "$b" .parameters.escalation)" "escalation failed" "fog down: marked ($i)"
done
expect_has "$(jfield "$b" .parameters.escalation)" "breaker open" "breaker open after 3 failures"
st=$(curl -s "$url/api/status")
expect_eq "$(jq -r .upstream.breaker <<<"$st")" open "status: upstream breaker"
expect_eq "$(jq -r .reprocess_pending <<<"$st")" 4 "status: re-processing pending"

# the fog node returns: after the breaker's cool-down the kept requests
# are re-processed into correction events
start_fog
for _ in $(seq 60); do
    st=$(curl -s "$url/api/status")
    [[ $(jq -r .reprocess_pending <<<"$st") == 0 ]] && break
    sleep 0.5
done
expect_eq "$(jq -r .reprocess_pending <<<"$st")" 0 "re-processed after the fog node returned"
expect_eq "$(jq -r .upstream.breaker <<<"$st")" closed "breaker closed again"
q=$(curl -s "$url/api/queue")
[[ $(jq -r .classes.high.depth <<<"$q") -ge 4 ]] || die "correction events queued: $q"
m=$(curl -s "$url/metrics")
promtool check metrics <<<"$m" >/dev/null 2>&1 || die "promtool: $(promtool check metrics <<<"$m" 2>&1 | head -3)"
expect_has "$m" "keel_upstream_breaker_state 0" "upstream breaker metric"
expect_has "$m" "keel_upstream_breaker_trips_total 1" "upstream breaker trips metric"
stop_keeld
sqlite3 "$state/queue.db" "SELECT payload FROM msgs_high WHERE topic = 'corrections/iris' LIMIT 1" >"$work/corr.json" ||
    die "reading the correction"
expect_eq "$(jq -r .type "$work/corr.json")" correction "correction event"
expect_eq "$(jq -r .upstream.parameters.tier "$work/corr.json")" upstream "correction carries the upstream answer"
[[ $(jq -r '.local_result[0].label' "$work/corr.json") != null ]] || die "correction carries the local result"
echo "43-routing: ok"
