#!/usr/bin/env bash
# Inference end to end over the Open Inference Protocol: the four examples
# (iris, mnist, vad, machine-temp) packed, installed over HTTP (self-test)
# and served; every tier pinned; metadata and readiness; /api/status and
# /metrics; binary tensors against JSON; images (PNG body, base64 BYTES)
# against tensors and raw ONNX Runtime; VAD sessions against raw ONNX
# Runtime; every kind of bad request gets its 4xx and keeld keeps serving.
source "$(dirname "$0")/lib.sh"
# ONNX Runtime's own leaks at exit are not keel's
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$keel_src/tests/lsan.supp}
# a command that fails outside the checks (curl without an answer) says where
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
ex=$keel_src/examples
[[ -x $ort_ref ]] || die "ort_ref not built at $ort_ref"
setup_trust
# a small max_infer_body for the 413 checks (every valid request below fits)
printf 'max_infer_body = 32K\nlog_level = info\n' >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf"
token=$(cat "$state/token")

r=$(http GET /v2/health/live); expect_eq "$(status_of "$r")" 200 "live with nothing installed"
r=$(http GET /v2/health/ready); expect_eq "$(status_of "$r")" 503 "ready with nothing installed"
expect_eq "$(jfield "$(body_of "$r")" .ready)" false "v2 ready body"
r=$(http GET /v2/models/iris); expect_error "$r" 404 NOTFOUND 'no model "iris"' "metadata before install"

models=(iris mnist vad machine-temp)
for m in "${models[@]}"; do install_example "$m"; done

# --- server and model metadata, readiness ------------------------------------------------
r=$(http GET /v2/health/ready); expect_eq "$(status_of "$r")" 200 "v2 ready"
expect_eq "$(body_of "$r")" '{"ready":true}' "v2 ready body"
expect_eq "$(body_of "$(http GET /v2/health/live)")" '{"live":true}' "v2 live body"
r=$(http GET /readyz); expect_eq "$(status_of "$r")" 200 "readyz"
r=$(http GET /v2); expect_eq "$(status_of "$r")" 200 "server metadata"
expect_eq "$(jfield "$(body_of "$r")" .name)" keel "server name"
expect_eq "$(jfield "$(body_of "$r")" '.extensions | index("binary_tensor_data") != null')" true \
    "binary_tensor_data extension"
packages=$(body_of "$(http GET /api/packages)")
declare -A digest
for m in "${models[@]}"; do
    man=$ex/$m/keel.json
    digest[$m]=$(curl -s "$url/api/status" | jq -r ".store.packages[] | select(.name==\"$m\") | .serving.digest")
    [[ ${digest[$m]} == sha256:* ]] || die "$m: no serving digest in /api/status"
    expect_has "$packages" "\"$m\"" "/api/packages"
    r=$(http GET "/v2/models/$m"); expect_eq "$(status_of "$r")" 200 "$m metadata"
    b=$(body_of "$r")
    expect_eq "$(jfield "$b" .name)" "$m" "$m metadata name"
    expect_eq "$(jfield "$b" -c .versions)" '["1.0.0"]' "$m metadata versions"
    expect_eq "$(jfield "$b" .parameters.package_digest)" "${digest[$m]}" "$m metadata digest"
    expect_eq "$(jfield "$b" -c .parameters.tiers)" "$(jq -c '[.tiers[].name]' "$man")" "$m tiers"
    for io in inputs outputs; do
        want=$(jq -c "[.$io[] | {name, datatype: (.dtype | {float32:\"FP32\",int64:\"INT64\"}[.]), shape}]" "$man")
        expect_eq "$(jfield "$b" -c "[.$io[] | {name, datatype, shape}]")" "$want" "$m metadata $io"
    done
    r=$(http GET "/v2/models/$m/ready"); expect_eq "$(status_of "$r")" 200 "$m ready"
    expect_eq "$(body_of "$r")" "{\"name\":\"$m\",\"ready\":true}" "$m ready body"
    r=$(http GET "/v2/models/$m/versions/1.0.0/ready"); expect_eq "$(status_of "$r")" 200 "$m 1.0.0 ready"
    r=$(http GET "/v2/models/$m/versions/1.0.0"); expect_eq "$(status_of "$r")" 200 "$m 1.0.0 metadata"
    r=$(http GET "/v2/models/$m/versions/9.9.9/ready")
    expect_error "$r" 404 NOTFOUND "serves version 1.0.0, not 9.9.9" "$m version 9.9.9"
