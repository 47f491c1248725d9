#!/usr/bin/env bash
# The state dir is private to keel's user: a dir made beforehand with mode
# 0755 (what mkdir gives) is closed to 0700 at start, the databases and their
# -wal/-shm files are 0600 (new ones, and old ones that were 0644), and a
# directory every user may write to is refused with the reason.
source "$(dirname "$0")/lib.sh"

mode_of() { stat -c %a "$1"; }
expect_private_files() { # WHEN: every file at the top of the state dir is 0600
    local f
    for f in keel.db queue.db token; do
        [[ -f $state/$f ]] || die "$1: $state/$f is missing"
    done
    for f in "$state"/*; do
        [[ -f $f ]] || continue
        expect_eq "$(mode_of "$f")" 600 "$1: mode of ${f#"$state"/}"
    done
}

mkdir -m 0755 "$state"
start_keeld
token=$(cat "$state/token")
# write to the queue so that queue.db has its -wal and -shm
r=$(http POST /api/events -H "Authorization: Bearer $token" -d '{"topic":"t","payload":{"n":1}}')
expect_eq "$(status_of "$r")" 202 "an event ($(body_of "$r"))"
expect_eq "$(mode_of "$state")" 700 "state dir made 0755 beforehand, after start"
[[ -f $state/queue.db-wal ]] || die "queue.db-wal is missing (WAL mode?)"
expect_private_files "first start"
grep -q "was open to other users (mode 0755); made it 0700" "$work/keeld.log" ||
    die "keeld did not say it closed the state dir"
stop_keeld

# files left readable by an older keel are closed too
chmod 0755 "$state"
chmod 0644 "$state"/*.db "$state"/token
touch "$state/queue.db-wal" "$state/keel.db-shm"
chmod 0644 "$state/queue.db-wal" "$state/keel.db-shm"
start_keeld
expect_eq "$(mode_of "$state")" 700 "state dir after a restart"
expect_private_files "restart over 0644 files"
stop_keeld

# a directory every user can write to is refused, with the reason
chmod 0777 "$state"
rc=0
"$KEELD" --state-dir "$state" --port "$port" >"$work/refused.log" 2>&1 || rc=$?
[[ $rc != 0 ]] || die "keeld started on a state dir of mode 0777"
expect_has "$(cat "$work/refused.log")" "is writable by every user (mode 0777)" "refusal"
expect_eq "$(mode_of "$state")" 777 "a refused state dir is left as it was"
chmod 0700 "$state"
echo "02-state-dir: OK"
