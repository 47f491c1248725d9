#!/usr/bin/env bash
# make run: a signing key and trust root local to this clone (.run/), the
# bundled examples (iris, mnist, vad, machine-temp) packed, signed, validated
# and installed, then keeld in the foreground on 127.0.0.1:${KEEL_PORT:-8480}.
# Ctrl-C stops it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/build/release
run=$top/.run
state=$run/state
keel=$bin/keel

mkdir -p "$run/keys"
if [[ ! -f $run/keys/dev.key ]]; then
    "$keel" keygen -o "$run/keys/dev" >/dev/null
    echo "run: made a development signing key in $run/keys/ (not for production)"
fi
if [[ ! -f $state/trust/root.json ]]; then
    "$keel" trust init "$state/trust" --key "$run/keys/dev.pub" >/dev/null
fi
export SOURCE_DATE_EPOCH=1767225600 # deterministic package bytes
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$top/.deps/onnxruntime/lib/libonnxruntime.so.1}
for ex in iris mnist vad machine-temp; do
    "$keel" pack "$top/examples/$ex" -o "$run/$ex.keel" --key "$run/keys/dev.key" >/dev/null
    # activation runs each package's validation set through every tier first
    "$keel" install "$run/$ex.keel" --activate --offline --state-dir "$state"
done
port=${KEEL_PORT:-8480}
cat <<EOF
run: serving iris, mnist, vad and machine-temp. Try:
  curl -s localhost:$port/v2/models/mnist/infer -H 'Content-Type: image/png' \\
       --data-binary @$top/examples/mnist/validation/images/000.png
  curl -s localhost:$port/v2/models/iris/infer -d '{"inputs":[{"name":"float_input",
       "shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
  $keel status --state-dir $state        curl -s localhost:$port/metrics
EOF
exec "$bin/keeld" --state-dir "$state" --port "${KEEL_PORT:-8480}"
