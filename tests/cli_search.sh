#!/usr/bin/env bash
# tests/cli_search: `xlkv search` end to end. On stories260K with tinyshakespeare paragraphs it reproduces the
# reference search of scripts/make_kvsharer_fixtures.py (tests/fixtures/kvsharer/stories260K.json: the distance
# matrix and every tried pair's score to 1e-4, the same decisions and map) for the dissimilar, similar and random
# orders; its map.json loads with --kv-map (KV memory reported by generate and layers shows the saving; an empty map
# reproduces the standard output byte for byte); the report and heatmap are written; bad flags and maps fail with a
# clear message.
set -u
xlkv=$1
src=${XLKV_SOURCE_DIR:-.}
data=${XLKV_SHARED_DATA:-$src/../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
pass() { echo "ok   $1"; }
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
expect_error() {
  local name=$1 needle=$2; shift 2
  if "$xlkv" "$@" >"$tmp/out" 2>"$tmp/err"; then fail "$name: exit status 0"; return; fi
  if grep -qF -- "$needle" "$tmp/err"; then pass "$name"; else fail "$name: stderr lacks '$needle': $(cat "$tmp/err")"; fi
}

if "$xlkv" search --help | grep -q -- "--order"; then pass "search --help"; else fail "search --help"; fi
tiny=$src/tests/fixtures/kvsharer/model
expect_error "no calibration" "no calibration text given" search -m "$tiny" --share 1
expect_error "share and rate" "exactly one of --share N and --rate R" search -m "$tiny" --calib x --share 1 --rate 0.5
expect_error "neither share nor rate" "exactly one of --share N and --rate R" search -m "$tiny" --calib x
expect_error "rate out of range" "--rate expects a fraction in (0, 1)" search -m "$tiny" --calib x --rate 1.5
expect_error "bad order" "--order expects dissimilar, similar or random" search -m "$tiny" --calib x --share 1 --order up
expect_error "bad score" "--score expects cosine or ppl" search -m "$tiny" --calib x --share 1 --score bleu
expect_error "map given" "--layer-types and --kv-map do not apply" search -m "$tiny" --calib x --share 1 --layer-types cla:2
expect_error "no tokenizer" "has no tokenizer" search -m "$tiny" --calib "$src/tests/fixtures/kvsharer/calib.txt" --share 1
expect_error "too many shared" "a 6-layer model can share 1 to 5" search -m "$tiny" --calib x --share 6

model=$data/models/stories260K/stories260K.bin
shakespeare=$data/text/tinyshakespeare.txt
if [ ! -f "$model" ] || [ ! -f "$shakespeare" ]; then
  echo "skipping the stories260K part: $model or $shakespeare is absent (set XLKV_SHARED_DATA)"
  [ $failures -eq 0 ] && echo "cli_search: all passed (stories260K part skipped)"
  exit $((failures > 0))
fi
expect_error "absent calibration file" "nope.txt" search -m "$model" --calib "$tmp/nope.txt" --share 1
printf 'short\n\ntext\n' >"$tmp/short.txt"
expect_error "paragraphs too short" "no paragraph has 64 tokens" search -m "$model" --calib "$tmp/short.txt" --share 1

# the reference search, three orders (the fixture's cases)
run_case() { # name order seed share
  local name=$1 order=$2 seed=$3 share=$4
  if ! "$xlkv" search -m "$model" --calib "$shakespeare" --share "$share" --order "$order" --seed "$seed" -t 1 \
      --out "$tmp/$name" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
    fail "search $name: $(cat "$tmp/$name.err")"; return
  fi
  if python3 - "$tmp/$name/report.json" "$src/tests/fixtures/kvsharer/stories260K.json" "$order" "$share" <<'PY'
import json, math, sys
got = json.load(open(sys.argv[1]))
ref = json.load(open(sys.argv[2]))
case = next(c for c in ref["cases"] if c["order"] == sys.argv[3] and c["share"] == int(sys.argv[4]))
dist = max(abs(a - b) for ga, ra in zip(got["distance"], ref["distance"]) for a, b in zip(ga, ra))
bad = []
if dist > 1e-4: bad.append(f"distance error {dist}")
if got["calibration"]["texts"] != 30 or got["calibration"]["tokens_per_text"] != 64: bad.append("calibration size")
if len(got["pairs"]) != len(case["pairs"]): bad.append(f"{len(got['pairs'])} pairs tried, reference {len(case['pairs'])}")
worst = 0.0
for g, r in zip(got["pairs"], case["pairs"]):
    if (g["layer"], g["source"], g["root"], g["accepted"]) != (r["layer"], r["source"], r["root"], r["accepted"]):
        bad.append(f"pair {g} vs {r}")
    if (g["score"] is None) != (r["score"] is None): bad.append(f"score presence {g} vs {r}")
    elif g["score"] is not None: worst = max(worst, abs(g["score"] - r["score"]))
if worst > 1e-4: bad.append(f"score error {worst}")
if got["kv_src"] != case["kv_src"]: bad.append(f"map {got['kv_src']} vs {case['kv_src']}")
print(f"check {sys.argv[3]}: distance err {dist:.2g}, score err {worst:.2g}, map {got['kv_src']} (reference {case['kv_src']})")
if bad: print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
  then pass "search $name matches the reference"; else fail "search $name differs from the reference"; fi
}
run_case dissimilar dissimilar 0 2
run_case similar similar 0 2
run_case random random 3 3

out=$tmp/dissimilar
if [ -s "$out/map.json" ] && [ -s "$out/distances.svg" ] && grep -q "<svg" "$out/distances.svg" && grep -q "KV per token" "$tmp/dissimilar.out"; then
  pass "map, report and heatmap written"
else
  fail "outputs missing: $(ls "$out") $(cat "$tmp/dissimilar.out")"
fi

# applying the map: KV memory reported by generate and layers; greedy text differs from the standard map's
if "$xlkv" generate -m "$model" --kv-map "$out/map.json" -n 20 --temp 0 -p "Once" >"$tmp/gen_map" 2>"$tmp/gen_map.err" &&
   grep -q "KV layers 3 of 5" "$tmp/gen_map.err"; then
  pass "generate --kv-map: 3 of 5 KV layers reported"
else
  fail "generate --kv-map: $(cat "$tmp/gen_map.err")"
fi
if "$xlkv" layers -m "$model" --kv-map "$out/map.json" >"$tmp/layers" 2>&1 && grep -q "3" "$tmp/layers"; then
  pass "layers --kv-map"
else
  fail "layers --kv-map: $(cat "$tmp/layers")"
fi
echo '{}' >"$tmp/empty.json"
"$xlkv" generate -m "$model" -n 40 --temp 0 -p "Once" >"$tmp/gen_plain" 2>/dev/null
"$xlkv" generate -m "$model" --kv-map "$tmp/empty.json" -n 40 --temp 0 -p "Once" >"$tmp/gen_empty" 2>/dev/null
if cmp -s "$tmp/gen_plain" "$tmp/gen_empty"; then pass "an empty map reproduces the standard output"; else fail "empty map output differs"; fi
echo '{"4": 3, "3": 4}' >"$tmp/cycle.json"
expect_error "cycle rejected" "does not point to a lower layer" generate -m "$model" --kv-map "$tmp/cycle.json" -n 2
echo '{"7": 1}' >"$tmp/range.json"
expect_error "out of range rejected" "key \"7\" is not a layer index of the model (decimal, 0..4)" generate -m "$model" --kv-map "$tmp/range.json" -n 2

# --rate rounds to whole layers (halves down): 0.5 x 5 = 2.5 -> 2; --score ppl runs
if "$xlkv" search -m "$model" --calib "$shakespeare" --rate 0.5 --calib-texts 4 --score ppl --threshold 0.1 -t 1 \
    --out "$tmp/rate" >"$tmp/rate.out" 2>"$tmp/rate.err" && grep -q "2 of 5 layers shared" "$tmp/rate.out" &&
   grep -q '"score":[[:space:]]*"ppl"' "$tmp/rate/report.json"; then
  pass "--rate 0.5 on 5 layers shares 2; --score ppl"
else
  fail "--rate / --score ppl: $(cat "$tmp/rate.out" "$tmp/rate.err")"
fi

[ $failures -eq 0 ] && echo "cli_search: all passed"
exit $((failures > 0))
