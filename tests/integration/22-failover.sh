#!/usr/bin/env bash
# The tier chain under faults, end to end through keeld: a model blob
# corrupted on disk (the store refuses the version and serves the previous
# one), a primary that cannot load (broken file, memory budget), one that
# fails at run time, one slower than its deadline, one that answers NaN;
# every tier broken (503 naming each, keeld stays up); breakers that open,
# probe half-open and close again (consecutive failures and error rate);
# a pinned tier that is honoured while its breaker is open. Each case checks
# the response (tier, degraded, fallback_reason, X-Keel-Tier), /api/status
# and /metrics. Fixtures: tests/data/fault (make_fault_models.py).
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
fix=$root/tests/data/fault
# keeld finds ONNX Runtime through KEEL_ORT_LIB (the tests run outside the
# repository root); ORT keeps a small allocation for the process lifetime.
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$root/.deps/onnxruntime/lib/libonnxruntime.so.1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp}
[[ -f $KEEL_ORT_LIB ]] || die "no ONNX Runtime at $KEEL_ORT_LIB (run make setup)"
for f in good runtime_error nan flaky slow big; do
    [[ -f $fix/$f.onnx ]] || die "missing fixture $fix/$f.onnx (tests/integration/make_fault_models.py)"
done

# --- helpers ------------------------------------------------------------------------------

# jq-like queries without jq: jget JSON PYEXPR (d is the document; strings as
# they are, everything else as JSON, so booleans read true/false)
jget() {
    /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.argv[1])
v = eval(sys.argv[2])
print(v if isinstance(v, str) else json.dumps(v))' "$1" "$2" || die "cannot read $2 from: $1"
}
# status PKG PYEXPR: d is /api/status .inference[PKG]; tier(NAME) its tier
status() {
    local s
    s=$(curl -sf "$url/api/status") || die "GET /api/status failed"
    /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.argv[1])["inference"][sys.argv[2]]
def tier(n):
    return [t for t in d["tiers"] if t["name"] == n][0]
v = eval(sys.argv[3])
print(v if isinstance(v, str) else json.dumps(v))' "$s" "$1" "$2" || die "cannot read $2 of $1 from /api/status"
}
# metric 'NAME{labels}': its value in /metrics (empty when absent)
metric() {
    curl -sf "$url/metrics" | awk -v k="$1" 'index($0, k " ") == 1 { print $2 }'
}
expect_metric() { # 'NAME{labels}' value
    expect_eq "$(metric "$1")" "$2" "metric $1"
}

# infer PKG X0 [PARAMS]: POST a [1,4] row (x0, 2, 3, 4); sets code, body,
# ms (wall time of the request), hdr (response headers)
infer() {
    local params=${3:-'{}'} t0 t1 out
    t0=$(date +%s%N)
    out=$(curl -s -D "$work/hdr" -X POST -w '\n%{http_code}' "$url/v2/models/$1/infer" \
        -d "{\"parameters\":$params,\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1,4],\"data\":[$2,2,3,4]}]}")
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    code=$(status_of "$out")
    body=$(body_of "$out")
    hdr=$(tr -d '\r' <"$work/hdr")
}
# served PKG X0 TIER DEGRADED [PARAMS]: infer, expect 200 from TIER
served() {
    infer "$1" "$2" "${5:-}"
    expect_eq "$code" 200 "$1: status of infer (x0=$2): $body"
    expect_eq "$(jget "$body" 'd["parameters"]["tier"]')" "$3" "$1: tier"
    expect_eq "$(jget "$body" 'd["parameters"]["degraded"]')" "$4" "$1: degraded"
    expect_eq "$(jget "$body" 'd["parameters"]["package"]')" "$1@1.0.0" "$1: package"
    expect_has "$hdr" "X-Keel-Tier: $3" "$1: X-Keel-Tier header"
    reason=$(jget "$body" 'd["parameters"]["fallback_reason"]')
}

