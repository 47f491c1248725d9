#!/usr/bin/env bash
# Slow clients cannot keep others out (slowloris): 140 connections that send
# a header line a second, from a remote-like address and from 127.0.0.1,
# and a body sent at 10 bytes a second. keeld lets in
# max_connections_per_ip from the one address, fills up to max_connections
# + connection_reserve, closes each after header_timeout (the body once it
# falls under min_body_rate), and serves /healthz from 127.0.0.1 and from
# another address within 2 s all along, making room by closing the
# connection that has waited longest for its headers (slowloris.py).
# Before, they filled max_connections and /healthz waited ~96 s.
source "$(dirname "$0")/lib.sh"

"$PY" -c 'import socket; socket.socket().bind(("127.0.0.2", 0))' 2>/dev/null ||
    { echo "SKIP: cannot bind 127.0.0.2 (a second loopback client address is needed)"; exit 77; }
printf '%s\n' 'header_timeout = 4s' 'min_body_rate = 1K' 'max_connections = 64' \
    'connection_reserve = 8' 'max_connections_per_ip = 16' >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf" --log-level info
out=$("$PY" "$keel_src/tests/integration/slowloris.py" "$port" 4) || die "$out"
echo "$out"
expect_has "$out" "16 of 40 from 127.0.0.5, 55 of 100 from 127.0.0.1" "connections let in"
# keeld is fine afterwards, and said what it did
expect_eq "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/healthz")" 200 "healthz after"
for _ in $(seq 100); do
    grep -q "connections closed as too slow" "$work/keeld.log" && break
    sleep 0.1
done
expect_has "$(cat "$work/keeld.log")" "connections closed as too slow sending their request" "log"
stop_keeld
echo ok
