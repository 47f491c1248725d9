#!/usr/bin/env bash
# Revocation and rotation reach installed packages (docs/security.md,
# "Revocation of installed versions"). The device's root key r signs trust
# changes, k signs packages. iris 1.0.0 is previous, 2.0.0 active.
#  1. `keel trust revoke` by hand on the device's trust dir while keeld runs,
#     a list naming 2.0.0's digest: within trust_check_interval (5 s by
#     default) 2.0.0 stops serving, 1.0.0 answers inference, /api/status
#     shows 2.0.0 revoked and why, /readyz says degraded, a `revoked` event
#     is on /api/bus, 2.0.0 cannot be activated.
#  2. `keel trust rotate` by hand to a root whose package rule drops k: both
#     versions revoked, not ready, with the reason.
#  3. restarted with trust_check_interval = 0: the same (persisted).
#  4. a rotation back to k, applied by SIGHUP: 1.0.0 serves again (2.0.0's
#     digest is still revoked).
#  5. a list revoking k, applied by SIGHUP: not ready, "revoked key".
#  6. restarted: the same (re-checked at start).
#  7. a newer list installed while keeld is down: seen at start, 1.0.0 lifted.
source "$(dirname "$0")/lib.sh"
[[ -f $KEEL_ORT_LIB ]] || skip "no ONNX Runtime at $KEEL_ORT_LIB (make setup)"
key_id() { "$KEEL" keygen -o "$work/$1" | awk '/^key id/ {print $3}'; }
rid=$(key_id r)
kid=$(key_id k)
k2id=$(key_id k2)
root_doc() { # VERSION PACKAGE-KEY (k or k2): a root.json with r as the root key
    local p=$kid
    [[ $2 == k2 ]] && p=$k2id
    rm -rf "$work/scratch"
    "$KEEL" trust init "$work/scratch" --key "$work/r.pub" --key "$work/$2.pub" >/dev/null
    jq --argjson v "$1" --arg r "$rid" --arg p "$p" \
        '.version = $v | .root.keys = [$r] | .packages[0].keys = [$p]' "$work/scratch/root.json"
}
mkdir -p "$state/trust"
root_doc 1 k >"$state/trust/root.json"
start_keeld
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")
x='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'

for v in 1.0.0 2.0.0; do
    mkdir -p "$work/iris-$v"
    cp -r "$keel_src/examples/iris/." "$work/iris-$v/"
    sed -i "s/\"version\": \"1.0.0\"/\"version\": \"$v\"/" "$work/iris-$v/keel.json"
    "$KEEL" pack "$work/iris-$v" -o "$work/iris-$v.keel" --key "$work/k.key" >/dev/null
    r=$(http POST '/api/packages?activate=1' "${auth[@]}" --data-binary "@$work/iris-$v.keel")
    expect_eq "$(status_of "$r")" 201 "install iris $v ($(body_of "$r"))"
done
pkgs=$(curl -s "$url/api/packages")
digest2=$(jfield "$pkgs" '.packages[] | select(.version == "2.0.0") | .digest')
expect_has "$digest2" "sha256:" "2.0.0's digest"
r=$(infer iris "$x")
expect_eq "$(status_of "$r")" 200 "inference before the revocation"
expect_eq "$(jfield "$(body_of "$r")" .model_version)" 2.0.0 "served by before the revocation"

iris() { jfield "$(curl -s "$url/api/status")" '.store.packages[] | select(.name == "iris")' -c; }
wait_for() { # JQ-CONDITION-ON-IRIS SECONDS WHAT: polls /api/status
    local end=$((SECONDS + $2))
    while ((SECONDS < end)); do
        [[ $(jq -r "$1" <<<"$(iris)" 2>/dev/null) == true ]] && return
        sleep 0.2
    done
    die "$3 within $2 s: $(iris)"
}
wait_ready() { # STATUS REASON-PART SECONDS WHAT: polls /readyz (set once models are loaded)
    local end=$((SECONDS + $3)) r
    while ((SECONDS < end)); do
        r=$(http GET /readyz)
        [[ $(status_of "$r") == "$1" && $(body_of "$r") == *"$2"* ]] && return
        sleep 0.2
    done
    die "$4 within $3 s: /readyz $(status_of "$r") $(body_of "$r")"
}
sign_list() { # FILE: signs it with the device's root key
    "$KEEL" trust sign "$1" --key "$work/r.key" --kind revocations >/dev/null
}
rotate() { # VERSION PACKAGE-KEY: `keel trust rotate` by hand
    root_doc "$1" "$2" >"$work/root-$1.json"
    "$KEEL" trust sign "$work/root-$1.json" --key "$work/r.key" --kind root >/dev/null
    "$KEEL" trust rotate "$state/trust" "$work/root-$1.json" >/dev/null
}

