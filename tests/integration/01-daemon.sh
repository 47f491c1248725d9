#!/usr/bin/env bash
# keeld end to end: health, readiness with reasons, auth, install/activate/
# rollback over HTTP and the CLI, limits, unknown routes, SIGHUP, SIGTERM.
source "$(dirname "$0")/lib.sh"
setup_trust
start_keeld

r=$(http GET /healthz); expect_eq "$(status_of "$r")" 200 "healthz"
r=$(http GET /readyz); expect_eq "$(status_of "$r")" 503 "readyz on an empty store"
expect_has "$(body_of "$r")" "no package is installed" "readyz reason"
token=$(cat "$state/token")
expect_eq "$(stat -c %a "$state/token")" 600 "token file mode"

p1=$(make_pkg demo 1.0.0)
p2=$(make_pkg demo 1.1.0)
# auth: no token, wrong token
r=$(http POST /api/packages --data-binary "@$p1"); expect_eq "$(status_of "$r")" 401 "install without token"
expect_has "$(body_of "$r")" '"code":"PERM"' "401 body"
hdr=$(curl -s -o /dev/null -D - -X POST "$url/api/verify")
expect_has "$hdr" "WWW-Authenticate: Bearer" "401 headers"
expect_has "$hdr" "Content-Type: application/json" "401 headers"
expect_has "$hdr" "Cache-Control: no-store" "401 headers"
r=$(http POST /api/packages -H "Authorization: Bearer $(printf '0%.0s' {1..64})" --data-binary "@$p1")
expect_eq "$(status_of "$r")" 401 "install with a wrong token"
# install staged, then activate
r=$(http POST /api/packages -H "Authorization: Bearer $token" --data-binary "@$p1")
expect_eq "$(status_of "$r")" 201 "install"
expect_has "$(body_of "$r")" '"activated":false'
r=$(http GET /readyz); expect_eq "$(status_of "$r")" 503 "readyz with only a staged package"
r=$(http POST /api/packages/demo/activate -H "Authorization: Bearer $token")
expect_eq "$(status_of "$r")" 200 "activate staged"
r=$(http GET /readyz); expect_eq "$(status_of "$r")" 200 "readyz after activate"
# the CLI client: install + activate, status shows it
out=$("$KEEL" install "$p2" --activate --url "$url" --state-dir "$state")
expect_has "$out" '"version":"1.1.0"'
out=$("$KEEL" status --url "$url")
expect_has "$out" "demo: serving 1.1.0 (active)"
expect_has "$out" "previous   1.0.0"
out=$("$KEEL" rollback demo --url "$url" --state-dir "$state")
expect_has "$out" '"serving":"1.0.0"'
r=$(http POST /api/packages/demo/activate -H "Authorization: Bearer $token" -d '{"version":"1.1.0"}')
expect_eq "$(status_of "$r")" 200 "activate a named version"
# refusals with their own status and message
p0=$(make_pkg demo 0.5.0)
r=$(http POST /api/packages -H "Authorization: Bearer $token" --data-binary "@$p0")
expect_eq "$(status_of "$r")" 422 "downgrade"; expect_has "$(body_of "$r")" '"code":"DOWNGRADE"'
printf 'garbage' >"$work/junk.keel"
r=$(http POST /api/packages -H "Authorization: Bearer $token" --data-binary "@$work/junk.keel")
expect_eq "$(status_of "$r")" 422 "not a tar"; expect_has "$(body_of "$r")" "truncated or not a valid tar"
r=$(http POST /api/packages/demo/activate -H "Authorization: Bearer $token" -d '{"version":')
expect_eq "$(status_of "$r")" 400 "malformed JSON body"; expect_has "$(body_of "$r")" "malformed JSON"
r=$(http POST /api/packages/nope/rollback -H "Authorization: Bearer $token")
expect_eq "$(status_of "$r")" 404 "rollback of an unknown package"
r=$(http GET /api/nothing); expect_eq "$(status_of "$r")" 404 "unknown route"
r=$(http DELETE /healthz); expect_eq "$(status_of "$r")" 405 "wrong method"
expect_has "$(body_of "$r")" '"error":' "405 body"
expect_has "$(curl -s -o /dev/null -D - -X DELETE "$url/healthz")" "Allow: GET, HEAD" "Allow of /healthz"
expect_has "$(curl -s -o /dev/null -D - -X PUT "$url/api/packages")" "Allow: GET, HEAD, POST" "Allow of /api/packages"
expect_has "$(curl -s -o /dev/null -D - "$url/api/verify")" "Allow: POST" "Allow of /api/verify"
expect_has "$(body_of "$(http GET /api/nothing)")" '"code":"NOTFOUND"' "404 body"
# a NAME with a slash is escaped by the CLI, never routed elsewhere
if out=$("$KEEL" activate 'demo/rollback' --url "$url" --state-dir "$state" 2>&1); then die "activate of 'demo/rollback' succeeded: $out"; fi
expect_has "$out" "HTTP 404" "escaped package name"
out=$("$KEEL" status --url "$url" --json)
expect_has "$out" '"ready":true'
out=$("$KEEL" packages --url "$url")
expect_has "$out" '"version":"1.0.0"'
# gc through keeld (a second process may not collect while keeld has the store)
out=$("$KEEL" gc --url "$url" --state-dir "$state")
expect_has "$out" '"freed_bytes":'
if "$KEEL" gc --offline --state-dir "$state" 2>"$work/gc.err"; then die "offline gc ran while keeld had the store open"; fi
expect_has "$(cat "$work/gc.err")" "in use"
stop_keeld

