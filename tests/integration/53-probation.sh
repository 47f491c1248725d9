#!/usr/bin/env bash
# Probation end to end (issue 11): the real keeld, real ONNX Runtime models
# and a real mosquitto broker. v2 (good) serves; v3 "worse in the field"
# (flatter softmax: lower confidence; fails for every row with x[0] < 0:
# more errors; a chain of MatMuls: slower) is activated with a `health`
# section and rolled back by itself to v2; the verdict says not to retry,
# /api/status and /metrics show it, the critical rollback event reaches a
# mosquitto subscriber, and all of it survives a restart. Then a good v3.1
# passes probation across a keeld restart (the count resumes) and becomes
# known-good, with a `promoted` event on the `updates` topic.
source "$(dirname "$0")/lib.sh"
command -v mosquitto >/dev/null && command -v mosquitto_sub >/dev/null ||
    skip "no mosquitto broker or clients (apt install mosquitto mosquitto-clients)"
[[ -f $KEEL_ORT_LIB ]] || skip "no ONNX Runtime at $KEEL_ORT_LIB (run make setup)"
"$PY" -c 'import onnx, numpy' 2>/dev/null || skip "no python3-onnx / numpy for $PY"
command -v jq >/dev/null || skip "no jq"

# --- models: good (v2, v3.1) and worse (v3) ------------------------------------------------
"$PY" - "$work" "$keel_src/tests/integration" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from make_fault_models import *  # noqa: F401,F403  (save, logits, const, helper, np)
out = sys.argv[1]
good(out + "/good.onnx")
# worse: logits scaled by 0.1 (flatter softmax), rows with x[0] < 0 fail
# (GatherElements out of range, as flaky.onnx), 60 MatMuls of 256x256 first
nodes, inits = logits()
n = 256
nodes += [
    helper.make_node("Slice", ["x", "s0", "s1", "s_ax"], ["x0"]),
    helper.make_node("Less", ["x0", "zero"], ["neg"]),
    helper.make_node("Cast", ["neg"], ["negi"], to=TensorProto.INT64),
    helper.make_node("Mul", ["negi", "thousand"], ["off"]),
    helper.make_node("Add", ["off", "cols"], ["ix"]),
    helper.make_node("GatherElements", ["x", "ix"], ["picked"], axis=1),
    helper.make_node("Mul", ["picked", "fzero"], ["nothing"]),
    helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1),
    helper.make_node("Sigmoid", ["m"], ["sg"]),
    helper.make_node("Mul", ["sg", "inv_n"], ["sgn"]),
    helper.make_node("Expand", ["sgn", "nn"], ["h0"]),
    helper.make_node("ConstantOfShape", ["nn"], ["J"],
                     value=numpy_helper.from_array(np.array([1.0 / n], dtype=np.float32))),
]
prev = "h0"
for i in range(60):
    nodes.append(helper.make_node("MatMul", [prev, "J"], [f"h{i + 1}"]))
    prev = f"h{i + 1}"
nodes += [helper.make_node("ReduceMean", [prev], ["hm"], keepdims=1),
          helper.make_node("Mul", ["logits", "tenth"], ["flat"]),
          helper.make_node("Add", ["flat", "nothing"], ["l2"]),
          helper.make_node("Add", ["l2", "hm"], ["l3"]),
          helper.make_node("Softmax", ["l3"], ["y"], axis=1)]
inits += [const("s0", np.array([0], dtype=np.int64)), const("s1", np.array([1], dtype=np.int64)),
          const("s_ax", np.array([1], dtype=np.int64)),
          const("zero", np.array(0.0, dtype=np.float32)),
          const("fzero", np.array(0.0, dtype=np.float32)),
          const("thousand", np.array(1000, dtype=np.int64)),
          const("cols", np.array([0, 1, 2], dtype=np.int64)),
          const("inv_n", np.array(1.0 / n, dtype=np.float32)),
          const("nn", np.array([n, n], dtype=np.int64)),
          const("tenth", np.array(0.1, dtype=np.float32))]
save(out + "/worse.onnx", nodes, inits, "worse: flat, slow, fails for x[0] < 0")
PY
[[ -f $work/good.onnx && -f $work/worse.onnx ]] || die "the test models were not written"

# --- broker, subscriber, keeld ---------------------------------------------------------------
start_mosquitto_sub '%t %x'

setup_trust
cat >"$work/keeld.conf" <<C
state_dir = $state
device_id = it-device
uplink = mqtt
mqtt_host = 127.0.0.1
mqtt_port = $bport
sync_window = always
C
start_keeld --config "$work/keeld.conf"
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")