# the bus, from now on
curl -sN "$url/api/bus?types=revoked,trust" >"$work/bus.log" 2>/dev/null &
bus_pid=$!
trap 'kill $bus_pid 2>/dev/null || true; cleanup' EXIT
sleep 0.3

# 1. `keel trust revoke` by hand, keeld running: 2.0.0's digest
echo "{\"format\": 1, \"type\": \"keel-revocations\", \"serial\": 1, \"packages\": [\"$digest2\"]}" \
    >"$work/list-1.json"
sign_list "$work/list-1.json"
t0=$SECONDS
"$KEEL" trust revoke "$state/trust" "$work/list-1.json" >/dev/null
wait_for '.serving.version == "1.0.0"' 15 "2.0.0 did not stop serving"
echo "revoked 2.0.0 stopped serving within $((SECONDS - t0)) s"
wait_ready 200 "active version 2.0.0 is revoked" 15 "1.0.0 did not take over"
p=$(iris)
expect_eq "$(jfield "$p" .slots.active)" 2.0.0 "active slot (unchanged)"
expect_eq "$(jfield "$p" .serving.slot)" previous "serving slot"
expect_eq "$(jfield "$p" .serving.degraded)" true "serving degraded"
expect_has "$(jfield "$p" .serving.reason)" "active version 2.0.0 is revoked: " "serving reason"
expect_eq "$(jfield "$p" '.revoked | length')" 1 "revoked versions"
expect_eq "$(jfield "$p" '.revoked[0].version')" 2.0.0 "revoked version"
expect_eq "$(jfield "$p" '.revoked[0].digest')" "$digest2" "revoked digest"
expect_has "$(jfield "$p" '.revoked[0].reason')" "has been revoked" "revoked reason"
expect_has "$(jfield "$p" '.revoked[0].reason')" "revocation list serial 1" "revoked reason"
r=$(infer iris "$x")
expect_eq "$(status_of "$r")" 200 "inference after the revocation ($(body_of "$r"))"
expect_eq "$(jfield "$(body_of "$r")" .model_version)" 1.0.0 "served by after the revocation"
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 200 "/readyz, degraded"
expect_has "$(jfield "$(body_of "$r")" .reason)" "degraded: iris: active version 2.0.0 is revoked" \
    "/readyz reason"
pkgs=$(curl -s "$url/api/packages")
expect_eq "$(jfield "$pkgs" '.packages[] | select(.version == "2.0.0") | .revoked')" true \
    "/api/packages: 2.0.0 revoked"
expect_eq "$(jfield "$pkgs" '.packages[] | select(.version == "1.0.0") | .revoked')" false \
    "/api/packages: 1.0.0 revoked"
r=$(http POST /api/packages/iris/activate "${auth[@]}" -d '{"version":"2.0.0"}')
expect_error "$r" 422 UNTRUSTED "iris 2.0.0 is revoked, so it cannot be activated" \
    "activating the revoked version"
for _ in $(seq 50); do grep -q '^event: revoked' "$work/bus.log" && break; sleep 0.1; done
ev=$(grep '^data: .*"type":"revoked"' "$work/bus.log" | head -n1 | sed 's/^data: //')
expect_eq "$(jfield "$ev" .package)" iris "revoked event: package (bus: $(cat "$work/bus.log"))"
expect_eq "$(jfield "$ev" .version)" 2.0.0 "revoked event: version"
expect_eq "$(jfield "$ev" .detail)" "$digest2" "revoked event: digest"
expect_has "$(jfield "$ev" .reason)" "has been revoked" "revoked event: reason"
expect_eq "$(grep -c '"type":"revoked"' "$work/bus.log")" 1 "revoked events"
grep -q '"type":"trust"' "$work/bus.log" || die "no trust event on the bus: $(cat "$work/bus.log")"
# the reporter turns it into a critical alerts/revoked message (no uplink
# here: it waits in the queue); only where lib/runtime/link.c maps it
if grep -q KEEL__BUS_REVOKED "$keel_src/lib/runtime/link.c"; then
    crit() { jfield "$(curl -s "$url/api/queue")" .classes.critical.depth; }
    for _ in $(seq 50); do [[ $(crit) == 1 ]] && break; sleep 0.1; done
    expect_eq "$(crit)" 1 "critical messages queued (alerts/revoked)"
fi