# tier NAME BACKEND MODEL [EXTRA]: one tiers[] entry
tier() { printf '{"name":"%s","backend":"%s","model":"%s"%s}' "$1" "$2" "$3" "${4:+,$4}"; }
std_tiers() { # PRIMARY_MODEL [PRIMARY_EXTRA]: PRIMARY_MODEL, good.onnx, rules.json
    printf '%s,%s,%s' "$(tier primary onnx "$1" "${2:-}")" "$(tier secondary onnx good.onnx)" \
        "$(tier fallback rules rules.json)"
}
# pkg NAME VERSION TIERS POLICY FILES...: pack, sign and install+activate
# offline (no "validation": activation would run it)
pkg() {
    local name=$1 ver=$2 tiers=$3 policy=$4 src=$work/src-$1-$2
    shift 4
    mkdir -p "$src"
    for f in "$@"; do cp "$f" "$src/"; done
    cat >"$src/keel.json" <<JSON
{"format": 1, "name": "$name", "version": "$ver", "task": "test",
 "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
 "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
 "tiers": [$tiers],
 "policy": $policy}
JSON
    "$KEEL" pack "$src" -o "$work/$name-$ver.keel" --key "$work/k.key" >/dev/null
    "$KEEL" install "$work/$name-$ver.keel" --activate --offline --state-dir "$state" \
        >/dev/null 2>>"$work/install.log" || die "install of $name $ver failed: $(tail -5 "$work/install.log")"
}
policy() { # failures cooldown_ms [more breaker fields]
    printf '{"breaker": {"failures": %s, "cooldown_ms": %s%s}}' "$1" "$2" "${3:+, $3}"
}
wait_served() { # PKG...: until each is in /api/status .inference with a version
    local p
    for p in "$@"; do
        for _ in $(seq 200); do
            curl -sf "$url/api/status" | grep -q "\"$p\":{\"version\"" && continue 2
            sleep 0.05
        done
        die "$p is not served: $(curl -s "$url/api/status")"
    done
}

# The rules tier (last): one default row. rules_nomatch.json: a rule that
# never matches, so the rules tier fails too. broken.onnx: good.onnx cut short.
rules=$work/rules.json nomatch=$work/nomatch/rules.json broken=$work/broken.onnx
mkdir -p "$work/nomatch"
cat >"$rules" <<'JSON'
{"format": 1, "input": "x", "features": {"x0": {"fn": "value", "index": 0}},
 "rules": [{"label": "fallback", "confidence": 0.5, "outputs": {"y": [0.2, 0.3, 0.5]}}]}
JSON
cat >"$nomatch" <<'JSON'
{"format": 1, "input": "x", "features": {"x0": {"fn": "value", "index": 0}},
 "rules": [{"if": [["x0", ">", 1e9]], "label": "never", "confidence": 1, "outputs": {"y": [0, 0, 1]}}]}
JSON
head -c 150 "$fix/good.onnx" >"$broken"

# --- 1a. a model blob corrupted on disk -------------------------------------------------------
# The store re-hashes a blob whose stamp no longer matches before anything
# loads it: the version with the corrupt primary is refused as a whole and
# the previous version serves (store-level fallback, said in /api/status).
main_state=$state
state=$work/rot
setup_trust
pkg rot 1.0.0 "$(tier primary onnx flaky.onnx),$(tier fallback rules rules.json)" '{}' \
    "$fix/flaky.onnx" "$rules"
pkg rot 1.1.0 "$(tier primary onnx good.onnx),$(tier fallback rules rules.json)" '{}' \
    "$fix/good.onnx" "$rules"
