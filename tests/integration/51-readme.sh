#!/usr/bin/env bash
# The README's walkthrough, run as a new user would run it: keeld started
# the way `make run` starts it (scripts/run-example.sh, with this build, a
# temporary .run and a free port), then every ```sh block of README.md
# marked `<!-- readme-test: run -->`, in order, in one shell, from a
# directory that looks like the top of a clone. Every ```sh block must be
# marked run or skip (skip says why), so a new block cannot escape the test.
# A command fails the test when it exits non-zero, and so does an HTTP
# error (curl gets --fail-with-body); a streaming curl (-N) runs 2 s.
# Then: the answer the README shows has the fields the real answer has, and
# the walkthrough left the device where the README says (iris 1.2.0 from the
# repository, then 1.3.0 from the USB bundle, active).
source "$(dirname "$0")/lib.sh"
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
unset KEEL_ORT_LIB KEEL_URL KEEL_STATE_DIR KEEL_TOKEN # a new user has none of these

# --- a clone's top: the source tree's entries, and a .run of its own --------------------
clone=$work/clone
mkdir -p "$clone"
for e in "$keel_src"/* "$keel_src"/.[!.]*; do
    case ${e##*/} in .run | build | build-* | .git) continue ;; esac
    ln -s "$e" "$clone/${e##*/}"
done
cd "$clone"

# --- keeld as `make run` starts it ----------------------------------------------------------
for try in 1 2 3; do
    KEEL_BIN_DIR=$(dirname "$KEEL") KEEL_RUN_DIR=$clone/.run KEEL_PORT=$port \
        bash "$keel_src/scripts/run-example.sh" >>"$work/keeld.log" 2>&1 &
    keeld_pid=$! # the script execs keeld
    for _ in $(seq 3000); do # the examples' self-tests run first (ASan: slow)
        if curl -sf "$url/healthz" >/dev/null 2>&1; then break 2; fi
        kill -0 "$keeld_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$keeld_pid" 2>/dev/null && die "make run's keeld did not answer /healthz"
    wait "$keeld_pid" 2>/dev/null || true
    keeld_pid=""
    grep -q "cannot listen on 127.0.0.1:$port" "$work/keeld.log" || die "scripts/run-example.sh failed"
    port=$(free_port)
    url=http://127.0.0.1:$port
done
[[ -n $keeld_pid ]] || die "make run's keeld found no free port"
[[ -f .run/env ]] || die "make run wrote no .run/env"
grep -q "ONNX Runtime not found" "$work/keeld.log" && die "make run's keel did not find ONNX Runtime"

# --- the walkthrough ----------------------------------------------------------------------
"$PY" - "$keel_src/README.md" >"$work/walkthrough.sh" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
print('''set -eo pipefail
PS4='+ README: ' # bash does not take PS4 from the environment as root
curl() { # HTTP errors fail; a stream (-N) is read for 2 s
    local a
    for a; do
        if [[ $a == -*N* && $a != --* ]]; then
            command curl --max-time 2 "$@" && return 0
            local rc=$?
            [[ $rc == 28 ]] && echo && return 0
            return $rc
        fi
    done
    command curl --fail-with-body -w '\\n' "$@"
}''')
runs = 0
for m in re.finditer(r"```sh\n(.*?)```", text, re.S):
    before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
    line = text[: m.start()].count("\n") + 1
    mark = re.match(r"<!-- readme-test: (run|skip \(.+\)) -->$", before)
    if not mark:
        sys.exit(f"README.md:{line}: a ```sh block without <!-- readme-test: run --> or "
                 f"<!-- readme-test: skip (why) --> before it")
    if mark.group(1) == "run":
        runs += 1
        print(f"set +x; echo; echo '### README.md:{line}'; set -x")
        print(m.group(1))
if runs < 4:
    sys.exit(f"only {runs} README blocks are marked to run (the walkthrough has 4)")
EOF
rc=0
bash "$work/walkthrough.sh" >"$work/out" 2>"$work/trace" || rc=$?
if ((rc)); then
    echo "--- output" >&2; tail -20 "$work/out" >&2
    echo "--- trace" >&2; tail -25 "$work/trace" >&2
    die "the README walkthrough failed (exit $rc) at: $(grep '^+ README: ' "$work/trace" | tail -1)"
fi

# --- what it printed, and where it left the device --------------------------------------------
out=$(cat "$work/out")
expect_has "$out" '{"ready":true,"reason":""}' "readyz in the walkthrough"
answer=$(grep -m1 '^{"model_name":"iris"' "$work/out") || die "no iris answer in: $out"
shown=$("$PY" - "$keel_src/README.md" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
for m in re.finditer(r"```json\n(.*?)```", text, re.S):
    if '"model_name":"iris"' in m.group(1).replace(" ", ""):
        print(m.group(1).replace("\n", " "))
        break
EOF
)
[[ -n $shown ]] || die "README shows no iris answer"
for f in keys '.parameters | keys' '.result[0] | keys' '[.outputs[].name]'; do
    expect_eq "$(jfield "$shown" -c "$f")" "$(jfield "$answer" -c "$f")" "README's answer vs the real one: $f"
done
expect_eq "$(jfield "$answer" .parameters.tier)" primary "the walkthrough's iris answer tier"
expect_eq "$(jfield "$answer" '.result[0].label')" virginica "the walkthrough's iris answer"
p=$(curl -s "$url/api/packages" | jq -c '[.packages[] | select(.name=="iris") | {version, slots}]')
expect_has "$p" '{"version":"1.3.0","slots":["active"' "iris after the walkthrough's update and import ($p)"
expect_has "$p" '{"version":"1.2.0","slots":["known_good","previous"]}' "iris 1.2.0 (from the repository) after the import ($p)"
expect_has "$out" '"durable":true' "the walkthrough's event"

# a second make run on the same .run keeps what the walkthrough did
kill -TERM "$keeld_pid"
wait "$keeld_pid" || die "make run's keeld exit status $?"
keeld_pid=""
KEEL_BIN_DIR=$(dirname "$KEEL") KEEL_RUN_DIR=$clone/.run KEEL_PORT=$port \
    bash "$keel_src/scripts/run-example.sh" >"$work/keeld.log" 2>&1 &
keeld_pid=$!
for _ in $(seq 1200); do
    curl -sf "$url/healthz" >/dev/null 2>&1 && break
    kill -0 "$keeld_pid" 2>/dev/null || die "a second make run failed"
    sleep 0.1
done
expect_eq "$(curl -s "$url/readyz" | jq .ready)" true "ready after a second make run"
echo "ok: the README walkthrough runs, in order, against make run's keeld"