done
expect_eq "$(jfield "$(body_of "$(http GET /v2/models/mnist)")" .parameters.image_input)" Input3 \
    "mnist image_input"
expect_eq "$(jfield "$(body_of "$(http GET /v2/models/iris)")" .parameters.image_input)" null \
    "iris has no image input"

# --- one input per model, every tier pinned ----------------------------------------------
# name shape (and the same tensor as raw f32 for the binary checks), expected label
"$PY" - "$ex" "$work" <<'PYEOF'
import csv, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1] + "/../tests/integration")
from infer_client import png_decode_gray
ex, work = sys.argv[1], sys.argv[2]
iris = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)    # setosa, virginica
rows = list(csv.reader(open(ex + "/machine-temp/validation/machine-temp.csv")))
mt = np.array([[float(v) for v in rows[18][:32]]], np.float32)               # labelled anomaly
assert rows[18][32] == "anomaly", rows[18][32]
px = png_decode_gray(open(ex + "/mnist/validation/images/000.png", "rb").read())
vad = np.fromfile(ex + "/vad/validation/frames/0000.f32", "<f4").reshape(1, 512)  # silence
for name, a in (("iris", iris), ("machine-temp", mt), ("mnist", px.reshape(1, 1, 28, 28)),
                ("vad", vad)):
    a.astype("<f4").tofile("%s/%s.f32" % (work, name))
    open("%s/%s.data" % (work, name), "w").write(json.dumps([float(x) for x in a.ravel()]))
PYEOF
declare -A input=([iris]=float_input [mnist]=Input3 [vad]=input [machine-temp]=window)
declare -A shape=([iris]=2,4 [mnist]=1,1,28,28 [vad]=1,512 [machine-temp]=1,32)
declare -A labels=([iris]='["setosa","virginica"]' [mnist]='["7"]' [vad]='["silence"]'
    [machine-temp]='["anomaly"]')
