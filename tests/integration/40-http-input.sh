#!/usr/bin/env bash
# What the HTTP layer takes from clients and how it refuses it:
#  - error bodies in each API family's shape: the Open Inference Protocol's
#    {"error": "<message>"} on every /v2 error path (what KServe and Triton
#    clients read), keel's {"error": {"code", "message"}} on its own routes;
#  - an event the uplink could never send (a topic that is not valid UTF-8,
#    a control character, a non-character, a NUL) is refused before the 202,
#    and the client's bytes are escaped in messages and logs;
#  - a NUL in a JSON string ("a\u0000b") or a query value (%00) is refused,
#    not cut;
#  - --listen HOST:PORT and [V6]:PORT, with a clear error when two ports
#    disagree.
source "$(dirname "$0")/lib.sh"

mkdir -p "$state"
setup_trust
printf 'max_infer_body = 2K\nmax_body = 2K\n' >"$work/keeld.conf"
start_keeld --config "$work/keeld.conf" --log-level info
token=$(cat "$state/token")
auth=(-H "Authorization: Bearer $token")
install_example iris

# --- error shapes -------------------------------------------------------------------------
head -c 4096 /dev/zero | tr '\0' ' ' >"$work/big"
oip_error() { # RESPONSE STATUS CODE MESSAGE-PART WHAT: {"error": "...", "code": CODE}
    local b
    b=$(body_of "$1")
    expect_eq "$(status_of "$1")" "$2" "$5: status ($b)"
    expect_eq "$(jfield "$b" '.error | type')" string "$5: \"error\" is the message string ($b)"
    expect_has "$(jfield "$b" .error)" "$4" "$5: error"
    expect_eq "$(jfield "$b" .code)" "$3" "$5: code"
    expect_eq "$(grep -i '^Keel-Error-Code:' "$work/hdr" | tr -d '\r' | cut -d' ' -f2)" "$3" \
        "$5: Keel-Error-Code header"
}
keel_error() { # RESPONSE STATUS CODE MESSAGE-PART WHAT: {"error": {"code", "message"}}
    local b
    b=$(body_of "$1")
    expect_eq "$(status_of "$1")" "$2" "$5: status ($b)"
    expect_eq "$(jfield "$b" '.error | type')" object "$5: \"error\" is an object ($b)"
    expect_eq "$(jfield "$b" .error.code)" "$3" "$5: error.code"
    expect_has "$(jfield "$b" .error.message)" "$4" "$5: error.message"
    expect_eq "$(grep -i '^Keel-Error-Code:' "$work/hdr" | tr -d '\r' | cut -d' ' -f2)" "$3" \
        "$5: Keel-Error-Code header"
}
h() { http "$@" -D "$work/hdr"; }

oip_error "$(h GET /v2/nope)" 404 NOTFOUND "no such endpoint" "/v2: unknown route"
oip_error "$(h GET /v2/models/nope)" 404 NOTFOUND 'no model "nope"' "/v2: unknown model"
oip_error "$(h GET /v2/models/iris/versions/9.9.9/ready)" 404 NOTFOUND "not 9.9.9" "/v2: unknown version"
oip_error "$(h PUT /v2/models/iris/infer -d '{}')" 405 INVALID "method PUT" "/v2: wrong method"
oip_error "$(h DELETE /v2)" 405 INVALID "use GET, HEAD" "/v2 itself: wrong method"
oip_error "$(h POST /v2/models/iris/infer --data-binary "@$work/big")" 413 TOOBIG \
    "max_infer_body" "/v2: body over the limit"
oip_error "$(h POST /v2/models/iris/infer -H 'Content-Type: application/json' -d '{"inputs":')" \
    400 INVALID "malformed JSON" "/v2: malformed JSON"
oip_error "$(h POST /v2/models/iris/infer -H 'Content-Type: application/json' \
    -d '{"inputs":[{"name":"x\u0000y","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}')" \
    400 INVALID 'NUL character (\u0000' "/v2: NUL in a JSON string"
oip_error "$(h POST '/v2/models/iris/infer?tier=a%00b' -d '{}')" 400 INVALID 'holds a NUL' \
    "/v2: NUL in a query value"
oip_error "$(h POST /v2/models/iris/infer -H 'Content-Type: application/json' \
    -d '{"inputs":[{"name":"nope","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}')" \
    400 INVALID "nope" "/v2: unknown input"
