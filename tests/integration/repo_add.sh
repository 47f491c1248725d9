#!/usr/bin/env bash
# repo_add.sh REPO PKG.keel: lays out one package in a repository folder the
# way docs/update.md says (until `keel publish` does): keel.json and keel.sig
# under packages/NAME/VERSION/, every file under files/sha256/AB/HEX. Prints
# "NAME VERSION sha256:DIGEST". No index or timestamp (fetch tests and the
# download benchmark name the digest themselves).
set -euo pipefail
repo=$1 pkg=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-repo-add-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -xf "$pkg" -C "$tmp"
read -r name version < <(jq -r '"\(.name) \(.version)"' "$tmp/keel.json")
mkdir -p "$repo/packages/$name/$version"
cp "$tmp/keel.json" "$tmp/keel.sig" "$repo/packages/$name/$version/"
jq -r '.files[] | "\(.sha256) \(.path)"' "$tmp/keel.json" | while read -r hex path; do
    mkdir -p "$repo/files/sha256/${hex:0:2}"
    [[ -f $repo/files/sha256/${hex:0:2}/$hex ]] || mv "$tmp/$path" "$repo/files/sha256/${hex:0:2}/$hex"
done
echo "$name $version sha256:$(sha256sum "$tmp/keel.json" | cut -d' ' -f1)"