hash=$("$KEEL" inspect "$work/rot-1.1.0.keel" --json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print([f["sha256"] for f in json.load(sys.stdin)["files"] if f["path"] == "good.onnx"][0])')
blob=$state/blobs/sha256/${hash:0:2}/$hash
[[ -f $blob ]] || die "no blob for good.onnx at $blob"
chmod u+w "$blob"
printf 'this is not an ONNX model' | dd of="$blob" conv=notrunc status=none # same size
start_keeld
wait_served rot
r=$(curl -s "$url/api/status")
expect_eq "$(jget "$r" '[p for p in d["store"]["packages"] if p["name"] == "rot"][0]["serving"]["version"]')" 1.0.0 "rot: version served after the corruption"
expect_eq "$(jget "$r" '[p for p in d["store"]["packages"] if p["name"] == "rot"][0]["serving"]["slot"]')" previous "rot: slot served"
expect_has "$(jget "$r" '[p for p in d["store"]["packages"] if p["name"] == "rot"][0]["serving"]["reason"]')" \
    "good.onnx is corrupt on disk" "rot: serving reason"
infer rot 1
expect_eq "$code" 200 "rot: infer after the corruption: $body"
expect_eq "$(jget "$body" 'd["parameters"]["package"]')" rot@1.0.0 "rot: package that answered"
expect_eq "$(jget "$body" 'd["parameters"]["tier"]')" primary "rot: tier"
stop_keeld
state=$main_state

# --- the packages of the other cases, in one state dir and one keeld ---------------------------------
"$KEEL" trust init "$state/trust" --key "$work/k.pub" >/dev/null
long=$(policy 3 3600000) # breakers that stay open for the whole test (an hour: a loaded machine can take minutes)
pkg loadfail 1.0.0 "$(std_tiers broken.onnx)" "$long" "$broken" "$fix/good.onnx" "$rules"
pkg rterr 1.0.0 "$(std_tiers runtime_error.onnx)" "$long" "$fix/runtime_error.onnx" "$fix/good.onnx" "$rules"
pkg deadline 1.0.0 "$(std_tiers slow.onnx '"deadline_ms": 50'),$(tier unbounded onnx slow.onnx '"deadline_ms": 0')" \
    "$long" "$fix/slow.onnx" "$fix/good.onnx" "$rules"
pkg memory 1.0.0 "$(tier primary onnx big.onnx '"memory_mb": 1'),$(tier secondary onnx good.onnx '"memory_mb": 512'),$(tier fallback rules rules.json)" \
    "$long" "$fix/big.onnx" "$fix/good.onnx" "$rules"
pkg nan 1.0.0 "$(std_tiers nan.onnx)" "$long" "$fix/nan.onnx" "$fix/good.onnx" "$rules"
pkg allfail 1.0.0 "$(tier primary onnx runtime_error.onnx),$(tier secondary onnx nan.onnx),$(tier fallback rules rules.json)" \
    "$long" "$fix/runtime_error.onnx" "$fix/nan.onnx" "$nomatch"
pkg allfail4 1.0.0 "$(tier primary onnx broken.onnx),$(tier secondary onnx runtime_error.onnx),$(tier tertiary onnx nan.onnx),$(tier fallback rules rules.json)" \
    "$long" "$broken" "$fix/runtime_error.onnx" "$fix/nan.onnx" "$nomatch"
name8=allfail8-$(printf 'n%.0s' {1..100}) # a 109-byte package name
t8() { printf 'tier%s-%s' "$1" "$(printf 'x%.0s' {1..25})"; } # a 31-byte tier name
pkg "$name8" 1.0.0 "$(for i in 1 2 3; do tier "$(t8 $i)" onnx broken.onnx; printf ,; done
    for i in 4 5 6 7; do tier "$(t8 $i)" onnx runtime_error.onnx; printf ,; done
    tier "$(t8 8)" rules rules.json)" "$long" "$broken" "$fix/runtime_error.onnx" "$nomatch"
pkg reload 1.0.0 "$(std_tiers broken.onnx)" "$(policy 3 2000)" "$broken" "$fix/good.onnx" "$rules"
pkg recover 1.0.0 "$(std_tiers flaky.onnx)" "$(policy 2 4000)" "$fix/flaky.onnx" "$fix/good.onnx" "$rules"
pkg rate 1.0.0 "$(std_tiers flaky.onnx)" \
    "$(policy 1000 60000 '"window": 10, "min_requests": 4, "error_rate": 0.5')" \
    "$fix/flaky.onnx" "$fix/good.onnx" "$rules"
pkg pinned 1.0.0 "$(std_tiers flaky.onnx)" "$(policy 2 60000)" "$fix/flaky.onnx" "$fix/good.onnx" "$rules"
start_keeld
started=$(date +%s%N)
wait_served loadfail rterr deadline memory nan allfail allfail4 "$name8" reload recover rate pinned
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 200 "readyz with every package served: $(body_of "$r")"

# --- 1b. a primary model file that does not load -----------------------------------------
expect_eq "$(status loadfail 'tier("primary")["loaded"]')" false "loadfail: primary loaded"
expect_has "$(status loadfail 'tier("primary").get("load_error", "")')" "Protobuf parsing failed" \
    "loadfail: primary load_error"
