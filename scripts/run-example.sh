#!/usr/bin/env bash
# make run: a signing key and trust root local to this clone (.run/), the
# bundled examples (iris, mnist, vad, machine-temp) packed, signed, validated
# and installed, .run/env for other terminals (keel on PATH, KEEL_URL,
# KEEL_STATE_DIR), then keeld in the foreground on 127.0.0.1:${KEEL_PORT:-8480}.
# Ctrl-C stops it.
#
# Environment: KEEL_PORT (default 8480); KEEL_BIN_DIR (the build whose keel
# and keeld run, default build/release); KEEL_RUN_DIR (default .run). The
# README walkthrough test (tests/integration/51-readme.sh) runs this script
# with a debug build, a temporary run dir and a free port.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${KEEL_BIN_DIR:-$top/build/release}" && pwd)
run=${KEEL_RUN_DIR:-$top/.run}
port=${KEEL_PORT:-8480}
[[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || {
    echo "run: KEEL_PORT=$port is not a port number (1..65535)" >&2
    exit 2
}
mkdir -p "$run"
run=$(cd "$run" && pwd)
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
installed=$("$keel" packages --offline --state-dir "$state" 2>/dev/null || true)
for ex in iris mnist vad machine-temp; do
    # a package already installed stays as it is: a version you installed or
    # rolled back to since is yours, not this script's
    if [[ $installed == *"\"name\":\"$ex\""* ]]; then
        continue
    fi
    "$keel" pack "$top/examples/$ex" -o "$run/$ex.keel" --key "$run/keys/dev.key" >/dev/null
    # activation runs each package's validation set through every tier first
    "$keel" install "$run/$ex.keel" --activate --offline --state-dir "$state"
done

# keeld's settings: updates from the local repository folder .run/repo
# (README, "Updates"), checked when asked (`keel update check|apply`)
mkdir -p "$run/repo"
if [[ ! -f $run/keeld.conf ]]; then
    cat >"$run/keeld.conf" <<EOF
# written by make run (scripts/run-example.sh); packaging/keeld.conf lists every setting
update_repos = file://$run/repo
update_interval = 0
EOF
fi

# for other terminals: `source .run/env`
cat >"$run/env" <<EOF
# written by make run (scripts/run-example.sh): keel and keeld of this build
# on PATH, the keel CLI pointed at this keeld and its store
export PATH="$bin:\$PATH"
export KEEL_URL="http://127.0.0.1:$port"
export KEEL_STATE_DIR="$state"
EOF
cat <<EOF
run: serving iris, mnist, vad and machine-temp on http://127.0.0.1:$port. In another terminal:
  source ${run#"$PWD"/}/env     # keel on PATH; KEEL_URL and KEEL_STATE_DIR point here
  curl -s \$KEEL_URL/v2/models/mnist/infer -H 'Content-Type: image/png' \\
       --data-binary @$top/examples/mnist/validation/images/000.png
  keel status                   curl -s \$KEEL_URL/metrics
EOF
exec "$bin/keeld" --config "$run/keeld.conf" --state-dir "$state" --port "$port"
