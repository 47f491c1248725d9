#!/usr/bin/env bash
# make run: a signing key and trust root local to this clone (.run/), the
# bundled iris example packed, signed and installed, then keeld in the
# foreground on 127.0.0.1:${KEEL_PORT:-8480}. Ctrl-C stops it.
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
"$keel" pack "$top/examples/iris" -o "$run/iris-1.0.0.keel" --key "$run/keys/dev.key" >/dev/null
"$keel" install "$run/iris-1.0.0.keel" --activate --offline --state-dir "$state"
echo "run: try  curl -s localhost:${KEEL_PORT:-8480}/readyz  or  $keel status --state-dir $state"
exec "$bin/keeld" --state-dir "$state" --port "${KEEL_PORT:-8480}"