req() { # MODEL [TIER]: a JSON request for the model's test input
    jq -nc --arg n "${input[$1]}" --argjson s "[${shape[$1]}]" --slurpfile d "$work/$1.data" \
        --arg t "${2:-}" '{inputs: [{name: $n, shape: $s, datatype: "FP32", data: $d[0]}]}
        + (if $t == "" then {} else {parameters: {tier: $t}} end)'
}
declare -A pinned # requests per model/tier served so far (for the status counters)
for m in "${models[@]}"; do
    man=$ex/$m/keel.json
    ntiers=$(jq '.tiers | length' "$man")
    for ((i = 0; i < ntiers; i++)); do
        tier=$(jq -r ".tiers[$i].name" "$man")
        backend=$(jq -r ".tiers[$i].backend" "$man")
        what="$m pinned to $tier"
        r=$(infer "$m" "$(req "$m" "$tier")")
        b=$(body_of "$r")
        expect_eq "$(status_of "$r")" 200 "$what ($b)"
        expect_eq "$(header_of X-Keel-Tier)" "$tier" "$what: X-Keel-Tier"
        expect_eq "$(header_of Content-Type)" application/json "$what: Content-Type"
        expect_eq "$(jfield "$b" .model_name)" "$m" "$what: model_name"
        expect_eq "$(jfield "$b" .model_version)" 1.0.0 "$what: model_version"
        expect_eq "$(jfield "$b" .parameters.tier)" "$tier" "$what: parameters.tier"
        expect_eq "$(jfield "$b" .parameters.backend)" "$backend" "$what: parameters.backend"
        expect_eq "$(jfield "$b" .parameters.degraded)" "$([[ $i -gt 0 ]] && echo true || echo false)" \
            "$what: parameters.degraded"
        expect_eq "$(jfield "$b" .parameters.package)" "$m@1.0.0" "$what: parameters.package"
        expect_eq "$(jfield "$b" .parameters.package_digest)" "${digest[$m]}" "$what: package_digest"
        expect_eq "$(jfield "$b" .parameters.fallback_reason)" "" "$what: fallback_reason"
        expect_eq "$(jfield "$b" '.parameters.latency_us > 0')" true "$what: latency_us"
        expect_eq "$(jfield "$b" -c '[.result[].label]')" "${labels[$m]}" "$what: result labels"
        expect_eq "$(jfield "$b" '[.result[].confidence | numbers | select(. > 0 and . <= 1)] | length')" \
            "$(jq length <<<"${labels[$m]}")" "$what: result confidences"
        expect_eq "$(jfield "$b" -c '[.outputs[].name] | sort')" "$(jq -c '[.outputs[].name] | sort' "$man")" \
            "$what: output names"
        pinned[$m/$tier]=1
        # the same tensor as binary data, outputs as binary: the same numbers
        out=$(infer_client tensor-vs-binary "$m" "${input[$m]}" "${shape[$m]}" "$work/$m.f32" "$tier") ||
            die "$what: binary and JSON disagree"
        expect_eq "$(jq -c '[.result[].label]' <<<"$out")" "${labels[$m]}" "$what: binary result"
        pinned[$m/$tier]=6
    done
    # not pinned: the primary serves, not degraded
    r=$(infer "$m" "$(req "$m")")
    expect_eq "$(status_of "$r")" 200 "$m unpinned"
    expect_eq "$(header_of X-Keel-Tier)" primary "$m unpinned: X-Keel-Tier"
    expect_eq "$(jfield "$(body_of "$r")" .parameters.degraded)" false "$m unpinned: degraded"
    pinned[$m/primary]=$((pinned[$m/primary] + 1))
done
# the numbers themselves, where they are known: rules give the rule's outputs
b=$(body_of "$(infer iris "$(req iris tertiary)")")
expect_eq "$(jfield "$b" -c '.outputs[] | select(.name=="output_probability") | .data')" \
    '[1,0,0,0,0.108999997,0.890999973]' "iris rules probabilities"
b=$(body_of "$(infer machine-temp "$(req machine-temp secondary)")")
expect_eq "$(jfield "$b" -c '.outputs[0].data')" '[0.730000019]' "machine-temp rule score"
pinned[iris/tertiary]=$((pinned[iris/tertiary] + 1))
pinned[machine-temp/secondary]=$((pinned[machine-temp/secondary] + 1))
b=$(body_of "$(infer mnist "$(req mnist)")")
# top_k: at most 3, best first, the label first, no class of probability 0
# (mnist's logits are thousands apart: softmax leaves the rest at exactly 0)
expect_eq "$(jfield "$b" -c '.result[0] | [.top_k[0].index == .index, (.top_k | length) <= 3,
    (.top_k | map(.score > 0) | all), (.top_k | map(.score) | . == (sort | reverse))]')" \
    '[true,true,true,true]' "mnist top_k ($(jfield "$b" -c '.result[0].top_k'))"
expect_eq "$(jfield "$b" '[.result[0].index, (.outputs[0].data | index(max))] | unique | length')" 1 \
    "mnist result index is the argmax"
pinned[mnist/primary]=$((pinned[mnist/primary] + 1))

