#!/usr/bin/env bash
# Updates from a signed repository served by a real nginx on loopback, into
# a real keeld: Silero VAD v5 -> v6 (a fresh device installs v1, then updates
# to v2: download, stage, validate, activate), the refusals (tampered index,
# replayed timestamp, stale timestamp, untrusted package, tampered file, a
# package failing its validation set, a downgrade) that activate nothing,
# and a pulled version that rolls the device back to its known-good.
source "$(dirname "$0")/lib.sh"
need_shared
command -v nginx >/dev/null || skip "no nginx (make setup installs nginx-light)"

setup_repo_trust "$state/trust"
"$KEEL" keygen -o "$work/stranger" >/dev/null

vad=$keel_shared/models/onnx/vad
mkvad() { # VERSION MODEL [KEY] [JQ filter]: a vad package whose primary model is MODEL
    local v=$1 model=$2 key=${3:-$work/k.key} filter=${4:-.} src=$work/src-vad-$1
    rm -rf "$src"
    cp -r "$keel_src/examples/vad" "$src"
    rm "$src/model/silero_vad_v6.onnx"
    cp "$model" "$src/model/silero_vad.onnx"
    jq --arg v "$v" ".version = \$v | .tiers[0].model = \"model/silero_vad.onnx\" | $filter" \
        "$keel_src/examples/vad/keel.json" >"$src/keel.json"
    "$KEEL" pack "$src" -o "$work/vad-$v.keel" --key "$key" >/dev/null
}
mkvad 1.0.0 "$vad/silero_vad_v5.onnx"
mkvad 2.0.0 "$vad/silero_vad_v6.onnx"
publish "$work/vad-1.0.0.keel" --channel stable
start_nginx "$work/repo"

cat >"$work/keeld.conf" <<EOF
update_repos = $nginx_url
update_packages = vad
update_interval = 0
device_id = field-unit-7
probation_requests = 20
EOF
start_keeld --config "$work/keeld.conf"
export KEEL_URL=$url KEEL_STATE_DIR=$state
active() { curl -s "$url/api/packages" | jq -r '.packages[] | select(.slots | index("active")) | .version'; }
apply() { "$KEEL" update apply --json 2>&1 || true; }
step_of() { jq -r '.packages[] | select(.name == "vad") | .step' <<<"$1" 2>/dev/null || echo "<$1>"; }
reason_of() { jq -r '.packages[] | select(.name == "vad") | .reason' <<<"$1" 2>/dev/null || echo "<$1>"; }

# --- a fresh device installs what it follows --------------------------------------------
r=$(apply)
expect_eq "$(step_of "$r")" activated "first apply ($r)"
expect_eq "$(active)" 1.0.0 "active after the first apply"
r=$("$KEEL" update check --json)
expect_eq "$(step_of "$r")" up_to_date "check with nothing new ($r)"

# --- v5 -> v6 ------------------------------------------------------------------------------
publish "$work/vad-2.0.0.keel" --channel stable
r=$("$KEEL" update check --json)
expect_eq "$(step_of "$r")" found "check after publishing 2.0.0 ($r)"
expect_eq "$(active)" 1.0.0 "a check alone activates nothing"
r=$(apply)
expect_eq "$(step_of "$r")" activated "apply of 2.0.0 ($r)"
expect_eq "$(active)" 2.0.0 "active after the update"
full=$(stat -c %s "$vad/silero_vad_v6.onnx")
origin=$(jq '.packages[] | select(.name == "vad") | .bytes.origin' <<<"$r")
needed=$(jq '.packages[] | select(.name == "vad") | .bytes.needed' <<<"$r")
patched=$(jq '.packages[] | select(.name == "vad") | .bytes.patches' <<<"$r")
echo "v5 -> v6: $origin bytes of chunks and $patched of patches from the origin for $needed needed (model $full bytes)"
((needed >= full)) || die "bytes needed $needed: the new model ($full bytes) is not in the store"
((origin + patched <= needed + 262144)) || die "fetched $origin + $patched bytes for $needed needed"
r=$(infer vad "$(jq -c -n '{inputs:[{name:"input",shape:[1,512],datatype:"FP32",data:[range(512)|0]}]}')")
expect_eq "$(status_of "$r")" 200 "inference after the update ($(body_of "$r"))"
expect_has "$(body_of "$r")" '2.0.0' "the answer names the version that served"
"$KEEL" verify --state-dir "$state" >/dev/null || die "keel verify after the update"
# probation: 20 requests answered as well as 1.0.0 did make 2.0.0 known-good
frame=$(jq -c -n '{inputs:[{name:"input",shape:[1,512],datatype:"FP32",data:[range(512)|0]}]}')
for _ in $(seq 25); do infer vad "$frame" >/dev/null; done
kg=""
for _ in $(seq 100); do
    kg=$(curl -s "$url/api/packages" | jq -r '.packages[] | select(.slots | index("known_good")) | .version')
    [[ $kg == 2.0.0 ]] && break
    sleep 0.1
done
expect_eq "$kg" 2.0.0 "known-good after 2.0.0 survived probation"
expect_has "$(curl -s "$url/metrics")" 'keel_update_steps_total{step="promoted"} 1' "the promotion"
m=$(curl -s "$url/metrics")
expect_has "$m" 'keel_update_steps_total{step="activated"} 2' "metrics"
expect_has "$(curl -s "$url/api/status" | jq -c .updates.last.packages)" '"step":"activated"' "status"

