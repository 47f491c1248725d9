#!/usr/bin/env bash
# LAN peers (docs/update.md, "LAN peers"). keeld A with peer_serve serves
# the verified files of its installed versions by SHA-256
# (GET /api/chunks/sha256/HEX, no token): the whole file, single byte
# ranges (206 with Content-Range, exact bytes), 416 outside the file, 404
# for a hash no installed version holds and for a file changed since it was
# verified, 400 for a malformed hash. keeld B (peer_serve off) answers 404
# saying how to turn it on, lists its configured peers in /api/status and
# the keel_peers gauge, and, with peer_beacon on, finds A by its multicast
# beacon within a few seconds (skipped when this machine has no multicast
# route on loopback).
source "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || skip "jq is not installed"
command -v sqlite3 >/dev/null || skip "sqlite3 is not installed"
setup_trust
bport=$((20000 + RANDOM % 20000)) # the beacon's UDP port, this run's own
cat >"$work/a.conf" <<CONF
device_id = dev-a
peer_serve = true
peer_beacon = true
peer_beacon_if = 127.0.0.1
peer_beacon_port = $bport
peer_beacon_interval = 1s
CONF
start_keeld --config "$work/a.conf"
a_pid=$keeld_pid a_url=$url a_state=$state
trap 'kill -9 $a_pid 2>/dev/null || true; cleanup' EXIT
token=$(cat "$state/token")
install() { # FILE
    local r
    r=$(http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" --data-binary "@$1")
    expect_eq "$(status_of "$r")" 201 "install of $1: $(body_of "$r")"
}
pkg=$(make_pkg blobs 1.0.0 100000)
install "$pkg"
hex=$(sqlite3 "$state/keel.db" "SELECT sha256 FROM files WHERE name = 'blobs' AND path = 'model.onnx'")
[[ ${#hex} == 64 ]] || die "no blob hash for blobs/model.onnx: $hex"
blob=$state/blobs/sha256/${hex:0:2}/$hex
chunk() { # HEX [curl args]: headers in $work/h, body in $work/b; prints the status
    local h=$1
    shift
    curl -s -D "$work/h" -o "$work/b" -w '%{http_code}' "$@" "$url/api/chunks/sha256/$h"
}
hdr() { grep -i "^$1:" "$work/h" | head -n1 | cut -d: -f2- | tr -d ' \r'; }

expect_eq "$(chunk "$hex")" 200 "the whole file"
cmp -s "$work/b" "$blob" || die "the whole file differs from the blob"
expect_eq "$(hdr Content-Length)" 100000 "Content-Length of the whole file"
expect_eq "$(hdr Accept-Ranges)" bytes "Accept-Ranges"
expect_eq "$(chunk "$hex" -H 'Range: bytes=100-199')" 206 "a range"
expect_eq "$(hdr Content-Range)" "bytes100-199/100000" "Content-Range of a range"
expect_eq "$(hdr Content-Length)" 100 "Content-Length of a range"
cmp -s "$work/b" <(dd if="$blob" bs=1 skip=100 count=100 status=none) || die "range bytes differ"
expect_eq "$(chunk "$hex" -H 'Range: bytes=99990-')" 206 "an open range"
expect_eq "$(stat -c %s "$work/b")" 10 "bytes of an open range"
cmp -s "$work/b" <(tail -c 10 "$blob") || die "open range bytes differ"
expect_eq "$(chunk "$hex" -H 'Range: bytes=-7')" 206 "a suffix range"
cmp -s "$work/b" <(tail -c 7 "$blob") || die "suffix range bytes differ"
expect_eq "$(chunk "$hex" -H 'Range: bytes=99000-200000')" 206 "a range past the end"
expect_eq "$(hdr Content-Range)" "bytes99000-99999/100000" "a range past the end is cut"
expect_eq "$(chunk "$hex" -H 'Range: bytes=100000-')" 416 "a range outside the file"
expect_eq "$(hdr Content-Range)" "bytes*/100000" "Content-Range of a 416"
expect_eq "$(curl -s -I -o /dev/null -w '%{http_code}' "$url/api/chunks/sha256/$hex")" 200 "HEAD"
unknown=$(printf 'nothing here' | sha256sum | cut -d' ' -f1)
r=$(http GET "/api/chunks/sha256/$unknown")
expect_error "$r" 404 NOTFOUND "no installed version holds" "an unknown hash"
r=$(http GET "/api/chunks/sha256/ABC")
expect_error "$r" 400 INVALID "64 digits" "a malformed hash"
# a file changed since it was verified is not served
rot=$(make_pkg rot 1.0.0 5000)
install "$rot"
rhex=$(sqlite3 "$state/keel.db" "SELECT sha256 FROM files WHERE name = 'rot' AND path = 'model.onnx'")
rblob=$state/blobs/sha256/${rhex:0:2}/$rhex
expect_eq "$(chunk "$rhex")" 200 "rot's file before the change"
chmod u+w "$rblob"
printf 'rot' | dd of="$rblob" bs=1 seek=10 conv=notrunc status=none
r=$(http GET "/api/chunks/sha256/$rhex")
expect_error "$r" 404 NOTFOUND "not verified since it changed" "a changed file"

# --- keeld B: peer_serve off, a configured peer, the beacon ------------------------------
keeld_pid="" state=$work/state-b port=$(free_port)
url=http://127.0.0.1:$port
cat >"$work/b.conf" <<CONF
device_id = dev-b
peers = http://127.0.0.1:9, http://192.0.2.1:8480
peer_beacon = true
peer_beacon_if = 127.0.0.1
peer_beacon_port = $bport
peer_beacon_interval = 1s
CONF
start_keeld --config "$work/b.conf"
r=$(http GET "/api/chunks/sha256/$hex")
expect_error "$r" 404 NOTFOUND "peer_serve = true" "B does not serve"
st=$(curl -sf "$url/api/status") || die "B's status"
expect_eq "$(jfield "$st" '[.peers[] | select(.source == "configured") | .url] | join(",")')" \
    "http://127.0.0.1:9,http://192.0.2.1:8480" "B's configured peers"
metric=$(curl -sf "$url/metrics" | awk '$1 == "keel_peers" {print $2}')
[[ $metric -ge 2 ]] 2>/dev/null || die "keel_peers on B: '$metric'"

# the multicast beacon: only where loopback carries multicast
"$PY" - "$bport" <<'PY' || skip "no multicast on loopback here: the beacon part is not run"
import socket, sys
g, p = "239.255.84.80", int(sys.argv[1]) + 1
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
r.bind(("", p))
r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(g) + socket.inet_aton("127.0.0.1"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
s.sendto(b"probe", (g, p))
r.settimeout(2)
r.recvfrom(16)
PY
found=""
for _ in $(seq 50); do
    st=$(curl -sf "$url/api/status") || die "B's status"
    found=$(jfield "$st" '.peers[] | select(.source == "discovered") | "\(.url) \(.device)"')
    [[ -n $found ]] && break
    sleep 0.2
done
expect_eq "$found" "$a_url dev-a" "B found A by its beacon"
# A does not list itself
expect_eq "$(curl -sf "$a_url/api/status" | jq '[.peers[] | select(.device == "dev-a")] | length')" 0 \
    "A ignores its own beacon"
echo "57-peers: chunks served with ranges, peers configured and discovered"