expect_eq "$(status loadfail 'tier("primary")["breaker"]')" open "loadfail: primary breaker after the load failure"
expect_eq "$(status loadfail 'tier("secondary")["loaded"]')" true "loadfail: secondary loaded"
expect_metric 'keel_infer_breaker_state{model="loadfail",tier="primary"}' 1
served loadfail 1 secondary true
expect_has "$reason" "primary: breaker open after load failure: " "loadfail: fallback_reason"
expect_has "$reason" "Protobuf parsing failed" "loadfail: fallback_reason"
expect_eq "$(status loadfail 'd["serving_tier"]')" secondary "loadfail: serving_tier"
expect_eq "$(status loadfail 'd["degraded"]')" true "loadfail: status degraded"
expect_eq "$(status loadfail 'tier("secondary")["served"]')" 1 "loadfail: secondary served"
expect_metric 'keel_infer_requests_total{model="loadfail",tier="primary",outcome="skipped"}' 1
expect_metric 'keel_infer_requests_total{model="loadfail",tier="secondary",outcome="ok"}' 1

# --- 2. a primary that fails at run time: the breaker opens after 3 ------------------------------
for i in 1 2 3; do
    served rterr 1 secondary true
    expect_has "$reason" "primary: run: " "rterr: fallback_reason of request $i"
    expect_has "$reason" "out of data bounds" "rterr: fallback_reason of request $i"
    [[ $i == 3 ]] || expect_eq "$(status rterr 'tier("primary")["breaker"]')" closed "rterr: breaker after $i failures"
done
expect_eq "$(status rterr 'tier("primary")["breaker"]')" open "rterr: breaker after 3 failures"
expect_eq "$(status rterr 'tier("primary")["breaker_trips"]')" 1 "rterr: breaker_trips"
expect_eq "$(status rterr 'tier("primary")["failed"]')" 3 "rterr: primary failed"
expect_eq "$(status rterr 'tier("primary")["loaded"]')" true "rterr: primary loaded"
expect_metric 'keel_infer_breaker_state{model="rterr",tier="primary"}' 1
expect_metric 'keel_infer_breaker_trips_total{model="rterr",tier="primary"}' 1
expect_metric 'keel_infer_requests_total{model="rterr",tier="primary",outcome="error"}' 3
expect_metric 'keel_infer_breaker_state{model="rterr",tier="secondary"}' 0
for i in 1 2 3 4 5; do # the primary is no longer tried
    served rterr 1 secondary true
    expect_eq "$reason" "primary: breaker open" "rterr: fallback_reason with the breaker open"
    lat=$(jget "$body" 'int(d["parameters"]["latency_us"])')
    ((lat < 50000)) || die "rterr: $lat us with the primary skipped"
done
expect_eq "$(status rterr 'tier("primary")["failed"]')" 3 "rterr: primary failed after skips"
expect_metric 'keel_infer_requests_total{model="rterr",tier="primary",outcome="skipped"}' 5
expect_metric 'keel_infer_requests_total{model="rterr",tier="secondary",outcome="ok"}' 8
expect_eq "$(status rterr 'd["serving_tier"]')" secondary "rterr: serving_tier"
expect_eq "$(status rterr 'd["tier_transitions"]')" 0 "rterr: transitions (secondary served from the start)"

# --- 3. a primary slower than its deadline -------------------------------------------------
infer deadline 1 '{"tier":"unbounded"}' # the same model without a deadline
expect_eq "$code" 200 "deadline: slow model without a deadline: $body"
((ms >= 300)) || die "deadline: slow.onnx took only $ms ms; the fixture must take well over 300 ms"
slow_ms=$ms
for i in 1 2 3; do
    served deadline 1 secondary true
    expect_has "$reason" "primary: stopped at its deadline" "deadline: fallback_reason of request $i"
    ((ms < 300)) || die "deadline: request $i took $ms ms with a 50 ms deadline (slow.onnx: $slow_ms ms)"
