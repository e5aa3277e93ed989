#!/usr/bin/env bash
# tests/cuda/cli_cuda_kvsharer (label cuda: needs a GPU): KVSharer maps on the CUDA engine.
#   - on the committed tiny model of tests/fixtures/kvsharer, for an empty map, a hand-written map with a chain, and
#     the maps the reference search found (tiny.json): `xlkv logits --device cuda --dtype f32 --kv-map M` matches the
#     CPU logits under the same map to 1e-4, and equals the cuda logits of its layer_types equivalent to 1e-6;
#     the empty map matches the unmapped model on cuda to 1e-6;
#   - stories260K (when ../shared/data is present): greedy text under a searched map is the same on cuda f32 as on
#     the cpu, and the engine reports the KV saving ("KV layers 3 of 5").
set -u
xlkv=$1
src=${XLKV_SOURCE_DIR:-.}
data=${XLKV_SHARED_DATA:-$src/../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
tiny=$src/tests/fixtures/kvsharer/model
fixture=$src/tests/fixtures/kvsharer/tiny.json
ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$fixture'))['texts'][0])))")
maxdiff() { # a.json b.json -> prints the max |difference| of the logits
  python3 - "$1" "$2" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert len(a["logits"]) == len(b["logits"]), "row count differs"
print(max(abs(x - y) for ra, rb in zip(a["logits"], b["logits"]) for x, y in zip(ra, rb)))
PY
}
within() { python3 -c "import sys; sys.exit(0 if float('$1') < float('$2') else 1)"; }

"$xlkv" logits -m "$tiny" --ids "$ids" --device cuda --dtype f32 -o "$tmp/cuda_plain.json" 2>"$tmp/err" ||
  fail "cuda logits, no map: $(cat "$tmp/err")"
# map name, JSON, layer_types equivalent
python3 - "$fixture" >"$tmp/maps.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("empty", "{}", "0_1_2_3_4_5")
print("chain", json.dumps({"4": 3, "3": 1, "2": 0, "5": 4}).replace(" ", ""), "0_1_0_1_1_1")
for c in d["cases"]:
    m = {str(i): s for i, s in enumerate(c["kv_src"]) if s != i}
    print(f"{c['order']}-{c['score']}", json.dumps(m).replace(" ", ""), "_".join(map(str, c["kv_src"])))
PY
while read -r name json types; do
  echo "$json" >"$tmp/$name.map.json"
  "$xlkv" logits -m "$tiny" --ids "$ids" --kv-map "$tmp/$name.map.json" -o "$tmp/cpu.json" 2>"$tmp/err" ||
    { fail "cpu logits $name: $(cat "$tmp/err")"; continue; }
  "$xlkv" logits -m "$tiny" --ids "$ids" --kv-map "$tmp/$name.map.json" --device cuda --dtype f32 -o "$tmp/cuda.json" \
    2>"$tmp/err" || { fail "cuda logits $name: $(cat "$tmp/err")"; continue; }
  "$xlkv" logits -m "$tiny" --ids "$ids" --layer-types "$types" --device cuda --dtype f32 -o "$tmp/cuda_types.json" \
    2>"$tmp/err" || { fail "cuda logits $types: $(cat "$tmp/err")"; continue; }
  d_cpu=$(maxdiff "$tmp/cuda.json" "$tmp/cpu.json")
  d_types=$(maxdiff "$tmp/cuda.json" "$tmp/cuda_types.json")
  echo "check kvsharer map $name $json ($types) on cuda: max |cuda - cpu| = $d_cpu (tolerance 1e-4), max |kv-map - layer_types| = $d_types (tolerance 1e-6)"
  within "$d_cpu" 1e-4 && echo "ok   $name: cuda = cpu" || fail "$name: cuda differs from cpu by $d_cpu"
  within "$d_types" 1e-6 && echo "ok   $name: --kv-map = --layer-types $types" || fail "$name: kv-map vs layer_types $d_types"
  if [ "$name" = empty ]; then
    d_plain=$(maxdiff "$tmp/cuda.json" "$tmp/cuda_plain.json")
    echo "check empty map = no map on cuda: $d_plain"
    within "$d_plain" 1e-6 && echo "ok   empty map = unmapped model on cuda" || fail "empty map differs by $d_plain"
  fi
done <"$tmp/maps.txt"

model=$data/models/stories260K/stories260K.bin
if [ -f "$model" ]; then
  echo '{"2": 0, "3": 1}' >"$tmp/s.json"
  "$xlkv" generate -m "$model" -n 200 --temp 0 --kv-map "$tmp/s.json" >"$tmp/cpu.txt" 2>/dev/null || fail "cpu generate"
  "$xlkv" generate -m "$model" -n 200 --temp 0 --kv-map "$tmp/s.json" --device cuda --dtype f32 >"$tmp/cuda.txt" \
    2>"$tmp/err" || fail "cuda generate: $(cat "$tmp/err")"
  grep "KV layers" "$tmp/err"
  cmp -s "$tmp/cpu.txt" "$tmp/cuda.txt" && echo "ok   stories260K greedy under {\"2\":0,\"3\":1}: cuda f32 = cpu" ||
    fail "stories260K greedy text differs between cuda and cpu"
  grep -q "KV layers 3 of 5" "$tmp/err" && echo "ok   cuda engine reports 3 of 5 KV layers" ||
    fail "cuda KV report: $(cat "$tmp/err")"
else
  echo "skipping stories260K: $model is absent"
fi
[ $failures -eq 0 ] && echo "cli_cuda_kvsharer: all passed" || { echo "$failures failures"; exit 1; }