# request id, nested data, output selection, binary_data_output, /versions/V/infer
r=$(infer iris '{"id":"req-42","inputs":[{"name":"float_input","shape":[2,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}],"outputs":[{"name":"output_label"}]}')
b=$(body_of "$r")
expect_eq "$(status_of "$r")" 200 "iris with id, nested data, one output ($b)"
expect_eq "$(jfield "$b" .id)" req-42 "id echoed"
expect_eq "$(jfield "$b" -c '[.outputs[] | {name, datatype, shape, data}]')" \
    '[{"name":"output_label","datatype":"INT64","shape":[2],"data":[0,2]}]' "only the asked output"
expect_eq "$(jfield "$b" -c '[.result[].label]')" '["setosa","virginica"]' "nested data result"
curl -s -D "$work/hdr" -o "$work/bin.out" -H 'Content-Type: application/json' \
    --data-binary '{"inputs":[{"name":"float_input","shape":[2,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}],"outputs":[{"name":"output_label"}],"parameters":{"binary_data_output":true,"tier":"secondary"}}' \
    "$url/v2/models/iris/infer"
jl=$(header_of Inference-Header-Content-Length)
[[ $jl =~ ^[0-9]+$ ]] || die "binary_data_output: no Inference-Header-Content-Length"
expect_eq "$(header_of Content-Type)" application/octet-stream "binary_data_output Content-Type"
expect_eq "$(head -c "$jl" "$work/bin.out" | jq -c '.outputs')" \
    '[{"name":"output_label","datatype":"INT64","shape":[2],"parameters":{"binary_data_size":16}}]' \
    "binary_data_output header"
expect_eq "$(tail -c +$((jl + 1)) "$work/bin.out" | od -An -tx1 | tr -d ' \n')" \
    00000000000000000200000000000000 "binary_data_output bytes (int64 0 and 2)"
r=$(curl -s -w '\n%{http_code}' -H 'Content-Type: application/json' --data-binary "$(req iris)" \
    "$url/v2/models/iris/versions/1.0.0/infer")
expect_eq "$(status_of "$r")" 200 "infer on /versions/1.0.0"
r=$(curl -s -w '\n%{http_code}' -H 'Content-Type: application/json' --data-binary "$(req iris)" \
    "$url/v2/models/iris/versions/2.0.0/infer")
expect_error "$r" 404 NOTFOUND "iris serves version 1.0.0, not 2.0.0" "infer on another version"
pinned[iris/primary]=$((pinned[iris/primary] + 2))
pinned[iris/secondary]=$((pinned[iris/secondary] + 1))

# --- /api/status inference and /metrics ----------------------------------------------------
st=$(curl -s "$url/api/status")
metrics=$(curl -s "$url/metrics")
promtool check metrics <<<"$metrics" || die "promtool check metrics failed"
expect_has "$metrics" "keel_up 1" "metrics"
expect_has "$metrics" "keel_ready 1" "metrics"
for m in "${models[@]}"; do
    man=$ex/$m/keel.json
    s=$(jq -c ".inference[\"$m\"]" <<<"$st")
    expect_eq "$(jfield "$s" .version)" 1.0.0 "status $m version"
    expect_eq "$(jfield "$s" .digest)" "${digest[$m]}" "status $m digest"
    expect_eq "$(jfield "$s" .serving_tier)" primary "status $m serving_tier"
    expect_eq "$(jfield "$s" .degraded)" false "status $m degraded"
    expect_eq "$(jfield "$s" .all_tiers_failed)" 0 "status $m all_tiers_failed"
    expect_eq "$(jfield "$s" -c '[.tiers[] | {name, backend}]')" \
        "$(jq -c '[.tiers[] | {name, backend}]' "$man")" "status $m tiers"
    expect_eq "$(jfield "$s" -c '[.tiers[] | .breaker] | unique')" '["closed"]' "status $m breakers"
    expect_eq "$(jfield "$s" -c '[.tiers[] | .loaded] | unique')" '[true]' "status $m loaded"
    expect_eq "$(jfield "$s" -c '[.tiers[] | .failed] | unique')" '[0]' "status $m failed"
    for tier in $(jq -r '.tiers[].name' "$man"); do
        n=${pinned[$m/$tier]}
        expect_eq "$(jfield "$s" ".tiers[] | select(.name==\"$tier\") | .served")" "$n" \
            "status $m $tier served"
        expect_has "$metrics" "keel_infer_requests_total{model=\"$m\",tier=\"$tier\",outcome=\"ok\"} $n" \
            "metrics $m $tier"
        expect_has "$metrics" "keel_infer_latency_seconds_count{model=\"$m\",tier=\"$tier\"} $n" \
            "metrics $m $tier latency"
        expect_has "$metrics" "keel_infer_breaker_state{model=\"$m\",tier=\"$tier\"} 0" \
            "metrics $m $tier breaker"
    done
    expect_has "$metrics" "keel_infer_all_tiers_failed_total{model=\"$m\"} 0" "metrics $m"
