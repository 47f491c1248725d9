#!/usr/bin/env bash
# bench/delta.sh - bytes on the wire for a model update (issue 11,
# "Performance"): keel's per-file patch (keel delta, codec keel-tpatch-1)
# and keel's chunk transfer (bytes of the new file's content-defined chunks
# the old file lacks), against zstd --patch-from --long, xdelta3, bsdiff and
# casync in the same run; then apply speed against `zstd -d --patch-from`
# and keel's peak RSS against the largest file + 64 MiB.
# Pairs: silero_vad v5 -> v6 (real retrained weights), and from a real model
# (kws embedding_model.onnx) made by bench/delta_models.py: the last layer
# retrained; every weight moved slightly (float32); the same as int8.
# Needs ../shared/models, /usr/bin/python3 with onnx + numpy, zstd, xdelta3,
# bsdiff, casync. Run by bench/run.sh (release build in build/release).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
need_keel() { [[ -x $bin/keel ]] || { echo "bench: build first with bench/run.sh" >&2; exit 1; }; }
need_keel
shared=$top/../shared/models/onnx
if [[ ! -d $shared ]]; then
    echo "== delta: skipped (needs ../shared/models)"
    exit 0
fi
for tool in zstd xdelta3 bsdiff casync /usr/bin/python3; do
    command -v "$tool" >/dev/null || { echo "== delta: skipped (needs $tool)"; exit 0; }
done
d=$out/delta
mkdir -p "$d"
# shellcheck disable=SC2046
for p in delta_chunks delta_apply; do
    gcc -std=c11 -D_GNU_SOURCE -O2 -I"$top/include" -I"$top/lib" "$top/bench/$p.c" -o "$d/$p" \
        "$bin/libkeel_static.a" $(pkg-config --libs openssl sqlite3 libmicrohttpd libcjson libpng16 libzstd) \
        -ljpeg -lpthread -ldl -lm
done
src=$shared/kws/embedding_model.onnx
if [[ ! -f $d/int8_v2.onnx || $d/int8_v2.onnx -ot $top/bench/delta_models.py ]]; then
    rm -f "$d"/*.kpatch
    /usr/bin/python3 "$top/bench/delta_models.py" "$src" "$d"
fi

size() { stat -c %s "$1"; }
# casync: the new file's chunks (compressed, as stored) missing from the old
# file's store, plus the new index
casync_bytes() {
    local old=$1 new=$2 w=$d/casync
    rm -rf "$w" && mkdir -p "$w"
    casync make --store="$w/old.castr" "$w/old.caibx" "$old" >/dev/null
    casync make --store="$w/new.castr" "$w/new.caibx" "$new" >/dev/null
    (cd "$w/old.castr" && find . -name '*.cacnk' | sort) >"$w/old.list"
    (cd "$w/new.castr" && find . -name '*.cacnk' | sort) >"$w/new.list"
    local total
    total=$(comm -13 "$w/old.list" "$w/new.list" | (cd "$w/new.castr" && xargs -r stat -c %s) |
        awk '{ s += $1 } END { print s + 0 }')
    echo $((total + $(size "$w/new.caibx")))
}

echo "== delta: bytes on the wire for an update; $(machine_load)"
printf '%-22s %10s %10s %10s %10s %10s %10s %10s %10s %7s %7s %s\n' pair full zstd xdelta3 bsdiff \
    casync k.chunks k.patch keel keel/best keel/full transform
row() {
    local name=$1 old=$2 new=$3 p=$d/$1
    local full zs xd bs ca kc kp keel best tr
    full=$(size "$new")
    zstd -q -f -19 --long=31 --patch-from="$old" "$new" -o "$p.zst"
    zs=$(size "$p.zst")
    xdelta3 -f -9 -e -s "$old" "$new" "$p.xd3"
    xd=$(size "$p.xd3")
    bsdiff "$old" "$new" "$p.bsdiff"
    bs=$(size "$p.bsdiff")
    ca=$(casync_bytes "$old" "$new")
    kc=$("$d/delta_chunks" "$old" "$new" | cut -d' ' -f1)
    tr=$("$bin/keel" delta "$old" "$new" -o "$p.kpatch" | sed 's/.*transform //')
    kp=$(size "$p.kpatch")
    keel=$((kp < kc ? kp : kc))
    best=$(printf '%s\n' "$zs" "$xd" "$bs" "$ca" | sort -n | head -1)
    "$bin/keel" delta --apply "$old" "$p.kpatch" -o "$p.out" >/dev/null
    cmp -s "$p.out" "$new" || { echo "delta: $name: keel's patch did not restore the file" >&2; exit 1; }
    printf '%-22s %10s %10s %10s %10s %10s %10s %10s %10s %7.3f %7.3f %s\n' "$name" "$full" "$zs" \
        "$xd" "$bs" "$ca" "$kc" "$kp" "$keel" "$(echo "$keel / $best" | bc -l)" \
        "$(echo "$keel / $full" | bc -l)" "$tr"
}
row silero_v5_v6 "$shared/vad/silero_vad_v5.onnx" "$shared/vad/silero_vad_v6.onnx"
row kws_last_layer "$d/last_v1.onnx" "$d/last_v2.onnx"
row kws_slight_f32 "$d/slight_v1.onnx" "$d/slight_v2.onnx"
row kws_slight_int8 "$d/int8_v1.onnx" "$d/int8_v2.onnx"
echo "   keel = min(k.patch, k.chunks); keel/best: to the best of zstd, xdelta3, bsdiff, casync"
echo "   (target: <= 1.05 everywhere, < 0.9 on silero; keel/full < 0.10 where little changed)"

# apply speed and memory, silero v5 -> v6
old=$shared/vad/silero_vad_v5.onnx p=$d/silero_v5_v6 n=20
echo "== delta: apply silero v5 -> v6, $n runs each; $(machine_load)"
t0=$(date +%s%N)
for _ in $(seq $n); do zstd -q -d -f --long=31 --patch-from="$old" "$p.zst" -o "$p.zout"; done
t1=$(date +%s%N)
for _ in $(seq $n); do "$bin/keel" delta --apply "$old" "$p.kpatch" -o "$p.out" >/dev/null; done
t2=$(date +%s%N)
zms=$(((t1 - t0) / n / 1000000)) kms=$(((t2 - t1) / n / 1000000))
printf 'commands: zstd -d --patch-from %d ms, keel delta --apply %d ms: speed ratio %.2f (target >= 0.8)\n' \
    "$zms" "$kms" "$(echo "($t1 - $t0) / ($t2 - $t1)" | bc -l)"
# in one process (no start-up): files (keel fsyncs twice) and memory to memory
"$d/delta_apply" "$old" "$p.kpatch" "$p.zst" "$p.out" "$n"
rss=$( { /usr/bin/time -v "$bin/keel" delta --apply "$old" "$p.kpatch" -o "$p.out" >/dev/null; } 2>&1 |
    awk -F': ' '/Maximum resident/ { print $2 }')
zrss=$( { /usr/bin/time -v zstd -q -d -f --long=31 --patch-from="$old" "$p.zst" -o "$p.zout"; } 2>&1 |
    awk -F': ' '/Maximum resident/ { print $2 }')
largest=$(( $(size "$old") > $(size "$shared/vad/silero_vad_v6.onnx") ? $(size "$old") : $(size "$shared/vad/silero_vad_v6.onnx") ))
printf 'peak RSS: keel %d KiB, zstd %d KiB; bound largest file + 64 MiB = %d KiB\n' "$rss" "$zrss" \
    $(((largest >> 10) + 65536))
