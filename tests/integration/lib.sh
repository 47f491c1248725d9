# Shared helpers for integration tests: a temp dir, a free port, keeld
# start/stop, and assertions that print expected vs actual.
set -euo pipefail
: "${KEELD:?set KEELD to the keeld binary}" "${KEEL:?set KEEL to the keel binary}"
work=$(mktemp -d /tmp/keel-it-XXXXXX)
state=$work/state
keeld_pid=""
nginx_pids=() # every nginx start_nginx started (stopped by cleanup)
mosq_pids=()  # the broker and subscriber of start_mosquitto_sub
cleanup() {
    if [[ -n $keeld_pid ]]; then kill -9 "$keeld_pid" 2>/dev/null || true; fi
    local p
    for p in "${mosq_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${nginx_pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# skip REASON: exit 77, which CTest shows as Skipped (SKIP_RETURN_CODE). CI
# has every dependency and ../shared, so there a skip is a failure.
skip() {
    if [[ -n ${CI:-} ]]; then
        echo "FAIL: would skip, but CI is set (CI=$CI: every dependency must be there): $*" >&2
        exit 1
    fi
    echo "SKIPPED: $*"
    exit 77
}

die() {
    echo "FAIL: $*" >&2
    if [[ -f $work/keeld.log ]]; then tail -30 "$work/keeld.log" >&2; fi
    exit 1
}
expect_eq() { [[ $1 == "$2" ]] || die "${3:-value}: expected '$2', got '$1'"; }
expect_has() { [[ $1 == *"$2"* ]] || die "${3:-output}: expected to contain '$2', got '$1'"; }

free_port() { # below the kernel's ephemeral range, so no client socket holds it
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 100); do
        p=$((10000 + RANDOM % (lo - 10000)))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port"
}
port=$(free_port)
url=http://127.0.0.1:$port

start_keeld() { # extra keeld args; a port another test took meanwhile is replaced
    local try
    for try in 1 2 3; do
        "$KEELD" --state-dir "$state" --port "$port" "$@" >>"$work/keeld.log" 2>&1 &
        keeld_pid=$!
        for _ in $(seq 300); do
            if curl -sf "$url/healthz" >/dev/null 2>&1; then return; fi
            kill -0 "$keeld_pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$keeld_pid" 2>/dev/null; then die "keeld did not answer /healthz"; fi
        wait "$keeld_pid" 2>/dev/null || true
        keeld_pid=""
        grep -q "cannot listen on 127.0.0.1:$port" "$work/keeld.log" || die "keeld exited during start-up"
        port=$(free_port)
        url=http://127.0.0.1:$port
    done
    die "keeld could not find a free port"
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

# --- inference helpers (20-infer.sh, 21-accuracy.sh) ---------------------------
# The source tree (examples/, .deps/), the ONNX Runtime keeld and ort_ref load
# (unless KEEL_ORT_LIB is set already), Debian's python3 with numpy, and the
# OIP client. ort_ref is built next to keeld (build/TYPE/tests/tools).
keel_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export KEEL_ORT_LIB=${KEEL_ORT_LIB:-$keel_src/.deps/onnxruntime/lib/libonnxruntime.so.1}
# ONNX Runtime leaks 14 bytes once per process (tests/lsan.supp)
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$keel_src/tests/lsan.supp}
# The reference models and data (../shared beside the source tree); KEEL_SHARED
# overrides it (KEEL_SHARED=/nonexistent: run as on a machine without it).
keel_shared=${KEEL_SHARED:-$keel_src/../shared}
need_shared() { [[ -d $keel_shared/models && -d $keel_shared/data ]] || skip "no reference models and data at $keel_shared"; }
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
ort_ref=$(dirname "$KEELD")/tests/tools/ort_ref

infer_client() { "$PY" "$keel_src/tests/integration/infer_client.py" "$url" "$@"; }

