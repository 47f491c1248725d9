#!/usr/bin/env bash
# Envelope batch numbers (seq) rise across keeld restarts: keeld is started
# three times in a row against a real mosquitto broker, one event each, and
# the seq of every envelope received is above the one before; the numbers
# reserved are recorded in STATE_DIR/uplink.seq (0600), beyond every number
# used. (They once restarted from the clock, so two starts within one
# wall-clock second shared numbers; under ASan a keeld run takes over a
# second, so unit/test_uplink's test_seq_across_restarts pins that case.)
source "$(dirname "$0")/lib.sh"
command -v mosquitto >/dev/null || skip "no mosquitto"
start_mosquitto_sub '%x'
cat >"$work/keeld.conf" <<C
state_dir = $state
device_id = it-device
uplink = mqtt
mqtt_host = 127.0.0.1
mqtt_port = $bport
sync_window = always
C

t0=$(date +%s)
for run in 1 2 3; do
    start_keeld --config "$work/keeld.conf"
    r=$(http POST /api/events -H "Authorization: Bearer $(cat "$state/token")" \
        -d "{\"topic\":\"t\",\"priority\":\"critical\",\"payload\":{\"run\":$run}}")
    expect_eq "$(status_of "$r")" 202 "event of run $run ($(body_of "$r"))"
    for _ in $(seq 100); do
        [[ $(wc -l <"$work/sub.txt") -ge $run ]] && break
        sleep 0.05
    done
    [[ $(wc -l <"$work/sub.txt") -ge $run ]] || die "run $run: the envelope did not arrive"
    stop_keeld
done
echo "3 keeld runs in $(($(date +%s) - t0 + 1)) wall-clock second(s) or less"

# Delivery is at least once: a run stopped before its PUBACK came back sends
# that message again from the next run, in a new envelope (a new seq); a
# copy the broker re-delivers is the same bytes and is skipped here.
seqs=()
n=0
declare -A seen
while read -r hex; do
    [[ -n ${seen[$hex]:-} ]] && continue
    seen[$hex]=1
    n=$((n + 1))
    xxd -r -p <<<"$hex" >"$work/env.$n"
    seqs+=("$("$KEEL" envelope decode "$work/env.$n" | jq -r .seq | head -n1)")
done <"$work/sub.txt"
((${#seqs[@]} >= 3)) || die "envelopes received: ${#seqs[@]}, expected 3 or more (at least once)"
last=$((${#seqs[@]} - 1))
for i in $(seq 1 "$last"); do
    [[ ${seqs[i]} =~ ^[0-9]+$ ]] || die "envelope $i: seq is '${seqs[i]}'"
    [[ ${seqs[i]} -gt ${seqs[i - 1]} ]] ||
        die "envelope $i has seq ${seqs[i]}, not above ${seqs[i - 1]} before it (all: ${seqs[*]})"
done
read -r magic format next <"$state/uplink.seq" || die "no $state/uplink.seq"
expect_eq "$magic $format" "keel-uplink-seq 1" "uplink.seq format"
[[ $next -gt ${seqs[last]} ]] || die "uplink.seq says $next, not beyond the last seq ${seqs[last]}"
expect_eq "$(stat -c %a "$state/uplink.seq")" 600 "mode of uplink.seq"
echo "47-uplink-seq: seq ${seqs[*]}"
