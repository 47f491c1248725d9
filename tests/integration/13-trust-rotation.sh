#!/usr/bin/env bash
# docs/security.md's root rotation, run as written: the sh block of its
# "Root rotation" section, in order, with the real `keel` CLI, on a trust dir
# that has a revocation list installed. After it the new root is in force
# (packages signed by the new package key verify, the old key's do not) and
# the device still loads its trust (the list verifies under the new root).
# The block once lacked the re-signed list step; without it the rotation is
# refused (CONFLICT), which is checked too.
source "$(dirname "$0")/lib.sh"
doc=$keel_src/docs/security.md
block=$(awk '/^## Root rotation/ {s = 1; next} s && /^## / {exit}
    s && /^```sh/ {b = 1; next} s && b && /^```/ {exit} s && b {print}' "$doc")
[[ -n $block ]] || die "no sh block in the Root rotation section of $doc"
grep -q '^keel trust rotate' <<<"$block" || die "the block does not rotate: $block"

cd "$work"
key_id() { "$KEEL" keygen -o "$1" | awk '/^key id/ {print $3}'; }
old=$(key_id old-root)
new=$(key_id new-root)
pkgkey=$(key_id pkg)
oldpkg=$(key_id old-pkg)
trust=$work/trust
# the device: the old root, packages signed by old-pkg, a list (serial 1)
"$KEEL" trust init scratch-old --key old-root.pub --key old-pkg.pub >/dev/null
jq --arg r "$old" --arg p "$oldpkg" '.root.keys = [$r] | .packages[0].keys = [$p]' \
    scratch-old/root.json >root-v1.json
mkdir "$trust"
cp root-v1.json "$trust/root.json"
echo '{"format": 1, "type": "keel-revocations", "serial": 1, "keys": [], "packages": []}' >list-1.json
"$KEEL" trust sign list-1.json --key old-root.key --kind revocations >/dev/null
"$KEEL" trust revoke "$trust" list-1.json >/dev/null
# the documents the section asks for
"$KEEL" trust init scratch-new --key new-root.pub --key pkg.pub >/dev/null
jq --arg r "$new" --arg p "$pkgkey" '.version = 2 | .root.keys = [$r] | .packages[0].keys = [$p]' \
    scratch-new/root.json >new-root.json
echo '{"format": 1, "type": "keel-revocations", "serial": 2, "keys": [], "packages": []}' >revoked.json

run_block() { # LINES: the doc's commands, keel and TRUST_DIR filled in; stops at the first failure
    local line
    while IFS= read -r line; do
        line=${line%%#*}
        [[ $line =~ [^[:space:]] ]] || continue
        line=${line//TRUST_DIR/$trust}
        line=${line/#keel /\"\$KEEL\" }
        echo "+ $line"
        eval "$line" || return 1
    done <<<"$1"
}

# without the list step (the section as it once was): refused, and why
cp -r "$trust" "$work/trust-saved"
cp new-root.json new-root.json.saved
if run_block "$(grep -v 'revoked.json' <<<"$block")" >"$work/no-list.log" 2>&1; then
    die "rotation without re-signing the revocation list was accepted: $(cat "$work/no-list.log")"
fi
expect_has "$(cat "$work/no-list.log")" "is not signed by the new root's keys" "rotation without the list step"
rm -rf "$trust" new-root.json.sig
mv "$work/trust-saved" "$trust"
mv new-root.json.saved new-root.json

# the section as written
run_block "$block" >"$work/rotation.log" 2>&1 || die "the doc's rotation failed: $(cat "$work/rotation.log")"
expect_eq "$(jq -r .version "$trust/root.json")" 2 "root version after the rotation"
expect_eq "$(jq -r .serial "$trust/revoked.json")" 2 "revocation serial after the rotation"
# the new root is in force and loads with its list
mkdir -p src && head -c 1000 /dev/urandom >src/model.onnx
printf '{"format":1,"name":"demo","version":"1.0.0","task":"test"}' >src/keel.json
"$KEEL" pack src -o new.keel --key pkg.key >/dev/null
"$KEEL" pack src -o old.keel --key old-pkg.key >/dev/null
"$KEEL" verify new.keel --trust "$trust" >"$work/verify.log" 2>&1 ||
    die "a package of the new key does not verify: $(cat "$work/verify.log")"
if "$KEEL" verify old.keel --trust "$trust" >"$work/verify-old.log" 2>&1; then
    die "a package of the old key still verifies after the rotation"
fi
echo "13-trust-rotation: docs/security.md's rotation ran ($(grep -c '^+' "$work/rotation.log") commands)"
