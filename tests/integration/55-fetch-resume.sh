#!/usr/bin/env bash
# Issue 11, downloads: lib/update/fetch.c through tests/tools/keel_fetch
# against a repository folder served by a real nginx on loopback.
#   1. a link cut several times mid-download (cut_relay.py): the fetch
#      completes over several runs, and the bytes received stay within one
#      chunk (256 KiB) per cut of the bytes needed;
#   2. kill -9 of keel_fetch mid-download, then a rerun resumes (fetches
#      less than the file);
#   3. a second version sharing most chunks fetches only the changed ones
#      (the rest is copied from the installed version); an offered patch
#      that does not apply falls back to chunks;
#   4. a peer serving a tampered file: the bad chunk is rejected, the peer
#      marked bad, the rest comes from the origin;
#   5. the same cut-link download of ../shared's silero_vad_v6.onnx (skipped,
#      last, without ../shared).
source "$(dirname "$0")/lib.sh"
fetch_bin=${KEEL_FETCH:-$(dirname "$KEEL")/tests/tools/keel_fetch}
[[ -x $fetch_bin ]] || die "no keel_fetch at $fetch_bin (built with the tests)"
command -v jq >/dev/null || skip "jq is not installed"
setup_trust
repo=$work/repo
mkdir -p "$repo"
start_nginx "$repo"
origin=$nginx_url origin_dir=$nginx_dir
CHUNK_MAX=262144

keel_fetch() { # NAME VERSION DIGEST [args]: one run; its JSON in $out, status in $frc
    local n=$1 v=$2 d=$3
    shift 3
    frc=0
    out=$("$fetch_bin" --state-dir "$state" --trust "$state/trust" --name "$n" --version "$v" \
        --digest "$d" --timeout 5 "$@" 2>>"$work/fetch.err") || frc=$?
}
field() { jq -r ".$1" <<<"$out"; }

pkg_from_file() { # NAME VERSION FILE...: a package with those files; prints "NAME VERSION DIGEST"
    local src=$work/src-$1-$2 n=$1 v=$2
    shift 2
    mkdir -p "$src"
    cp "$@" "$src/"
    printf '{"format":1,"name":"%s","version":"%s","task":"test"}' "$n" "$v" >"$src/keel.json"
    "$KEEL" pack "$src" -o "$work/$n-$v.keel" --key "$work/k.key" >/dev/null
    rm -rf "$src"
    bash "$keel_src/tests/integration/repo_add.sh" "$repo" "$work/$n-$v.keel"
}

# fetch_through_cuts NAME VERSION DIGEST CUT_AFTER CUTS: runs keel_fetch
# through a relay that cuts the first CUTS connections after CUT_AFTER bytes
# until it succeeds; checks the byte bound.
fetch_through_cuts() {
    local n=$1 v=$2 d=$3 runs=0 fails=0 received=0 needed=""
    "$PY" "$keel_src/tests/integration/cut_relay.py" "$work/relay.port" "${origin##*:}" "$4" "$5" &
    local relay=$!
    for _ in $(seq 100); do [[ -f $work/relay.port ]] && break; sleep 0.05; done
    local relay_url=http://127.0.0.1:$(cat "$work/relay.port")
    while ((runs < $5 + 5)); do
        runs=$((runs + 1))
        keel_fetch "$n" "$v" "$d" --repo "$relay_url" --activate
        received=$((received + $(field from_origin) + $(field wasted)))
        [[ -z $needed ]] && needed=$(field needed)
        if ((frc == 0)); then break; fi
        fails=$((fails + 1))
        expect_has "$(field error)" "resumes from byte" "run $runs error"
    done
    kill "$relay" 2>/dev/null || true
    wait "$relay" 2>/dev/null || true
    rm -f "$work/relay.port"
    expect_eq "$frc" 0 "fetch of $n $v through $5 cuts (last: $out)"
    expect_eq "$(field installed)" true "$n $v installed"
    ((fails >= $5 - 1)) || die "expected about $5 interrupted runs, got $fails"
    local bound=$((needed + fails * CHUNK_MAX))
    ((received <= bound)) ||
        die "received $received bytes for $needed needed over $fails cuts (bound $bound)"
    echo "ok: $n $v through $fails cuts: $received bytes received for $needed needed"
}

# --- 1. link cut several times ----------------------------------------------
head -c $((6 * 1024 * 1024)) /dev/urandom >"$work/model.onnx"
head -c 5000 /dev/urandom >"$work/labels.txt"
read -r _ _ d1 < <(pkg_from_file app 1.0.0 "$work/model.onnx" "$work/labels.txt")
fetch_through_cuts app 1.0.0 "$d1" 1500000 4
r=$("$KEEL" verify --state-dir "$state" --deep 2>&1) || die "keel verify --deep after the fetch: $r"
[[ -z $(ls "$state/update/downloads" 2>/dev/null) ]] || die "download folder left after install"

# --- 2. kill -9 mid-download, then resume ---------------------------------------
head -c $((24 * 1024 * 1024)) /dev/urandom >"$work/big.bin"
read -r _ _ d2 < <(pkg_from_file big 1.0.0 "$work/big.bin")
"$fetch_bin" --state-dir "$state" --trust "$state/trust" --name big --version 1.0.0 --digest "$d2" \
    --repo "$origin" --max-rate $((4 * 1024 * 1024)) >"$work/killed.out" 2>&1 &
