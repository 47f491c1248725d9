#!/usr/bin/env bash
# keeld idle resident memory (VmRSS from /proc/PID/status, no model loaded)
# 2 s after start, with an empty store and with the 1 GiB package installed.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
need_release
ensure_state
echo "== keeld idle RSS (2 s after start, no model loaded)"
for s in empty state; do
    "$bin/keeld" --state-dir "$out/$s" --port "$(free_port)" --listen 127.0.0.1 --log-level error &
    pid=$!
    sleep 2
    [[ $(cat "/proc/$pid/comm") == keeld ]] ||
        { echo "bench: pid $pid is not keeld (job control on?)" >&2; kill "$pid"; exit 1; }
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" || true
    name=$([[ $s == empty ]] && echo "empty store" || echo "1 GiB package installed")
    awk -v n="$name" -v r="$rss" 'BEGIN { printf "%-28s %6.1f MiB (%d kB)   (target <= 10 MB)\n", n, r / 1024, r }'
done
