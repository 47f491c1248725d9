#!/usr/bin/env bash
# POST /api/packages reads every byte before it answers, also for a version
# that is installed already: a truncated or altered copy of it is a 422 (it
# once was 200 "already_installed" from the signed manifest alone). A broken
# trust dir is the device's fault, not the package's: a 503 naming the file
# and what to do (it once was a 404 or a 400).
source "$(dirname "$0")/lib.sh"
setup_trust
pkg=$(make_pkg demo 1.0.0 300000)
start_keeld
token=$(cat "$state/token")
install() { http POST /api/packages -H "Authorization: Bearer $token" --data-binary "@$1"; }

r=$(install "$pkg")
expect_eq "$(status_of "$r")" 201 "first install ($(body_of "$r"))"

size=$(stat -c %s "$pkg")
head -c $((size / 2)) "$pkg" >"$work/cut.keel"
r=$(install "$work/cut.keel")
expect_eq "$(status_of "$r")" 422 "a truncated copy of the installed version ($(body_of "$r"))"
expect_eq "$(jfield "$(body_of "$r")" .error.code)" CORRUPT "truncated copy: error code"
expect_has "$(jfield "$(body_of "$r")" .error.message)" "truncated" "truncated copy: message"

cp "$pkg" "$work/altered.keel"
printf '\x00\x01\x02\x03' | dd of="$work/altered.keel" bs=1 seek=$((size / 2)) conv=notrunc status=none
r=$(install "$work/altered.keel")
expect_eq "$(status_of "$r")" 422 "an altered copy of the installed version ($(body_of "$r"))"

r=$(install "$pkg")
expect_eq "$(status_of "$r")" 200 "the intact package again ($(body_of "$r"))"
expect_eq "$(jfield "$(body_of "$r")" .already_installed)" true "the intact package again"
expect_eq "$(jfield "$(body_of "$r")" .new_bytes)" 0 "bytes written for the intact package again"

# a broken trust dir: 503, naming the file and the way out
broken() { # WHAT FILE-PART HINT-PART
    local b
    r=$(install "$pkg")
    b=$(body_of "$r")
    expect_eq "$(status_of "$r")" 503 "$1: status ($b)"
    expect_eq "$(jfield "$b" .error.code)" NOTREADY "$1: error code"
    expect_has "$(jfield "$b" .error.message)" "the trust dir is broken" "$1: message"
    expect_has "$(jfield "$b" .error.message)" "$2" "$1: message names the file"
    expect_has "$(jfield "$b" .error.message)" "$3" "$1: message says what to do"
}
mv "$state/trust/root.json" "$work/root.json"
broken "root.json missing" "$state/trust/root.json" "keel trust init"
echo garbage >"$state/trust/root.json"
broken "root.json malformed" "root.json: malformed JSON" "put back the root.json"
cp "$work/root.json" "$state/trust/root.json"
echo '{"format": 1, "type": "keel-revocations", "serial": 1}' >"$state/trust/revoked.json"
broken "revoked.json without revoked.sig" "$state/trust/revoked.sig" "put back the revoked.json and revoked.sig"
rm "$state/trust/revoked.json"

r=$(install "$pkg")
expect_eq "$(status_of "$r")" 200 "install once the trust dir is repaired ($(body_of "$r"))"
stop_keeld
echo "12-install-verify: OK"
