#!/usr/bin/env bash
# The publisher's side of a repository (docs/update.md, "Repository"), with
# the real keel CLI: a trust root with index and timestamp roles, two
# versions published to a channel at 25 %, rollout raised, halted, resumed,
# a version pulled, the timestamp re-signed, and `keel repo verify` checking
# it all as a device would; it refuses a tampered index, a replayed old
# timestamp, a timestamp signed by the wrong role and expired metadata
# while "online". The publisher refuses a changed build of a published
# version (CONFLICT), a version below the channel's (DOWNGRADE) and an
# unsigned package.
source "$(dirname "$0")/lib.sh"
cd "$work"
for k in k idx ts; do "$KEEL" keygen -o "$k" >/dev/null; done
"$KEEL" trust init trust --key k.pub --index-key idx.pub --timestamp-key ts.pub >/dev/null
expect_eq "$(jq -r '.index.threshold, .timestamp.threshold' trust/root.json | tr '\n' ' ')" "1 1 " "role thresholds"

v1=$(make_pkg vad 1.0.0)
v2=$(make_pkg vad 2.0.0)
repo=$work/repo
pub() { "$KEEL" publish "$@" --repo "$repo" --key idx.key --timestamp-key ts.key; }
verify() { "$KEEL" repo verify --repo "$repo" --trust trust "$@" 2>&1; }

out=$(pub "$v1") || die "publish v1: $out"
expect_has "$out" "published vad 1.0.0"
out=$(pub "$v2" --rollout 25) || die "publish v2: $out"
expect_has "$out" "others stay on 1.0.0"
# A source tree with the patch codec must build a keel that uses it (the
# publisher's reference to it is weak until then: lib/update/publish.c).
if [[ -f $keel_src/lib/update/patch.c ]]; then
    [[ $out != *"no patch codec"* ]] || die "lib/update/patch.c is there but keel publish has no codec: $out"
fi
expect_eq "$(jq -r '.packages.vad.channels.stable | "\(.version) \(.rollout) \(.base) \(.halted)"' "$repo/index.json")" \
    "2.0.0 25 1.0.0 false" "channel after v2"
expect_eq "$(jq -r .version "$repo/index.json")" 2 "index version"
out=$(pub "$v2") || die "publish v2 again: $out"
expect_has "$out" "already there"
expect_has "$out" "at 25 % (unchanged)"
expect_eq "$(jq -r .version "$repo/index.json")" 3 "index version after a re-publish"
expect_eq "$(jq -r '.version, .index.version' "$repo/timestamp.json" | tr '\n' ' ')" "3 3 " "timestamp versions"
# the layout: exact package copies and every file by its hash
for v in 1.0.0 2.0.0; do
    for f in keel.json keel.sig vad-$v.keel; do
        [[ -s $repo/packages/vad/$v/$f ]] || die "missing packages/vad/$v/$f"
    done
