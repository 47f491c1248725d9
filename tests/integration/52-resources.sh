#!/usr/bin/env bash
# Resource regressions with generous bounds (bench/idle_rss.sh and
# bench/startup.c keep the precise figures):
#   - idle RSS 2 s after start, empty store and with a 256 MiB package
#     installed: under 16 MiB (measured 9 MiB; the release build's benchmark
#     says 7.5-10.3 MiB);
#   - start-up to /readyz 200 with that package: the best of 3 under 1 s
#     (measured 0.18-0.25 s with curl polling on a loaded 2-core machine; a
#     start that re-hashes the 256 MiB took 1.2 s), and no blob is re-hashed
#     (its stamp's verified_at is unchanged: a re-hash at start is a
#     regression however fast the disk).
# Run against KEELD_PLAIN, keeld built without sanitizers (tests/CMakeLists.txt:
# ASan more than doubles the RSS and slows the start, so a bound on the
# sanitized keeld would say little about keel).
source "$(dirname "$0")/lib.sh"
[[ -x ${KEELD_PLAIN:-} ]] || skip "KEELD_PLAIN (keeld without sanitizers) is not set or not built: ${KEELD_PLAIN:-unset}"
KEELD=$KEELD_PLAIN # what start_keeld runs
rss_max_kb=$((16 * 1024)) start_max_ms=1000

idle_rss() { # WHAT: VmRSS of the running keeld 2 s after start, within the bound
    sleep 2
    local kb
    kb=$(awk '/^VmRSS/ { print $2 }' "/proc/$keeld_pid/status")
    echo "idle RSS, $1: $kb kB (bound $rss_max_kb kB)"
    ((kb < rss_max_kb)) || die "idle RSS, $1: $kb kB, over the bound of $rss_max_kb kB"
}

start_keeld
idle_rss "empty store"
stop_keeld

setup_trust
pkg=$(make_pkg big 1.0.0 $((256 << 20)))
"$KEEL" install "$pkg" --activate --offline --state-dir "$state" >/dev/null || die "install of the 256 MiB package"
rm -f "$pkg"
stamp() { sqlite3 "$state/keel.db" "SELECT group_concat(verified_at) FROM stamps"; }
before=$(stamp)
[[ -n $before ]] || die "no stamps after the install"
sleep 1.1 # verified_at has whole seconds: a re-hash now would change it
best=""
for i in 1 2 3; do
    port=$(free_port) url=http://127.0.0.1:$port
    t0=$(date +%s%N)
    "$KEELD" --state-dir "$state" --port "$port" >>"$work/keeld.log" 2>&1 &
    keeld_pid=$!
    for _ in $(seq 1000); do
        curl -sf -o /dev/null "$url/readyz" && break
        kill -0 "$keeld_pid" 2>/dev/null || die "keeld exited during start-up"
        sleep 0.005
    done
    ms=$((($(date +%s%N) - t0) / 1000000))
    expect_eq "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" 200 "readyz with the 256 MiB package (start $i)"
    echo "start-up to /readyz with a 256 MiB package: $ms ms"
    [[ -n $best ]] && ((best <= ms)) || best=$ms
    if ((i == 1)); then idle_rss "256 MiB package installed"; fi
    stop_keeld
done
((best < start_max_ms)) || die "start-up to /readyz with a 256 MiB package: best of 3 $best ms, over the bound of $start_max_ms ms"
expect_eq "$(stamp)" "$before" "stamps' verified_at after 3 starts (a start re-hashed the blob)"
echo "52-resources: ok (best start-up $best ms)"
