#!/usr/bin/env bash
# Accuracy through the HTTP API equals raw ONNX Runtime (tests/tools/ort_ref)
# on the full reference data in ../shared: MNIST t10k (9891/10000, binary
# tensors, a sample also as PNG bodies), iris (random forest 149/150 on the
# primary tier, logistic regression on the secondary) and Silero VAD v6 (and
# the v4 fallback) streamed through one session over silero_test.wav, frame
# for frame (v6: 1452/1875 frames with p > 0.5). Skips (77) without ../shared
# (or KEEL_SHARED); fails instead when CI is set.
source "$(dirname "$0")/lib.sh"
# ONNX Runtime's own leaks at exit are not keel's
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$keel_src/tests/lsan.supp}
# a command that fails outside the checks (curl without an answer) says where
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
need_shared
shared=$keel_shared/data
for f in mnist/t10k-images-idx3-ubyte.gz mnist/t10k-labels-idx1-ubyte.gz sklearn/iris.csv \
    audio/silero_test.wav; do
    [[ -f $shared/$f ]] || die "missing $shared/$f"
done
[[ -x $ort_ref ]] || die "ort_ref not built at $ort_ref"
ex=$keel_src/examples
raw() { # ort_ref ARGS...: its stdout; fails the test when it fails
    "$ort_ref" "$@" 2>"$work/ort_ref.err" || die "ort_ref $*: $(cat "$work/ort_ref.err")"
}
setup_trust
start_keeld
for m in iris mnist vad; do install_example "$m"; done

# MNIST: all 10000 test images as binary FP32 tensors (the first 300 also as PNGs)
ref=$(raw mnist "$ex/mnist/model/mnist.onnx" "$shared/mnist/t10k-images-idx3-ubyte.gz" \
    "$shared/mnist/t10k-labels-idx1-ubyte.gz" | tail -n1)
expect_eq "$ref" 9891/10000 "raw ORT on MNIST t10k"
t0=$SECONDS
got=$(infer_client mnist-accuracy "$shared/mnist/t10k-images-idx3-ubyte.gz" \
    "$shared/mnist/t10k-labels-idx1-ubyte.gz" 300) || die "MNIST through the API failed"
expect_eq "$got" "$ref" "MNIST t10k through the API"
echo "mnist: $got through the API in $((SECONDS - t0)) s (raw ORT $ref)"

# iris: each row alone and as one batch, per tier, against the same model in raw ORT
for tier_model in primary:rf_iris secondary:logreg_iris; do
    tier=${tier_model%%:*}
    ref=$(raw iris "$ex/iris/model/${tier_model#*:}.onnx" "$shared/sklearn/iris.csv" | tail -n1)
    got=$(infer_client iris-accuracy "$shared/sklearn/iris.csv" "$tier") ||
        die "iris through the API ($tier) failed"
    expect_eq "$got" "$ref" "iris $tier (${tier_model#*:}) through the API"
    echo "iris $tier: $got (raw ORT $ref)"
done
expect_eq "$(raw iris "$ex/iris/model/rf_iris.onnx" "$shared/sklearn/iris.csv" | tail -n1)" 149/150 \
    "raw ORT random forest on iris"

# VAD: silero_test.wav streamed through one session; the same frames flagged, the same
# probabilities (ort_ref prints 6 decimals)
wav=$shared/audio/silero_test.wav
export KEEL_LATE_FILE=$work/vad-late
for tier_model in primary:silero_vad_v6 secondary:silero_vad_v4_legacy; do
    tier=${tier_model%%:*}
    model=$ex/vad/model/${tier_model#*:}.onnx
    raw vad "$model" "$wav" >"$work/ref-$tier.txt"
    raw vad "$model" "$wav" --probs >"$work/ref-$tier.probs"
    t0=$SECONDS
    infer_client vad-stream "$wav" "$tier" "wav-$tier" >"$work/got-$tier.txt" ||
        die "VAD stream on $tier failed"
    cmp -s "$work/got-$tier.txt" "$work/ref-$tier.txt" ||
        die "VAD $tier: flagged frames differ from raw ORT: $(diff "$work/ref-$tier.txt" "$work/got-$tier.txt" | head -20)"
    infer_client vad-stream "$wav" "$tier" "wav-$tier-probs" --probs >"$work/got-$tier.probs" ||
        die "VAD stream on $tier failed"
    paste -d' ' "$work/got-$tier.probs" "$work/ref-$tier.probs" | awk -v t="$tier" '
        NF == 4 { d = $2 - $4; if (d < 0) d = -d; if ($1 != $3 || d > 1e-5) { print "VAD " t ": frame " $1 ": keel " $2 ", ORT " $4; bad = 1 } }
        NF != 4 && NF != 2 { print "VAD " t ": bad line " $0; bad = 1 }
        END { exit bad }' || die "VAD $tier: probabilities differ from raw ORT"
    echo "vad $tier: $(tail -n1 "$work/got-$tier.txt") frames flagged, as raw ORT ($((SECONDS - t0)) s)"
done
expect_eq "$(tail -n1 "$work/got-primary.txt")" 1452/1875 "Silero v6 speech frames on silero_test.wav"

s=$(curl -s "$url/api/status" | jq -c .inference)
# VAD frames stopped at their 30 ms deadline and sent again (infer_client.py)
late=$(awk '{ n += $1 } END { print n + 0 }' "$KEEL_LATE_FILE" 2>/dev/null || echo 0)
((late == 0)) || echo "vad: $late frames stopped at their deadline and were sent again"
for m in iris mnist vad; do
    want=0
    [[ $m == vad ]] && want=$late
    expect_eq "$(jfield "$s" "[.\"$m\".tiers[].failed] | add")" "$want" "$m tier failures"
    expect_eq "$(jfield "$s" ".\"$m\".all_tiers_failed")" "$want" "$m all_tiers_failed"
done
expect_eq "$(jfield "$s" '.mnist.tiers[0].served')" 10300 "mnist requests served"
stop_keeld
grep -q "AddressSanitizer\|runtime error" "$work/keeld.log" && die "sanitizer report in the keeld log"
echo "accuracy: ok"