done
# the same registry as JSON
mj=$(curl -s "$url/api/metrics")
jq -e . <<<"$mj" >/dev/null || die "/api/metrics is not JSON: ${mj:0:200}"
expect_eq "$(jq -r '.families[] | select(.name=="keel_ready") | .series[0].value' <<<"$mj")" 1 \
    "/api/metrics keel_ready"
for m in "${models[@]}"; do
    tier=$(jq -r '.tiers[0].name' "$ex/$m/keel.json")
    expect_eq "$(jq -r --arg m "$m" --arg t "$tier" '.families[] |
        select(.name=="keel_infer_requests_total") | .series[] |
        select(.labels.model==$m and .labels.tier==$t and .labels.outcome=="ok") | .value' <<<"$mj")" \
        "${pinned[$m/$tier]}" "/api/metrics keel_infer_requests_total $m $tier"
done

# --- images: PNG body, base64 BYTES, JSON and binary tensors; against raw ORT ---------------
out=$(infer_client mnist-images "$ex/mnist") || die "mnist images disagree between the six ways"
"$PY" - "$ex/mnist" "$work" <<'PYEOF'
import csv, gzip, struct, sys
sys.path.insert(0, sys.argv[1] + "/../../tests/integration")
from infer_client import png_decode_gray
d, work = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(d + "/validation/mnist.csv")))
px = b"".join(png_decode_gray(open(d + "/" + r["file"], "rb").read()).astype("u1").tobytes()
              for r in rows)
gzip.open(work + "/img.gz", "wb").write(struct.pack(">IIII", 0x803, len(rows), 28, 28) + px)
gzip.open(work + "/lab.gz", "wb").write(struct.pack(">II", 0x801, len(rows)) +
                                        bytes(int(r["label"]) for r in rows))
PYEOF
ref=$("$ort_ref" mnist "$ex/mnist/model/mnist.onnx" "$work/img.gz" "$work/lab.gz" 2>/dev/null | tail -n1)
expect_eq "$out" "$ref" "mnist validation images: keel (all six ways) vs raw ORT"
expect_eq "$out" 99/100 "mnist validation images correct"
png=$ex/mnist/validation/images/001.png
r=$(curl -s -D "$work/hdr" -w '\n%{http_code}' -H 'Content-Type: image/png' --data-binary "@$png" \
    "$url/v2/models/mnist/infer?tier=primary&session=img-1")
expect_eq "$(status_of "$r")" 200 "PNG body with ?tier=primary"
expect_eq "$(header_of X-Keel-Tier)" primary "PNG body X-Keel-Tier"
expect_eq "$(jfield "$(body_of "$r")" .result[0].label)" 2 "PNG body label of 001.png"
r=$(curl -s -w '\n%{http_code}' -H 'Content-Type: image/png' --data-binary "@$png" \
    "$url/v2/models/mnist/infer?tier=bogus")