# --- refusals: nothing activated -------------------------------------------------------------
cp "$work/repo/timestamp.json" "$work/old-timestamp.json"
cp "$work/repo/timestamp.sig" "$work/old-timestamp.sig"
mkvad 3.0.0 "$vad/silero_vad_v6.onnx" "$work/stranger.key"
publish "$work/vad-3.0.0.keel" --channel stable
r=$(apply)
expect_eq "$(step_of "$r")" refused "a package no trusted key signed ($r)"
expect_has "$(reason_of "$r")" "signature" "its reason"
expect_eq "$(active)" 2.0.0 "active after the untrusted package"

# a tampered index: the publisher signs a new index (a rollout change) and a
# timestamp naming its hash; the mirror serves other bytes. (An unchanged
# index is not fetched again: the device keeps the one the timestamp names.)
"$KEEL" rollout vad --repo "$work/repo" --channel stable --key "$work/ix.key" \
    --timestamp-key "$work/ts.key" --set 100 >/dev/null
cp "$work/repo/index.json" "$work/index.good"
sed -i 's/"stable"/"stab1e"/' "$work/repo/index.json"
r=$("$KEEL" update check --json 2>&1 || true)
expect_has "$r" '"ok":false' "tampered index ($r)"
expect_eq "$(active)" 2.0.0 "active after the tampered index"
cp "$work/index.good" "$work/repo/index.json"

# a replayed (older) timestamp
cp "$work/repo/timestamp.json" "$work/ts.good"
cp "$work/repo/timestamp.sig" "$work/tss.good"
cp "$work/old-timestamp.json" "$work/repo/timestamp.json"
cp "$work/old-timestamp.sig" "$work/repo/timestamp.sig"
r=$("$KEEL" update check --json 2>&1 || true)
expect_has "$r" '"ok":false' "replayed timestamp ($r)"
expect_has "$r" 'replay' "replayed timestamp's reason"
cp "$work/ts.good" "$work/repo/timestamp.json"
cp "$work/tss.good" "$work/repo/timestamp.sig"

# a frozen repository: the timestamp has expired while the device is online
"$KEEL" repo timestamp --repo "$work/repo" --key "$work/ts.key" --expires 1s >/dev/null
sleep 2
r=$("$KEEL" update check --json 2>&1 || true)
expect_has "$r" '"ok":false' "expired timestamp ($r)"
expect_has "$r" 'stale' "expired timestamp's reason"
"$KEEL" repo timestamp --repo "$work/repo" --key "$work/ts.key" --expires 1d >/dev/null

# a tampered file in the repository
# (3.2.0 differs from 2.0.0 by one small file: the one file the device fetches)
mkvad 3.2.0 "$vad/silero_vad_v6.onnx" "$work/k.key" '.description = "3.2.0"'
printf 'vad 3.2.0: release notes\n' >"$work/src-vad-3.2.0/notes.txt"
"$KEEL" pack "$work/src-vad-3.2.0" -o "$work/vad-3.2.0.keel" --key "$work/k.key" >/dev/null
publish "$work/vad-3.2.0.keel" --channel stable
lh=$(sha256sum "$work/src-vad-3.2.0/notes.txt" | cut -d' ' -f1)
lf=$work/repo/files/sha256/${lh:0:2}/$lh
[[ -f $lf ]] || die "the repository has no $lf"
cp "$lf" "$work/labels.good"
chmod u+w "$lf" "$(dirname "$lf")" 2>/dev/null || true
printf 'vad 3.2.0: release NOTES\n' >"$lf"
r=$(apply)
expect_eq "$(step_of "$r")" refused "a tampered file ($r)"
expect_eq "$(active)" 2.0.0 "active after the tampered file"
cp "$work/labels.good" "$lf"
r=$(apply)
expect_eq "$(step_of "$r")" activated "the same version once the file is right ($r)"
expect_eq "$(active)" 3.2.0 "active after the repaired file"

# a package that fails its validation set: stays staged, reported, not retried
mkvad 4.0.0 "$vad/silero_vad_v6.onnx" "$work/k.key" '.validation.threshold = 1.01'
publish "$work/vad-4.0.0.keel" --channel stable
r=$(apply)
expect_eq "$(step_of "$r")" refused "a package failing validation ($r)"
expect_has "$(reason_of "$r")" "stays staged" "its reason"
expect_eq "$(active)" 3.2.0 "active after the failed validation"
staged=$(curl -s "$url/api/packages" | jq -r '.packages[] | select(.slots | index("staged")) | .version')
expect_eq "$staged" 4.0.0 "the failed version stays staged"
r=$(apply)
expect_eq "$(step_of "$r")" skipped "the failed version is not retried ($r)"

# a downgrade offered by the channel
mkvad 3.0.5 "$vad/silero_vad_v6.onnx"
publish "$work/vad-3.0.5.keel" --channel stable --force
r=$(apply)
expect_eq "$(step_of "$r")" refused "a channel offering a lower version ($r)"
expect_has "$(reason_of "$r")" "downgrade" "its reason"
expect_eq "$(active)" 3.2.0 "active after the offered downgrade"

# --- the publisher pulls the active version: back to known-good ------------------------------
mkvad 5.0.0 "$vad/silero_vad_v6.onnx" "$work/k.key" '.description = "5.0.0"'
publish "$work/vad-5.0.0.keel" --channel stable
r=$(apply)
expect_eq "$(active)" 5.0.0 "active after 5.0.0 ($r)"
"$KEEL" rollout vad --repo "$work/repo" --channel stable --key "$work/ix.key" \
    --timestamp-key "$work/ts.key" --pull 5.0.0 >/dev/null
r=$(apply)
expect_eq "$(step_of "$r")" rolled_back "a pulled active version ($r)"
expect_eq "$(active)" 3.2.0 "active after the pull"

stop_keeld
echo "ok"