# 2. `keel trust rotate` by hand, keeld running: k no longer signs packages
rotate 2 k2
wait_for '.serving.version == null' 15 "the rotation did not stop 1.0.0 serving"
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 503 "/readyz with every version revoked"
why=$(jfield "$(body_of "$r")" .reason)
expect_has "$why" "active version 2.0.0 is revoked: " "/readyz reason"
expect_has "$why" "previous version 1.0.0 is revoked: " "/readyz reason"
expect_has "$why" "trust root version 2" "/readyz reason"
expect_has "$why" "nothing valid is left to serve" "/readyz reason"
r=$(infer iris "$x")
[[ $(status_of "$r") != 200 ]] || die "a revoked version answered: $(body_of "$r")"
for _ in $(seq 50); do [[ $(grep -c '"type":"revoked"' "$work/bus.log") -ge 2 ]] && break; sleep 0.1; done
expect_eq "$(grep -c '"type":"revoked"' "$work/bus.log")" 2 "revoked events after the rotation"
kill "$bus_pid" 2>/dev/null || true

# 3. restart with trust_check_interval = 0: the same state, from the store
stop_keeld
echo "trust_check_interval = 0" >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf"
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 503 "/readyz after a restart"
expect_has "$(jfield "$(body_of "$r")" .reason)" "previous version 1.0.0 is revoked: " \
    "/readyz reason after a restart"
expect_eq "$(jfield "$(iris)" '.revoked | length')" 2 "revoked versions after a restart"

# 4. a rotation that trusts k again, applied by SIGHUP (no polling now):
#    1.0.0 is lifted, 2.0.0's digest is still in the list
rotate 3 k
kill -HUP "$keeld_pid"
wait_for '.serving.version == "1.0.0"' 10 "the rotation back did not let 1.0.0 serve"
wait_ready 200 "active version 2.0.0 is revoked" 15 "1.0.0 did not serve again"
p=$(iris)
expect_eq "$(jfield "$p" '.revoked | length')" 1 "revoked versions after the rotation back"
expect_eq "$(jfield "$p" '.revoked[0].version')" 2.0.0 "still revoked"
r=$(infer iris "$x")
expect_eq "$(jfield "$(body_of "$r")" .model_version)" 1.0.0 "served by after the rotation back"
expect_eq "$(status_of "$(http GET /readyz)")" 200 "/readyz after the rotation back (degraded)"

# 5. the key that signed both is revoked; applied by SIGHUP
echo "{\"format\": 1, \"type\": \"keel-revocations\", \"serial\": 2, \"keys\": [\"$kid\"], \"packages\": [\"$digest2\"]}" \
    >"$work/list-2.json"
sign_list "$work/list-2.json"
"$KEEL" trust revoke "$state/trust" "$work/list-2.json" >/dev/null
kill -HUP "$keeld_pid"
wait_for '.serving.version == null' 10 "the revoked key did not stop 1.0.0 serving"
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 503 "/readyz with the signing key revoked"
why=$(jfield "$(body_of "$r")" .reason)
expect_has "$why" "previous version 1.0.0 is revoked: " "/readyz reason"
expect_has "$why" "revoked key" "/readyz reason"
r=$(infer iris "$x")
[[ $(status_of "$r") != 200 ]] || die "a revoked version answered: $(body_of "$r")"

# 6. restart: re-checked at start, the same
stop_keeld
start_keeld
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 503 "/readyz after a restart"
expect_has "$(jfield "$(body_of "$r")" .reason)" "revoked key" "/readyz reason after a restart"
expect_eq "$(jfield "$(iris)" '.revoked | length')" 2 "revoked versions after a restart"
r=$(infer iris "$x")
[[ $(status_of "$r") != 200 ]] || die "a revoked version answered after a restart: $(body_of "$r")"
stop_keeld

# 7. a trust change made while keeld is down is seen at start (no polling):
#    a newer list that no longer revokes k lifts 1.0.0 before the first answer
echo "{\"format\": 1, \"type\": \"keel-revocations\", \"serial\": 3, \"packages\": [\"$digest2\"]}" \
    >"$work/list-3.json"
sign_list "$work/list-3.json"
"$KEEL" trust revoke "$state/trust" "$work/list-3.json" >/dev/null
start_keeld --config "$work/keeld.conf"
r=$(http GET /readyz)
expect_eq "$(status_of "$r")" 200 "/readyz after a trust change made while keeld was down ($(body_of "$r"))"
expect_eq "$(jfield "$(iris)" '.revoked | length')" 1 "revoked versions after the offline change"
stop_keeld
echo "14-revoke-installed: ok"
