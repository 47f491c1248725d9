#!/usr/bin/env bash
# Inference benchmarks (issue 3), all against peers in the same run:
#   1. serving overhead, MNIST: keeld (JSON and binary tensors) vs the raw
#      ONNX Runtime loop vs a Node.js server on onnxruntime-node
#      (bench/serve_overhead.sh)
#   2. tensor transfer for a 1x3x224x224 input (SqueezeNet from ../shared):
#      JSON vs the binary tensor data extension
#   3. failover cost: a primary that fails at run time in front of a good
#      secondary, vs the secondary pinned alone
# Needs ../shared and node; builds the release tree. Env: DURATION (default 10).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
duration=${DURATION:-10}
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$top/.deps/onnxruntime/lib/libonnxruntime.so.1}
shared=$top/../shared
[[ -d $shared/models ]] || { echo "bench/infer: needs $shared" >&2; exit 1; }
cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
lg=$bin/bench/loadgen

st=$out/infer-state
rm -rf "$st" "$out/infer-src"
mkdir -p "$st" "$out/infer-src"
[[ -f $out/k.key ]] || "$bin/keel" keygen -o "$out/k" >/dev/null
"$bin/keel" trust init "$st/trust" --key "$out/k.pub" >/dev/null
pack_install() { # dir
    "$bin/keel" pack "$1" -o "$1.keel" --key "$out/k.key" >/dev/null
    "$bin/keel" install "$1.keel" --activate --offline --state-dir "$st" >/dev/null
}
pack_install_example() {
    cp -r "$top/examples/$1" "$out/infer-src/$1"
    pack_install "$out/infer-src/$1"
}
pack_install_example mnist

# SqueezeNet 1x3x224x224, no postprocessing
sq=$out/infer-src/squeezenet
mkdir -p "$sq"
cp "$shared/models/onnx/light/light_squeezenet.onnx" "$sq/model.onnx"
printf '%s' '{"format":1,"name":"squeezenet","version":"1.0.0","task":"bench","tiers":[{"name":"primary","backend":"onnx","model":"model.onnx","options":{"intra_op_threads":1}}]}' >"$sq/keel.json"
pack_install "$sq"

# failover: fault fixtures from tests/data/fault (x f32[-1,4] -> y f32[-1,3])
fo=$out/infer-src/failover
mkdir -p "$fo"
cp "$top/tests/data/fault/runtime_error.onnx" "$fo/bad.onnx"
cp "$top/tests/data/fault/good.onnx" "$fo/good.onnx"
# cool-down 0: every request probes the failing primary (no breaker shortcut)
printf '%s' '{"format":1,"name":"failover","version":"1.0.0","task":"bench",
 "inputs":[{"name":"x","dtype":"float32","shape":[-1,4]}],"outputs":[{"name":"y","dtype":"float32","shape":[-1,3]}],
 "tiers":[{"name":"primary","backend":"onnx","model":"bad.onnx"},{"name":"secondary","backend":"onnx","model":"good.onnx"}],
 "policy":{"breaker":{"failures":1000,"error_rate":1.0,"window":64,"min_requests":64,"cooldown_ms":0}}}' >"$fo/keel.json"
pack_install "$fo"

port=$(free_port)
"$bin/keeld" --state-dir "$st" --port "$port" --log-level error &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_for 60 "keeld's /v2/health/ready on port $port" curl -sf "127.0.0.1:$port/v2/health/ready"

echo "== 0. the loopback HTTP floor on this machine: GET /v2/health/live (no body, no model); $(machine_load)"
for t in 1 2; do
    echo "keeld GET /v2/health/live, $t client(s): $("$lg" --url "127.0.0.1:$port/v2/health/live" \
        --method GET --threads "$t" --duration "$duration" --warmup 500)"
