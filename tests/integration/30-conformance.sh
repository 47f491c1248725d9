#!/usr/bin/env bash
# Tensor marshalling conformance of the Open Inference Protocol API: ONNX's
# own node tests (Debian's libonnx-testdata), listed in conformance-list.txt,
# each packed as a keel package, signed, installed and activated; then one
# keeld serves them all and every test_data_set goes through
# /v2/models/NAME/infer as JSON tensors and as binary tensor data, the
# outputs compared with output_*.pb (conformance.py).
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$root/.deps/onnxruntime/lib/libonnxruntime.so.1}
# ONNX Runtime's own leaks are not keel's (tests/lsan.supp)
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp}
PY=${KEEL_CONF_PYTHON:-/usr/bin/python3}
testdata=${ONNX_TESTDATA:-/usr/share/libonnx-testdata/data/node}
list=${KEEL_CONF_LIST:-$here/conformance-list.txt}

# Missing prerequisites skip it (lib.sh's skip: 77, a failure when CI is set):
# it needs ONNX Runtime, python3-onnx and libonnx-testdata, which a minimal
# build host may lack.
[[ -f $KEEL_ORT_LIB ]] || skip "no ONNX Runtime at $KEEL_ORT_LIB"
[[ -d $testdata ]] || skip "no ONNX node tests at $testdata (apt install libonnx-testdata)"
"$PY" -c 'import numpy, onnx' 2>/dev/null || skip "$PY lacks numpy or onnx (apt install python3-onnx)"

t0=$SECONDS
setup_trust
"$PY" "$here/conformance.py" prepare "$list" "$work/src" >"$work/pkgs" || die "prepare failed"
n=0
while read -r name dir; do
    "$KEEL" pack "$dir" -o "$work/$name.keel" --key "$work/k.key" >/dev/null 2>"$work/pack.err" ||
        die "pack $name: $(cat "$work/pack.err")"
    "$KEEL" install "$work/$name.keel" --activate --offline --state-dir "$state" \
        >/dev/null 2>"$work/install.err" || die "install $name: $(cat "$work/install.err")"
    n=$((n + 1))
done <"$work/pkgs"
echo "conformance: $n packages packed and installed in $((SECONDS - t0)) s"
start_keeld
"$PY" "$here/conformance.py" run "$list" "$url" || die "conformance: some tests failed (above)"
stop_keeld
echo "conformance: ok ($((SECONDS - t0)) s)"