# pkg VERSION MODEL [HEALTH]: pack and install+activate through the API
pkg() {
    local ver=$1 model=$2 extra="" src=$work/src-$1
    [[ -z ${3:-} ]] || extra=", \"health\": $3"
    mkdir -p "$src"
    cp "$work/$model" "$src/model.onnx"
    printf 'a\nb\nc\n' >"$src/labels.txt"
    cat >"$src/keel.json" <<JSON
{"format": 1, "name": "p", "version": "$ver", "task": "test",
 "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
 "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
 "tiers": [{"name": "primary", "backend": "onnx", "model": "model.onnx"}],
 "postprocess": {"output": "y", "activation": "none", "labels": "labels.txt"}
 $extra}
JSON
    "$KEEL" pack "$src" -o "$work/p-$ver.keel" --key "$work/k.key" >/dev/null
    local r
    r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$work/p-$ver.keel")
    expect_eq "$(status_of "$r")" 201 "install of p $ver ($(body_of "$r"))"
    expect_has "$(body_of "$r")" '"activated":true' "install of p $ver"
}
# ask X0: one request; prints the HTTP status and the version that answered
ask() {
    local r
    r=$(infer p "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1,4],\"data\":[$1,0.5,0.2,0.1]}]}")
    echo "$(status_of "$r") $(jfield "$(body_of "$r")" '.parameters.package // "-"')"
}
prob() { curl -sf "$url/api/status" | jq -c ".probation.p${1:+ | $1}"; }
metric() { curl -sf "$url/metrics" | awk -v k="$1" 'index($0, k " ") == 1 { print $2 }'; }

# --- v2: good, no health section: serves, gathers the reference ------------------------------
pkg 2.0.0 good.onnx
for i in $(seq 60); do
    a=$(ask 1)
    [[ $a == "200 p@2.0.0" ]] || die "v2 request $i: $a"
done
for _ in $(seq 50); do [[ $(prob .serving_metrics.requests) -ge 60 ]] && break; sleep 0.1; done
expect_eq "$(prob .state)" '"none"' "v2 is not on probation (no health section, no settings)"
expect_eq "$(prob .serving_metrics.requests)" 60 "requests counted for v2"

# --- v3: worse in the field, watched, rolled back by itself ------------------------------------
health='{"probation": {"requests": 80, "minutes": 30, "min_requests": 20},
         "max_p95_ms": 5000, "tolerance": {"error_rate": 0.02, "confidence": 0.05}}'
pkg 3.0.0 worse.onnx "$health"
for _ in $(seq 50); do [[ $(prob .state) == '"watching"' ]] && break; sleep 0.1; done
expect_eq "$(prob .state)" '"watching"' "v3 on probation ($(prob))"
expect_eq "$(prob .previous)" '"2.0.0"' "v3 is compared with v2"
expect_eq "$(prob .window.requests)" 80 "probation window from the health section"
served3=0 failed3=0 back=0
for i in $(seq 80); do
    x0=1
    ((i % 2)) && x0=-1
    a=$(ask $x0)
    case $a in
    "200 p@3.0.0") served3=$((served3 + 1)) ;;
    "503 "*) failed3=$((failed3 + 1)) ;;
    "200 p@2.0.0") back=1 && break ;;
    *) die "v3 request $i: $a" ;;
    esac
    sleep 0.05
done
for _ in $(seq 100); do [[ $(prob .state) == '"breached"' ]] && break; sleep 0.1; done
p=$(prob)
expect_eq "$(jq -r .state <<<"$p")" breached "v3's probation ($p)"
expect_has "$(jq -r .reason <<<"$p")" "error_rate" "the breach names the metric"
expect_has "$(jq -r .reason <<<"$p")" "(previous version 2.0.0: 0.000 + tolerance 0.020)" \
    "the breach names the reference and both numbers"
[[ $failed3 -gt 0 && $served3 -gt 0 ]] || die "v3 should have both answered and failed: $served3 / $failed3"
# the field figures say what was worse
jq -e '.metrics.mean_confidence < .previous_metrics.mean_confidence - 0.1' <<<"$p" >/dev/null ||
    die "v3's confidence should be lower than v2's: $p"
jq -e '.metrics.error_rate > 0.3 and .previous_metrics.error_rate == 0' <<<"$p" >/dev/null ||
    die "v3's error rate should be higher than v2's: $p"
jq -e '.metrics.p95_ms > .previous_metrics.p95_ms' <<<"$p" >/dev/null ||
    die "v3 should be slower than v2: $p"
# rolled back: v2 serves again, v3 is not to be retried
expect_eq "$(ask 1)" "200 p@2.0.0" "after the rollback"
expect_eq "$(jq -r '.verdicts[] | select(.version == "3.0.0") | "\(.kind) \(.retry)"' <<<"$p")" \
    "rolled_back false" "the verdict on v3"
