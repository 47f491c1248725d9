#!/usr/bin/env bash
# Pipeline packages end to end: examples/kws (openWakeWord's mel
# spectrogram and embedding models from ../shared, then a classifier; the
# glue between them is graph ops inside one tier) packed, installed and
# served by keeld; ../shared/data/audio/silero_test.wav in 2 s chunks (the
# raw s16 values as float32, what the mel model takes) through keeld against
# the same chain run one model at a time through raw ONNX Runtime
# (ort_ref kws): every score and every embedding within float tolerance.
# Then a request too short for 16 embeddings fails the pipeline as a whole
# and the fallback tier answers, naming the step; a package whose steps do
# not fit together is refused: by keel pack and keel lint when the manifest
# shows it (a cycle), at activation when it takes the models to see (a
# shape mismatch), each time naming the step.
# Without ../shared: SKIP (77).
source "$(dirname "$0")/lib.sh"
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
shared=$keel_src/../shared
kws=$shared/models/onnx/kws
wav=$shared/data/audio/silero_test.wav
if [[ ! -f $kws/melspectrogram.onnx || ! -f $kws/embedding_model.onnx || ! -f $wav ]]; then
    echo "SKIP: ../shared (models/onnx/kws, data/audio/silero_test.wav) is not here"
    exit 77
fi
[[ -x $ort_ref ]] || die "ort_ref not built at $ort_ref"
chunk=32000 # 2 s: 197 mel frames, 16 windows of 76 frames at step 8

# the example with the models copied in (packages hold regular files only)
src=$work/kws
cp -r "$keel_src/examples/kws" "$src"
cp "$kws/melspectrogram.onnx" "$kws/embedding_model.onnx" "$src/model/"
# the example's 500 ms deadline is for a device; a loaded test machine under
# ASan gets 20 s (this test is about the numbers, 22-failover about time)
jq '.tiers[0].deadline_ms = 20000 | .policy.deadline_ms = 20000' "$keel_src/examples/kws/keel.json" \
    >"$src/keel.json"
# a variant that also returns every embedding, for the step-by-step comparison
emb=$work/kws-emb
cp -r "$src" "$emb"
jq '.name = "kws-emb" | .outputs += [{"name": "embeddings", "dtype": "float32", "shape": [-1, 96]}]
    | .tiers = [.tiers[0] | .outputs = ["score", "embeddings"]]' "$src/keel.json" >"$emb/keel.json"

# docs/pipelines.md shows this manifest: it must be the example's
"$PY" - "$keel_src/docs/pipelines.md" "$keel_src/examples/kws/keel.json" <<'PYEOF' ||
import json, re, sys
doc, man = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
block = re.search(r"```json\n// examples/kws/keel.json\n(.*?)```", doc, re.S)
man.pop("description", None)
sys.exit(0 if block and json.loads(block.group(1)) == man else 1)
PYEOF
    die "docs/pipelines.md's manifest block is not examples/kws/keel.json (without description)"

setup_trust
start_keeld
token=$(cat "$state/token")
install() { # DIR NAME: pack and install with activation; prints the response
    "$KEEL" pack "$1" -o "$work/$2.keel" --key "$work/k.key" >/dev/null || die "keel pack $2 failed"
    http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" \
        --data-binary "@$work/$2.keel"
}
for p in kws kws-emb; do
    r=$(install "$work/$p" "$p")
    expect_eq "$(status_of "$r")" 201 "install of $p ($(body_of "$r"))"
    expect_has "$(body_of "$r")" '"activated":true' "install of $p"
done
b=$(body_of "$(http GET /v2/models/kws)")
expect_eq "$(jfield "$b" -c .parameters.tiers)" '["pipeline","fallback"]' "kws tiers"
expect_eq "$(jfield "$b" -c '[.inputs[] | {name, shape}]')" '[{"name":"audio","shape":[1,-1]}]' \
    "kws inputs"

# --- keeld against raw ONNX Runtime, one model at a time ----------------------------------
"$ort_ref" kws "$kws/melspectrogram.onnx" "$kws/embedding_model.onnx" \
    "$src/model/classifier.onnx" "$wav" "$chunk" >"$work/ref.txt" 2>"$work/ref.err" ||
    die "ort_ref kws failed: $(cat "$work/ref.err")"
"$PY" - "$url" "$wav" "$chunk" "$work/ref.txt" <<'PYEOF' || die "keeld's pipeline differs from raw ONNX Runtime"
import http.client, json, sys, urllib.parse, wave
import numpy as np
url, wav, chunk, ref = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with wave.open(wav) as w:  # 16 kHz mono s16: the raw sample values, as the mel model takes them
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
    pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
