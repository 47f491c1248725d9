#!/usr/bin/env bash
# keeld idle resident memory (VmRSS from /proc/PID/status) 2 s after start,
# with an empty store and with the 1 GiB package installed (its rules tier
# loaded; no request made). Also says whether libcurl or libmosquitto got
# mapped: with no uplink or upstream configured, neither may be.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
need_release
ensure_state
echo "== keeld idle RSS (2 s after start, no request)"
for s in empty state; do
    "$keeld" --state-dir "$out/$s" --port "$(free_port)" --listen 127.0.0.1 --log-level error &
    pid=$!
    sleep 2
    [[ $(cat "/proc/$pid/comm") == keeld ]] ||
        { echo "bench: pid $pid is not keeld (job control on?)" >&2; kill "$pid"; exit 1; }
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    lazy=$( (grep -oE 'lib(curl|mosquitto)[^/ ]*$' "/proc/$pid/maps" || true) | sort -u | tr '\n' ' ')
    kill "$pid"
    wait "$pid" || true
    name=$([[ $s == empty ]] && echo "empty store" || echo "1 GiB package installed")
    awk -v n="$name" -v r="$rss" -v l="$(machine_load)" -v m="${lazy:-none}" \
        'BEGIN { printf "%-28s %6.1f MiB (%d kB)   (target <= 8 MiB; %s; curl/mosquitto mapped: %s)\n", n, r / 1024, r, l, m }'
done
