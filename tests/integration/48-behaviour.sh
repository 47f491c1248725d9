#!/usr/bin/env bash
# Documented behaviour no other test pins, each on the real keeld:
#   1. hybrid routing (docs/inference.md): "escalate" forwards on low
#      confidence alone (no parameters.complex), and not when the confidence
#      is above confidence_below; "upstream_first" asks the upstream even
#      for a confident answer, and serves locally (said in escalation) when
#      the upstream is down;
#   2. the store (docs/security.md): a package failing its validation set is
#      installed but stays staged (the old version serves); mark-good over
#      HTTP sets known_good; bit rot (content changed, stamp still matching)
#      passes a plain POST /api/verify and is found by POST /api/verify?deep=1
#      and by the periodic re-verify (verify_interval, applied on SIGHUP);
#   3. adaptive batching (docs/uplink.md): every failed attempt halves the
#      uplink batch; once the endpoint answers it grows again and the queue
#      drains.
source "$(dirname "$0")/lib.sh"
setup_trust

# --- 1. hybrid routing: a fog keeld and an edge keeld ---------------------------------------------
fog_state=$work/fog fog_port=$(free_port) fog_pid="" rcv_pid=""
trap 'kill -9 $fog_pid $rcv_pid 2>/dev/null || true; cleanup' EXIT
start_fog() {
    "$KEELD" --state-dir "$fog_state" --port "$fog_port" >>"$work/fog.log" 2>&1 &
    fog_pid=$!
    for _ in $(seq 300); do curl -sf "127.0.0.1:$fog_port/healthz" >/dev/null && return; sleep 0.05; done
    die "fog keeld did not start: $(tail -5 "$work/fog.log")"
}
stop_fog() {
    kill -9 "$fog_pid"
    wait "$fog_pid" 2>/dev/null || true
    fog_pid=""
}
# variant NAME ROUTING STATE: examples/iris as package NAME with "routing"
# ROUTING (null: none), installed and activated offline into STATE
variant() {
    local src=$work/src-$1
    mkdir -p "$src"
    cp -r "$keel_src/examples/iris/." "$src/"
    jq --arg n "$1" --argjson r "$2" '.name = $n | if $r then .routing = $r else . end' \
        "$keel_src/examples/iris/keel.json" >"$src/keel.json"
    "$KEEL" pack "$src" -o "$work/$1.keel" --key "$work/k.key" >/dev/null
    "$KEEL" install "$work/$1.keel" --activate --offline --state-dir "$3" >/dev/null ||
        die "offline install of $1 into $3"
}
mkdir -p "$fog_state"
cp -r "$state/trust" "$fog_state/trust"
for n in iris-esc iris-low iris-up; do variant "$n" null "$fog_state"; done
variant iris-esc '{"mode": "escalate", "confidence_below": 0.9, "deadline_ms": 2000}' "$state"
variant iris-low '{"mode": "escalate", "confidence_below": 0.6, "deadline_ms": 2000}' "$state"
variant iris-up '{"mode": "upstream_first", "deadline_ms": 2000}' "$state"
start_fog
printf 'upstream_url = http://127.0.0.1:%s\n' "$fog_port" >"$work/edge.conf"
start_keeld --config "$work/edge.conf"
row() { printf '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[%s]}]}' "$1"; }
sure=$(row 5.1,3.5,1.4,0.2)   # setosa, confidence 1
unsure=$(row 6.0,2.7,5.1,1.6) # versicolor, confidence 0.67 on the primary (random forest)
# escalate, below 0.9: the unsure row goes upstream on its confidence alone
r=$(infer iris-esc "$sure")
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" primary "escalate: a confident answer stays local"
r=$(infer iris-esc "$unsure")
expect_eq "$(status_of "$r")" 200 "escalate: low confidence: $(body_of "$r")"
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" upstream "escalate: low confidence goes upstream"
expect_eq "$(jfield "$(body_of "$r")" .parameters.upstream_tier)" primary "escalate: the fog node's tier"
expect_eq "$(header_of X-Keel-Tier)" upstream "escalate: X-Keel-Tier"
# escalate, below 0.6: 0.67 is confident enough to stay local
r=$(infer iris-low "$unsure")
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" primary "escalate below 0.6: 0.67 stays local"
expect_eq "$(jfield "$(body_of "$r")" .parameters.escalation)" null "escalate below 0.6: no escalation note"
# upstream_first: even a confident answer comes from the upstream
r=$(infer iris-up "$sure")
expect_eq "$(status_of "$r")" 200 "upstream_first: $(body_of "$r")"
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" upstream "upstream_first: answered upstream"
expect_eq "$(jfield "$(body_of "$r")" .result[0].label)" setosa "upstream_first: the fog node's answer"
fog_before=$(curl -s "127.0.0.1:$fog_port/metrics" | grep -c 'model="iris-up",tier="primary",outcome="ok"} 1' || true)
expect_eq "$fog_before" 1 "upstream_first: the fog node served it"
# the fog node goes away: upstream_first answers locally and says why
stop_fog
r=$(infer iris-up "$sure")
expect_eq "$(status_of "$r")" 200 "upstream_first, fog down: $(body_of "$r")"
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" primary "upstream_first, fog down: local tier"
expect_has "$(jfield "$(body_of "$r")" .parameters.escalation)" "upstream first: " "upstream_first, fog down: escalation"
expect_eq "$(jfield "$(body_of "$r")" .result[0].label)" setosa "upstream_first, fog down: local answer"
stop_keeld