expect_error "$r" 400 INVALID 'mnist has no tier "bogus"' "PNG body with an unknown tier"
r=$(curl -s -w '\n%{http_code}' -H 'Content-Type: image/png' --data-binary 'not a png at all' \
    "$url/v2/models/mnist/infer")
expect_error "$r" 400 INVALID "not a PNG or JPEG" "PNG body that is no image"
head -c $(($(stat -c %s "$png") / 2)) "$png" >"$work/cut.png"
r=$(curl -s -w '\n%{http_code}' -H 'Content-Type: image/png' --data-binary "@$work/cut.png" \
    "$url/v2/models/mnist/infer")
expect_error "$r" 400 INVALID "corrupt PNG: file is truncated" "truncated PNG body"
r=$(curl -s -w '\n%{http_code}' -H 'Content-Type: image/png' --data-binary "@$png" \
    "$url/v2/models/iris/infer")
expect_error "$r" 400 INVALID "iris takes no image input" "PNG body to a model without images"
r=$(infer mnist '{"inputs":[{"name":"Input3","shape":[1],"datatype":"BYTES","data":["@@@notbase64"]}]}')
expect_error "$r" 400 INVALID "not valid base64" "base64 image that is not base64"
r=$(infer mnist '{"inputs":[{"name":"Input3","shape":[1],"datatype":"BYTES","data":["aGVsbG8="]}]}')
expect_error "$r" 400 INVALID "not a PNG or JPEG" "base64 of no image"

# --- VAD: sessions carry state and context, equal to raw ORT over the same stream -----------
"$PY" - "$ex/vad/validation/frames" "$work/vad.wav" <<'PYEOF'
import os, sys, wave
import numpy as np
d = sys.argv[1]
a = np.concatenate([np.fromfile(os.path.join(d, f), "<f4") for f in sorted(os.listdir(d))])
s = np.round(a * 32768)
assert np.all(s == a * 32768), "frames are not s16 samples"
w = wave.open(sys.argv[2], "wb")
w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
w.writeframes(s.astype("<i2").tobytes())
w.close()
PYEOF
frames=$ex/vad/validation/frames
expected_speech=$(awk -F, 'NR > 1 && $2 == "speech" {sub(/.*\//, "", $1); sub(/\.f32/, "", $1); print $1 + 0}' \
    "$ex/vad/validation/vad.csv")
probs_close() { # KEEL_PROBS REF_PROBS WHAT: "i p" lines, equal within 1e-5
    paste -d' ' "$1" "$2" | awk -v what="$3" '
        NF == 4 { d = $2 - $4; if (d < 0) d = -d; if ($1 != $3 || d > 1e-5) { print what ": frame " $1 ": keel " $2 ", ORT " $4; bad = 1 } }
        END { exit bad }' || die "$3: probabilities differ from raw ORT"
    expect_eq "$(tail -n1 "$1")" "$(tail -n1 "$2")" "$3: flagged frames"
}
for tier_model in primary:silero_vad_v6 secondary:silero_vad_v4_legacy; do
    tier=${tier_model%%:*}
    "$ort_ref" vad "$ex/vad/model/${tier_model#*:}.onnx" "$work/vad.wav" --probs 2>/dev/null >"$work/ref-$tier.txt" ||
        die "ort_ref vad failed"
    # two sessions streamed at once must not disturb each other
    infer_client vad-stream "$frames" "$tier" "mic-$tier-a" --probs >"$work/a-$tier.txt" &
    pa=$!
    infer_client vad-stream "$frames" "$tier" "mic-$tier-b" --probs >"$work/b-$tier.txt" ||
        die "VAD session b on $tier failed"
    wait "$pa" || die "VAD session a on $tier failed"
    probs_close "$work/a-$tier.txt" "$work/ref-$tier.txt" "VAD session a on $tier"
    probs_close "$work/b-$tier.txt" "$work/ref-$tier.txt" "VAD session b on $tier"
