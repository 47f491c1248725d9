#!/usr/bin/env bash
# Every event keeld acknowledged (202) survives kill -9: 20 rounds of
# producers posting events of every class while keeld is killed at a random
# moment; after each restart every acknowledged id is still queued, and the
# queue database passes its integrity check. Also: bad events get 4xx with a
# message, and GET /api/queue counts what is there.
source "$(dirname "$0")/lib.sh"
start_keeld
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")

# bad events
r=$(http POST /api/events "${auth[@]}" -d '{"topic":"a","priority":"urgent"}')
expect_eq "$(status_of "$r")" 400 "unknown priority"
expect_has "$(body_of "$r")" "unknown priority class" "unknown priority message"
r=$(http POST /api/events "${auth[@]}" -d '{"priority":"high"}')
expect_eq "$(status_of "$r")" 400 "missing topic"
expect_has "$(body_of "$r")" "topic" "missing topic message"
r=$(http POST /api/events "${auth[@]}" -d '{"topic":"bad/#","payload":1}')
expect_eq "$(status_of "$r")" 400 "wildcard topic"
r=$(http POST /api/events -d '{"topic":"a"}')
expect_eq "$(status_of "$r")" 401 "no token"
r=$(http POST /api/events "${auth[@]}" -d '{"topic":"a",')
expect_eq "$(status_of "$r")" 400 "malformed JSON"
# idempotency key: one message, the same id
r1=$(http POST /api/events "${auth[@]}" -d '{"topic":"door","priority":"high","idempotency_key":"k1","payload":{"open":true}}')
r2=$(http POST /api/events "${auth[@]}" -d '{"topic":"door","priority":"high","idempotency_key":"k1","payload":{"open":true}}')
expect_eq "$(status_of "$r1")" 202 "event accepted"
expect_eq "$(body_of "$r1")" "$(body_of "$r2")" "idempotent repeat gives the same id"
q=$(curl -s "$url/api/queue")
expect_eq "$(jq -r .classes.high.depth <<<"$q")" 1 "queue depth after a repeated key"

# the queue keeps one table per priority class (docs/internals/queue.md)
all_ids="SELECT id FROM msgs_critical UNION ALL SELECT id FROM msgs_high UNION ALL SELECT id FROM msgs_normal UNION ALL SELECT id FROM msgs_bulk"
acked=$work/acked
: >"$acked"
for round in $(seq 20); do
    # 3 producers of different classes; each records the ids keeld acknowledged
    pids=()
    for prio in critical normal bulk; do
        (
            while true; do
                b=$(curl -s -m 2 -w '\n%{http_code}' -X POST "${auth[@]}" \
                    -d "{\"topic\":\"load/$prio\",\"priority\":\"$prio\",\"payload\":{\"round\":$round}}" \
                    "$url/api/events" 2>/dev/null) || break
                [[ $(tail -n1 <<<"$b") == 202 ]] || break
                jq -r .id <<<"$(sed '$d' <<<"$b")" >>"$acked"
            done
        ) &
        pids+=($!)
    done
    sleep "0.$((RANDOM % 9 + 1))"
    kill -9 "$keeld_pid"
    wait "$keeld_pid" 2>/dev/null || true
    keeld_pid=""
    wait "${pids[@]}" 2>/dev/null || true
    [[ $(sqlite3 "$state/queue.db" 'PRAGMA integrity_check') == ok ]] || die "round $round: queue.db integrity"
    sqlite3 "$state/queue.db" "$all_ids" | sort >"$work/present"
    sort -u "$acked" >"$work/acked.sorted"
    missing=$(comm -23 "$work/acked.sorted" "$work/present" | head -5)
    [[ -z $missing ]] || die "round $round: acknowledged but lost: $missing"
    start_keeld
done
n=$(wc -l <"$work/acked.sorted")
[[ $n -ge 100 ]] || die "too few events acknowledged to mean anything: $n"
q=$(curl -s "$url/api/queue")
stop_keeld # keeld holds queue.db exclusively while it runs
expect_eq "$(jq -r .depth <<<"$q")" "$(sqlite3 "$state/queue.db" "SELECT count(*) FROM ($all_ids)")" "queue depth"
echo "41-events-crash: $n acknowledged events, none lost over 20 kill -9"