# --- 2. the store ---------------------------------------------------------------------------------
rm -rf "$state"
"$KEEL" trust init "$state/trust" --key "$work/k.pub" >/dev/null
printf 'verify_interval = 24h\n' >"$work/store.conf"
start_keeld --config "$work/store.conf"
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")
pkgs() { curl -sf "$url/api/packages" || die "GET /api/packages failed"; }
slot() { # NAME SLOT: the version in it ("null" when empty)
    jq -r --arg n "$1" --arg s "$2" \
        '[.packages[] | select(.name == $n and (.slots | index($s))) | .version][0] // "null"' <<<"$(pkgs)"
}
install_example iris
expect_eq "$(slot iris active)" 1.0.0 "iris active"
expect_eq "$(slot iris known_good)" null "iris known_good before mark-good"
# mark-good over HTTP
r=$(http POST /api/packages/iris/mark-good)
expect_eq "$(status_of "$r")" 401 "mark-good without a token"
r=$(http POST /api/packages/iris/mark-good "${auth[@]}")
expect_eq "$(status_of "$r")" 200 "mark-good: $(body_of "$r")"
expect_eq "$(slot iris known_good)" 1.0.0 "iris known_good after mark-good"
r=$(http POST /api/packages/nosuch/mark-good "${auth[@]}")
expect_eq "$(status_of "$r")" 404 "mark-good of an unknown package: $(body_of "$r")"
# a version whose validation set fails: installed, staged, refused with the report
mkdir -p "$work/bad-iris"
cp -r "$keel_src/examples/iris/." "$work/bad-iris/"
awk -F, -v OFS=, 'NR == 1 { print; next } { $5 = ($5 + 1) % 3; print }' \
    "$keel_src/examples/iris/validation/iris.csv" >"$work/bad-iris/validation/iris.csv"
jq '.version = "1.1.0"' "$keel_src/examples/iris/keel.json" >"$work/bad-iris/keel.json"
"$KEEL" pack "$work/bad-iris" -o "$work/bad-iris.keel" --key "$work/k.key" >/dev/null
r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$work/bad-iris.keel")
[[ $(status_of "$r") == 4* || $(status_of "$r") == 5* ]] || die "activation of a failing package: $(status_of "$r") $(body_of "$r")"
expect_has "$(body_of "$r")" "accuracy" "the refusal carries the self-test report"
expect_eq "$(slot iris staged)" 1.1.0 "the failing version is staged"
expect_eq "$(slot iris active)" 1.0.0 "the active version is unchanged"
r=$(infer iris "$sure")
expect_eq "$(jfield "$(body_of "$r")" .parameters.package)" iris@1.0.0 "1.0.0 still serves"
r=$(http POST /api/packages/iris/activate "${auth[@]}" -H 'Content-Type: application/json' -d '{"version":"1.1.0"}')
[[ $(status_of "$r") != 200 ]] || die "activating the staged failing version succeeded: $(body_of "$r")"
expect_eq "$(slot iris active)" 1.0.0 "active after a second refused activation"