install_example() { # NAME: pack examples/NAME, install over HTTP (self-test) and activate
    local token r
    token=$(cat "$state/token")
    "$KEEL" pack "$keel_src/examples/$1" -o "$work/$1.keel" --key "$work/k.key" >/dev/null
    r=$(http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" \
        --data-binary "@$work/$1.keel")
    expect_eq "$(status_of "$r")" 201 "install of examples/$1 ($(body_of "$r"))"
    expect_has "$(body_of "$r")" '"activated":true' "install of examples/$1"
}

jfield() { # JSON [jq options] FILTER: jq -r, or a marker when JSON is not JSON
    local j=$1
    shift
    jq -r "$@" <<<"$j" 2>/dev/null || echo "<not JSON: ${j:0:200}>"
}

infer() { # MODEL JSON [curl args]: "BODY\nSTATUS"; response headers in $work/hdr
    local m=$1 body=$2
    shift 2
    curl -s -D "$work/hdr" -w '\n%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "$body" "$@" "$url/v2/models/$m/infer" || true # no answer: status 000
}
header_of() { # NAME: a header of the last infer() response
    grep -i "^$1:" "$work/hdr" | head -n1 | cut -d: -f2- | tr -d ' \r'
}

# An error answer, keeld still up. Either family's shape: /v2 answers
# {"error":"MESSAGE","code":"CODE"} (the Open Inference Protocol's), keel's
# own routes {"error":{"code":"CODE","message":"MESSAGE"}} (45-api.sh pins
# which family answers which).
expect_error() { # RESPONSE STATUS CODE MESSAGE-PART WHAT
    local b
    b=$(body_of "$1")
    expect_eq "$(status_of "$1")" "$2" "$5: status ($b)"
    expect_eq "$(jfield "$b" 'if (.error|type) == "string" then .code else .error.code end')" \
        "$3" "$5: error code"
    expect_has "$(jfield "$b" 'if (.error|type) == "string" then .error else .error.message end')" \
        "$4" "$5: error message"
    kill -0 "$keeld_pid" 2>/dev/null || die "$5: keeld died"
    expect_eq "$(curl -s -o /dev/null -w '%{http_code}' "$url/healthz")" 200 "$5: healthz after it"
}

# --- nginx serving a folder (update tests: a repository on loopback) ----------
# start_nginx ROOT_DIR: Debian's nginx, run as the test user with its own
# config, pid, logs and temp paths under $work/nginx-N, listening on
# 127.0.0.1:free_port, serving ROOT_DIR as static files (byte ranges, keep-
# alive). Sets nginx_url, nginx_pid, nginx_dir (this instance's folder) and
# nginx_log (its access log, nginx's default "combined" format: $7 the
# path, $9 the status, $10 the body bytes sent). Several may run at once;
# each call sets the variables to the newest. stop_nginx [DIR] /
# restart_nginx [DIR] (default: the newest) cut and restore the link on the
# same port.
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
start_nginx() {
    [[ -x $nginx_bin ]] || skip "nginx is not installed (apt-get install nginx-light)"
    local root d p
    root=$(cd "$1" && pwd) || die "start_nginx: no folder $1"
    d=$work/nginx-${#nginx_pids[@]}
    mkdir -p "$d/tmp"
    p=$(free_port)
    local user="" # as root, nginx's worker would run as nobody, who cannot enter $work
    ((EUID == 0)) && user="user root;"
    cat >"$d/nginx.conf" <<EOC
$user
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 256; }
http {
    access_log $d/access.log;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 10000;
    server {
        listen 127.0.0.1:$p;
        root $root;
        location / { }
    }
}
EOC
    echo "$p" >"$d/port"
    nginx_dir=$d
    _nginx_run "$d"
}
_nginx_run() { # DIR: starts the instance configured there; sets nginx_url, nginx_pid
    local d=$1
    "$nginx_bin" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >>"$d/error.log" 2>&1 &
    nginx_pid=$!
    nginx_pids+=("$nginx_pid")
    echo "$nginx_pid" >"$d/run.pid"
    nginx_url=http://127.0.0.1:$(cat "$d/port")
    nginx_log=$d/access.log
    for _ in $(seq 200); do
        if curl -s -o /dev/null "$nginx_url/"; then return; fi
        kill -0 "$nginx_pid" 2>/dev/null || { cat "$d/error.log" >&2; die "nginx exited during start-up"; }
        sleep 0.05
    done
    die "nginx did not answer on $nginx_url"
}
stop_nginx() { # [DIR]: stops that instance (default: the newest)
    local d=${1:-$nginx_dir} p
    p=$(cat "$d/run.pid")
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
restart_nginx() { # [DIR]: starts a stopped instance again on its port
    local d=${1:-$nginx_dir}
    nginx_dir=$d
    _nginx_run "$d"
}

# start_mosquitto_sub FORMAT: a mosquitto broker on 127.0.0.1:$bport and a
# mosquitto_sub of keel/# (QoS 1) printing -F FORMAT lines into
# $work/sub.txt, subscribed before this returns; both stopped by cleanup.
start_mosquitto_sub() {
    bport=$(free_port)
    cat >"$work/mosq.conf" <<C
listener $bport 127.0.0.1
allow_anonymous true
persistence false
log_type all
C
    mosquitto -c "$work/mosq.conf" >>"$work/mosq.log" 2>&1 &
    mosq_pids+=($!)
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$bport) 2>/dev/null && break; sleep 0.1; done
    mosquitto_sub -h 127.0.0.1 -p "$bport" -q 1 -t 'keel/#' -F "$1" >"$work/sub.txt" 2>"$work/sub.err" &
    mosq_pids+=($!)
    for _ in $(seq 100); do grep -q "Sending SUBACK" "$work/mosq.log" && break; sleep 0.1; done
    grep -q "Sending SUBACK" "$work/mosq.log" || die "the subscriber did not subscribe"
}

# --- update repositories (58-update, 59-update-crash, 60-peer-update) -----------
setup_repo_trust() { # TRUST_DIR: keys k (packages), ix (index), ts (timestamp) in $work; a root trusting them
    local k
    for k in k ix ts; do "$KEEL" keygen -o "$work/$k" >/dev/null; done
    "$KEEL" trust init "$1" --key "$work/k.pub" --index-key "$work/ix.pub" \
        --timestamp-key "$work/ts.pub" >/dev/null
}
publish() { # PKG [keel publish args]: into $work/repo, signed with the index and timestamp keys
    local p=$1
    shift
    mkdir -p "$work/repo"
    "$KEEL" publish "$p" --repo "$work/repo" --key "$work/ix.key" --timestamp-key "$work/ts.key" \
        "$@" >>"$work/publish.log" 2>&1 || die "keel publish $p $*: $(tail -3 "$work/publish.log")"
}
publish_iris() { # VERSION: iris with a 3 MiB file of its own, packed and published on stable
    local src=$work/src-$1
    mkdir -p "$src"
    cp -r "$keel_src/examples/iris/." "$src/"
    head -c $((3 << 20)) /dev/urandom >"$src/extra.bin"
    jq --arg v "$1" '.version = $v' "$keel_src/examples/iris/keel.json" >"$src/keel.json"
    "$KEEL" pack "$src" -o "$work/iris-$1.keel" --key "$work/k.key" >/dev/null
    publish "$work/iris-$1.keel" --channel stable
}
