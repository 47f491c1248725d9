#!/usr/bin/env bash
# keel benchmarks for the foundation issue; each compares against a peer or a
# baseline in the same run and prints ratios. Uses the release build.
#   1. verification throughput of a 1 GiB file vs `openssl dgst -sha256`
#   2. keeld start-up to ready with a verified 1 GiB package vs an empty store
#   3. keeld idle RSS, empty and with the 1 GiB package installed
# Work files live in bench/out/ (ignored); the 1 GiB file is reused.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/build/release
out=$top/bench/out
py=/usr/bin/python3
mkdir -p "$out"
[[ -x $bin/keeld ]] || { echo "bench: run 'make release' first" >&2; exit 1; }

big=$out/model.bin
if [[ ! -f $big || $(stat -c %s "$big") != 1073741824 ]]; then
    echo "bench: generating a 1 GiB file"
    head -c 1073741824 /dev/urandom >"$big"
fi

best_of() { # n cmd... -> best wall seconds
    local n=$1 best=999999 t
    shift
    for _ in $(seq "$n"); do
        t=$($py -c 'import subprocess,sys,time; t=time.perf_counter(); subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL); print(time.perf_counter()-t)' "$@")
        best=$($py -c "print(min($best,$t))")
    done
    echo "$best"
}

echo "== 1. verification throughput (1 GiB, page cache warm, best of 3)"
cat "$big" >/dev/null
t_ossl=$(best_of 3 openssl dgst -sha256 "$big")
t_keel=$(best_of 3 "$bin/keel" hash "$big")
[[ $(openssl dgst -sha256 -r "$big" | cut -d' ' -f1) == $("$bin/keel" hash "$big" | cut -d' ' -f1) ]] ||
    { echo "bench: keel and openssl disagree on the hash" >&2; exit 1; }
# the whole package path: tar reading + hashing + signature check
src=$out/src
mkdir -p "$src"
ln -f "$big" "$src/model.bin"
printf '{"format":1,"name":"big","version":"1.0.0","tiers":[{"name":"primary","backend":"onnx","model":"model.bin"}]}' >"$src/keel.json"
[[ -f $out/k.key ]] || "$bin/keel" keygen -o "$out/k" >/dev/null
rm -rf "$out/trust" && "$bin/keel" trust init "$out/trust" --key "$out/k.pub" >/dev/null
if [[ ! -f $out/big.keel ]]; then "$bin/keel" pack "$src" -o "$out/big.keel" --key "$out/k.key" >/dev/null; fi
cat "$out/big.keel" >/dev/null
t_pkg=$(best_of 3 "$bin/keel" verify "$out/big.keel" --trust "$out/trust")
$py - "$t_ossl" "$t_keel" "$t_pkg" <<'PY'
import sys
o, k, p = map(float, sys.argv[1:])
mb = 1024.0
print(f"openssl dgst -sha256      {mb/o:8.0f} MiB/s")
print(f"keel hash (file)          {mb/k:8.0f} MiB/s   ratio {o/k:.2f}x  (target >= 0.90x)")
print(f"keel verify (package)     {mb/p:8.0f} MiB/s   ratio {o/p:.2f}x  (tar read + hash + Ed25519)")
PY

echo "== 2. keeld start-up to ready (median of 5)"
state=$out/state
if [[ ! -f $state/keel.db ]]; then
    rm -rf "$state" && mkdir -p "$state"
    cp -r "$out/trust" "$state/trust"
    "$bin/keel" install "$out/big.keel" --activate --offline --state-dir "$state" >/dev/null
fi
empty=$out/empty && rm -rf "$empty" && mkdir -p "$empty"
$py - "$bin/keeld" "$state" "$empty" <<'PY'
import http.client, socket, statistics, subprocess, sys, time
keeld, full, empty = sys.argv[1:]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def time_to(state, path, want):
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([keeld, "--state-dir", state, "--port", str(port), "--log-level", "error"])
    try:
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", path); r = c.getresponse(); r.read()
                if r.status == want:
                    return (time.perf_counter() - t0) * 1000
            except OSError:
                pass
            time.sleep(0.0005)
    finally:
        p.terminate(); p.wait()
e = statistics.median(time_to(empty, "/healthz", 200) for _ in range(5))
f = statistics.median(time_to(full, "/readyz", 200) for _ in range(5))
print(f"empty store, first /healthz answer     {e:7.1f} ms")
print(f"1 GiB package, first /readyz 200        {f:7.1f} ms")
print(f"difference                              {f-e:7.1f} ms   (target <= 50 ms)")
PY

echo "== 3. keeld idle RSS"
$py - "$bin/keeld" "$state" "$empty" <<'PY'
import socket, subprocess, sys, time
keeld, full, empty = sys.argv[1:]
for name, state in (("empty store", empty), ("1 GiB package installed", full)):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    p = subprocess.Popen([keeld, "--state-dir", state, "--port", str(port), "--log-level", "error"])
    time.sleep(2)
    rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]
    p.terminate(); p.wait()
    print(f"{name:28s} {int(rss)/1024:6.1f} MiB   (target <= 10 MB)")
PY
