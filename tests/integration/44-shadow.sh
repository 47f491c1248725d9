#!/usr/bin/env bash
# The device shadow over a real mosquitto broker: a retained desired
# document is applied when keeld connects; a local change and a concurrent
# cloud change to the same key merge as documented (the device's change
# wins, the conflict is kept and reported), other keys apply; the reported
# state reaches the broker on keel/DEVICE/high/shadow/reported.
source "$(dirname "$0")/lib.sh"
command -v mosquitto >/dev/null && command -v mosquitto_sub >/dev/null && command -v mosquitto_pub >/dev/null ||
    skip "no mosquitto broker or clients (apt install mosquitto mosquitto-clients)"
bport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$bport" >"$work/mosq.conf"
mosquitto -c "$work/mosq.conf" >"$work/mosq.log" 2>&1 &
mosq=$!
sub=""
trap 'kill $mosq $sub 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$bport) 2>/dev/null && break; sleep 0.1; done
mosquitto_sub -h 127.0.0.1 -p "$bport" -q 1 -t 'keel/sh-dev/high/shadow/#' -F '%x' >"$work/sub.txt" 2>&1 &
sub=$!
desired() { mosquitto_pub -h 127.0.0.1 -p "$bport" -q 1 -r -t keel/sh-dev/shadow/desired -m "$1"; }
desired '{"version":1,"device_seen":0,"set":{"log_level":"debug","site":"north"}}'
printf 'state_dir = %s\ndevice_id = sh-dev\nuplink = mqtt\nmqtt_host = 127.0.0.1\nmqtt_port = %s\n' \
    "$state" "$bport" >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf"
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")
# something to send makes the uplink connect; the retained desired arrives
curl -s -o /dev/null "${auth[@]}" -d '{"topic":"hello","priority":"critical"}' "$url/api/events"
wait_shadow() { # jq-filter expected
    local v=""
    for _ in $(seq 60); do
        v=$(curl -s "$url/api/shadow" | jq -r "$1")
        [[ $v == "$2" ]] && return
        sleep 0.25
    done
    die "shadow $1: expected $2, got $v ($(curl -s "$url/api/shadow"))"
}
wait_shadow .keys.site.value north
wait_shadow .keys.log_level.source cloud

# offline-style local change (device version 1), then a cloud change that
# had not seen it: site conflicts (the local value stays), log_level applies
r=$(http POST /api/shadow "${auth[@]}" -d '{"set":{"site":"south"}}')
expect_eq "$(status_of "$r")" 200 "local shadow change"
expect_eq "$(jfield "$(body_of "$r")" .device)" 1 "device counter"
desired '{"version":2,"device_seen":0,"set":{"site":"west","log_level":"warn"}}'
wait_shadow .keys.log_level.value warn
wait_shadow .keys.site.value south
wait_shadow '.conflicts[0].key' site
expect_eq "$(curl -s "$url/api/shadow" | jq -r '.conflicts[0].remote')" west "the conflict keeps the cloud's value for the record"
grep -q 'conflict on "site"' "$work/keeld.log" || die "the conflict is logged"
# bad input
r=$(http POST /api/shadow "${auth[@]}" -d '{"set":{"Bad Key":1}}')
expect_eq "$(status_of "$r")" 400 "bad shadow key"
r=$(http POST /api/shadow -d '{"set":{"a":1}}')
expect_eq "$(status_of "$r")" 401 "shadow change needs the token"
desired 'not json'
for _ in $(seq 80); do
    grep -q "desired shadow from keel/sh-dev/shadow/desired refused" "$work/keeld.log" && break
    sleep 0.25
done
grep -q "desired shadow from keel/sh-dev/shadow/desired refused" "$work/keeld.log" || die "bad desired logged"
expect_eq "$(curl -s "$url/api/shadow" | jq -r .keys.site.value)" south "bad desired changed nothing"
# the reported state reaches the broker, conflict included
for _ in $(seq 60); do
    found=""
    while read -r hex; do
        xxd -r -p <<<"$hex" >"$work/env"
        if "$KEEL" envelope decode "$work/env" | jq -e 'select(.topic == "shadow/reported") | .payload.shadow.conflicts[0].key == "site"' >/dev/null 2>&1; then
            found=1
        fi
    done <"$work/sub.txt"
    [[ -n $found ]] && break
    sleep 0.25
done
[[ -n $found ]] || die "no reported shadow with the conflict at the broker ($(wc -l <"$work/sub.txt") messages)"
mosquitto_pub -h 127.0.0.1 -p "$bport" -r -t keel/sh-dev/shadow/desired -n # clear the retained document
stop_keeld
echo "44-shadow: ok"
