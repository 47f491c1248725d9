#!/usr/bin/env bash
# USB / air-gap imports (docs/update.md, "USB and air-gapped sites"): a
# bundle made with `keel bundle create` (two packages of two names and a
# revocation list) goes in with `keel import DIR`: the list is installed,
# both packages are installed and activated (iris through its validation
# set). Importing it again changes nothing. A package failing its
# validation set stays staged and is reported; a package signed by a key
# the device does not trust, a revocation list not signed by the root, and
# a damaged copy (bundle.json) are refused with a clear error and nothing
# is activated. The import_dir watcher imports a dropped bundle once and
# writes its outcome beside it. Last, a revocation list that revokes the
# active version, carried in a bundle: it stops serving, the previous
# version serves (needs the revocation re-check of branch `revoke`).
source "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || skip "jq is not installed"
setup_trust
"$KEEL" keygen -o "$work/other" >/dev/null
inbox=$work/inbox
mkdir -p "$inbox"
cat >"$work/keeld.conf" <<CONF
import_dir = $inbox
CONF
start_keeld --config "$work/keeld.conf"
token=$(cat "$state/token")
imp() { "$KEEL" import "$@" --url "$url" --state-dir "$state"; }
pkgs() { curl -sf "$url/api/packages" || die "GET /api/packages failed"; }
slot() { # NAME SLOT: the version in it ("null" when empty)
    jq -r --arg n "$1" --arg s "$2" \
        '[.packages[] | select(.name == $n and (.slots | index($s))) | .version][0] // "null"' <<<"$(pkgs)"
}
serving() { # NAME: the version serving it now
    curl -sf "$url/api/status" | jq -r --arg n "$1" '.store.packages[] | select(.name == $n) | .serving.version'
}

# --- a bundle with two packages and a revocation list ---------------------------------
"$KEEL" pack "$keel_src/examples/iris" -o "$work/iris.keel" --key "$work/k.key" >/dev/null
blobs1=$(make_pkg blobs 1.0.0)
evil=$(make_pkg evil 1.0.0)
evil_digest=$("$KEEL" inspect "$evil" | awk '/^digest/ {print $2}')
[[ $evil_digest == sha256:* ]] || die "no digest for evil: $evil_digest"
cat >"$work/revoked.json" <<JSON
{"format": 1, "type": "keel-revocations", "serial": 1, "keys": [], "packages": ["$evil_digest"]}
JSON
"$KEEL" trust sign "$work/revoked.json" --key "$work/k.key" --kind revocations >/dev/null
"$KEEL" bundle create "$work/usb" --pkg "$work/iris.keel" --pkg "$blobs1" \
    --revoked "$work/revoked.json" >/dev/null || die "keel bundle create failed"
for f in iris-1.0.0.keel blobs-1.0.0.keel revoked.json revoked.json.sig bundle.json; do
    [[ -f $work/usb/$f ]] || die "bundle create: no $f in $(ls "$work/usb")"
done
out=$(imp "$work/usb" 2>&1) || die "keel import of the bundle failed: $out"
expect_has "$out" "revoked.json: applied" "the revocation list"
expect_has "$out" "iris 1.0.0 installed, activated" "iris"
expect_has "$out" "blobs 1.0.0 installed, activated" "blobs"
expect_eq "$(slot iris active)" 1.0.0 "iris active after the import"
expect_eq "$(slot blobs active)" 1.0.0 "blobs active after the import"
expect_eq "$(jq -r .serial "$state/trust/revoked.json")" 1 "the list is in the trust dir"
# the list is in force: the revoked package is refused
r=$(http POST /api/packages -H "Authorization: Bearer $token" --data-binary "@$evil")
expect_eq "$(status_of "$r")" 422 "install of a revoked package: $(body_of "$r")"
# the same with --json, and the import's result through the API
j=$("$KEEL" import "$work/usb" --url "$url" --state-dir "$state" --json) || die "re-import failed: $j"
expect_eq "$(jfield "$j" .result.ok)" true "re-import ok"
expect_eq "$(jfield "$j" '[.result.items[] | select(.kind == "package") | .outcome] | join(",")')" \
    "already_installed,already_installed" "re-import: packages already installed"
expect_eq "$(jfield "$j" '[.result.items[] | select(.kind == "package") | .activation] | join(",")')" \
    "already_active,already_active" "re-import: nothing activated again"
expect_eq "$(jfield "$j" '.result.items[] | select(.kind == "revocations") | .outcome')" already \
    "re-import: the list is the one in force"
