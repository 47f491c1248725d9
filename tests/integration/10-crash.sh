#!/usr/bin/env bash
# kill -9 of keeld at random points during install and activation, repeated;
# after each restart the store must be consistent and serve either the old or
# the new version, verified. Iterations: KEEL_CRASH_ITERATIONS (default 50).
source "$(dirname "$0")/lib.sh"
iters=${KEEL_CRASH_ITERATIONS:-50}

start() { start_keeld --log-level warn; pid=$keeld_pid; }

make_big_pkg() { # version -> path (24 MiB model, so kills land inside installs)
    make_pkg demo "$1" $((24 * 1024 * 1024 + RANDOM))
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

setup_trust
first=$(make_big_pkg 1.0.0)
"$KEEL" install "$first" --activate --offline --state-dir "$state" >/dev/null
start
token=$(cat "$state/token")
active=1.0.0
killed_mid=0
got_old=0
got_new=0
# kills land within [0, maxd) ms of the request; maxd follows where they
# landed, so a loaded machine (slower installs) still sees both sides
maxd=400
for i in $(seq 1 "$iters"); do
    new=1.0.$i
    pkg=$(make_big_pkg "$new")
    d=$((RANDOM * 32768 + RANDOM))
    delay=$(printf '%d.%03d' $((d % maxd / 1000)) $((d % maxd % 1000)))
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
    keeld_pid=""
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
        maxd=$((maxd * 4 / 5 > 200 ? maxd * 4 / 5 : 200))
    else
        got_old=$((got_old + 1))
        maxd=$((maxd * 5 / 4 < 5000 ? maxd * 5 / 4 : 5000))
    fi
    [[ -z ${prev:-} ]] && prev=$active
    [[ $(sqlite3 "$state/keel.db" 'PRAGMA integrity_check') == ok ]] || die "iteration $i: database not ok"
    left=$(find "$state/staging/blobs" -type f | wc -l)
    ((left == 0)) || die "iteration $i: $left partial blobs left in staging after restart"
done
stop_keeld
"$KEEL" verify --deep --state-dir "$state" >/dev/null || die "deep verification after crashes"
# Kill points must land on both sides of the commit, or the test proved little.
((got_old > 0 && got_new > 0)) || die "kills landed only on one side (old=$got_old new=$got_new)"
echo "crash: $iters kills of keeld (alive at kill: $killed_mid); afterwards old version $got_old times, new $got_new times (kill window at the end ${maxd} ms); store consistent every time"