done
got=$(infer_client vad-stream "$frames" primary mic-3)
expect_eq "$(tail -n1 <<<"$got")" 36/100 "VAD v6 session speech frames"
expect_eq "$(sed '$d' <<<"$got" | tr '\n' ' ')" "$(tr '\n' ' ' <<<"$expected_speech")" \
    "VAD v6 session frames against validation/vad.csv"
# without a session every frame starts from zero state: not the same stream
nosess=$(infer_client vad-stream "$frames" primary "")
[[ $nosess != "$got" ]] || die "VAD without a session gives the same flags as with one"
expect_eq "$(tail -n1 <<<"$nosess")" 11/100 "VAD v6 frames without a session"
# the energy rule: RMS >= 0.004
want=$("$PY" -c '
import os, sys
import numpy as np
d = sys.argv[1]
fs = [np.fromfile(os.path.join(d, f), "<f4").astype(np.float64) for f in sorted(os.listdir(d))]
print("%d/%d" % (sum(np.sqrt(np.mean(f * f)) >= 0.004 for f in fs), len(fs)))' "$frames")
expect_eq "$(infer_client vad-stream "$frames" tertiary mic-rules | tail -n1)" "$want" "VAD energy rule"
s=$(curl -s "$url/api/status" | jq -c '.inference.vad')
expect_eq "$(jfield "$s" .sessions)" 6 "open VAD sessions"
expect_has "$(curl -s "$url/metrics")" 'keel_infer_sessions{model="vad"} 6' "sessions metric"

# --- bad requests: each its 4xx and a message naming the problem; keeld keeps serving --------
ok_iris='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}')" \
    400 INVALID 'input "float_input": shape [1,5] does not fit [-1,4]' "wrong shape"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[4],"datatype":"FP32","data":[1,2,3,4]}]}')" \
    400 INVALID 'shape [4] does not fit [-1,4]' "wrong rank"
expect_error "$(infer mnist '{"inputs":[{"name":"Input3","shape":[1,784],"datatype":"FP32","data":['"$(seq -s, 784)"']}]}')" \
    400 INVALID 'shape [1,784] does not fit [1,1,28,28]' "mnist wrong shape"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}')" \
    400 INVALID '3 values for a shape of 4 elements' "data shorter than the shape"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[1,2,"x",4]}]}')" \
    400 INVALID 'data [2] is not a number' "data that is not a number"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}')" \
    400 INVALID 'datatype int64, the model takes float32' "wrong datatype"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP99","data":[1,2,3,4]}]}')" \
    400 INVALID '"FP99" is not an Open Inference Protocol type' "unknown datatype"
expect_error "$(infer iris '{"inputs":[]}')" 400 INVALID 'input "float_input" is missing' "missing input"
expect_error "$(infer iris '{"parameters":{}}')" 400 INVALID '"inputs" is missing' "no inputs"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"bogus","shape":[1],"datatype":"FP32","data":[1]}]}')" \
    400 INVALID 'unknown input "bogus"; iris takes "float_input"' "unknown input"
expect_error "$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"parameters":{"tier":"quaternary"}}')" \
    400 INVALID 'iris has no tier "quaternary"' "unknown tier"
expect_error "$(infer iris '{"inputs":[{"name":"float_input",')" 400 INVALID 'malformed JSON' "malformed JSON"
expect_error "$(infer iris 'not json at all')" 400 INVALID 'malformed JSON' "not JSON"
expect_error "$(infer nope "$ok_iris")" 404 NOTFOUND 'no model "nope" is served' "unknown model"
expect_error "$(http GET /v2/models/nope)" 404 NOTFOUND 'no model "nope"' "metadata of an unknown model"
expect_error "$(http GET /v2/models/nope/ready)" 404 NOTFOUND 'no model "nope"' "ready of an unknown model"
# oversized: announced by Content-Length, and streamed chunked
head -c 40000 /dev/zero | tr '\0' ' ' >"$work/big.json"
expect_error "$(infer iris "@$work/big.json")" 413 TOOBIG 'max_infer_body' "body over max_infer_body"
expect_error "$(infer iris "@$work/big.json" -H 'Transfer-Encoding: chunked')" 413 TOOBIG \
    'over the limit of 32768 bytes' "chunked body over max_infer_body"