fpid=$!
sleep 1.2
kill -9 "$fpid" || die "keel_fetch ended before kill -9: $(cat "$work/killed.out")"
wait "$fpid" 2>/dev/null || true
part=$(ls "$state/update/downloads/${d2#sha256:}/"*.part)
have=$(stat -c %s "$part")
((have > 0 && have < 24 * 1024 * 1024)) || die "after kill -9: .part holds $have bytes"
# a torn tail: the unverified end is cut off at the next run
head -c 1000 /dev/urandom >>"$part"
keel_fetch big 1.0.0 "$d2" --repo "$origin" --install
expect_eq "$frc" 0 "resumed fetch ($out)"
expect_eq "$(field resumes)" 1 "resumes"
from=$(field from_origin)
((from < 24 * 1024 * 1024 && from <= 24 * 1024 * 1024 - have + CHUNK_MAX)) ||
    die "resumed fetch took $from bytes after $have were on disk"
echo "ok: kill -9 after $have bytes; the rerun fetched $from"

# --- 3. a second version: only the changed chunks travel ----------------------
cp "$work/model.onnx" "$work/v2/model.onnx" 2>/dev/null || { mkdir -p "$work/v2" && cp "$work/model.onnx" "$work/v2/model.onnx"; }
printf 'changed weights here' | dd of="$work/v2/model.onnx" bs=1 seek=3000000 conv=notrunc status=none
cp "$work/labels.txt" "$work/v2/labels.txt"
read -r _ _ d3 < <(pkg_from_file app 1.1.0 "$work/v2/model.onnx" "$work/v2/labels.txt")
# a patch offered for the model that is smaller than the missing chunks but
# does not apply (garbage): counted, and the fetch falls back to chunks
head -c 1000 /dev/urandom >"$work/bad.patch"
ph=$(sha256sum "$work/bad.patch" | cut -d' ' -f1)
mkdir -p "$repo/patches/sha256/${ph:0:2}" && cp "$work/bad.patch" "$repo/patches/sha256/${ph:0:2}/$ph"
m1=$(sha256sum "$work/model.onnx" | cut -d' ' -f1)
m2=$(sha256sum "$work/v2/model.onnx" | cut -d' ' -f1)
keel_fetch app 1.1.0 "$d3" --repo "$origin" --install --patch "$m1:$m2:$ph:1000"
expect_eq "$frc" 0 "fetch of app 1.1.0 ($out)"
expect_eq "$(field patch_failures)" 1 "patch failures (the garbage patch)"
expect_eq "$(field from_patches)" 1000 "patch bytes fetched"
expect_eq "$(field needed)" $((6 * 1024 * 1024)) "bytes needed (labels.txt is in the store)"
((from = $(field from_origin), from <= 3 * CHUNK_MAX)) || die "app 1.1.0 fetched $from bytes from the origin"
(($(field from_local) >= 6 * 1024 * 1024 - 3 * CHUNK_MAX)) || die "app 1.1.0: from_local $(field from_local)"
echo "ok: app 1.1.0 fetched $from bytes, $(field from_local) copied from 1.0.0"

# --- 4. a peer serving a tampered file -----------------------------------------
head -c $((3 * 1024 * 1024)) /dev/urandom >"$work/peer.bin"
read -r _ _ d4 < <(pkg_from_file peered 1.0.0 "$work/peer.bin")
ph=$(sha256sum "$work/peer.bin" | cut -d' ' -f1)
mkdir -p "$work/peer/api/chunks/sha256"
cp "$work/peer.bin" "$work/peer/api/chunks/sha256/$ph"
printf '\xff' | dd of="$work/peer/api/chunks/sha256/$ph" bs=1 seek=2000000 conv=notrunc status=none
start_nginx "$work/peer"
keel_fetch peered 1.0.0 "$d4" --peer "$nginx_url" --repo "$origin" --install
expect_eq "$frc" 0 "fetch with a tampered peer ($out)"
(($(field bad_chunks) > 0)) || die "no bad chunk seen: $out"
(($(field peer_bad) > 0)) || die "the tampered peer was not marked bad: $out"
(($(field from_peers) > 0 && $(field from_origin) > 0)) || die "expected bytes from both: $out"
expect_eq $(($(field from_peers) + $(field from_origin))) $((3 * 1024 * 1024)) "peer + origin bytes"
echo "ok: tampered peer: $(field from_peers) bytes from it, $(field from_origin) from the origin"
r=$("$KEEL" verify --state-dir "$state" --deep 2>&1) || die "keel verify --deep at the end: $r"

# --- 5. the reference model through a cut link ------------------------------------
vad=$keel_shared/models/onnx/vad/silero_vad_v6.onnx
[[ -f $vad ]] || skip "no $vad (the parts above passed)"
read -r _ _ d5 < <(pkg_from_file vad 6.0.0 "$vad")
fetch_through_cuts vad 6.0.0 "$d5" 700000 3
echo "PASS"
