#!/usr/bin/env bash
# Real model-zoo graphs and the optimized-graph cache. ONNX Runtime saves
# some optimized graphs (the model zoo's older graphs, whose weights are
# also graph inputs: ../shared/models/onnx/light) with extra required
# inputs ("...__SHAPE"); serving from such a file answered 400 to every
# request after a restart while /readyz said ready. Checked here:
#   - light_squeezenet packaged with its contract, and light_inception_v1
#     with none (inputs and outputs read from the model): 200 with outputs
#     on install, again after a restart, with the same numbers
#   - such a graph is not served from the cache (found at its next load,
#     which leaves KEY.nocache saying why, logged once), a foreign file in
#     the cache without its record is not used, and a graph that keeps its
#     signature (mnist) is cached with its record
#   - unknown requested outputs are a 400 naming the valid ones
#   - a package whose model cannot serve its declared contract is refused
#     at install, naming the mismatch
source "$(dirname "$0")/lib.sh"
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
light=$keel_src/../shared/models/onnx/light
if [[ ! -f $light/light_squeezenet.onnx ]]; then
    echo "SKIP: $light not found (the shared models live beside the project)"
    exit 77
fi
setup_trust
printf 'log_level = info\n' >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf"
token=$(cat "$state/token")

pack_install() { # NAME SRC_DIR -> the response, "BODY\nSTATUS"
    "$KEEL" pack "$2" -o "$work/$1.keel" --key "$work/k.key" >/dev/null
    http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" \
        --data-binary "@$work/$1.keel"
}
installed() { # NAME SRC_DIR: installs and activates, or fails the test
    local r
    r=$(pack_install "$1" "$2")
    expect_eq "$(status_of "$r")" 201 "install $1 ($(body_of "$r"))"
}

# squeezenet with its contract declared; inception with none
mkdir -p "$work/sq/model" "$work/inc/model"
cp "$light/light_squeezenet.onnx" "$work/sq/model/"
cat >"$work/sq/keel.json" <<'EOF'
{"format": 1, "name": "squeezenet", "version": "1.0.0", "task": "classification",
 "inputs": [{"name": "data_0", "dtype": "float32", "shape": [1, 3, 224, 224]}],
 "outputs": [{"name": "softmaxout_1", "dtype": "float32", "shape": [1, 1000, 1, 1]}],
 "tiers": [{"name": "primary", "backend": "onnx", "model": "model/light_squeezenet.onnx"}]}
EOF
cp "$light/light_inception_v1.onnx" "$work/inc/model/"
cat >"$work/inc/keel.json" <<'EOF'
{"format": 1, "name": "inception", "version": "1.0.0", "task": "classification",
 "tiers": [{"name": "primary", "backend": "onnx", "model": "model/light_inception_v1.onnx"}]}
EOF
installed squeezenet "$work/sq"
installed inception "$work/inc"

