#!/usr/bin/env bash
# keel setup: installs what the build and the tests need, idempotently.
#
#   scripts/setup.sh          Debian packages + npm-provided native parts
#
# Fast when already done: it asks dpkg what is missing and calls apt-get only
# for that; npm downloads are cached under ${XDG_CACHE_HOME:-~/.cache}/keel,
# keyed by version, and copied into the ignored .deps/ folder of this clone.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/keel
deps=$top/.deps

# Debian bookworm packages. Versions are whatever bookworm ships; the list is
# the pin. Later issues append here.
pkgs=(
    build-essential cmake pkg-config clang libclang-rt-14-dev
    libssl-dev libsqlite3-dev libzstd-dev libmicrohttpd-dev libcurl4-openssl-dev
    libmosquitto-dev mosquitto mosquitto-clients libcjson-dev libarchive-dev libcmocka-dev
    libpng-dev libjpeg62-turbo-dev prometheus libonnx-testdata python3-onnx python3-numpy
    curl openssl sqlite3 procps xxd jq wrk
    nginx-light xdelta3 bsdiff casync
)

missing=()
for p in "${pkgs[@]}"; do
    s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $s == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# npm-provided native parts, pinned by version and by SHA-256 of the tarball.
case $(uname -m) in
    x86_64) ortarch=x64 ;;
    aarch64 | arm64) ortarch=arm64 ;;
    *) ortarch="" ;;
esac

fetch_npm() { # name version sha256 -> path of the cached tarball
    local name=$1 ver=$2 sum=$3 dir=$cache/$1-$2 tgz
    tgz=$dir/${name##*/}-$ver.tgz
    if [[ ! -f $tgz ]] || ! echo "$sum  $tgz" | sha256sum -c --status; then
        mkdir -p "$dir"
        echo "setup: downloading $name@$ver from npm" >&2
        (cd "$dir" && rm -f ./*.tgz && npm pack --silent "$name@$ver" >/dev/null)
        if ! echo "$sum  $tgz" | sha256sum -c --status; then
            echo "setup: $tgz does not match its pinned SHA-256 $sum; refusing it" >&2
            exit 1
        fi
    fi
    echo "$tgz"
}

ort_ver=1.30.0
ort_sum=6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75
if [[ -n $ortarch ]] && command -v npm >/dev/null; then
    ort_lib=$deps/onnxruntime-$ort_ver/lib/libonnxruntime.so.1
    if [[ ! -f $ort_lib ]]; then
        ort_cached=$cache/onnxruntime-node-$ort_ver/$ortarch/libonnxruntime.so.1
        if [[ ! -f $ort_cached ]]; then
            tgz=$(fetch_npm onnxruntime-node $ort_ver $ort_sum)
            mkdir -p "$(dirname "$ort_cached")"
            tar -xzf "$tgz" -O "package/bin/napi-v6/linux/$ortarch/libonnxruntime.so.1" >"$ort_cached.tmp"
            mv "$ort_cached.tmp" "$ort_cached"
        fi
        mkdir -p "$(dirname "$ort_lib")"
        cp "$ort_cached" "$ort_lib.tmp" && mv "$ort_lib.tmp" "$ort_lib"
        ln -sfn "onnxruntime-$ort_ver" "$deps/onnxruntime"
    fi
else
    echo "setup: no ONNX Runtime for $(uname -m) or no npm; the onnx backend will be unavailable" >&2
fi
echo "setup: ok"