# POST /api/import answers at once with an id; admin class
r=$(http POST /api/import -d "{\"path\":\"$work/usb\"}")
expect_eq "$(status_of "$r")" 401 "POST /api/import without a token"
r=$(http POST /api/import -H "Authorization: Bearer $token" -d '{"path":"usb"}')
expect_error "$r" 400 INVALID "absolute" "a relative path"
r=$(http GET /api/import/999)
expect_error "$r" 404 NOTFOUND "no import 999" "an unknown import id"

# --- a package that fails its validation set: staged, reported ------------------------
mkdir -p "$work/bad-iris" "$work/usb-bad"
cp -r "$keel_src/examples/iris/." "$work/bad-iris/"
awk -F, -v OFS=, 'NR == 1 { print; next } { $5 = ($5 + 1) % 3; print }' \
    "$keel_src/examples/iris/validation/iris.csv" >"$work/bad-iris/validation/iris.csv"
jq '.version = "1.1.0"' "$keel_src/examples/iris/keel.json" >"$work/bad-iris/keel.json"
"$KEEL" pack "$work/bad-iris" -o "$work/usb-bad/iris-1.1.0.keel" --key "$work/k.key" >/dev/null
if out=$(imp "$work/usb-bad" 2>&1); then die "a package failing validation imported cleanly: $out"; fi
expect_has "$out" "iris 1.1.0 installed, validation_failed" "the failing package"
expect_has "$out" "accuracy" "the report of the validation set"
expect_eq "$(slot iris staged)" 1.1.0 "the failing version stays staged"
expect_eq "$(slot iris active)" 1.0.0 "iris 1.0.0 still active"

# --- bad signatures and damaged copies: refused, nothing activated -----------------------
src=$work/src-blobs2
mkdir -p "$src" "$work/usb-sig"
head -c 5000 /dev/urandom >"$src/model.onnx"
printf '{"format":1,"name":"blobs","version":"2.0.0","task":"test"}' >"$src/keel.json"
"$KEEL" pack "$src" -o "$work/usb-sig/blobs-2.0.0.keel" --key "$work/other.key" >/dev/null
cat >"$work/usb-sig/revoked.json" <<JSON
{"format": 1, "type": "keel-revocations", "serial": 5, "keys": [], "packages": []}
JSON
"$KEEL" trust sign "$work/usb-sig/revoked.json" --key "$work/other.key" --kind revocations >/dev/null
# a package whose keel.sig holds the trusted key's signature of other bytes (BADSIG)
blobs4=$(make_pkg blobs 4.0.0)
blobs5=$(make_pkg blobs 5.0.0)
"$PY" - "$blobs5" "$blobs4" "$work/usb-sig/blobs-5.0.0.keel" <<'PY'
import io, sys, tarfile
good, other, out = sys.argv[1:]
sig = tarfile.open(other).extractfile("keel.sig").read()
with tarfile.open(good) as src, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as dst:
    for m in src.getmembers():
        data = src.extractfile(m).read()
        if m.name == "keel.sig":
            data, m.size = sig, len(sig)
        dst.addfile(m, io.BytesIO(data))
PY
if out=$(imp "$work/usb-sig" 2>&1); then die "a bundle with bad signatures imported: $out"; fi
expect_has "$out" "blobs-5.0.0.keel: blobs 5.0.0 refused" "the package with a signature of other bytes"
expect_has "$out" "BADSIG" "the package with a signature of other bytes: its reason"
expect_has "$out" "blobs-2.0.0.keel: blobs 2.0.0 refused" "the untrusted package"
expect_has "$out" "UNTRUSTED" "the untrusted package's reason"
expect_has "$out" "revoked.json: refused" "the list not signed by the root"
expect_eq "$(slot blobs active)" 1.0.0 "blobs 1.0.0 still active"
expect_eq "$(jq -r .serial "$state/trust/revoked.json")" 1 "the list in force is unchanged"
# a damaged copy: bundle.json says otherwise
blobs2=$(make_pkg blobs 2.0.0)
"$KEEL" bundle create "$work/usb-dmg" --pkg "$blobs2" >/dev/null
printf 'x' | dd of="$work/usb-dmg/blobs-2.0.0.keel" bs=1 seek=3000 conv=notrunc status=none
if out=$(imp "$work/usb-dmg" 2>&1); then die "a damaged bundle imported: $out"; fi
expect_has "$out" "does not match bundle.json" "the damaged copy"
expect_eq "$(slot blobs active)" 1.0.0 "blobs 1.0.0 still active after the damaged copy"
# not a bundle at all
mkdir -p "$work/empty"
if out=$(imp "$work/empty" 2>&1); then die "an empty folder imported: $out"; fi
expect_has "$out" "holds nothing to import" "an empty folder"