"$PY" - "$work" <<'PY'
import json, sys
x = [((i * 7919) % 1000) / 1000.0 for i in range(3 * 224 * 224)]
for name in ("data_0",):
    body = {"inputs": [{"name": name, "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x}]}
    open(sys.argv[1] + "/req.json", "w").write(json.dumps(body))
PY
run() { # MODEL [outputs JSON]: the response, "BODY\nSTATUS"
    local body=$work/req.json
    if [[ -n ${2:-} ]]; then
        jq -c --argjson o "$2" '. + {outputs: $o}' "$work/req.json" >"$work/req-o.json"
        body=$work/req-o.json
    fi
    curl -s -w '\n%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "@$body" "$url/v2/models/$1/infer" || true
}
declare -A first
check_serves() { # WHEN
    local m r b
    for m in squeezenet inception; do
        r=$(run $m)
        b=$(body_of "$r")
        expect_eq "$(status_of "$r")" 200 "$m $1 (${b:0:300})"
        expect_eq "$(jfield "$b" '.outputs | length')" 1 "$m $1: outputs"
        expect_eq "$(jfield "$b" '.outputs[0].data | length')" 1000 "$m $1: 1000 scores"
        if [[ -z ${first[$m]:-} ]]; then
            first[$m]=$(jfield "$b" -c '.outputs[0].data')
        else
            expect_eq "$(jfield "$b" -c '.outputs[0].data')" "${first[$m]}" "$m $1: the same numbers"
        fi
    done
    expect_eq "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" 200 "readyz $1"
}
check_serves "after install"

# the metadata of inception comes from the model, outputs included
b=$(body_of "$(http GET /v2/models/inception)")
expect_eq "$(jfield "$b" -c '[.inputs[] | {name, datatype, shape}]')" \
    '[{"name":"data_0","datatype":"FP32","shape":[1,3,224,224]}]' "inception inputs from the model"
expect_eq "$(jfield "$b" -c '[.outputs[] | {name, datatype, shape}]')" \
    '[{"name":"prob_1","datatype":"FP32","shape":[1,1000]}]' "inception outputs from the model"

# neither optimized graph keeps its inputs: install saved them, activation
# found them wrong and served from the original; each said once
cache=$state/cache/onnx
expect_eq "$(find "$cache" -name '*.nocache' | wc -l)" 2 "graphs marked not cacheable ($(ls "$cache"))"
expect_eq "$(find "$cache" -name '*.onnx' | wc -l)" 0 "no optimized graph cached ($(ls "$cache"))"
expect_has "$(cat "$cache"/*.nocache)" '__SHAPE' "why a graph is not cached"
n=$(grep -c 'squeezenet@1.0.0 tier primary adds the input' "$work/keeld.log" || true)
expect_eq "$n" 1 "the uncacheable graph logged once (install and activation load it twice)"

# requested outputs: a known one is served, an unknown one is a 400 naming the valid ones
r=$(run squeezenet '[{"name":"softmaxout_1"}]')
expect_eq "$(status_of "$r")" 200 "squeezenet asking for its output"
r=$(run inception '[{"name":"prob_1"},{"name":"logits"}]')
expect_eq "$(status_of "$r")" 400 "an unknown requested output ($(body_of "$r"))"
expect_has "$(body_of "$r")" 'unknown output \"logits\"; inception gives \"prob_1\"' "unknown output"

stop_keeld
# a file in the cache without its record (as older keel versions left them,
# or a foreign one): not used, saved again (and found wrong at the next load)
sq=$(basename "$(ls "$cache"/*.nocache | head -n1)" .nocache)
rm "$cache/$sq.nocache"
cp "$keel_src/tests/data/matmul.onnx" "$cache/$sq.onnx"
start_keeld --config "$work/keeld.conf"
check_serves "after a restart"
expect_has "$(cat "$work/keeld.log")" "optimized graph $cache/$sq.onnx not used (no record" \
    "the foreign cache file"
! cmp -s "$keel_src/tests/data/matmul.onnx" "$cache/$sq.onnx" || die "the foreign cache file was used"
[[ -f $cache/$sq.sig ]] || die "the graph was not saved again with its record"
stop_keeld
start_keeld --config "$work/keeld.conf"
check_serves "after a second restart"
[[ -f $cache/$sq.nocache && ! -f $cache/$sq.onnx ]] || die "the graph was not marked again ($(ls "$cache"))"

# a graph whose optimized form keeps its signature is cached with its record
mkdir -p "$work/mn/model"
cp "$keel_src/../shared/models/onnx/mnist/mnist_ort_cxx_example.onnx" "$work/mn/model/m.onnx"
echo '{"format":1,"name":"mnist-zoo","version":"1.0.0","task":"classification",
  "tiers":[{"name":"primary","backend":"onnx","model":"model/m.onnx"}]}' >"$work/mn/keel.json"
installed mnist-zoo "$work/mn"
expect_eq "$(find "$cache" -name '*.onnx' | wc -l)" 1 "mnist's optimized graph cached ($(ls "$cache"))"
expect_eq "$(find "$cache" -name '*.sig' | wc -l)" 1 "with its record"
expect_eq "$(find "$cache" -name '*.nocache' | wc -l)" 2 "the zoo graphs stay marked ($(ls "$cache"))"
mnreq='{"inputs":[{"name":"Input3","shape":[1,1,28,28],"datatype":"FP32","data":'"$(jq -cn '[range(784)] | map(. % 256)')"'}]}'
r=$(infer mnist-zoo "$mnreq")
expect_eq "$(status_of "$r")" 200 "mnist from the cache ($(body_of "$r"))"
expect_eq "$(jfield "$(body_of "$r")" '.outputs[0].name')" Plus214_Output_0 "mnist's output from the model"

# a contract the model cannot serve is refused at install, saying why
mkdir -p "$work/bad/model"
cp "$light/light_squeezenet.onnx" "$work/bad/model/"
jq '.name = "bad-contract" | .inputs[0].name = "image"' "$work/sq/keel.json" >"$work/bad/keel.json"
r=$(pack_install bad-contract "$work/bad")
expect_eq "$(status_of "$r")" 422 "a declared input the model lacks ($(body_of "$r"))"
expect_has "$(body_of "$r")" 'primary: the model needs input \"data_0\", which the package does not declare (it declares \"image\")' "bad input name"
jq '.name = "bad-contract" | .version = "1.0.1" | .outputs[0].dtype = "int64"' "$work/sq/keel.json" >"$work/bad/keel.json"
r=$(pack_install bad-contract "$work/bad")
expect_eq "$(status_of "$r")" 422 "a declared output of another dtype ($(body_of "$r"))"
expect_has "$(body_of "$r")" 'output \"softmaxout_1\": the package declares int64, the model gives float32' \
    "bad output dtype"
expect_eq "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" 200 "readyz after refusals"
stop_keeld
echo "graph cache: ok"