done
tar -xOf "$v2" keel.json | cmp -s - "$repo/packages/vad/2.0.0/keel.json" || die "keel.json is not the package's bytes"
digest=$(jq -r '.packages.vad.versions["2.0.0"].digest' "$repo/index.json")
expect_eq "sha256:$(sha256sum <"$repo/packages/vad/2.0.0/keel.json" | cut -d' ' -f1)" "$digest" "keel.json digest"
for h in $(jq -r '.files[].sha256' "$repo/packages/vad/2.0.0/keel.json"); do
    h=${h#sha256:}
    expect_eq "$(sha256sum <"$repo/files/sha256/${h:0:2}/$h" | cut -d' ' -f1)" "$h" "files/sha256/$h"
done

# The canary: of 100 device ids at 25 %, exactly those the documented rule
# picks take 2.0.0 (docs/update.md: bucket = first 8 bytes of
# SHA-256(id 0 name 0 version), big-endian, mod 10000; computed here with
# sha256sum, the 64-bit value split in two halves as 2^32 mod 10000 = 7296).
bucket() {
    local h
    h=$(printf '%s\0%s\0%s' "$1" "$2" "$3" | sha256sum | cut -c1-16)
    echo $(((16#${h:0:8} % 10000 * 7296 + 16#${h:8:8}) % 10000))
}
offer() { "$KEEL" repo offer vad --repo "$repo" --trust trust --channel stable "$@"; }
takers=() devs=() want=""
for i in $(seq -w 0 99); do
    devs+=(--device "device-$i")
    if (($(bucket "device-$i" vad 2.0.0) < 2500)); then
        want+="vad 2.0.0"$'\n'
        takers+=(--device "device-$i")
    else
        want+="vad 1.0.0"$'\n'
    fi
done
expect_eq "$(offer "${devs[@]}" --current 1.0.0)" "${want%$'\n'}" "offers to 100 devices at 25 %"
n=$((${#takers[@]} / 2))
((n > 10 && n < 40)) || die "$n of 100 took 2.0.0 at 25 %"
echo "canary: $n of 100 devices take 2.0.0 at 25 %"

out=$(verify --state state.json) || die "verify: $out"
expect_has "$out" "verifies"
cp "$repo/timestamp.json" old-ts.json
cp "$repo/timestamp.sig" old-ts.sig

# refusals by the publisher
other=$(make_pkg vad 1.0.0) # another build, same version
out=$(pub "$other" 2>&1) && die "a changed build of 1.0.0 was published"
expect_has "$out" "CONFLICT"
old=$(make_pkg vad 0.5.0)
out=$(pub "$old" 2>&1) && die "0.5.0 moved the channel back"
expect_has "$out" "DOWNGRADE"
mkdir -p src-u && head -c 1000 /dev/urandom >src-u/model.onnx
printf '{"format":1,"name":"vad","version":"3.0.0","task":"test"}' >src-u/keel.json
"$KEEL" pack src-u -o unsigned.keel >/dev/null
out=$(pub unsigned.keel 2>&1) && die "an unsigned package was published"
expect_has "$out" "not signed"
expect_eq "$(jq -r .version "$repo/index.json")" 3 "index version after refusals"

# one publisher at a time
exec 9>"$repo/.lock"
flock -n 9 || die "cannot take the repository lock"
out=$(pub "$v1" 2>&1) && die "published while another publisher held the lock"
expect_has "$out" "BUSY"
exec 9>&-
out=$("$KEEL" rollout vad --repo "$work/none" --key idx.key --channel stable --halt 2>&1) && die "rollout on no repository"
expect_has "$out" "does not exist"
[[ ! -e $work/none ]] || die "rollout created a repository folder"

# rollout: raise, halt, resume, pull
ro() { "$KEEL" rollout vad --repo "$repo" --key idx.key --timestamp-key ts.key "$@"; }
ro --channel stable --set 50 >/dev/null || die "rollout --set"
expect_eq "$(jq -r .packages.vad.channels.stable.rollout "$repo/index.json")" 50 "rollout"
ro --channel stable --halt >/dev/null || die "rollout --halt"
expect_eq "$(jq -r .packages.vad.channels.stable.halted "$repo/index.json")" true "halted"
out=$(verify --state state.json) || die "verify after halt: $out"
# halted: no new takers (at 50 % now), devices already on it keep it
out=$(offer "${devs[@]}" --current 1.0.0 | sort -u)
expect_eq "$out" "vad 1.0.0" "halted: offers to devices on 1.0.0"
out=$(offer "${takers[@]}" --current 2.0.0 | sort -u)
expect_eq "$out" "vad 2.0.0" "halted: offers to devices on 2.0.0"
ro --channel stable --resume >/dev/null || die "rollout --resume"
expect_eq "$(jq -r .packages.vad.channels.stable.halted "$repo/index.json")" false "resumed"
ro --pull 2.0.0 >/dev/null || die "rollout --pull"
expect_eq "$(jq -r '.packages.vad.versions["2.0.0"].pulled' "$repo/index.json")" true "pulled"
expect_eq "$(offer "${takers[@]:0:2}" --current 2.0.0)" "vad 1.0.0 (current pulled)" "offer after pull"
out=$(ro --channel stable 2>&1) && die "rollout without an action"
ro --channel stable --promote >/dev/null || die "rollout --promote"
expect_eq "$(jq -r '.packages.vad.channels.stable | "\(.rollout) \(.base)"' "$repo/index.json")" "100 null" "promoted"
out=$(verify --state state.json) || die "verify after pull: $out"
expect_has "$out" "vad 2.0.0 (pulled)"

# with --trust, publishing with keys the devices would not accept is refused
# before anything is written
"$KEEL" keygen -o rogue >/dev/null
before=$(jq -r .version "$repo/index.json")
out=$("$KEEL" publish "$v2" --repo "$repo" --key rogue.key --timestamp-key ts.key --trust trust 2>&1) && die "published with a key no device trusts"
expect_has "$out" "an index signed with these keys"
expect_eq "$(jq -r .version "$repo/index.json")" "$before" "index version after a refused publish"

# the timestamp cron job
before=$(jq -r .version "$repo/timestamp.json")
"$KEEL" repo timestamp --repo "$repo" --key ts.key --expires 2h >/dev/null || die "repo timestamp"
expect_eq "$(jq -r .version "$repo/timestamp.json")" $((before + 1)) "timestamp version"
out=$(verify --state state.json) || die "verify after re-sign: $out"

# a timestamp signed by the index key: wrong role
cp "$repo/timestamp.json" good-ts.json
cp "$repo/timestamp.sig" good-ts.sig
"$KEEL" repo timestamp --repo "$repo" --key idx.key >/dev/null || die "repo timestamp (idx)"
out=$(verify) && die "a timestamp signed by the index key verified"
expect_has "$out" "key not allowed for this role"
cp good-ts.json "$repo/timestamp.json"
cp good-ts.sig "$repo/timestamp.sig"

# a tampered index.json
cp "$repo/index.json" good-index.json
sed -i 's/"rollout":\t100/"rollout":\t99/' "$repo/index.json"
cmp -s good-index.json "$repo/index.json" && die "the tamper did not change index.json"
out=$(verify) && die "a tampered index verified"
expect_has "$out" "not the one timestamp.json names"
cp good-index.json "$repo/index.json"

# a replayed old timestamp (a mirror serving an old copy)
cp old-ts.json "$repo/timestamp.json"
cp old-ts.sig "$repo/timestamp.sig"
out=$(verify --state state.json) && die "a replayed timestamp verified"
expect_has "$out" "DOWNGRADE"
expect_has "$out" "replayed"
cp good-ts.json "$repo/timestamp.json"
cp good-ts.sig "$repo/timestamp.sig"

# expiry matters only online
out=$(verify --at 2099-01-01T00:00:00Z) && die "expired metadata verified online"
expect_has "$out" "stale"
out=$(verify --offline --at 2099-01-01T00:00:00Z) || die "offline verify: $out"

# a file of the repository changed on disk
h=$(jq -r '.files[0].sha256' "$repo/packages/vad/1.0.0/keel.json")
h=${h#sha256:}
chmod u+w "$repo/files/sha256/${h:0:2}/$h"
printf 'x' >>"$repo/files/sha256/${h:0:2}/$h"
out=$(verify) && die "a changed file verified"
expect_has "$out" "FAIL vad 1.0.0"
echo "ok"
