#!/usr/bin/env bash
# keel and keeld find ONNX Runtime wherever they are started from, without
# KEEL_ORT_LIB: next to the binary (the build tree's .deps here; PREFIX/lib
# once installed, tests/install/run-anywhere.sh). Started from another
# directory, `keel infer --offline` answers from the ONNX tier (not
# silently from the rules tier), `keel selftest` passes, and keeld serves
# the ONNX tier. A binary that cannot find the runtime says so once, with
# where it looked, not once per validation row.
source "$(dirname "$0")/lib.sh"
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
unset KEEL_ORT_LIB # lib.sh sets it; this test is about doing without
ex=$keel_src/examples
req='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'

elsewhere=$work/elsewhere
mkdir -p "$elsewhere"
cd "$elsewhere" # nothing of the source tree is reachable from here by a relative path
[[ ! -e .deps ]] || die "the test directory has a .deps"
setup_trust
"$KEEL" pack "$ex/iris" -o "$work/iris.keel" --key "$work/k.key" >/dev/null
out=$("$KEEL" install "$work/iris.keel" --activate --offline --state-dir "$state" 2>"$work/err") ||
    die "offline install from $elsewhere: $(cat "$work/err")"
expect_has "$out" "active" "offline install"
grep -q "ONNX Runtime" "$work/err" && die "offline install complained about ONNX Runtime: $(cat "$work/err")"

# keel infer --offline: the ONNX tier answers
out=$("$KEEL" infer iris --offline --state-dir "$state" --input "$req" 2>"$work/err") ||
    die "keel infer --offline: $(cat "$work/err")"
expect_eq "$(jfield "$out" .parameters.backend)" onnx "keel infer --offline backend ($out)"
expect_eq "$(jfield "$out" .parameters.tier)" primary "keel infer --offline tier"
expect_eq "$(jfield "$out" .parameters.degraded)" false "keel infer --offline degraded"
expect_eq "$(jfield "$out" '.result[0].label')" virginica "keel infer --offline label"

# keel selftest: every tier passes, and it is quiet about it
out=$("$KEEL" selftest iris --state-dir "$state" 2>"$work/err") ||
    die "keel selftest from $elsewhere: $(head -c 2000 "$work/err")"
expect_eq "$(jfield "$out" .passed)" true "selftest passed"
expect_eq "$(jfield "$out" -c '[.tiers[].passed]')" '[true,true,true]' "selftest per tier"
grep -v -e '^$' -e 'Suppressions used' -e '^ *count' -e '^ *[0-9]* *[0-9]* libonnxruntime' \
    -e '^---' "$work/err" | grep -q . && die "selftest wrote to stderr: $(head -c 2000 "$work/err")"

# keeld started from elsewhere serves the ONNX tier
start_keeld
token=$(cat "$state/token")
r=$(infer iris "$req")
expect_eq "$(status_of "$r")" 200 "keeld infer ($(body_of "$r"))"
expect_eq "$(jfield "$(body_of "$r")" .parameters.backend)" onnx "keeld backend"
expect_eq "$(jfield "$(body_of "$r")" .parameters.tier)" primary "keeld tier"
grep -q "ONNX Runtime not found" "$work/keeld.log" && die "keeld did not find ONNX Runtime"
stop_keeld

# a keel copied away from any runtime: one clear error saying where it
# looked, then one line per ONNX tier, not one per validation row
mkdir -p "$work/lonely"
cp "$KEEL" "$work/lonely/keel"
if "$work/lonely/keel" selftest iris --state-dir "$state" >"$work/out" 2>"$work/err"; then
    die "selftest passed without ONNX Runtime: $(cat "$work/out")"
fi
n=$(grep -c "ONNX Runtime not found; looked at $work/lonely/libonnxruntime.so.1" "$work/err" || true)
expect_eq "$n" 1 "'not found' errors (stderr: $(head -c 1500 "$work/err"))"
expect_has "$(cat "$work/err")" "KEEL_ORT_LIB" "the not-found error names the override"
lines=$(grep -c -e ' warn ' -e ' error ' "$work/err" || true)
((lines <= 4)) || die "$lines log lines for one missing runtime: $(head -c 1500 "$work/err")"
expect_eq "$(jfield "$(cat "$work/out")" -c '[.tiers[].passed]')" '[false,false,true]' \
    "selftest without the runtime: only the rules tier passes"
out=$("$work/lonely/keel" infer iris --offline --state-dir "$state" --input "$req" 2>"$work/err")
expect_eq "$(jfield "$out" .parameters.degraded)" true "infer without the runtime is degraded"
expect_has "$(cat "$work/err")" "ONNX Runtime not found" "infer without the runtime says so"
echo "ok: keel and keeld find ONNX Runtime from any working directory"
