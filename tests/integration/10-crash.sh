#!/usr/bin/env bash
# kill -9 of keeld at random points during install and activation, repeated;
# after each restart the store must be consistent and serve either the old or
# the new version, verified. Iterations: KEEL_CRASH_ITERATIONS (default 50).
set -euo pipefail
: "${KEELD:?path to keeld}" "${KEEL:?path to keel}"
iters=${KEEL_CRASH_ITERATIONS:-50}
work=$(mktemp -d /tmp/keel-crash-XXXXXX)
state=$work/state
pid=""
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

die() { echo "FAIL: $*" >&2; [[ -f $work/keeld.log ]] && tail -20 "$work/keeld.log" >&2; exit 1; }

free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port"
}
port=$(free_port)
url=http://127.0.0.1:$port

start() {
    ASAN_OPTIONS=detect_leaks=0 "$KEELD" --state-dir "$state" --port "$port" --log-level warn \
        >>"$work/keeld.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do
        curl -sf "$url/healthz" >/dev/null 2>&1 && return
        kill -0 "$pid" 2>/dev/null || die "keeld exited at start"
        sleep 0.05
    done
    die "keeld did not answer /healthz"
}

make_pkg() { # version -> path
    local v=$1 src=$work/src-$1
    mkdir -p "$src"
    head -c $((24 * 1024 * 1024 + RANDOM)) /dev/urandom >"$src/model.onnx"
    printf '{"format":1,"name":"demo","version":"%s","tiers":[{"name":"primary","backend":"onnx","model":"model.onnx"}]}' "$v" >"$src/keel.json"
    "$KEEL" pack "$src" -o "$work/demo-$v.keel" --key "$work/k.key" >/dev/null
    rm -rf "$src"
    echo "$work/demo-$v.keel"
}

serving() { # prints "version slot verified degraded" of demo
    curl -sf "$url/api/status" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
for p in d["store"]["packages"]:
    if p["name"] == "demo":
        s = p.get("serving", {})
        print(s.get("version"), s.get("slot"), s.get("verified"), s.get("degraded"))
        break
else:
    print("none none False False")'
}

"$KEEL" keygen -o "$work/k" >/dev/null
"$KEEL" trust init "$state/trust" --key "$work/k.pub" >/dev/null
first=$(make_pkg 1.0.0)
"$KEEL" install "$first" --activate --offline --state-dir "$state" >/dev/null
start
token=$(cat "$state/token")
active=1.0.0
killed_mid=0
got_old=0
got_new=0
for i in $(seq 1 "$iters"); do
    new=1.0.$i
    pkg=$(make_pkg "$new")
    delay=$(printf '0.%03d' $((RANDOM % 400)))
    if ((i % 5 == 0)); then
        # activation race: roll back to the previous version
        curl -s -o /dev/null -X POST -H "Authorization: Bearer $token" \
            "$url/api/packages/demo/rollback" &
        want_new=$prev
    else
        curl -s -o /dev/null -X POST -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/octet-stream' --data-binary "@$pkg" \
            "$url/api/packages?activate=1" &
        want_new=$new
    fi
    cpid=$!
    sleep "$delay"
    if kill -9 "$pid" 2>/dev/null; then killed_mid=$((killed_mid + 1)); fi
    wait "$pid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    pid=""
    rm -f "$pkg"
    start
    read -r ver slot verified degraded < <(serving)
    [[ $slot == active && $verified == True && $degraded == False ]] ||
        die "iteration $i: serving $ver from $slot verified=$verified degraded=$degraded"
    [[ $ver == "$active" || $ver == "$want_new" ]] ||
        die "iteration $i: serving $ver, expected $active (old) or $want_new (new)"
    if [[ $ver != "$active" ]]; then
        prev=$active
        active=$ver
        got_new=$((got_new + 1))
    else
        got_old=$((got_old + 1))
    fi
    [[ -z ${prev:-} ]] && prev=$active
    [[ $(sqlite3 "$state/keel.db" 'PRAGMA integrity_check') == ok ]] || die "iteration $i: database not ok"
    left=$(find "$state/staging/blobs" -type f | wc -l)
    ((left == 0)) || die "iteration $i: $left partial blobs left in staging after restart"
done
kill "$pid" && wait "$pid" 2>/dev/null || true
pid=""
"$KEEL" verify --installed --deep --state-dir "$state" >/dev/null || die "deep verification after crashes"
# Kill points must land on both sides of the commit, or the test proved little.
((got_old > 0 && got_new > 0)) || die "kills landed only on one side (old=$got_old new=$got_new)"
echo "crash: $iters kills of keeld (alive at kill: $killed_mid); afterwards old version $got_old times, new $got_new times; store consistent every time"
