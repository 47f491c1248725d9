#!/usr/bin/env bash
# Every manifest the documentation shows (```json blocks of docs/**/*.md and
# README.md that are keel.json files) passes `keel lint`, packs, and installs
# and activates in keeld; a block showing what `keel pack` stores must be
# byte for byte what it stores. `keel pack` refuses what activation would
# refuse (docs/package-format.md's example once packed and was then refused
# at activation), and `keel lint` lists every problem of a manifest.
#
# Blocks: a template (name and version, no "files") is packed with the files
# of tests/data/docs/<name>/; a fragment (tiers but no name) with the files
# of the example (examples/*) whose first tier uses the same model; a packed
# manifest ("files") is compared with the pack of the template before it.
source "$(dirname "$0")/lib.sh"
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
export SOURCE_DATE_EPOCH=1767225600 # the docs show packs made at this time
setup_trust
start_keeld
token=$(cat "$state/token")

# --- the blocks -----------------------------------------------------------------------
"$PY" - "$keel_src" "$work/blocks" >"$work/list" <<'EOF'
import glob, json, os, re, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
docs = sorted(glob.glob(f"{src}/docs/**/*.md", recursive=True)) + [f"{src}/README.md"]
examples = {}
for man in sorted(glob.glob(f"{src}/examples/*/keel.json")):
    j = json.load(open(man))
    for t in j.get("tiers", [])[:1]:
        examples[t.get("model")] = os.path.dirname(man)
for doc in docs:
    text = open(doc).read()
    template = None
    for m in re.finditer(r"```json\n(.*?)```", text, re.S):
        line = text[: m.start()].count("\n") + 1
        where = f"{os.path.relpath(doc, src)}:{line}"
        try:
            j = json.loads(m.group(1))
        except ValueError:
            continue  # an excerpt with "..." (responses, metrics), not a manifest
        if not isinstance(j, dict) or not ("tiers" in j or ("name" in j and "version" in j)):
            continue
        f = f"{out}/{len(os.listdir(out))}.json"
        if "files" in j:
            open(f, "w").write(m.group(1).rstrip("\n"))
            print("packed", where, f, template or "-", sep="\t")
            continue
        if "name" in j:
            fix = f"{src}/tests/data/docs/{j['name']}"
            kind = "template"
        else:
            fix = examples.get(j["tiers"][0].get("model"), "-")
            j = {"name": "doc-" + re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-"),
                 "version": "1.0.0", **j}
            kind = "fragment"
        open(f, "w").write(json.dumps(j, indent=2) if kind == "fragment" else m.group(1))
        template = f
        print(kind, where, f, fix, sep="\t")
EOF
n=0
declare -A packed_of # template file -> the .keel made from it
while IFS=$'\t' read -r kind where file fix; do
    case $kind in
    template | fragment)
        [[ -d $fix ]] || die "$where: no files for this manifest (looked for $fix)"
        src=$work/src-$n
        cp -r "$fix" "$src"
        rm -f "$src/keel.sig"
        cp "$file" "$src/keel.json"
        out=$("$KEEL" lint "$src" 2>&1) || die "$where: keel lint: $out"
        out=$("$KEEL" pack "$src" -o "$work/doc-$n.keel" --key "$work/k.key" 2>&1) ||
            die "$where: keel pack: $out"
        packed_of[$file]=$work/doc-$n.keel
        r=$(http POST '/api/packages?activate=1' -H "Authorization: Bearer $token" \
            --data-binary "@$work/doc-$n.keel")
        expect_eq "$(status_of "$r")" 201 "$where: install and activate ($(body_of "$r"))"
        expect_has "$(body_of "$r")" '"activated":true' "$where: activated"
        name=$(jq -r .name "$src/keel.json")
        r=$(http GET "/v2/models/$name/ready")
        expect_eq "$(status_of "$r")" 200 "$where: $name ready after activation"
        echo "ok: $where ($kind) packs and activates as $name"
        ;;
    packed)
        [[ $fix != - && -n ${packed_of[$fix]:-} ]] || die "$where: a packed manifest with no template before it"
        mkdir -p "$work/x-$n"
        tar -xf "${packed_of[$fix]}" -C "$work/x-$n" keel.json
        cmp -s "$work/x-$n/keel.json" "$file" ||
            die "$where: keel pack stores another keel.json than the doc shows: $(diff "$file" "$work/x-$n/keel.json" | head -20)"
        echo "ok: $where is what keel pack stores"
        ;;
    esac
    n=$((n + 1))
done <"$work/list"
((n >= 3)) || die "found only $n manifests in the docs (expected package-format.md's two and inference.md's)"

# the tiny example answers as its model says (petal length and width)
r=$(infer tiny '{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}')
expect_eq "$(status_of "$r")" 200 "tiny infer ($(body_of "$r"))"
expect_eq "$(jfield "$(body_of "$r")" -c '[.result[].label]')" '["setosa","virginica"]' "tiny labels"

# --- keel pack refuses what activation refuses; keel lint lists every problem --------------
bad=$work/bad
cp -r "$keel_src/tests/data/docs/tiny" "$bad"
cat >"$bad/keel.json" <<'EOF'
{"name": "tiny", "version": "2.0.0",
 "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
 "tiers": [{"name": "primary", "backend": "onnx", "model": "model/tiny.onnx"}],
 "postprocess": [{"op": "labels", "file": "labels.txt"}]}
EOF
if out=$("$KEEL" pack "$bad" -o "$work/bad.keel" 2>&1); then
    die "keel pack packed a postprocess array that activation refuses: $out"
fi
expect_has "$out" "postprocess: expected an object" "keel pack's refusal"
[[ ! -e $work/bad.keel ]] || die "keel pack wrote a package it refused"
cat >"$bad/keel.json" <<'EOF'
{"name": "Tiny", "version": "2.0",
 "inputs": [{"name": "x", "dtype": "float33", "shape": [-1, 4]}],
 "tiers": [{"name": "primary", "backend": "onnx", "model": "model/missing.onnx"},
           {"name": "second", "backend": "tflite", "model": "model/tiny.onnx"},
           {"name": "third", "backend": "onnx", "model": "model/tiny.onnx", "deadline_ms": 99999999}],
 "postprocess": [{"op": "labels", "file": "labels.txt"}],
 "routing": {"mode": "sideways"},
 "validation": {"data": "validation/none.csv"}}
EOF
rc=0
out=$("$KEEL" lint "$bad" 2>&1) || rc=$?
expect_eq "$rc" 1 "keel lint exit status on a bad manifest ($out)"
for want in 'name "Tiny"' 'version "2.0"' 'inputs[0]: dtype "float33"' \
    'tiers[0]: model "model/missing.onnx" is not in "files"' 'tiers[1].backend: "tflite"' \
    'tiers[2].deadline_ms' 'postprocess: expected an object' 'routing.mode: "sideways"' \
    'validation.data: "validation/none.csv"'; do
    expect_has "$out" "$want" "keel lint lists every problem"
done
expect_eq "$(grep -c "^$bad: keel.json: " <<<"$out")" 9 "one line per problem ($out)"
out=$("$KEEL" lint "$keel_src/examples/iris" "$work/doc-0.keel") || die "keel lint of good packages: $out"
expect_has "$out" "ok: $keel_src/examples/iris" "keel lint ok"
echo "ok: every manifest in the docs packs and activates; keel pack and keel lint refuse as activation does"
