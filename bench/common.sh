# shellcheck shell=bash
# bench/common.sh - sourced by the bench scripts: paths, and the work files
# they share in bench/out/ (ignored by git; KEEL_BENCH_OUT=DIR puts them
# elsewhere, e.g. under /tmp): a 1 GiB random file, a signing key, a trust
# dir, a package holding the file and a rules tier, and a state dir with that
# package installed and active. Each is made once and then reused.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$top/build/release
out=${KEEL_BENCH_OUT:-$top/bench/out}
big=$out/model.bin
# the keeld under test (bench/before_after.sh points it at another build)
keeld=${KEELD:-$bin/keeld}
mkdir -p "$out"

need_release() {
    [[ -x $bin/keeld && -x $bin/keel && -x $bin/bench/startup ]] ||
        { echo "bench: build first with bench/run.sh (release build in build/release)" >&2; exit 1; }
}

ensure_big() {
    if [[ ! -f $big || $(stat -c %s "$big") != 1073741824 ]]; then
        echo "bench: generating a 1 GiB file" >&2
        head -c 1073741824 /dev/urandom >"$big"
    fi
}

# $out/big.keel signed by $out/k.key, trusted by $out/trust
ensure_package() {
    ensure_big
    [[ -f $out/k.key ]] || "$bin/keel" keygen -o "$out/k" >/dev/null
    [[ -f $out/trust/root.json ]] || "$bin/keel" trust init "$out/trust" --key "$out/k.pub" >/dev/null
    # 1 GiB of data beside a rules tier: the store holds a big package and
    # keeld loads a (small) model, as on a device
    local manifest='{"format":1,"name":"big","version":"1.0.0","task":"anomaly-detection",
 "inputs":[{"name":"window","dtype":"float32","shape":[-1,32]}],
 "outputs":[{"name":"score","dtype":"float32","shape":[-1,1]}],
 "tiers":[{"name":"primary","backend":"rules","model":"rules.json"}],
 "postprocess":{"output":"score","activation":"none","labels":"labels.txt","threshold":0.5}}'
    if [[ ! -f $out/big.keel || $out/big.keel -ot $big || $(cat "$out/src/keel.json" 2>/dev/null) != "$manifest" ]]; then
        mkdir -p "$out/src"
        ln -f "$big" "$out/src/model.bin"
        cp "$top/examples/machine-temp/rules.json" "$top/examples/machine-temp/labels.txt" "$out/src/"
        printf '%s' "$manifest" >"$out/src/keel.json"
        "$bin/keel" pack "$out/src" -o "$out/big.keel" --key "$out/k.key" >/dev/null
    fi
}

# $out/state: the package installed, verified and active; $out/empty: a fresh store
ensure_state() {
    ensure_package
    if [[ ! -f $out/state/keel.db || $out/state/keel.db -ot $out/big.keel ]]; then
        rm -rf "$out/state" && mkdir -p "$out/state"
        cp -r "$out/trust" "$out/state/trust"
        "$bin/keel" install "$out/big.keel" --offline --state-dir "$out/state" --activate >/dev/null
    fi
    rm -rf "$out/empty" && mkdir -p "$out/empty"
}

# The machine's load beside a figure: other work on the host shows in timings
# and, through page-cache pressure, in RSS.
machine_load() {
    awk -v n="$(nproc)" '{ printf "load %s %s %s, %d cores", $1, $2, $3, n }' /proc/loadavg
}

# A loopback port nobody listens on, below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default): a port
# inside it can be taken meanwhile by any outgoing connection's local end,
# and a server that then cannot bind leaves its waiter waiting.
free_port() {
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (lo - 10000)))
        ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
        echo "$p"
        return
    done
    echo "bench: no free loopback port below $lo after 200 tries" >&2
    exit 1
}

# wait_for SECONDS WHAT CMD...: runs CMD every 50 ms until it succeeds; after
# SECONDS gives up with a message naming WHAT (the bench then stops: a figure
# measured without it would be wrong).
wait_for() {
    local secs=$1 what=$2 end
    shift 2
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            echo "bench: timed out after ${secs} s waiting for $what" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# wrk_json URL BODY_FILE THREADS SECONDS [HEADER]: POSTs BODY_FILE with wrk
# (THREADS connections, one thread each) and prints one JSON line shaped like
# bench/loadgen's: threads, p50/p90/p99/max_us, throughput_rps, errors.
wrk_json() {
    local url=$1 body=$2 t=$3 secs=$4 hdr=${5:-} lua
    lua=$(mktemp "$out/wrk-XXXXXX.lua")
    cat >"$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local h = "$hdr"
if h ~= "" then local i = h:find(":"); wrk.headers[h:sub(1, i - 1)] = h:sub(i + 1):gsub("^%s+", "") end
local f = io.open("$body", "rb"); wrk.body = f:read("*a"); f:close()
function done(s, lat, req)
  local e = s.errors
  io.write(string.format('{"tool":"wrk","threads":$t,"seconds":%.3f,"requests":%d,' ..
    '"throughput_rps":%.1f,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f,"errors":%d}\n',
    s.duration / 1e6, s.requests, s.requests / (s.duration / 1e6), lat:percentile(50),
    lat:percentile(90), lat:percentile(99), lat.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
LUA
    wrk -t "$t" -c "$t" -d "${secs}s" -s "$lua" "http://${url#http://}" | tail -n1
    rm -f "$lua"
}
