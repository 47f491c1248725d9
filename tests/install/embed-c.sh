#!/usr/bin/env bash
# The public inference API as an application sees it: `cmake --install` of
# this build into a temp prefix, examples/embed-c compiled against the
# INSTALLED headers and libkeel.so only, the iris example package packed,
# signed and installed into a temp state dir with the installed keel CLI,
# then one inference whose label is known (6.7,3.0,5.2,2.3 -> virginica).
#
# Environment (set by CTest): BUILD_DIR, SRC, CC, SAN_FLAGS (the build's
# sanitizer flags: a sanitized libkeel.so needs a sanitized program).
set -euo pipefail
: "${BUILD_DIR:?}" "${SRC:?}"
work=$(mktemp -d /tmp/keel-install-XXXXXX)
trap 'rm -rf "$work"' EXIT
die() { echo "FAIL: $*" >&2; exit 1; }

root=$work/root prefix=/opt/keel
DESTDIR=$root cmake --install "$BUILD_DIR" --prefix "$prefix" >"$work/install.log" 2>&1 ||
    die "cmake --install failed: $(tail -5 "$work/install.log")"
p=$root$prefix
[[ -f $p/include/keel/infer.h ]] || die "include/keel/infer.h was not installed"
lib=$(dirname "$(find "$p" -name 'libkeel.so' | head -1)")
[[ -n $lib && -e $lib/libkeel.so ]] || die "libkeel.so was not installed"
# the public header must not need anything from lib/ or third parties
grep -n '#include' "$p"/include/keel/infer.h | grep -v '"keel/' && die "infer.h includes a non-keel header"

# shellcheck disable=SC2086 # SAN_FLAGS is a list of flags
"${CC:-cc}" -std=c11 -Wall -Wextra -Werror ${SAN_FLAGS:-} -I"$p/include" \
    -o "$work/embed-c" "$SRC/examples/embed-c/main.c" -L"$lib" -lkeel ||
    die "the example does not build against the installed headers and library"

# libkeel.so finds the libonnxruntime.so.1 installed beside it (no KEEL_ORT_LIB)
unset KEEL_ORT_LIB
export LSAN_OPTIONS=suppressions=$SRC/tests/lsan.supp
keel=$p/bin/keel
state=$work/state
"$keel" keygen -o "$work/dev" >/dev/null
"$keel" trust init "$state/trust" --key "$work/dev.pub" >/dev/null
"$keel" pack "$SRC/examples/iris" -o "$work/iris.keel" --key "$work/dev.key" >/dev/null
"$keel" install "$work/iris.keel" --activate --offline --state-dir "$state" >/dev/null

out=$(cd "$work" && LD_LIBRARY_PATH=$lib "$work/embed-c" "$state" iris 6.7 3.0 5.2 2.3) ||
    die "embed-c failed: $out"
echo "$out"
[[ $out == *'"label":"virginica"'* ]] || die "expected label virginica, got: $out"
[[ $out == *"served by tier primary (onnx)"* ]] || die "expected the primary tier, got: $out"
# an unknown package is a clear error, not a crash
if err=$(cd "$work" && LD_LIBRARY_PATH=$lib "$work/embed-c" "$state" tulip 2>&1); then
    die "an unknown package succeeded: $err"
fi
[[ $err == *'no inference package "tulip"'* ]] || die "unknown package message: $err"
echo "ok: embed-c against the installed libkeel"
