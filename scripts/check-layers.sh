#!/usr/bin/env bash
# check-layers.sh - fails when a lower module includes a higher one.
#
#   core <- obs <- crypto <- pkg <- store <- {infer, queue} <- {sync, update} <- runtime <- http <- daemon
#
# A module may include its own headers, lower modules' headers, and the
# public headers (include/keel/*.h) of lower or equal-or-lower modules.
# Modules on one level (infer, queue) may not include each other: what one
# needs of the other arrives as a callback or an event on the runtime's bus.
# The umbrella keel/keel.h is for applications, never for lib/.
# Run by `make test` (CTest: check/layers). Usage: scripts/check-layers.sh [ROOT]
set -euo pipefail
shopt -s nullglob
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"

level() { # module -> level, or empty
    case $1 in
    core) echo 0 ;; obs) echo 1 ;; crypto) echo 2 ;; pkg) echo 3 ;; store) echo 4 ;;
    infer | queue) echo 5 ;; sync | update) echo 6 ;; runtime) echo 7 ;; http) echo 8 ;;
    daemon | cli) echo 9 ;; *) echo "" ;;
    esac
}
public_module() { # include/keel/NAME.h -> the module that implements it
    case $1 in
    common | error | log | config | layout) echo core ;;
    crypto | trust) echo crypto ;;
    pkg) echo pkg ;; store) echo store ;; queue) echo queue ;; infer) echo infer ;;
    keel) echo umbrella ;;
    *) echo "" ;;
    esac
}

bad=0
check_file() { # file module
    local f=$1 mod=$2 lv inc target tl
    lv=$(level "$mod")
    while IFS= read -r inc; do
        case $inc in
        keel/*.h)
            target=$(public_module "$(basename "$inc" .h)")
            if [[ $target == umbrella ]]; then
                if [[ $mod != daemon && $mod != cli ]]; then
                    echo "$f: includes the umbrella <keel/keel.h>; include the headers it needs" >&2
                    bad=1
                fi
                continue
            fi
            [[ -n $target ]] || { echo "$f: unknown public header $inc (add it to scripts/check-layers.sh)" >&2; bad=1; continue; }
            ;;
        */*.h) target=${inc%%/*} ;;
        *) continue ;;
        esac
        tl=$(level "$target")
        [[ -n $tl ]] || continue # not one of ours (cjson/cJSON.h, ...)
        [[ $target == "$mod" ]] && continue
        if ((tl > lv)) || { ((tl == lv)) && [[ $target != "$mod" ]]; }; then
            echo "$f: module $mod (level $lv) includes $inc of $target (level $tl)" >&2
            bad=1
        fi
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
}

for f in lib/*/*.c lib/*/*.h; do
    check_file "$f" "$(basename "$(dirname "$f")")"
done
for f in include/keel/*.h; do
    m=$(public_module "$(basename "$f" .h)")
    [[ $m == umbrella ]] && continue
    check_file "$f" "$m"
done
for f in daemon/*.c; do check_file "$f" daemon; done
# The CLI is a client: of keeld over HTTP, and of libkeel. Offline it may
# use library internals that have no public API yet (the OIP codec, the
# self-test, the envelope decoder), never the runtime or the HTTP server.
if grep -n '#include "\(runtime/\|http/server\|http/http\|http/api\)' cli/*.c >&2; then
    echo "cli/: includes runtime or HTTP server internals; talk to keeld over HTTP" >&2
    bad=1
fi
if ((bad)); then
    echo "check-layers: layering violations above (see scripts/check-layers.sh for the order)" >&2
    exit 1
fi
echo "check-layers: ok"