want = {}
for line in open(ref):
    f = line.split()
    if f[0] == "chunk":
        want.setdefault(int(f[1]), {})["score"] = float(f[3])
    elif f[0] == "emb":
        want[int(f[1])]["emb"] = np.array([float(v) for v in f[3:]], np.float32).reshape(int(f[2].rstrip(":")), 96)
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
def infer(model, x):
    body = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1, len(x)], "data": x.tolist()}]}
    conn.request("POST", "/v2/models/%s/infer" % model, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    b = json.loads(r.read())
    if r.status != 200:
        sys.exit("FAIL: %s: %d %s" % (model, r.status, b))
    return b
n = len(pcm) // chunk
assert n == len(want) == 30, (n, len(want))
worst_s = worst_e = 0.0
for c in range(n):
    x = pcm[c * chunk:(c + 1) * chunk]
    for model in ("kws", "kws-emb"):
        b = infer(model, x)
        p = b.get("parameters", {})
        if p.get("tier") != "pipeline" or p.get("backend") != "graph" or p.get("degraded"):
            sys.exit("FAIL: chunk %d: %s served by %s" % (c, model, p))
        out = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in b["outputs"]}
        s = float(out["score"].reshape(-1)[0])
        worst_s = max(worst_s, abs(s - want[c]["score"]))
        if abs(s - want[c]["score"]) > 1e-5:
            sys.exit("FAIL: chunk %d %s: score %.9g, raw ORT %.9g" % (c, model, s, want[c]["score"]))
        if model == "kws-emb":
            e = out["embeddings"]
            if e.shape != want[c]["emb"].shape:
                sys.exit("FAIL: chunk %d: embeddings %s, raw ORT %s" % (c, e.shape, want[c]["emb"].shape))
            d = float(np.max(np.abs(e - want[c]["emb"]) / (1 + np.abs(want[c]["emb"]))))
            worst_e = max(worst_e, d)
            if d > 1e-4:
                sys.exit("FAIL: chunk %d: embeddings differ by %.3g (relative)" % (c, d))
print("%d chunks: scores within %.3g, embeddings within %.3g (relative) of raw ONNX Runtime" % (n, worst_s, worst_e))
PYEOF

# the response says the pipeline tier served it, with the postprocess label
"$PY" -c 'import json,sys,wave,numpy as np
w=wave.open(sys.argv[1]); x=np.frombuffer(w.readframes(32000),"<i2").astype(np.float32)
print(json.dumps({"inputs":[{"name":"audio","datatype":"FP32","shape":[1,32000],"data":x.tolist()}]}))' \
    "$wav" >"$work/two_s.json"
"$PY" -c 'import json,sys,wave,numpy as np
w=wave.open(sys.argv[1]); x=np.frombuffer(w.readframes(16000),"<i2").astype(np.float32)
print(json.dumps({"inputs":[{"name":"audio","datatype":"FP32","shape":[1,16000],"data":x.tolist()}]}))' \
    "$wav" >"$work/one_s.json"
r=$(infer kws "@$work/two_s.json")
expect_eq "$(status_of "$r")" 200 "2 s request ($(body_of "$r" | head -c 300))"
b=$(body_of "$r")
expect_eq "$(header_of X-Keel-Tier)" pipeline "2 s request: serving tier"
expect_eq "$(jfield "$b" .parameters.degraded)" false "2 s request: degraded"
expect_eq "$(jfield "$b" .parameters.backend)" graph "2 s request: backend"

# --- a step that fails fails the tier; the next tier answers ---------------------------------
# 1 s gives 97 mel frames: 3 windows, fewer than the 16 embeddings the
# classifier takes, so step last16 fails and the rule answers
r=$(infer kws "@$work/one_s.json")
expect_eq "$(status_of "$r")" 200 "1 s request ($(body_of "$r" | head -c 300))"
b=$(body_of "$r")
expect_eq "$(header_of X-Keel-Tier)" fallback "1 s request: serving tier"
expect_eq "$(jfield "$b" .parameters.degraded)" true "1 s request: degraded"
expect_has "$(jfield "$b" .parameters.fallback_reason)" 'pipeline: step "last16"' \
    "1 s request: the reason names the step"

# --- refused at activation: steps that do not fit together ---------------------------------
bad=$work/kws-bad
cp -r "$src" "$bad"
jq '.name = "kws-bad" | .tiers = [.tiers[0] | .steps[4].shape = [0, 76, 16, 2]]' \
    "$src/keel.json" >"$bad/keel.json"
r=$(install "$bad" kws-bad)
[[ $(status_of "$r") == 4* || $(status_of "$r") == 5* ]] || die "kws-bad: installed ($(body_of "$r"))"
expect_has "$(body_of "$r")" 'no tier of kws-bad 1.0.0 can load' "kws-bad: refused at activation"
log=$(grep 'kws-bad@1.0.0 tier pipeline (graph) failed to load' "$work/keeld.log" || true)
expect_has "$log" 'steps[5] ("embed"): input "input_1" takes float32 [?,76,32,1], but tensor "batch" is' \
    "kws-bad: the tier's load failure names the mismatch"
expect_has "$log" '[?,76,16,2] (a shape mismatch)' "kws-bad: ... and the shape"
bad2=$work/kws-cycle
cp -r "$src" "$bad2"
jq '.name = "kws-cycle" | .tiers[0].steps[1].input = "score"' "$src/keel.json" >"$bad2/keel.json"
# what the manifest shows alone is refused by keel pack and keel lint already
if out=$("$KEEL" pack "$bad2" -o "$work/kws-cycle.keel" --key "$work/k.key" 2>&1); then
    die "keel pack packed a pipeline whose steps form a cycle: $out"
fi
expect_has "$out" 'tiers[0]: steps: "mel_scale", "frames", "windows", "channel", "embed", "flatten", "last16", "batch1", "classify" wait for each other' \
    "kws-cycle: keel pack names the steps of the cycle"
[[ ! -e $work/kws-cycle.keel ]] || die "keel pack wrote a package it refused"
out=$("$KEEL" lint "$bad2" 2>&1) && die "keel lint passed a cycle: $out"
expect_has "$out" 'in a cycle' "kws-cycle: keel lint"
out=$("$KEEL" lint "$src" 2>&1) || die "keel lint of the example: $out"
kill -0 "$keeld_pid" || die "keeld died"
stop_keeld
echo "PASS"
