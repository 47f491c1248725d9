#!/usr/bin/env bash
# LAN peers as untrusted mirrors, with three real keelds and a real nginx
# origin: keeld A updates from the origin and serves its verified files
# (peer_serve); keeld B is configured with A behind a relay that flips a
# byte (A "serving a tampered chunk"): B rejects the chunk, skips the peer
# and completes from the origin; keeld C fetches from A directly and takes
# (almost) nothing from the origin.
source "$(dirname "$0")/lib.sh"
command -v nginx >/dev/null || skip "no nginx (make setup installs nginx-light)"

setup_repo_trust "$work/trust"
publish_iris 1.0.0
start_nginx "$work/repo"

pids=()
other_keeld() { # NAME PORT CONFIG-LINES...: a keeld with its own state dir under $work/NAME
    local n=$1 p=$2
    shift 2
    mkdir -p "$work/$n"
    chmod 700 "$work/$n"
    cp -r "$work/trust" "$work/$n/trust"
    printf '%s\n' "$@" >"$work/$n.conf"
    "$KEELD" --state-dir "$work/$n" --port "$p" --config "$work/$n.conf" >>"$work/$n.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$p/healthz" >/dev/null 2>&1 && return
        sleep 0.05
    done
    die "keeld $n did not start: $(tail -5 "$work/$n.log")"
}
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; cleanup' EXIT
apply_on() { # PORT STATE_DIR: keel update apply, JSON
    "$KEEL" update apply --json --url "http://127.0.0.1:$1" --state-dir "$2" 2>&1 || true
}
stat_of() { jq -r ".packages[] | select(.name == \"iris\") | $2" <<<"$1" 2>/dev/null || echo "<$1>"; }

# A: follows iris from the origin, serves what it holds to peers
pa=$(free_port)
other_keeld a "$pa" "update_repos = $nginx_url" "update_packages = iris" "update_interval = 0" \
    "peer_serve = true"
r=$(apply_on "$pa" "$work/a")
expect_eq "$(stat_of "$r" .step)" activated "A installs 1.0.0 from the origin ($r)"
publish_iris 2.0.0
r=$(apply_on "$pa" "$work/a")
expect_eq "$(stat_of "$r" .step)" activated "A updates to 2.0.0 from the origin ($r)"

# B: A behind a relay that flips a byte of every file it serves
pr=$(free_port)
"$PY" "$keel_src/tests/integration/tamper_relay.py" "$pr" "http://127.0.0.1:$pa" >"$work/relay.out" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
pb=$(free_port)
other_keeld b "$pb" "update_repos = $nginx_url" "update_packages = iris" "update_interval = 0" \
    "peers = http://127.0.0.1:$pr"
r=$(apply_on "$pb" "$work/b")
expect_eq "$(stat_of "$r" .step)" activated "B updates although its peer serves tampered bytes ($r)"
bad=$(stat_of "$r" .bad_chunks)
((bad >= 1)) || die "B counted no bad chunk from the tampering peer ($r)"
origin=$(stat_of "$r" .bytes.origin)
peers=$(stat_of "$r" .bytes.peers)
needed=$(stat_of "$r" .bytes.needed)
((origin > 0)) || die "B took nothing from the origin after rejecting its peer ($r)"
((origin + peers >= needed)) || die "B: $origin from the origin + $peers from peers < $needed needed ($r)"
"$KEEL" verify --state-dir "$work/b" >/dev/null 2>&1 || die "B's store does not verify"
expect_has "$(curl -s "http://127.0.0.1:$pb/api/status" | jq -c .peers)" "$pr" "B lists the peer"

# C: A directly, honest: the bytes come from the peer
pc=$(free_port)
other_keeld c "$pc" "update_repos = $nginx_url" "update_packages = iris" "update_interval = 0" \
    "peers = http://127.0.0.1:$pa"
r=$(apply_on "$pc" "$work/c")
expect_eq "$(stat_of "$r" .step)" activated "C updates from its peer ($r)"
peers=$(stat_of "$r" .bytes.peers)
origin=$(stat_of "$r" .bytes.origin)
echo "C: $peers bytes from the peer, $origin from the origin"
((peers >= (3 << 20))) || die "C took only $peers bytes from its peer ($r)"
((origin < (1 << 20))) || die "C took $origin bytes from the origin ($r)"
"$KEEL" verify --state-dir "$work/c" >/dev/null 2>&1 || die "C's store does not verify"
echo "ok"