# tritonclient reads response["error"] as the message: what its users see
msg=$("$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["error"])' \
    <<<"$(body_of "$(h GET /v2/models/nope)")")
expect_has "$msg" 'no model "nope" is served' "the message as a Triton client reads it"

keel_error "$(h GET /api/nope)" 404 NOTFOUND "no such endpoint" "/api: unknown route"
keel_error "$(h GET /v2x)" 404 NOTFOUND "no such endpoint" "/v2x is not /v2"
keel_error "$(h DELETE /api/packages)" 405 INVALID "method DELETE" "/api: wrong method"
keel_error "$(h POST /api/events "${auth[@]}" --data-binary "@$work/big")" 413 TOOBIG "max_body" \
    "/api: body over the limit"
keel_error "$(h POST /api/events)" 401 PERM "bearer token" "/api: no token"
keel_error "$(h POST /api/events "${auth[@]}" -d '{"topic":')" 400 INVALID "malformed JSON" \
    "/api: malformed JSON"
keel_error "$(h POST /api/packages/nope/rollback "${auth[@]}")" 404 NOTFOUND "nope" \
    "/api: unknown package"
keel_error "$(h DELETE /healthz)" 405 INVALID "use GET, HEAD" "/healthz: wrong method"

# --- events the uplink could never send: refused before the 202 ------------------------
depth() { jfield "$(curl -s "$url/api/queue")" .classes.normal.depth; }
d0=$(depth)
ev() { # BODY-FILE: POST it as a JSON event
    h POST /api/events "${auth[@]}" -H 'Content-Type: application/json' --data-binary "@$1"
}
printf '{"topic":"door/\xff\xfe","payload":1}' >"$work/e1"
keel_error "$(ev "$work/e1")" 400 INVALID 'byte 5 ("\xff\xfe") is not valid UTF-8' \
    "event topic that is not UTF-8"
expect_has "$(body_of "$(ev "$work/e1")")" 'topic \"door/\\xff\\xfe\"' "the topic escaped in the message"
printf '{"topic":"door/\xc0\xaf","payload":1}' >"$work/e2" # an overlong '/'
keel_error "$(ev "$work/e2")" 400 INVALID "not valid UTF-8" "event topic with an overlong form"
printf '{"topic":"door/\xed\xa0\x80","payload":1}' >"$work/e3" # a surrogate
keel_error "$(ev "$work/e3")" 400 INVALID "not valid UTF-8" "event topic with a surrogate"
printf '{"topic":"door/\xc2\x85x","payload":1}' >"$work/e4" # U+0085, a C1 control
keel_error "$(ev "$work/e4")" 400 INVALID "control character" "event topic with a C1 control"
printf '{"topic":"door/\xef\xbf\xbf","payload":1}' >"$work/e5" # U+FFFF
keel_error "$(ev "$work/e5")" 400 INVALID "non-character" "event topic with a non-character"
printf '{"topic":"a\\u0000b","payload":1}' >"$work/e6"
keel_error "$(ev "$work/e6")" 400 INVALID 'NUL character (\u0000' "event topic with an escaped NUL"
printf '{"topic":"a","payload":"x\\u0000y"}' >"$work/e7"
keel_error "$(ev "$work/e7")" 400 INVALID 'NUL character' "event payload string with a NUL"
printf '{"topic":"a/#","payload":1}' >"$work/e8"
keel_error "$(ev "$work/e8")" 400 INVALID "wildcard" "event topic with a wildcard"
keel_error "$(h POST '/api/events?topic=door%FF' "${auth[@]}" -d 'raw')" 400 INVALID \
    "not valid UTF-8" "raw event, topic not UTF-8 in the query"
keel_error "$(h POST '/api/events?topic=door%00x' "${auth[@]}" -d 'raw')" 400 INVALID \
    'query argument "topic" holds a NUL' "raw event, NUL in the query topic"
keel_error "$(h POST '/api/events?topic=door&idempotency_key=k%00x' "${auth[@]}" -d 'raw')" 400 \
    INVALID 'holds a NUL' "raw event, NUL in the idempotency key"
expect_eq "$(depth)" "$d0" "queue depth after refused events (none acknowledged)"
printf '{"topic":"caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x9a\xaa","payload":1}' >"$work/ok"
r=$(ev "$work/ok")
expect_eq "$(status_of "$r")" 202 "event with a UTF-8 topic: $(body_of "$r")"
r=$(h POST '/api/events?topic=caf%C3%A9' "${auth[@]}" -d 'raw')
expect_eq "$(status_of "$r")" 202 "raw event with a UTF-8 topic: $(body_of "$r")"
expect_eq "$(depth)" "$((d0 + 2))" "queue depth after two good events"

# client bytes never reach the log as they are: a path parameter must be
# printable ASCII (else no route matches), a method is escaped
keel_error "$(h POST "/api/packages/x%0aFORGED%20line%ff/activate")" 404 NOTFOUND \
    "no such endpoint" "a package name with a newline"
oip_error "$(h GET "/v2/models/caf%C3%A9/ready")" 404 NOTFOUND "no such endpoint" \
    "a model name that is not ASCII"
r=$(curl -s -D "$work/hdr" -w '\n%{http_code}' -X $'BAD\x01' "$url/healthz")
keel_error "$r" 405 INVALID 'method BAD\x01 is not allowed' "a method with a control character"
if grep -q '^FORGED' "$work/keeld.log"; then die "a client's newline reached the log as a line"; fi
if LC_ALL=C grep -q $'\xff' "$work/keeld.log"; then die "a client's raw 0xff byte reached the log"; fi
stop_keeld

# --- --listen HOST:PORT ------------------------------------------------------------------
serves() { # URL: keeld answers /healthz there within 15 s
    for _ in $(seq 300); do
        if curl -sfg "$1/healthz" >/dev/null 2>&1; then return 0; fi
        kill -0 "$keeld_pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
run_keeld() { # args: keeld in the background on $state
    "$KEELD" --state-dir "$state" --log-level info "$@" >>"$work/keeld.log" 2>&1 &
    keeld_pid=$!
}
p=$(free_port)
run_keeld --listen "127.0.0.1:$p"
serves "http://127.0.0.1:$p" || die "keeld --listen 127.0.0.1:$p does not serve there"
expect_has "$(cat "$work/keeld.log")" "listening on http://127.0.0.1:$p" "the address in the log"
stop_keeld
if "$PY" -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
    p=$(free_port)
    run_keeld --listen "[::1]:$p"
    serves "http://[::1]:$p" || die "keeld --listen [::1]:$p does not serve there"
    stop_keeld
else
    echo "note: no IPv6 loopback here; [::1]:PORT not tried"
fi
p=$(free_port)
run_keeld --listen "localhost:$p"
serves "http://127.0.0.1:$p" || die "keeld --listen localhost:$p does not serve on 127.0.0.1"
stop_keeld
# a port in the file's listen, another in --port: the flag wins
p=$(free_port)
printf 'listen = 127.0.0.1:%s\n' "$(free_port)" >"$work/listen.conf"
run_keeld --config "$work/listen.conf" --port "$p"
serves "http://127.0.0.1:$p" || die "--port does not override the port in the file's listen"
stop_keeld
# two ports in one layer: refused, saying so
rc=0
out=$("$KEELD" --state-dir "$state" --listen 127.0.0.1:18001 --port 18002 2>&1) || rc=$?
expect_eq "$rc" 2 "exit status with two ports in flags"
expect_has "$out" "says port 18001 but --port says 18002" "two ports in flags"
printf 'listen = 127.0.0.1:18001\nport = 18002\n' >"$work/conflict.conf"
rc=0
out=$("$KEELD" --state-dir "$state" --config "$work/conflict.conf" 2>&1) || rc=$?
[[ $rc != 0 ]] || die "keeld started with two ports in its config file"
expect_has "$out" "give the port once" "two ports in the file"
for bad in "127.0.0.1:0" "127.0.0.1:99999" ":8080" "[::1" "[::1]x"; do
    rc=0
    out=$("$KEELD" --state-dir "$state" --listen "$bad" 2>&1) || rc=$?
    expect_eq "$rc" 2 "--listen $bad: exit status"
    expect_has "$out" "keeld: --listen: \"$bad\" " "--listen $bad: message"
done
echo "ok"
