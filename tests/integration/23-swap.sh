#!/usr/bin/env bash
# Activation under load swaps models without failing or dropping requests;
# overload (max_inflight) goes to the next tier; the optimized-graph cache is
# written and used on the next start.
source "$(dirname "$0")/lib.sh"
setup_trust
start_keeld
token=$(cat "$state/token")

# two versions of iris (the same models; the version tells them apart)
for v in 1.0.0 1.0.1; do
    mkdir -p "$work/iris-$v"
    cp -r "$keel_src/examples/iris/." "$work/iris-$v/"
    sed -i "s/\"version\": \"1.0.0\"/\"version\": \"$v\"/" "$work/iris-$v/keel.json"
    "$KEEL" pack "$work/iris-$v" -o "$work/iris-$v.keel" --key "$work/k.key" >/dev/null
    r=$(http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" \
        --data-binary "@$work/iris-$v.keel")
    expect_eq "$(status_of "$r")" 201 "install iris $v"
done

# 2 clients hammer iris while the active version flips 10 times
"$PY" - "$url" "$work/versions" <<'PY' &
import http.client, json, sys, time, threading, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
body = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                               "data": [6.7, 3.0, 5.2, 2.3]}]})
stop = time.time() + 6
seen, bad = {}, []
def work():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    while time.time() < stop:
        c.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        b = r.read()
        if r.status != 200:
            bad.append((r.status, b[:200]))
            continue
        j = json.loads(b)
        if j["result"][0]["label"] != "virginica" or j["parameters"]["degraded"]:
            bad.append(("wrong", b[:200]))
        seen[j["model_version"]] = seen.get(j["model_version"], 0) + 1
ts = [threading.Thread(target=work) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
open(sys.argv[2], "w").write(json.dumps({"seen": seen, "bad": [str(x) for x in bad]}))
PY
client=$!
sleep 0.5
for i in $(seq 10); do
    v=$([[ $((i % 2)) == 1 ]] && echo 1.0.0 || echo 1.0.1)
    r=$(http POST /api/packages/iris/activate -H "Authorization: Bearer $token" -d "{\"version\":\"$v\"}")
    expect_eq "$(status_of "$r")" 200 "activate $v under load ($(body_of "$r"))"
    sleep 0.4
done
wait "$client" || { tail -40 "$work/keeld.log" >&2; die "the load client failed"; }
res=$(cat "$work/versions")
expect_eq "$(jq -r '.bad | length' <<<"$res")" 0 "failed or wrong answers during swaps: $res"
expect_eq "$(jq -r '.seen | length' <<<"$res")" 2 "both versions answered during the swaps: $res"
echo "swap: $res"

# overload: a slow primary that takes one request at a time; the rest go to rules
mkdir -p "$work/ovl"
cp "$keel_src/tests/data/fault/slow.onnx" "$work/ovl/slow.onnx"
cat >"$work/ovl/rules.json" <<'J'
{"format": 1, "input": "x", "rules": [{"label": "rule", "confidence": 0.5, "outputs": {"y": [0.2, 0.3, 0.5]}}]}
J
cat >"$work/ovl/keel.json" <<'J'
{"format": 1, "name": "ovl", "version": "1.0.0", "task": "test",
 "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
 "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
 "tiers": [{"name": "primary", "backend": "onnx", "model": "slow.onnx", "max_inflight": 1},
           {"name": "rules", "backend": "rules", "model": "rules.json"}]}
J
"$KEEL" pack "$work/ovl" -o "$work/ovl.keel" --key "$work/k.key" >/dev/null
r=$(http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" --data-binary "@$work/ovl.keel")
expect_eq "$(status_of "$r")" 201 "install ovl"
x='{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
pids=()
for i in 1 2 3 4; do
    curl -s -H 'Content-Type: application/json' -d "$x" "$url/v2/models/ovl/infer" >"$work/ovl-$i.json" &
    pids+=($!)
    sleep 0.05
done
wait "${pids[@]}" # not keeld
tiers=$(cat "$work"/ovl-*.json | jq -r .parameters.tier | sort | uniq -c | tr -s ' ' | tr '\n' ';')
expect_has "$tiers" "1 primary" "one request on the slow primary ($tiers)"
expect_has "$tiers" "3 rules" "the others shed to rules ($tiers)"
expect_has "$(cat "$work"/ovl-*.json | jq -r .parameters.fallback_reason)" \
    "primary: overloaded (1 requests in flight)" "fallback reason"
m=$(curl -s "$url/metrics")
expect_has "$m" 'keel_infer_requests_total{model="ovl",tier="primary",outcome="overloaded"} 3' "overload metric"

# the optimized-graph cache: written on first load, used after a restart
n=$(find "$state/cache/onnx" -name '*.onnx' | wc -l)
[[ $n -ge 3 ]] || die "expected optimized graphs in $state/cache/onnx, found $n"
stop_keeld
before=$(find "$state/cache/onnx" -name '*.onnx' -printf '%T@ %p\n' | sort | md5sum)
start_keeld
r=$(infer iris '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}')
expect_eq "$(status_of "$r")" 200 "iris after restart"
expect_eq "$(jfield "$(body_of "$r")" '.result[0].label')" setosa "iris after restart"
after=$(find "$state/cache/onnx" -name '*.onnx' -printf '%T@ %p\n' | sort | md5sum)
expect_eq "$after" "$before" "cached graphs reused, not rewritten"
stop_keeld
echo "23-swap: ok"
