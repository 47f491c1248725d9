# Shared helpers for integration tests: a temp dir, a free port, keeld
# start/stop, and assertions that print expected vs actual.
set -euo pipefail
: "${KEELD:?set KEELD to the keeld binary}" "${KEEL:?set KEEL to the keel binary}"
work=$(mktemp -d /tmp/keel-it-XXXXXX)
state=$work/state
keeld_pid=""
cleanup() {
    if [[ -n $keeld_pid ]]; then kill -9 "$keeld_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

die() {
    echo "FAIL: $*" >&2
    if [[ -f $work/keeld.log ]]; then tail -30 "$work/keeld.log" >&2; fi
    exit 1
}
expect_eq() { [[ $1 == "$2" ]] || die "${3:-value}: expected '$2', got '$1'"; }
expect_has() { [[ $1 == *"$2"* ]] || die "${3:-output}: expected to contain '$2', got '$1'"; }

free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port"
}
port=$(free_port)
url=http://127.0.0.1:$port

start_keeld() { # extra keeld args
    "$KEELD" --state-dir "$state" --port "$port" "$@" >>"$work/keeld.log" 2>&1 &
    keeld_pid=$!
    for _ in $(seq 300); do
        if curl -sf "$url/healthz" >/dev/null 2>&1; then return; fi
        kill -0 "$keeld_pid" 2>/dev/null || die "keeld exited during start-up"
        sleep 0.05
    done
    die "keeld did not answer /healthz"
}

stop_keeld() { # sends SIGTERM, expects exit 0
    kill -TERM "$keeld_pid"
    local rc=0
    wait "$keeld_pid" || rc=$?
    keeld_pid=""
    expect_eq "$rc" 0 "keeld exit status after SIGTERM"
}

# code BODYVAR: curl returning "STATUS BODY"
http() { # method path [curl args...]
    local m=$1 p=$2
    shift 2
    curl -s -X "$m" -w '\n%{http_code}' "$@" "$url$p"
}
status_of() { tail -n1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }

# A signing key, a trust root for the state dir, and a package maker.
setup_trust() {
    "$KEEL" keygen -o "$work/k" >/dev/null
    "$KEEL" trust init "$state/trust" --key "$work/k.pub" >/dev/null
}
make_pkg() { # name version [model bytes] -> path
    local src=$work/src-$1-$2
    mkdir -p "$src"
    head -c "${3:-100000}" /dev/urandom >"$src/model.onnx"
    printf '{"format":1,"name":"%s","version":"%s","task":"test"}' "$1" "$2" >"$src/keel.json"
    "$KEEL" pack "$src" -o "$work/$1-$2.keel" --key "$work/k.key" >/dev/null
    rm -rf "$src"
    echo "$work/$1-$2.keel"
}