# binary framing
hdr='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}'
bin() { # JSON-HEADER TAIL [header length]
    printf '%s%s' "$1" "$2" >"$work/bin.body"
    infer iris "@$work/bin.body" -H "Inference-Header-Content-Length: ${3:-${#1}}" \
        -H 'Content-Type: application/octet-stream'
}
expect_error "$(bin "$hdr" 1234567890123456 9999)" 400 INVALID \
    'Inference-Header-Content-Length is not a length within the body' "header length over the body"
expect_error "$(bin "$hdr" 1234567890123456 12x)" 400 INVALID \
    'Inference-Header-Content-Length is not a length' "header length not a number"
expect_error "$(bin "$hdr" 1234567890123456 $((${#hdr} - 3)))" 400 INVALID 'malformed JSON' \
    "header length inside the JSON"
expect_error "$(bin "$hdr" 12345678)" 400 INVALID 'binary_data_size: runs past the body' \
    "binary_data_size past the end"
expect_error "$(bin "$hdr" 12345678901234567890)" 400 INVALID \
    '4 bytes of binary data are not claimed' "binary data no input claims"
expect_error "$(bin "${hdr/16/12}" 123456789012)" 400 INVALID \
    'binary_data_size 12, but shape and FP32 need 16 bytes' "binary_data_size against the shape"
expect_error "$(bin "${hdr/16/-4}" 1234)" 400 INVALID 'expected a byte count' "negative binary_data_size"
# methods
r=$(http GET /v2/models/iris/infer)
expect_error "$r" 405 INVALID 'method GET is not allowed here; use POST' "GET infer"
expect_has "$(curl -s -o /dev/null -D - "$url/v2/models/iris/infer")" "Allow: POST" "Allow of infer"
expect_error "$(http PUT /v2/models/iris/infer -d "$ok_iris")" 405 INVALID 'method PUT' "PUT infer"
expect_error "$(http POST /v2/models/iris -d '{}')" 405 INVALID 'use GET, HEAD' "POST metadata"
expect_error "$(http DELETE /v2/models/iris)" 405 INVALID 'use GET, HEAD' "DELETE metadata"
expect_error "$(http PUT /v2/models/iris/ready)" 405 INVALID 'use GET, HEAD' "PUT model ready"
expect_error "$(http POST /metrics)" 405 INVALID 'use GET, HEAD' "POST metrics"
expect_error "$(http DELETE /v2/health/ready)" 405 INVALID 'use GET, HEAD' "DELETE v2 ready"
# none of that counted as an inference, and keeld still answers correctly
r=$(infer iris "$ok_iris")
expect_eq "$(status_of "$r")" 200 "inference after the bad requests"
expect_eq "$(jfield "$(body_of "$r")" .result[0].label)" setosa "label after the bad requests"
s=$(curl -s "$url/api/status" | jq -c '.inference.iris')
expect_eq "$(jfield "$s" '[.tiers[].failed] | add')" 0 "iris tier failures after bad requests"
expect_eq "$(jfield "$s" .all_tiers_failed)" 0 "iris all_tiers_failed after bad requests"
promtool check metrics <<<"$(curl -s "$url/metrics")" || die "promtool check metrics failed at the end"
stop_keeld
grep -q "AddressSanitizer\|runtime error" "$work/keeld.log" && die "sanitizer report in the keeld log"
echo "infer: ok"
