#!/usr/bin/env bash
# The keel CLI's verbs that no other test drives, as a publisher and an
# operator use them: hash (equals sha256sum), sign and verify FILE (hashes,
# then signatures against a trust dir; a flipped byte and an untrusted key
# are refused), trust sign + rotate (a new root that moves package signing
# to a new key; a replay is a downgrade), trust sign + revoke (a revoked
# package digest is refused; a replayed serial is a downgrade), selftest
# (a package passes its validation set; one whose labels are wrong fails,
# naming its tiers) and infer (over HTTP against keeld, a pinned tier, and
# --offline on the store).
source "$(dirname "$0")/lib.sh"

fails() { # WHAT MESSAGE-PART CMD...: CMD must exit non-zero and say MESSAGE-PART
    local what=$1 part=$2 out rc=0
    shift 2
    out=$("$@" 2>&1) || rc=$?
    [[ $rc != 0 ]] || die "$what: expected a failure, got exit 0: $out"
    expect_has "$out" "$part" "$what"
}

# --- hash --------------------------------------------------------------------------------------
printf 'hello\n' >"$work/a.txt"
head -c 3000000 /dev/urandom >"$work/b.bin"
: >"$work/empty"
expect_eq "$("$KEEL" hash "$work/a.txt" "$work/b.bin" "$work/empty")" \
    "$(sha256sum "$work/a.txt" "$work/b.bin" "$work/empty")" "keel hash vs sha256sum"
fails "hash of a missing file" "$work/nope" "$KEEL" hash "$work/nope"

# --- sign, verify FILE -----------------------------------------------------------------------------
"$KEEL" keygen -o "$work/a" >/dev/null
"$KEEL" keygen -o "$work/b" >/dev/null
"$KEEL" trust init "$work/trust" --key "$work/a.pub" >/dev/null
mkdir -p "$work/src"
head -c 20000 /dev/urandom >"$work/src/model.onnx"
printf '{"format":1,"name":"demo","version":"1.0.0","task":"test"}' >"$work/src/keel.json"
"$KEEL" pack "$work/src" -o "$work/demo.keel" >/dev/null # unsigned
out=$("$KEEL" verify "$work/demo.keel") || die "verify of an unsigned package without --trust: $out"
expect_has "$out" "every file matches keel.json (signatures not checked" "verify without --trust"
fails "verify of an unsigned package" "is not signed" "$KEEL" verify "$work/demo.keel" --trust "$work/trust"
cp "$work/demo.keel" "$work/demo-b.keel"
out=$("$KEEL" sign "$work/demo-b.keel" --key "$work/b.key") || die "sign with b: $out"
fails "verify of a package signed by an untrusted key" "UNTRUSTED" \
    "$KEEL" verify "$work/demo-b.keel" --trust "$work/trust"
out=$("$KEEL" sign "$work/demo.keel" --key "$work/a.key") || die "sign with a: $out"
expect_has "$out" "signed" "sign"
out=$("$KEEL" verify "$work/demo.keel" --trust "$work/trust") || die "verify of a signed package: $out"
expect_has "$out" "signatures satisfy the trust root" "verify --trust"
fails "sign with a missing key" "$work/nokey.key" "$KEEL" sign "$work/demo.keel" --key "$work/nokey.key"
# one flipped byte inside model.onnx (the package is a tar archive)
cp "$work/demo.keel" "$work/flipped.keel"
"$PY" -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    off = [m for m in t.getmembers() if m.name.endswith("model.onnx")][0].offset_data + 1000
with open(sys.argv[1], "r+b") as f:
    f.seek(off)
    b = f.read(1)[0]
    f.seek(off)
    f.write(bytes([(b + 1) % 256]))' "$work/flipped.keel"
fails "verify of a package with a flipped byte" "model.onnx" "$KEEL" verify "$work/flipped.keel"

# --- trust sign + rotate: package signing moves from key a to key b ------------------------------
digest() { "$KEEL" inspect "$1" --json | jq -r .digest; }
"$KEEL" trust init "$work/btrust" --key "$work/b.pub" >/dev/null # b's id and public key, to copy
b_id=$(jq -r '.keys | keys[0]' "$work/btrust/root.json")
jq --slurpfile b "$work/btrust/root.json" \
    '.version = 2 | .keys += $b[0].keys | .root.keys += [$b[0].root.keys[0]] | .root.threshold = 2
     | .packages = [{"prefix": "", "keys": [$b[0].root.keys[0]], "threshold": 1}]' \
    "$work/trust/root.json" >"$work/root2.json"
# signed by the current root (a) only: the new root's own threshold (a and b) is not met
"$KEEL" trust sign "$work/root2.json" --key "$work/a.key" --kind root >/dev/null
[[ -f $work/root2.json.sig ]] || die "trust sign wrote no root2.json.sig"
fails "rotation without the new root's threshold" "1 valid signature of 2 needed" "$KEEL" trust rotate "$work/trust" "$work/root2.json"
expect_eq "$(jq .version "$work/trust/root.json")" 1 "root version after a refused rotation"
"$KEEL" trust sign "$work/root2.json" --key "$work/b.key" --kind root >/dev/null
out=$("$KEEL" trust rotate "$work/trust" "$work/root2.json" 2>&1) || die "trust rotate: $out"
expect_eq "$(jq .version "$work/trust/root.json")" 2 "root version after the rotation"
expect_eq "$(jq -r '.packages[0].keys[0]' "$work/trust/root.json")" "$b_id" "package key after the rotation"
fails "a package signed by the retired key" "key not allowed for this name" "$KEEL" verify "$work/demo.keel" --trust "$work/trust"
"$KEEL" verify "$work/demo-b.keel" --trust "$work/trust" >/dev/null || die "a package signed by the new key is refused"
fails "replayed rotation" "DOWNGRADE" "$KEEL" trust rotate "$work/trust" "$work/root2.json"
# a signature made for a package is not one for a root (kinds are separate contexts)
fails "trust sign with a bad kind" "--kind root|revocations" "$KEEL" trust sign "$work/root2.json" --key "$work/a.key" --kind package