done
expect_metric 'keel_infer_requests_total{model="deadline",tier="primary",outcome="timeout"}' 3
expect_eq "$(status deadline 'tier("primary")["breaker"]')" open "deadline: breaker after 3 timeouts"
expect_eq "$(status deadline 'tier("primary")["deadline_ms"]')" 50 "deadline: deadline_ms in status"
served deadline 1 secondary true
expect_eq "$reason" "primary: breaker open" "deadline: fallback_reason with the breaker open"
((ms < 300)) || die "deadline: $ms ms with the primary skipped"
# pinned, the deadline still holds: 503 after ~50 ms, not the slow answer
infer deadline 1 '{"tier":"primary"}'
expect_eq "$code" 503 "deadline: pinned slow primary: $body"
expect_has "$body" "primary: stopped at its deadline" "deadline: pinned slow primary message"
((ms < 300)) || die "deadline: pinned primary took $ms ms with a 50 ms deadline"

# --- 4. a memory budget the model does not fit ---------------------------------------------
expect_eq "$(status memory 'tier("primary")["loaded"]')" false "memory: primary loaded"
expect_has "$(status memory 'tier("primary").get("load_error", "")')" "memory budget exceeded" "memory: load_error"
expect_has "$(status memory 'tier("primary").get("load_error", "")')" "the tier allows 1.0 MiB" "memory: load_error"
expect_eq "$(status memory 'tier("secondary")["loaded"]')" true "memory: secondary (512 MiB budget) loaded"
mem=$(metric 'keel_infer_model_memory_bytes{model="memory",tier="secondary"}')
[[ -n $mem ]] || die "memory: no keel_infer_model_memory_bytes for the secondary"
expect_metric 'keel_infer_model_memory_bytes{model="memory",tier="primary"}' 0
served memory 1 secondary true
expect_has "$reason" "primary: breaker open after load failure: memory budget exceeded" "memory: fallback_reason"

# --- 5. NaN output ------------------------------------------------------------------------
served nan 1 secondary true
expect_eq "$reason" 'primary: output "y" holds NaN or Inf' "nan: fallback_reason"
expect_eq "$(jget "$body" 'all(v == v for v in d["outputs"][0]["data"])')" true "nan: outputs finite"
expect_metric 'keel_infer_requests_total{model="nan",tier="primary",outcome="error"}' 1
expect_eq "$(status nan 'tier("primary")["failed"]')" 1 "nan: primary failed"
expect_eq "$(status nan 'tier("primary")["breaker"]')" closed "nan: breaker after one failure"

# --- 6. every tier broken -----------------------------------------------------------------------
for i in 1 2 3; do
    infer allfail 1
    expect_eq "$code" 503 "allfail: status of request $i: $body"
    msg=$(jget "$body" 'd["error"]')
    expect_eq "$(jget "$body" 'd["code"]')" NOTREADY "allfail: error code"
    expect_has "$msg" "allfail@1.0.0: every tier failed: primary: run: " "allfail: message names primary"
    expect_has "$msg" "out of data bounds" "allfail: primary's failure"
    expect_has "$msg" '; secondary: output "y" holds NaN or Inf; ' "allfail: message names secondary"
    expect_has "$msg" "; fallback: rules: no rule matched row 0" "allfail: message names fallback"
done
infer allfail 1 # every breaker is open now
expect_eq "$code" 503 "allfail: with every breaker open"
expect_eq "$(jget "$body" 'd["error"]')" \
    "allfail@1.0.0: every tier failed: primary: breaker open; secondary: breaker open; fallback: breaker open" \
    "allfail: message with every breaker open"
expect_eq "$(status allfail 'd["all_tiers_failed"]')" 4 "allfail: all_tiers_failed"
expect_eq "$(status allfail 'd["serving_tier"]')" "" "allfail: serving_tier"
expect_eq "$(status allfail '[t["breaker"] for t in d["tiers"]]')" '["open", "open", "open"]' "allfail: breakers"
expect_metric 'keel_infer_all_tiers_failed_total{model="allfail"}' 4
for t in primary secondary fallback; do
    expect_metric "keel_infer_breaker_state{model=\"allfail\",tier=\"$t\"}" 1
