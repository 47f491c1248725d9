#!/usr/bin/env bash
# Copies openWakeWord's mel spectrogram and embedding models into
# examples/kws/model/ from the shared model directory (../shared/models/onnx/kws
# beside the repository, or SHARED=DIR). Packages hold only regular files, so `keel
# pack` needs copies here, not links. They are not kept in git.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
here=$top/examples/kws
shared=${SHARED:-$top/../shared}
src=$shared/models/onnx/kws
for f in melspectrogram.onnx embedding_model.onnx; do
    [[ -f $src/$f ]] || { echo "fetch-models.sh: $src/$f not found (set SHARED=DIR)" >&2; exit 1; }
    cp "$src/$f" "$here/model/$f"
done
echo "examples/kws/model ready: keel pack examples/kws -o kws-1.0.0.keel --key KEY"