# bit rot: a blob's bytes change, its stamp still matches (written here
# as the store would after hashing it), so only a deep check can tell
rot() { # PKG FILE: corrupt FILE's blob of the active PKG, same size, stamp refreshed
    local h blob
    h=$(sqlite3 "$state/keel.db" "SELECT f.sha256 FROM files f JOIN slots s ON s.name = f.name AND s.version = f.version WHERE s.slot = 'active' AND f.name = '$1' AND f.path = '$2'")
    [[ -n $h ]] || die "no blob for $1/$2"
    blob=$state/blobs/sha256/${h:0:2}/$h
    chmod u+w "$blob"
    printf 'rot' | dd of="$blob" bs=1 seek=100 conv=notrunc status=none
    chmod a-w "$blob"
    sqlite3 "$state/keel.db" "UPDATE stamps SET dev = $(stat -c %d "$blob"), ino = $(stat -c %i "$blob"),
        size = $(stat -c %s "$blob"), mtime_ns = $(stat -c %.9Y "$blob" | tr -d .),
        ctime_ns = $(stat -c %.9Z "$blob" | tr -d .) WHERE sha256 = '$h'" || die "refreshing the stamp of $blob"
}
pkg1=$(make_pkg blobs 1.0.0)
r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$pkg1")
expect_eq "$(status_of "$r")" 201 "install of blobs: $(body_of "$r")"
pkg2=$(make_pkg rot2 1.0.0)
r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$pkg2")
expect_eq "$(status_of "$r")" 201 "install of rot2: $(body_of "$r")"
rot blobs model.onnx
r=$(http POST /api/verify "${auth[@]}")
expect_eq "$(status_of "$r")" 200 "plain verify: $(body_of "$r")"
expect_eq "$(jfield "$(body_of "$r")" .ready)" true "plain verify trusts the matching stamp"
r=$(http POST '/api/verify?deep=1' "${auth[@]}")
expect_eq "$(status_of "$r")" 200 "deep verify: $(body_of "$r")"
expect_eq "$(jfield "$(body_of "$r")" .ready)" false "deep verify finds the rotten blob"
expect_has "$(jfield "$(body_of "$r")" .reason)" blobs "deep verify: the reason names the package"
expect_eq "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" 503 "readyz after the deep verify"
# the periodic re-verify: every second after a reload, no request needed
rot rot2 model.onnx
sleep 1.5
[[ $(curl -s "$url/readyz") != *rot2* ]] || die "rot2 found before the periodic re-verify was on"
printf 'verify_interval = 1s\n' >"$work/store.conf"
kill -HUP "$keeld_pid"
for _ in $(seq 100); do
    [[ $(curl -s "$url/readyz") == *rot2* ]] && break
    sleep 0.1
done
expect_has "$(curl -s "$url/readyz")" rot2 "the periodic re-verify finds the rotten blob of rot2"
stop_keeld

# --- 3. adaptive batching: halved by each failure, grown again by success ---------------------------
rm -rf "$state"
mkdir -p "$state"
rport=$(free_port)
cat >"$work/uplink.conf" <<C
device_id = it-batch
uplink = http
uplink_url = http://127.0.0.1:$rport/ingest
sync_window = always
C
start_keeld --config "$work/uplink.conf"
token=$(cat "$state/token")
for i in $(seq 100); do
    c=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
        -d "{\"topic\":\"t\",\"priority\":\"normal\",\"payload\":{\"n\":$i}}" "$url/api/events")
    expect_eq "$c" 202 "event $i"
done
# nothing listens on rport: each attempt fails; batch = 32 halved per failure
up=""
for _ in $(seq 200); do
    up=$(curl -s "$url/api/status" | jq -c .uplink)
    (($(jq -r .failures <<<"$up") >= 2)) && break
    sleep 0.05
done
f=$(jq -r .failures <<<"$up") b=$(jq -r .batch_size <<<"$up")
((f >= 2)) || die "uplink: fewer than 2 failures with no endpoint: $up"
expect_eq "$b" "$((32 >> f > 0 ? 32 >> f : 1))" "uplink batch after $f failures ($up)"
# the endpoint comes up: 2xx acknowledges, the batch grows, the queue drains
"$PY" - "$rport" >"$work/rcv.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
rcv_pid=$!
for _ in $(seq 600); do # backoff (at most 16 s after 5 failures) or the breaker's 30 s
    up=$(curl -s "$url/api/status" | jq -c .uplink)
    [[ $(jq -r .messages_sent <<<"$up") == 100 ]] && break
    sleep 0.1
done
expect_eq "$(jq -r .messages_sent <<<"$up")" 100 "uplink: every message sent once the endpoint answers ($up)"
(($(jq -r .batch_size <<<"$up") > b)) || die "uplink: the batch did not grow after acknowledged batches: $up"
expect_eq "$(curl -s "$url/api/queue" | jq -r .depth)" 0 "queue depth after the drain"
stop_keeld
echo "48-behaviour: ok"