# limits from the config file: a small max_package and max_body
cat >"$work/keeld.conf" <<CONF
max_package = 64K
max_body = 1K
log_level = info
CONF
start_keeld --config "$work/keeld.conf"
big=$(make_pkg demo 2.0.0 200000)
r=$(http POST /api/packages -H "Authorization: Bearer $token" --data-binary "@$big")
expect_eq "$(status_of "$r")" 413 "package over max_package"
r=$(http POST /api/packages/demo/activate -H "Authorization: Bearer $token" --data-binary "@$big")
expect_eq "$(status_of "$r")" 413 "JSON body over max_body"
# SIGHUP: raise the limit without a restart; requests keep working
sed -i 's/max_package = 64K/max_package = 1M/' "$work/keeld.conf"
kill -HUP "$keeld_pid"
for _ in $(seq 50); do grep -q "reloaded" "$work/keeld.log" && break; sleep 0.1; done
r=$(http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" --data-binary "@$big")
expect_eq "$(status_of "$r")" 201 "install after SIGHUP raised the limit"
# a broken config on SIGHUP keeps the old one
echo "bogus_key = 1" >>"$work/keeld.conf"
kill -HUP "$keeld_pid"
for _ in $(seq 50); do grep -q "keeping the old config" "$work/keeld.log" && break; sleep 0.1; done
grep -q 'unknown setting "bogus_key"' "$work/keeld.log" || die "bad config not reported"
r=$(http GET /healthz); expect_eq "$(status_of "$r")" 200 "healthz after a bad reload"
stop_keeld

# unix socket only; a path that is not a socket is refused, never removed
sock=$work/keeld.sock
echo precious >"$sock"
if "$KEELD" --state-dir "$state" --port 0 --unix-socket "$sock" >>"$work/keeld.log" 2>&1; then die "keeld started over a regular file"; fi
expect_eq "$(cat "$sock")" precious "regular file at the socket path"
grep -q "is not a socket" "$work/keeld.log" || die "refusal of a non-socket path not logged"
rm -f "$sock"
# a stale socket (its keeld died) is replaced
python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$sock"
"$KEELD" --state-dir "$state" --port 0 --unix-socket "$sock" >>"$work/keeld.log" 2>&1 &
keeld_pid=$!
for _ in $(seq 200); do
    curl -sf --unix-socket "$sock" http://localhost/healthz >/dev/null 2>&1 && break
    kill -0 "$keeld_pid" 2>/dev/null || die "keeld exited instead of replacing a stale socket"
    sleep 0.05
done
r=$(curl -s --unix-socket "$sock" http://localhost/readyz) || die "no answer over the unix socket"
expect_has "$r" '"ready":true' "readyz over the unix socket"
out=$("$KEEL" status --unix-socket "$sock")
expect_has "$out" "demo: serving 2.0.0 (active)"
stop_keeld
[[ ! -e $sock ]] || die "socket file left after stop"
echo "daemon: ok"
