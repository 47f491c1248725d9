#!/usr/bin/env bash
# kill -9 of keeld at random points of an update (download, staging,
# validation, activation), 30 rounds: after each restart the store verifies,
# the active version is one that was published whole (old or new, never a
# mix), and the download resumes: what a killed keeld had verified in its
# .part file is kept by the next run (less at most the one chunk, 256 KiB,
# that was cut). Bytes per cut on the client's side: 55-fetch-resume.
source "$(dirname "$0")/lib.sh"
command -v nginx >/dev/null || skip "no nginx (make setup installs nginx-light)"

setup_repo_trust "$state/trust"
# version N carries a 3 MiB file of its own (publish_iris): at 1 MiB/s a
# download takes seconds, so the kills land in every step of the pipeline
publish_iris 1.0.0
start_nginx "$work/repo"
cat >"$work/keeld.conf" <<EOF
update_repos = $nginx_url
update_packages = iris
update_interval = 0
uplink_bandwidth = 1M
EOF
export KEEL_URL=$url KEEL_STATE_DIR=$state
active_offline() {
    "$KEEL" packages --offline --state-dir "$state" --json 2>/dev/null |
        jq -r '.packages[] | select(.slots | index("active")) | .version'
}
start_keeld --config "$work/keeld.conf"
"$KEEL" update apply >/dev/null || die "first apply"
kill -9 "$keeld_pid"
wait "$keeld_pid" 2>/dev/null || true
keeld_pid=""
published=(1.0.0)
next=2
publish_iris "$next.0.0"
published+=("$next.0.0")

declare -A parts=()
resumed=0
for round in $(seq 30); do
    start_keeld --config "$work/keeld.conf"
    curl -s -X POST -H "Authorization: Bearer $(cat "$state/token")" \
        "$url/api/updates/check?apply=1" >/dev/null
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.1 + (r % 300) / 100 }')"
    kill -9 "$keeld_pid"
    wait "$keeld_pid" 2>/dev/null || true
    keeld_pid=""
    "$KEEL" verify --state-dir "$state" >"$work/verify.log" 2>&1 ||
        die "round $round: the store does not verify after kill -9: $(tail -3 "$work/verify.log")"
    # the partial downloads: kept from the last round, less at most one chunk
    while read -r sz f; do
        prev=${parts[$f]:-}
        if [[ -n $prev ]]; then
            ((sz + 262144 >= prev)) || die "round $round: $f shrank from $prev to $sz bytes: not resumed"
            ((prev > 0)) && resumed=$((resumed + 1))
        fi
        parts[$f]=$sz
    done < <(find "$state/update/downloads" -name '*.part' -printf '%s %p\n' 2>/dev/null)
    a=$(active_offline)
    [[ " ${published[*]} " == *" $a "* ]] || die "round $round: active '$a' is not a published version"
    if [[ $a == "$next.0.0" ]]; then # reached: publish the next one
        next=$((next + 1))
        publish_iris "$next.0.0"
        published+=("$next.0.0")
    fi
done
echo "30 rounds: reached $((next - 1)).0.0"
((next > 2)) || die "no update completed in 30 rounds"

# finish the last one without interruption
start_keeld --config "$work/keeld.conf"
r=$("$KEEL" update apply --json)
expect_eq "$(jq -r '.packages[0].step' <<<"$r")" activated "the last update after the rounds ($r)"
stop_keeld
expect_eq "$(active_offline)" "$next.0.0" "active at the end"

echo "partial downloads carried into a later round: $resumed"
((resumed >= 1)) || die "no round found a partial download kept from the round before"
echo "ok"