done
echo "== 1. serving overhead (MNIST); $(machine_load)"
KEELD_URL=http://127.0.0.1:$port DURATION=$duration "$top/bench/serve_overhead.sh"
# the same request with binary tensors
/usr/bin/python3 - "$out" <<'PY'
import json, struct, sys
out = sys.argv[1]
b = json.load(open(out + "/mnist_body.json"))
d = b["inputs"][0].pop("data")
b["inputs"][0]["parameters"] = {"binary_data_size": 4 * len(d)}
h = json.dumps(b, separators=(",", ":")).encode()
open(out + "/mnist_body.bin", "wb").write(h + struct.pack("<%df" % len(d), *d))
open(out + "/mnist_body.hlen", "w").write(str(len(h)))
PY
for t in 1 2; do
    echo "keeld binary tensors, $t client(s): $("$lg" --url "127.0.0.1:$port/v2/models/mnist/infer" \
        --body "$out/mnist_body.bin" --content-type application/octet-stream \
        --header "Inference-Header-Content-Length: $(cat "$out/mnist_body.hlen")" \
        --threads "$t" --duration "$duration" --warmup 500)"
done

echo "== 2. 1x3x224x224 input: JSON vs binary (SqueezeNet); $(machine_load)"
/usr/bin/python3 - "$out" <<'PY'
import json, random, struct, sys
out = sys.argv[1]
random.seed(1)
d = [round(random.uniform(-2, 2), 6) for _ in range(3 * 224 * 224)]
req = {"inputs": [{"name": "data_0", "shape": [1, 3, 224, 224], "datatype": "FP32"}]}
j = dict(req); j["inputs"] = [dict(req["inputs"][0], data=d)]
open(out + "/sq.json", "w").write(json.dumps(j, separators=(",", ":")))
b = {"inputs": [dict(req["inputs"][0], parameters={"binary_data_size": 4 * len(d)})],
     "parameters": {"binary_data_output": True}}
h = json.dumps(b, separators=(",", ":")).encode()
open(out + "/sq.bin", "wb").write(h + struct.pack("<%df" % len(d), *d))
open(out + "/sq.hlen", "w").write(str(len(h)))
PY
in_name=$(curl -s "127.0.0.1:$port/v2/models/squeezenet" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["inputs"][0]["name"])')
[[ $in_name == data_0 ]] || sed -i "s/\"data_0\"/\"$in_name\"/" "$out/sq.json" "$out/sq.bin"
printf 'JSON   (%s bytes): %s\n' "$(stat -c %s "$out/sq.json")" "$("$lg" --url "127.0.0.1:$port/v2/models/squeezenet/infer" --body "$out/sq.json" --threads 1 --duration "$duration" --warmup 20)"
printf 'binary (%s bytes): %s\n' "$(stat -c %s "$out/sq.bin")" "$("$lg" --url "127.0.0.1:$port/v2/models/squeezenet/infer" --body "$out/sq.bin" --content-type application/octet-stream --header "Inference-Header-Content-Length: $(cat "$out/sq.hlen")" --threads 1 --duration "$duration" --warmup 20)"

m=$(curl -s "127.0.0.1:$port/metrics" | grep -E 'keel_infer_latency_seconds_(sum|count)\{model="mnist"')
echo "mnist tier run time inside keeld (all requests so far): $(awk '/_sum/ {s=$2} /_count/ {c=$2} END {printf "%.1f us mean over %d runs", s / c * 1e6, c}' <<<"$m")"

echo "== 3. failover cost: failing primary + secondary vs secondary alone; $(machine_load)"
x='{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[0.1,0.2,0.3,0.4]}]}'
printf '%s' "$x" >"$out/fo.json"
printf '%s' "${x%\}},\"parameters\":{\"tier\":\"secondary\"}}" >"$out/fo-pinned.json"
curl -s "127.0.0.1:$port/v2/models/failover/infer" -d @"$out/fo.json" | grep -o '"tier":"[a-z]*"' | head -1
echo "secondary pinned:          $("$lg" --url "127.0.0.1:$port/v2/models/failover/infer" --body "$out/fo-pinned.json" --threads 1 --duration "$duration" --warmup 200)"
echo "primary fails, falls over: $("$lg" --url "127.0.0.1:$port/v2/models/failover/infer" --body "$out/fo.json" --threads 1 --duration "$duration" --warmup 200)"
