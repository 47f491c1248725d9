#!/usr/bin/env bash
# Download of a 1 GiB package from nginx on loopback: keel's fetch
# (lib/update/fetch.c through tests/tools/keel_fetch: chunk-by-chunk SHA-256
# as bytes arrive, the whole-file SHA-256, fsync, then keel_store_install_dir
# hashing the file again before it enters the blob store) into a fresh state
# dir, against `curl -o` of the same bytes from the same server. Best of 3
# each; page cache warm (nginx serves from it in both cases).
#   target: keel >= 0.8x curl (issue 11)
# Work files in bench/out/dl/ (made once): the package, the repository
# folder (files/sha256/AB/HEX, packages/NAME/VERSION/), nginx's config.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
ensure_big
runs=${1:-3}
dl=$out/dl
mkdir -p "$dl"
[[ -f $out/k.key ]] || "$bin/keel" keygen -o "$out/k" >/dev/null
[[ -f $out/trust/root.json ]] || "$bin/keel" trust init "$out/trust" --key "$out/k.pub" >/dev/null

fetch=$bin/bench/keel_fetch
if [[ ! -x $fetch || $fetch -ot $bin/libkeel_static.a ]]; then
    libs="$(pkg-config --libs openssl sqlite3 libmicrohttpd libcjson libpng16 libzstd) -ljpeg"
    # shellcheck disable=SC2086
    gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I"$top/include" -I"$top/lib" \
        -I"$(pkg-config --variable=includedir libcurl)" "$top/tests/tools/keel_fetch.c" \
        -o "$fetch" "$bin/libkeel_static.a" $libs -lpthread -ldl -lm
fi

if [[ ! -f $dl/digest || $dl/digest -ot $big ]]; then
    rm -rf "$dl/src" "$dl/repo" && mkdir -p "$dl/src"
    ln -f "$big" "$dl/src/model.bin"
    printf '{"format":1,"name":"dl","version":"1.0.0","task":"test"}' >"$dl/src/keel.json"
    "$bin/keel" pack "$dl/src" -o "$dl/dl.keel" --key "$out/k.key" >/dev/null
    read -r _ _ d < <(bash "$top/tests/integration/repo_add.sh" "$dl/repo" "$dl/dl.keel")
    rm -f "$dl/dl.keel"
    echo "$d" >"$dl/digest"
fi
digest=$(cat "$dl/digest")
hex=$(sha256sum "$big" | cut -d' ' -f1)

port=$(free_port)
mkdir -p "$dl/nginx/tmp"
cat >"$dl/nginx/nginx.conf" <<EOC
$( ((EUID == 0)) && echo "user root;")
worker_processes 1;
daemon off;
pid $dl/nginx/nginx.pid;
error_log $dl/nginx/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $dl/nginx/tmp/body;
    proxy_temp_path $dl/nginx/tmp/proxy;
    fastcgi_temp_path $dl/nginx/tmp/fastcgi;
    uwsgi_temp_path $dl/nginx/tmp/uwsgi;
    scgi_temp_path $dl/nginx/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    server { listen 127.0.0.1:$port; root $dl/repo; location / { } }
}
EOC
nginx -p "$dl/nginx" -c "$dl/nginx/nginx.conf" -e "$dl/nginx/error.log" &
ngx=$!
trap 'kill "$ngx" 2>/dev/null || true; rm -rf "$dl/state" "$dl/curl.bin"' EXIT
repo=http://127.0.0.1:$port
wait_for 10 nginx curl -sf -o /dev/null "$repo/packages/dl/1.0.0/keel.json"
file_url=$repo/files/sha256/${hex:0:2}/$hex

now() { date +%s.%N; }
best() { sort -g | head -n1; }
curl_t=$(for _ in $(seq "$runs"); do
    rm -f "$dl/curl.bin"
    t0=$(now)
    curl -s -o "$dl/curl.bin" "$file_url"
    t1=$(now)
    echo "$t1 - $t0" | bc
done | best)
keel_run() { # extra args: one fetch into a fresh state dir; prints seconds
    rm -rf "$dl/state" && mkdir -p "$dl/state" && cp -r "$out/trust" "$dl/state/trust"
    local t0 t1
    t0=$(now)
    "$fetch" --state-dir "$dl/state" --trust "$dl/state/trust" --repo "$repo" --name dl \
        --version 1.0.0 --digest "$digest" "$@" >"$dl/fetch.json" 2>"$dl/fetch.err" ||
        { cat "$dl/fetch.err" >&2; exit 1; }
    t1=$(now)
    echo "$t1 - $t0" | bc
}
keel_t=$(for _ in $(seq "$runs"); do keel_run --install; done | best)
fetch_t=$(for _ in $(seq "$runs"); do keel_run; done | best)
echo "== download of a 1 GiB package from nginx on loopback (best of $runs); $(machine_load)"
awk -v c="$curl_t" -v k="$keel_t" -v f="$fetch_t" 'BEGIN {
    mb = 1073741824 / 1e6
    printf "curl -o                                    %7.2f s  %7.1f MB/s\n", c, mb / c
    printf "keel fetch + install_dir (all verified)    %7.2f s  %7.1f MB/s  %.2fx curl (target >= 0.8x)\n", k, mb / k, c / k
    printf "keel fetch alone (chunks + file hashed)    %7.2f s  %7.1f MB/s  %.2fx curl\n", f, mb / f, c / f
}'
