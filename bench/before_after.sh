#!/usr/bin/env bash
# Before/after in one run: the same measurements of two keeld builds, side
# by side, on this machine, with the load average printed with each part.
#   1. MNIST serving (JSON, image 0): p50 / p99 / throughput at 1 and 2
#      clients, with bench/loadgen and with wrk
#   2. durable enqueue over HTTP (POST /api/events) at 1 and 8 clients,
#      against the queue library's group commit and a raw SQLite loop
#      (bench/events_http.sh)
#   3. drain through keeld to mosquitto (bench/drain.sh)
#   4. start-up to ready, empty store and a verified 1 GiB package
#      (bench/restart.sh)
#   5. idle RSS, empty store and 1 GiB package (bench/idle_rss.sh)
# Usage: BEFORE=/path/to/old/build/release bench/before_after.sh
# (BEFORE holds keeld and keel of the old tree; `after` is build/release.)
# Env: DURATION per serving run (default 5).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
: "${BEFORE:?set BEFORE to the release build dir of the old tree (keeld, keel)}"
duration=${DURATION:-5}
shared=$top/../shared
cmake -S "$top" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF >/dev/null
cmake --build "$bin" -j "$(nproc)" >/dev/null
command -v wrk >/dev/null || { echo "before_after: needs wrk (apt-get install wrk)" >&2; exit 1; }
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$top/.deps/onnxruntime/lib/libonnxruntime.so.1}
load() { cut -d' ' -f1-3 /proc/loadavg; }

# --- 1. MNIST serving ------------------------------------------------------------------
body=$out/mnist_body.json
/usr/bin/python3 - "$shared/data/mnist/t10k-images-idx3-ubyte.gz" "$body" <<'PY'
import gzip, json, sys
im = gzip.open(sys.argv[1]).read()
px = list(im[16:16 + 784])
json.dump({"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32",
                       "data": [float(v) for v in px]}]}, open(sys.argv[2], "w"))
PY
cat >"$out/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$body", "rb"); wrk.body = f:read("*a"); f:close()
LUA
[[ -f $out/k.key ]] || "$bin/keel" keygen -o "$out/k" >/dev/null
"$bin/keel" pack "$top/examples/mnist" -o "$out/mnist.keel" --key "$out/k.key" >/dev/null

cat >"$out/wrk.awk" <<'AWK'
/^ +50%/ { p50 = $2 }
/^ +99%/ { p99 = $2 }
/^Requests\/sec/ { rps = $2 }
/Non-2xx/ { err = $NF }
END { printf "p50=%s p99=%s rps=%s non2xx=%d", p50, p99, rps, err }
AWK

serve() { # label bindir
    local st=$out/ba-$1 port pid r
    rm -rf "$st" && mkdir -p "$st"
    "$2/keel" trust init "$st/trust" --key "$out/k.pub" >/dev/null
    "$2/keel" install "$out/mnist.keel" --activate --offline --state-dir "$st" >/dev/null
    port=$(free_port)
    "$2/keeld" --state-dir "$st" --port "$port" --listen 127.0.0.1 --log-level error &
    pid=$!
    wait_for 60 "$1 keeld's /readyz on port $port" curl -sf "127.0.0.1:$port/readyz"
    for c in 1 2; do
        r=$("$bin/bench/loadgen" --url "127.0.0.1:$port/v2/models/mnist/infer" --body "$body" \
            --threads "$c" --duration "$duration" --warmup 300)
        line=$(jq -r '[.p50_us, .p99_us, .throughput_rps, .errors] | map(floor | tostring) | "p50_us=" + .[0] + " p99_us=" + .[1] + " rps=" + .[2] + " errors=" + .[3]' <<<"$r")
        echo "$1 loadgen clients=$c $line"
        r=$(wrk -t "$c" -c "$c" -d "${duration}s" --latency -s "$out/post.lua" \
            "http://127.0.0.1:$port/v2/models/mnist/infer")
        line=$(awk -f "$out/wrk.awk" <<<"$r")
        echo "$1 wrk     clients=$c $line"
    done
    kill "$pid"
    wait "$pid" || true
}
echo "== MNIST serving, JSON, ${duration}s per run; load $(load)"
serve before "$BEFORE"
serve after "$bin"

# --- 2. durable enqueue over HTTP ----------------------------------------------------------
KEELD_BEFORE=$BEFORE/keeld "$top/bench/events_http.sh"

# --- 3-5. drain, start-up, idle RSS ------------------------------------------------------------
for who in before after; do
    d=$([[ $who == before ]] && echo "$BEFORE" || echo "$bin")
    echo "== $who: drain, start-up, idle RSS; load $(load)"
    KEELD=$d/keeld "$top/bench/drain.sh" 100000 | grep -Ei "msg/s|bytes|drain" || true
    KEELD=$d/keeld "$top/bench/restart.sh"
    KEELD=$d/keeld "$top/bench/idle_rss.sh"
done
echo "load at the end: $(load)"