done
# four tiers, one that failed to load (its error repeats the blob path)
infer allfail4 1
expect_eq "$code" 503 "allfail4: status: $body"
msg=$(jget "$body" 'd["error"]')
expect_has "$msg" "allfail4@1.0.0: every tier failed: primary: breaker open after load failure: " "allfail4: message names primary"
expect_has "$msg" "; secondary: run: " "allfail4: message names secondary"
for t in 'tertiary: output "y" holds NaN or Inf' "fallback: rules: no rule matched row 0"; do
    expect_has "$msg" "$t" "allfail4: the 503 message (${#msg} bytes) names every tier"
done
# eight tiers (the most) with 31-byte names, each failing with a long error:
# every clause is shortened so that the 503 still names every tier, in order
infer "$name8" 1
expect_eq "$code" 503 "allfail8: status: $body"
msg=$(jget "$body" 'd["error"]')
expect_has "$msg" "$name8@1.0.0: every tier failed: $(t8 1): breaker open after load failure: " "allfail8: message names the first tier"
for i in 2 3 4 5 6 7; do
    expect_has "$msg" "; $(t8 "$i"): " "allfail8: the 503 message (${#msg} bytes) names tier $i"
done
[[ $msg == *"; $(t8 8): rules: no rule"* && ${#msg} -lt 1000 ]] ||
    die "allfail8: the 503 message (${#msg} bytes) is cut before the last tier's clause: $msg"
r=$(http GET /healthz); expect_eq "$(status_of "$r")" 200 "healthz after 503s"
kill -0 "$keeld_pid" 2>/dev/null || die "keeld died"
served nan 1 secondary true # other packages are unaffected

# --- 7. a breaker that opens, probes half-open and closes again ---------------------------------
# flaky.onnx fails for rows with x0 < 0. failures 2, cooldown 4 s (the checks inside
# it must finish within it on a loaded machine).
served recover 1 primary false
expect_eq "$reason" "" "recover: fallback_reason when the primary serves"
served recover -1 secondary true
expect_has "$reason" "primary: run: " "recover: fallback_reason"
expect_has "$reason" "GatherElements" "recover: fallback_reason"
# the second consecutive failure opens it; the next request, at once (well
# inside the cooldown), skips the primary; checked after both
infer recover -1
trip_code=$code trip_body=$body
served recover 1 secondary true
expect_eq "$trip_code" 200 "recover: second failure: $trip_body"
expect_eq "$(jget "$trip_body" 'd["parameters"]["tier"]')" secondary "recover: tier of the second failure"
expect_eq "$reason" "primary: breaker open" "recover: good input inside the cooldown"
expect_eq "$(status recover 'tier("primary")["breaker"]')" open "recover: breaker after 2 failures"
expect_metric 'keel_infer_breaker_state{model="recover",tier="primary"}' 1
expect_eq "$(status recover 'd["degraded"]')" true "recover: status degraded"
expect_eq "$(status recover 'd["tier_transitions"]')" 1 "recover: transitions"
sleep 4.2
infer recover -1 # the half-open probe fails: open again
trip_code=$code trip_body=$body
served recover 1 secondary true
expect_eq "$trip_code" 200 "recover: failed probe: $trip_body"
expect_eq "$(jget "$trip_body" 'd["parameters"]["tier"]')" secondary "recover: tier of the failed probe"
expect_has "$(jget "$trip_body" 'd["parameters"]["fallback_reason"]')" "primary: run: " "recover: the failed probe ran the primary"
expect_eq "$reason" "primary: breaker open" "recover: after the failed probe"
expect_eq "$(status recover 'tier("primary")["breaker_trips"]')" 2 "recover: trips after the failed probe"
grep -q "recover@1.0.0 tier primary: breaker open (probe failed)" "$work/keeld.log" ||
    die "recover: failed probe not logged"
sleep 4.2
served recover 1 primary false # the probe succeeds: closed
expect_eq "$reason" "" "recover: fallback_reason after recovery"
expect_eq "$(status recover 'tier("primary")["breaker"]')" closed "recover: breaker after the good probe"
expect_metric 'keel_infer_breaker_state{model="recover",tier="primary"}' 0
expect_metric 'keel_infer_breaker_trips_total{model="recover",tier="primary"}' 2
expect_eq "$(status recover 'd["serving_tier"]')" primary "recover: serving_tier"
expect_eq "$(status recover 'd["degraded"]')" false "recover: status degraded after recovery"
expect_eq "$(status recover 'd["tier_transitions"]')" 2 "recover: transitions"
expect_metric 'keel_infer_tier_transitions_total{model="recover"}' 2
grep -q "recover@1.0.0 tier primary: breaker closed again" "$work/keeld.log" ||
    die "recover: closing not logged"
served recover 2 primary false # closed: requests go to the primary again
served recover -1 secondary true # and one failure alone does not open it
expect_eq "$(status recover 'tier("primary")["breaker"]')" closed "recover: breaker after one new failure"

# a tier that failed to load is loaded again by the half-open probe (cooldown
# 2 s, over by now): it fails the same way and the breaker opens again
while (($(date +%s%N) - started < 2200000000)); do sleep 0.1; done
served reload 1 secondary true
expect_has "$reason" "primary: " "reload: fallback_reason of the probe"
expect_has "$reason" "Protobuf parsing failed" "reload: fallback_reason of the probe"
[[ $reason != *"breaker open"* ]] || die "reload: the probe did not try to load the primary again: $reason"
expect_eq "$(status reload 'tier("primary")["breaker_trips"]')" 2 "reload: trips after the failed load probe"
expect_eq "$(status reload 'tier("primary")["failed"]')" 1 "reload: failed after the load probe"
expect_eq "$(status reload 'tier("primary")["loaded"]')" false "reload: primary loaded"
served reload 1 secondary true
expect_has "$reason" "primary: breaker open after load failure: " "reload: fallback_reason after the probe"

# the error rate: failures 1000 (never consecutive), window 10, min_requests 4, rate 0.5
served rate 1 primary false
served rate -1 secondary true
served rate 1 primary false
expect_eq "$(status rate 'tier("primary")["breaker"]')" closed "rate: 1 failure in 3"
served rate -1 secondary true
expect_eq "$(status rate 'tier("primary")["breaker"]')" open "rate: 2 failures in 4"
grep -q "rate@1.0.0 tier primary: breaker open (error rate)" "$work/keeld.log" ||
    die "rate: error-rate trip not logged"
served rate 1 secondary true
expect_eq "$reason" "primary: breaker open" "rate: fallback_reason"

# --- 8. a pinned tier is honoured while its breaker is open -------------------------------------
served pinned -1 secondary true
served pinned -1 secondary true
expect_eq "$(status pinned 'tier("primary")["breaker"]')" open "pinned: breaker"
served pinned 1 secondary true
expect_eq "$reason" "primary: breaker open" "pinned: unpinned request"
served pinned 1 primary false '{"tier":"primary"}'
expect_eq "$reason" "" "pinned: fallback_reason"
expect_eq "$(status pinned 'tier("primary")["served"]')" 1 "pinned: primary served"
expect_eq "$(status pinned 'tier("primary")["breaker"]')" open "pinned: a pinned success leaves the breaker open"
expect_eq "$(status pinned 'd["serving_tier"]')" secondary "pinned: serving_tier (pinned requests do not move it)"
served pinned 1 secondary true # still skipped without the pin
expect_eq "$reason" "primary: breaker open" "pinned: unpinned request after the pinned one"
infer pinned -1 '{"tier":"primary"}' # pinned and failing: no other tier is tried
expect_eq "$code" 503 "pinned: failing pinned request: $body"
msg=$(jget "$body" 'd["error"]')
expect_has "$msg" "primary: run: " "pinned: message"
[[ $msg != *secondary* ]] || die "pinned: a pinned request went on to the secondary: $msg"
served pinned 1 fallback true '{"tier":"fallback"}'
expect_eq "$(jget "$body" 'd["parameters"]["backend"]')" rules "pinned: backend of the rules tier"
expect_eq "$(jget "$body" '[round(v, 6) for v in d["outputs"][0]["data"]]')" "[0.2, 0.3, 0.5]" "pinned: rules outputs"
infer pinned 1 '{"tier":"nope"}'
expect_eq "$code" 400 "pinned: unknown tier"
expect_has "$body" 'has no tier \"nope\"' "pinned: unknown tier message"

r=$(http GET /healthz); expect_eq "$(status_of "$r")" 200 "healthz at the end"
stop_keeld
echo "failover: ok"