expect_eq "$(jq -r '.verdicts[] | select(.name == "p" and .version == "3.0.0") | .kind' \
    "$state/update/verdicts.json")" rolled_back "verdicts.json on disk"
expect_eq "$(metric 'keel_probation_last_decision{package="p",outcome="breached"}')" 1 \
    "keel_probation_last_decision metric"
grep -q "p@3.0.0 failed probation" "$work/keeld.log" || die "no log line for the breach"

# the critical rollback event reaches the subscriber
got=""
for _ in $(seq 100); do
    got=$(awk '$1 == "keel/it-device/critical/alerts/update" {print $2}' "$work/sub.txt" | head -n1)
    [[ -n $got ]] && break
    sleep 0.2
done
[[ -n $got ]] || { cat "$work/sub.err" >&2; die "no alerts/update message at the subscriber: $(cut -c1-80 "$work/sub.txt")"; }
xxd -r -p <<<"$got" >"$work/env.rb"
ev=$("$KEEL" envelope decode "$work/env.rb" | head -n1)
expect_eq "$(jq -r .priority <<<"$ev")" critical "rollback event priority"
expect_eq "$(jq -r '.payload.step' <<<"$ev")" rolled_back "rollback event step ($ev)"
expect_eq "$(jq -r '.payload.version' <<<"$ev")" 3.0.0 "rollback event version"
expect_has "$(jq -r '.payload.reason' <<<"$ev")" "error_rate" "rollback event reason"

# a restart keeps the verdict and the probation's outcome
stop_keeld
start_keeld --config "$work/keeld.conf"
for _ in $(seq 50); do [[ $(prob .state) == '"breached"' ]] && break; sleep 0.1; done
expect_eq "$(prob .state)" '"breached"' "probation state after a restart"
expect_eq "$(prob .window.requests)" 80 "the window after a restart"
expect_eq "$(prob '.metrics.error_rate > 0.3')" true "the figures the decision saw, after a restart"
expect_eq "$(prob '.verdicts[0].kind')" '"rolled_back"' "verdict after a restart"
expect_eq "$(ask 1)" "200 p@2.0.0" "v2 serves after a restart"

# --- v3.1: good, passes probation across a restart, becomes known-good --------------------------
health='{"probation": {"requests": 40, "min_requests": 20}, "max_error_rate": 0.05,
         "min_mean_confidence": 0.3}'
pkg 3.1.0 good.onnx "$health"
for _ in $(seq 50); do [[ $(prob .state) == '"watching"' ]] && break; sleep 0.1; done
expect_eq "$(prob .state)" '"watching"' "v3.1 on probation"
for i in $(seq 25); do
    a=$(ask 1)
    [[ $a == "200 p@3.1.0" ]] || die "v3.1 request $i: $a"
done
for _ in $(seq 50); do [[ $(prob .requests) -ge 25 ]] && break; sleep 0.1; done
expect_eq "$(prob .state)" '"watching"' "v3.1 still on probation after 25 of 40"
stop_keeld # saves the probation state
start_keeld --config "$work/keeld.conf"
for _ in $(seq 50); do [[ $(prob .state) == '"watching"' ]] && break; sleep 0.1; done
expect_eq "$(prob .state)" '"watching"' "v3.1 still on probation after a restart"
expect_eq "$(prob .requests)" 25 "the count survives a restart"
for i in $(seq 15); do
    a=$(ask 1)
    [[ $a == "200 p@3.1.0" ]] || die "v3.1 request $((25 + i)): $a"
done
for _ in $(seq 100); do [[ $(prob .state) == '"passed"' ]] && break; sleep 0.1; done
p=$(prob)
expect_eq "$(jq -r .state <<<"$p")" passed "v3.1's probation ($p)"
expect_eq "$(jq -r '.verdicts[] | select(.version == "3.1.0") | "\(.kind) \(.retry)"' <<<"$p")" \
    "promoted true" "the verdict on v3.1"
pk=$(curl -sf "$url/api/packages" "${auth[@]}")
expect_eq "$(jq -r '.packages[] | select(.name == "p" and (.slots | index("known_good"))) | .version' <<<"$pk")" \
    3.1.0 "v3.1 is known-good ($pk)"
got=""
for _ in $(seq 100); do
    got=$(awk '$1 == "keel/it-device/normal/updates" {print $2}' "$work/sub.txt" | tail -n1)
    [[ -n $got ]] && break
    sleep 0.2
done
[[ -n $got ]] || die "no updates message at the subscriber"
xxd -r -p <<<"$got" >"$work/env.pr"
expect_has "$("$KEEL" envelope decode "$work/env.pr")" '"step":"promoted"' "promoted event"
stop_keeld
echo "53-probation: v3 rolled back after $((served3 + failed3)) requests ($failed3 failed); v3.1 promoted"
