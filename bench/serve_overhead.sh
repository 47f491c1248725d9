#!/usr/bin/env bash
# Serving overhead: what an HTTP inference server adds on top of the model's
# own run time, for MNIST (mnist_ort_cxx_example.onnx, one test image) served
# with the Open Inference Protocol (KServe v2) REST API:
#   raw    bench/ort_loop: keel's ONNX Runtime adapter called in a loop (no
#          HTTP, no JSON), one shared session, intra-op threads 1
#   node   bench/node/server.js: Node.js http + onnxruntime-node 1.30.0, the
#          same contract, intra-op threads 1 (what a user would write instead)
#   keeld  the keel daemon at KEELD_URL (started by the caller with an mnist
#          package active), if KEELD_URL is set
# Each is driven closed-loop with 1 and 2 concurrent clients (bench/loadgen:
# one keep-alive connection per thread, one request in flight each), after a
# warm-up, for DURATION seconds; node and keeld again with wrk (Debian's, when
# installed) as a second, independent load generator. Everything runs on this
# host, so the load generator shares the CPUs with the server: compare rows of
# one run (the title gives the machine's load).
#
# Env: KEELD_URL (http://HOST:PORT, or the full .../infer URL), KEELD_MODEL
# (default mnist), KEELD_HEADER (one extra 'Name: value' header for keeld),
# DURATION (default 10), WARMUP (requests per connection, default 500),
# THREADS (default "1 2"), MNIST_INDEX (test image, default 0), BENCH_BIN (the
# directory with loadgen and ort_loop; default build/release/bench, built
# there if missing), KEEL_ORT_LIB (default .deps/onnxruntime).
# Prints a markdown table; the JSON of every run goes to
# bench/out/serve_overhead.jsonl.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

duration=${DURATION:-10}
warmup=${WARMUP:-500}
threads=${THREADS:-1 2}
index=${MNIST_INDEX:-0}
bb=${BENCH_BIN:-$bin/bench}
model=$top/../shared/models/onnx/mnist/mnist_ort_cxx_example.onnx
images=$top/../shared/data/mnist/t10k-images-idx3-ubyte.gz
labels=$top/../shared/data/mnist/t10k-labels-idx1-ubyte.gz
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$top/.deps/onnxruntime/lib/libonnxruntime.so.1}
# onnxruntime-node's install script would fetch CUDA binaries from NuGet
export ONNXRUNTIME_NODE_INSTALL=skip

[[ -f $model && -f $images ]] || { echo "serve_overhead: needs $top/../shared (MNIST model and data)" >&2; exit 1; }
command -v node >/dev/null || { echo "serve_overhead: needs node (Node.js 18+)" >&2; exit 1; }
if [[ ! -x $bb/loadgen || ! -x $bb/ort_loop ]]; then
    [[ -z ${BENCH_BIN:-} ]] || { echo "serve_overhead: no loadgen/ort_loop in $bb" >&2; exit 1; }
    echo "serve_overhead: building loadgen and ort_loop in $bin" >&2
    cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
    cmake --build "$bin" -j "$(nproc)" --target loadgen ort_loop >/dev/null
fi
if [[ ! -d $top/bench/node/node_modules/onnxruntime-node ]]; then
    echo "serve_overhead: npm ci in bench/node" >&2
    (cd "$top/bench/node" && npm ci --no-audit --no-fund >/dev/null)
fi