# --- the watched directory ---------------------------------------------------------------
blobs3=$(make_pkg blobs 3.0.0)
"$KEEL" bundle create "$work/drop" --pkg "$blobs3" >/dev/null
cp -r "$work/drop" "$inbox/stick1"
solo=$(make_pkg solo 1.0.0)
cp "$solo" "$inbox/solo.keel" # a lone .keel file
printf 'not a package' >"$inbox/junk.keel" # a bad entry: reported the same way
for _ in $(seq 100); do
    [[ -f $inbox/stick1.keel-import.json && -f $inbox/solo.keel.keel-import.json &&
        -f $inbox/junk.keel.keel-import.json ]] && break
    sleep 0.2
done
[[ -f $inbox/junk.keel.keel-import.json ]] || die "no outcome beside the bad entry: $(ls "$inbox")"
res=$(cat "$inbox/junk.keel.keel-import.json")
expect_eq "$(jfield "$res" '"\(.ok) \(.items[0].outcome)"')" "false refused" "the bad entry's outcome ($res)"
expect_has "$(jfield "$res" .items[0].reason)" "not a readable keel package" "the bad entry's reason"
[[ -f $inbox/stick1.keel-import.json ]] || die "no outcome beside the dropped bundle: $(ls "$inbox")"
res=$(cat "$inbox/stick1.keel-import.json")
expect_eq "$(jfield "$res" .ok)" true "the watcher's import of stick1 ($res)"
[[ -f $inbox/solo.keel.keel-import.json ]] || die "no outcome beside the dropped .keel: $(ls "$inbox")"
expect_eq "$(jfield "$(cat "$inbox/solo.keel.keel-import.json")" .ok)" true "the watcher's import of solo.keel"
expect_eq "$(slot blobs active)" 3.0.0 "blobs 3.0.0 active after the watcher's import"
expect_eq "$(slot solo active)" 1.0.0 "solo 1.0.0 active after the watcher's import"
m1=$(stat -c %Y.%i "$inbox/stick1.keel-import.json")
sleep 5 # two scans and more: imported once
expect_eq "$(stat -c %Y.%i "$inbox/stick1.keel-import.json")" "$m1" "the outcome is written once"
expect_eq "$(grep -c "importing $inbox/stick1" "$work/keeld.log")" 1 "stick1 imported once"

# --- revocation of the installed, active version through a bundle ------------------------
# (needs the revocation re-check of installed versions: branch `revoke`)
b3_digest=$("$KEEL" inspect "$blobs3" | awk '/^digest/ {print $2}')
cat >"$work/revoked2.json" <<JSON
{"format": 1, "type": "keel-revocations", "serial": 2, "keys": [], "packages": ["$evil_digest", "$b3_digest"]}
JSON
"$KEEL" trust sign "$work/revoked2.json" --key "$work/k.key" --kind revocations >/dev/null
"$KEEL" bundle create "$work/usb-revoke" --revoked "$work/revoked2.json" >/dev/null
curl -sN "$url/api/bus?types=revoked,update" >"$work/bus.log" 2>/dev/null &
bus_pid=$!
sleep 0.3
out=$(imp "$work/usb-revoke" 2>&1) || die "import of the revocation bundle failed: $out"
expect_has "$out" "revoked.json: applied" "the second list"
expect_eq "$(serving blobs)" 1.0.0 "after revoking blobs 3.0.0, the previous version serves"
sleep 0.3
kill "$bus_pid" 2>/dev/null || true
grep -q '"detail":"revocation_installed"' "$work/bus.log" ||
    die "no update event for the installed list: $(cat "$work/bus.log")"
ev=$(grep '"type":"revoked"' "$work/bus.log" | head -n1 | sed 's/^data: //')
expect_eq "$(jfield "$ev" '"\(.package) \(.version)"')" "blobs 3.0.0" \
    "the revoked event (an alert): $(cat "$work/bus.log")"
if grep -q KEEL__BUS_REVOKED "$keel_src/lib/runtime/link.c"; then # the reporter maps it
    [[ $(jfield "$(curl -s "$url/api/queue")" .classes.critical.depth) -ge 1 ]] ||
        die "no critical alert queued for the revoked version: $(curl -s "$url/api/queue")"
fi
echo "56-import: bundles imported, refused and watched as documented"