# --- trust sign + revoke: one package digest ------------------------------------------------------
d=$(digest "$work/demo-b.keel")
printf '{"format": 1, "type": "keel-revocations", "serial": 1, "packages": ["%s"]}' "$d" >"$work/revoked.json"
"$KEEL" trust sign "$work/revoked.json" --key "$work/a.key" --kind revocations >/dev/null
"$KEEL" trust sign "$work/revoked.json" --key "$work/b.key" --kind revocations >/dev/null
out=$("$KEEL" trust revoke "$work/trust" "$work/revoked.json" 2>&1) || die "trust revoke: $out"
[[ -f $work/trust/revoked.json && -f $work/trust/revoked.sig ]] || die "trust revoke wrote no revoked.json/.sig"
fails "a revoked package" "has been revoked" "$KEEL" verify "$work/demo-b.keel" --trust "$work/trust"
fails "replayed revocation list" "DOWNGRADE" "$KEEL" trust revoke "$work/trust" "$work/revoked.json"
printf '{"format": 1, "type": "keel-revocations", "serial": 2, "packages": []}' >"$work/unsigned.json"
fails "an unsigned revocation list" "unsigned.json.sig" "$KEEL" trust revoke "$work/trust" "$work/unsigned.json"
# a refused list leaves the installed one: the package stays revoked
fails "a revoked package after a refused list" "revoked" "$KEEL" verify "$work/demo-b.keel" --trust "$work/trust"

# --- selftest -----------------------------------------------------------------------------------
setup_trust # the device's trust dir in $state, key $work/k
"$KEEL" pack "$keel_src/examples/iris" -o "$work/iris.keel" --key "$work/k.key" >/dev/null
"$KEEL" install "$work/iris.keel" --activate --offline --state-dir "$state" >/dev/null ||
    die "offline install of examples/iris"
out=$("$KEEL" selftest iris --state-dir "$state" 2>&1) || die "selftest of examples/iris: $out"
for t in primary secondary tertiary; do expect_has "$out" "$t" "selftest report names tier $t"; done
# the same package with every validation label wrong: installed (not activated), selftest fails
mkdir -p "$work/bad-iris"
cp -r "$keel_src/examples/iris/." "$work/bad-iris/"
awk -F, -v OFS=, 'NR == 1 { print; next } { $5 = ($5 + 1) % 3; print }' \
    "$keel_src/examples/iris/validation/iris.csv" >"$work/bad-iris/validation/iris.csv"
jq '.version = "1.1.0"' "$keel_src/examples/iris/keel.json" >"$work/bad-iris/keel.json"
"$KEEL" pack "$work/bad-iris" -o "$work/bad-iris.keel" --key "$work/k.key" >/dev/null
"$KEEL" install "$work/bad-iris.keel" --offline --state-dir "$state" >/dev/null || die "offline install of bad-iris"
fails "selftest of a package whose labels are wrong" "tier primary: accuracy 0.0067 < 0.9500 (1/150)" \
    "$KEEL" selftest iris --version 1.1.0 --state-dir "$state"
fails "selftest of a package that is not there" "nosuch" "$KEEL" selftest nosuch --state-dir "$state"

# --- infer ----------------------------------------------------------------------------------------
start_keeld
virginica='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'
out=$("$KEEL" infer iris --input "$virginica" --url "$url") || die "keel infer: $out"
expect_eq "$(jfield "$out" '.result[0].label')" virginica "keel infer: label"
expect_eq "$(jfield "$out" '.parameters.tier')" primary "keel infer: tier"
printf '%s' "$virginica" >"$work/req.json"
out=$("$KEEL" infer iris --input "$work/req.json" --tier secondary --url "$url") || die "keel infer --tier: $out"
expect_eq "$(jfield "$out" '.parameters.tier')" secondary "keel infer --tier: tier"
expect_eq "$(jfield "$out" '.result[0].label')" virginica "keel infer --tier: label"
fails "keel infer of an unknown package" "nosuch" "$KEEL" infer nosuch --input "$virginica" --url "$url"
fails "keel infer with a bad input" "does not fit [-1,4]" "$KEEL" infer iris --input '{"inputs":[{"name":"float_input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}' --url "$url"
stop_keeld
out=$("$KEEL" infer iris --input "$virginica" --offline --state-dir "$state") || die "keel infer --offline: $out"
expect_eq "$(jfield "$out" '.result[0].label')" virginica "keel infer --offline: label"
expect_eq "$(jfield "$out" '.parameters.tier')" primary "keel infer --offline: tier (ONNX Runtime found)"
echo "49-cli: ok"