# The request body: test image $index as 784 raw 0-255 floats (the model's
# expected input), and its label to check each server's answer.
body=$out/mnist_body.json
# shellcheck disable=SC2016 # JavaScript, not shell
label=$(node -e '
const fs = require("fs"), zlib = require("zlib");
const [imgs, labs, k, dst] = process.argv.slice(1);
const im = zlib.gunzipSync(fs.readFileSync(imgs)), lb = zlib.gunzipSync(fs.readFileSync(labs));
const px = Array.from(im.subarray(16 + 784 * k, 16 + 784 * (+k + 1)));
fs.writeFileSync(dst, JSON.stringify({inputs: [{name: "Input3", shape: [1, 1, 28, 28], datatype: "FP32", data: px}]}));
console.log(lb[8 + +k]);' "$images" "$labels" "$index" "$body")

# One POST of the body; prints the argmax of the first output, or the error.
check() { # URL [HEADER]
    # shellcheck disable=SC2016 # JavaScript, not shell
    node -e '
const [url, hdr] = process.argv.slice(1), body = require("fs").readFileSync(process.argv[3]);
const headers = {"Content-Type": "application/json"};
if (hdr) { const i = hdr.indexOf(":"); headers[hdr.slice(0, i).trim()] = hdr.slice(i + 1).trim(); }
fetch(url, {method: "POST", headers, body}).then(async (r) => {
  const t = await r.text();
  if (!r.ok) return console.log(`HTTP ${r.status}: ${t.slice(0, 200)}`);
  const d = JSON.parse(t).outputs[0].data;
  console.log(d.indexOf(Math.max(...d)));
}).catch((e) => console.log(String(e)));' "$1" "${2:-}" "$body"
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port=$(free_port)
PORT=$port MODEL=$model node "$top/bench/node/server.js" 2>"$out/node_peer.log" &
pids+=($!)
node_url=127.0.0.1:$port/v2/models/mnist/infer
node_ready() { "$bb/loadgen" --url "127.0.0.1:$port/v2/health/ready" --requests 1 >/dev/null 2>&1; }
for _ in $(seq 300); do
    node_ready && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$out/node_peer.log" >&2; exit 1; }
    sleep 0.1
done
node_ready || { echo "serve_overhead: the Node.js peer did not answer on port $port within 30 s" >&2; exit 1; }

keeld_url='' keeld_hdr=()
if [[ -n ${KEELD_URL:-} ]]; then
    keeld_url=${KEELD_URL#http://}
    [[ $keeld_url == */v2/* ]] || keeld_url=${keeld_url%/}/v2/models/${KEELD_MODEL:-mnist}/infer
    [[ -z ${KEELD_HEADER:-} ]] || keeld_hdr=(--header "$KEELD_HEADER")
fi

for name in node keeld; do
    [[ $name == node ]] && u=$node_url || u=$keeld_url
    [[ -n $u ]] || continue
    got=$(check "http://$u" "$([[ $name == keeld ]] && echo "${KEELD_HEADER:-}")")
    [[ $got == "$label" ]] ||
        { echo "serve_overhead: $name answered '$got' for image $index (label $label)" >&2; exit 1; }
done

res=$out/serve_overhead.jsonl
: >"$res"
log=$out/serve_overhead.log
: >"$log"
run() { # NAME CMD...: one JSON line, tagged with the run's name
    local name=$1 j
    shift
    echo "serve_overhead: $name: ${*##*/}" >&2
    j=$("$@" 2>>"$log") || { tail -5 "$log" >&2; exit 1; }
    echo "${j%\}},\"name\":\"$name\"}" >>"$res"
}
for t in $threads; do
    run raw "$bb/ort_loop" --model "$model" --images "$images" --index "$index" \
        --threads "$t" --duration "$duration" --warmup "$warmup"
done
for t in $threads; do
    run node "$bb/loadgen" --url "$node_url" --body "$body" --threads "$t" \
        --duration "$duration" --warmup "$warmup"
done
if [[ -n $keeld_url ]]; then
    for t in $threads; do
        run keeld "$bb/loadgen" --url "$keeld_url" --body "$body" "${keeld_hdr[@]}" \
            --threads "$t" --duration "$duration" --warmup "$warmup"
    done
fi
# the same servers under a second, independent load generator: Debian's wrk
# (its own event loop and latency histogram; 1 s warm-up run discarded)
if command -v wrk >/dev/null; then
    for t in $threads; do
        for name in node keeld; do
            u=$node_url h=""
            [[ $name == node ]] || u=$keeld_url h=${KEELD_HEADER:-}
            [[ -n $u ]] || continue
            wrk_json "$u" "$body" "$t" 1 "$h" >/dev/null
            run "$name-wrk" wrk_json "$u" "$body" "$t" "$duration" "$h"
        done
    done
else
    echo "serve_overhead: no wrk (apt-get install wrk): loadgen rows only" >&2
fi

node - "$res" "$duration" "$(nproc)" "$label" "$(machine_load)" <<'EOF'
const fs = require('fs');
const [file, duration, ncpu, label0, load] = process.argv.slice(2);
const runs = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
for (const r of runs)
  if (r.name === 'raw' && r.top_class !== +label0)
    console.log(`**warning**: ort_loop's top class is ${r.top_class}, the label ${label0}\n`);
const cl = (t) => `${t} client${t > 1 ? 's' : ''}`;
const get = (name, t) => runs.find((r) => r.name === name && r.threads === t);
const f1 = (x) => x.toFixed(1), f0 = (x) => Math.round(x).toLocaleString('en-US');
const label = { raw: 'raw ONNX Runtime loop (ort_loop)', node: 'Node.js + onnxruntime-node',
  keeld: 'keeld', 'node-wrk': 'Node.js + onnxruntime-node (wrk)', 'keeld-wrk': 'keeld (wrk)' };
console.log(`### Serving overhead: MNIST, KServe v2 REST, ${duration} s per run, ${ncpu} CPUs (${load} at the end)\n`);
console.log('| run | clients | p50 µs | p90 µs | p99 µs | max µs | req/s | errors |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const r of runs)
  console.log(`| ${label[r.name]} | ${r.threads} | ${f1(r.p50_us)} | ${f1(r.p90_us)} | ` +
    `${f1(r.p99_us)} | ${f1(r.max_us)} | ${f0(r.throughput_rps)} | ${r.errors} |`);

const rows = [];
const ts = [...new Set(runs.map((r) => r.threads))].sort((a, b) => a - b);
const t1 = ts[0], tn = ts[ts.length - 1];
for (const srv of ['keeld', 'node']) {
  const s1 = get(srv, t1), r1 = get('raw', t1), sn = get(srv, tn), rn = get('raw', tn);
  if (!s1) continue;
  if (r1) rows.push([`${srv} added p50 latency over raw, ${cl(t1)}`, `${f1(s1.p50_us - r1.p50_us)} µs`]);
  if (r1) rows.push([`${srv} added p99 latency over raw, ${cl(t1)}`, `${f1(s1.p99_us - r1.p99_us)} µs`]);
  if (sn && rn) rows.push([`${srv} / raw throughput, ${cl(tn)}`, `${(sn.throughput_rps / rn.throughput_rps).toFixed(3)}`]);
}
for (const [kn, nn, by] of [['keeld', 'node', 'loadgen'], ['keeld-wrk', 'node-wrk', 'wrk']])
  for (const t of ts) {
    const k = get(kn, t), n = get(nn, t);
    if (!k || !n) continue;
    rows.push([`keeld / node throughput, ${cl(t)}, ${by}`, `${(k.throughput_rps / n.throughput_rps).toFixed(2)}×`]);
    rows.push([`keeld / node p50, ${cl(t)}, ${by}`, `${(k.p50_us / n.p50_us).toFixed(2)}×`]);
    rows.push([`keeld / node p99, ${cl(t)}, ${by}`, `${(k.p99_us / n.p99_us).toFixed(2)}× (${f1(k.p99_us)} vs ${f1(n.p99_us)} µs)`]);
  }
if (!runs.some((r) => r.name === 'keeld'))
  rows.push(['keeld', 'not run (set KEELD_URL)']);
console.log('\n| comparison | value |\n|---|---:|');
for (const [a, b] of rows) console.log(`| ${a} | ${b} |`);
console.log('\nraw: one keel__ort_run call per sample; node/keeld: one HTTP request, first byte ' +
  'written to last byte read, client on the same host.');
EOF
