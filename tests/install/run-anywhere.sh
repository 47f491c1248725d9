#!/usr/bin/env bash
# An installed keel needs nothing from the source tree: `cmake --install` of
# this build into a temp DESTDIR, then the INSTALLED keel and keeld, started
# from an unrelated directory with no KEEL_ORT_LIB, find the ONNX Runtime
# that the install put in PREFIX/lib: an offline inference, a self-test and
# keeld's answer all come from the ONNX tier.
#
# Environment (set by CTest): BUILD_DIR, SRC.
set -euo pipefail
: "${BUILD_DIR:?}" "${SRC:?}"
work=$(mktemp -d /tmp/keel-install-XXXXXX)
keeld_pid=""
cleanup() {
    if [[ -n $keeld_pid ]]; then kill -9 "$keeld_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
die() {
    echo "FAIL: $*" >&2
    if [[ -f $work/keeld.log ]]; then tail -20 "$work/keeld.log" >&2; fi
    exit 1
}
unset KEEL_ORT_LIB
export LSAN_OPTIONS=suppressions=$SRC/tests/lsan.supp # ONNX Runtime's own 14 bytes

root=$work/root prefix=/opt/keel
DESTDIR=$root cmake --install "$BUILD_DIR" --prefix "$prefix" >"$work/install.log" 2>&1 ||
    die "cmake --install failed: $(tail -5 "$work/install.log")"
p=$root$prefix
ort=$(find "$p" -name libonnxruntime.so.1 | head -1)
[[ -n $ort ]] || die "cmake --install did not install libonnxruntime.so.1 (files: $(cd "$p" && find . -type f | head -20))"
[[ $(dirname "$ort") == "$(dirname "$(find "$p" -name 'libkeel.so' | head -1)")" ]] ||
    die "libonnxruntime.so.1 ($ort) is not beside libkeel.so"
keel=$p/bin/keel keeld=$p/bin/keeld
[[ -x $keel && -x $keeld ]] || die "keel and keeld were not installed in $p/bin"

mkdir -p "$work/elsewhere"
cd "$work/elsewhere"
state=$work/state
req='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'
"$keel" keygen -o "$work/dev" >/dev/null
"$keel" trust init "$state/trust" --key "$work/dev.pub" >/dev/null
"$keel" pack "$SRC/examples/iris" -o "$work/iris.keel" --key "$work/dev.key" >/dev/null
"$keel" install "$work/iris.keel" --activate --offline --state-dir "$state" >/dev/null 2>"$work/err" ||
    die "installed keel: offline install: $(cat "$work/err")"

out=$("$keel" infer iris --offline --state-dir "$state" --input "$req" 2>"$work/err") ||
    die "installed keel infer --offline: $(cat "$work/err")"
[[ $(jq -r .parameters.backend <<<"$out") == onnx ]] ||
    die "installed keel infer --offline was not served by onnx: $out $(cat "$work/err")"
out=$("$keel" selftest iris --state-dir "$state" 2>"$work/err") ||
    die "installed keel selftest: $(head -c 1500 "$work/err")"
[[ $(jq -c '[.tiers[].passed]' <<<"$out") == '[true,true,true]' ]] || die "selftest: $out"

for try in 1 2 3; do # a port another test took meanwhile is replaced
    port=$((20000 + RANDOM % 10000))
    "$keeld" --state-dir "$state" --port "$port" >"$work/keeld.log" 2>&1 &
    keeld_pid=$!
    for _ in $(seq 300); do
        curl -sf "localhost:$port/healthz" >/dev/null 2>&1 && break 2
        kill -0 "$keeld_pid" 2>/dev/null || break
        sleep 0.05
    done
    wait "$keeld_pid" 2>/dev/null || true
    keeld_pid=""
    grep -q "cannot listen" "$work/keeld.log" || die "installed keeld did not start"
done
[[ -n $keeld_pid ]] || die "installed keeld found no free port"
out=$(curl -s "localhost:$port/v2/models/iris/infer" -d "$req")
[[ $(jq -r .parameters.backend <<<"$out") == onnx ]] ||
    die "installed keeld was not served by onnx: $out"
kill -TERM "$keeld_pid"
wait "$keeld_pid" || die "installed keeld exit status $?"
keeld_pid=""
echo "ok: installed keel and keeld find their ONNX Runtime from any directory"
