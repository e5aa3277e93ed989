#!/usr/bin/env bash
# tests/cli_default_models: the models the project ships (models/xlkv-gutenberg-{standard,cla2}, trained by
# `xlkv train --device cuda` on Gutenberg; how: docs/TRAINING.md) load without ../shared, run under their own maps, and
# know English: on a paragraph written for this test their perplexity is low (measured 184 and 123 per token of the
# 4,096-piece vocabulary; 41 on Gutenberg valid), and far lower than on the same words in shuffled order (measured
# over 1000x; a model that has not learned word order scores both alike; an untrained one is near 4096 on both).
# Usage: bash tests/cli_default_models.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_default_models.sh /path/to/xlkv}
root=$(cd "$(dirname "$0")/.." && pwd)
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

cat >"$tmp/english.txt" <<'TEXT'
The old man sat by the fire and looked at the letter for a long time. He had not heard from his son since the winter,
and the house had been very quiet. When he had read it twice, he put on his coat and walked down the road to the
village, where the people were coming out of the church. Nobody spoke to him, but he did not mind, for he was thinking
of the day when the boy would come home again and the two of them would sit together at the table as they used to do.
TEXT
# the same words in a fixed shuffled order
tr -s ' \n' '\n\n' <"$tmp/english.txt" | awk 'BEGIN{srand(7)} {print rand() "\t" $0}' | sort -k1,1 | cut -f2 \
  | tr '\n' ' ' >"$tmp/shuffled.txt"

ppl() { # model file -> perplexity
  "$XLKV" perplexity -m "$1" -f "$2" --ctx 256 --stride 128 --json "$tmp/ppl.json" >/dev/null 2>"$tmp/ppl.err" \
    || { fail "perplexity $1 $2: $(cat "$tmp/ppl.err")"; echo 0; return; }
  sed -n 's/.*"ppl":[[:space:]]*\([0-9.e+]*\).*/\1/p' "$tmp/ppl.json" | head -1
}

for name in standard cla2; do
  model=$root/models/xlkv-gutenberg-$name
  [ -f "$model/model.safetensors" ] || { fail "$model is missing"; continue; }
  "$XLKV" generate -m "$model" -p "The old man said" -n 48 --temp 0 -s 1 >"$tmp/gen.txt" 2>"$tmp/gen.err" \
    || { fail "generate $name: $(cat "$tmp/gen.err")"; continue; }
  letters=$(tr -cd 'A-Za-z ' <"$tmp/gen.txt" | wc -c); all=$(wc -c <"$tmp/gen.txt")
  [ "$all" -gt 100 ] && [ $((letters * 100)) -ge $((all * 85)) ] \
    && echo "ok   $name writes text: $(tr '\n' ' ' <"$tmp/gen.txt" | head -c 100)" \
    || fail "$name output is not text ($letters letters of $all): $(cat "$tmp/gen.txt")"
  want_kv=$([ $name = cla2 ] && echo "KV layers 3 of 6" || echo "KV layers 6 of 6")
  grep -q "$want_kv" "$tmp/gen.err" && echo "ok   $name: $want_kv" || fail "$name: no '$want_kv' in: $(cat "$tmp/gen.err")"
  p=$(ppl "$model" "$tmp/english.txt"); q=$(ppl "$model" "$tmp/shuffled.txt")
  if awk -v p="$p" -v q="$q" 'BEGIN{exit !(p > 1 && p < 250 && q > 20 * p)}'; then
    echo "ok   $name perplexity: $p on English, $q on the same words shuffled"
  else
    fail "$name perplexity: $p on English (want < 250), $q shuffled (want > 20x)"
  fi
done
# the standard model is a plain Llama checkpoint: transformers' logits (scripts/make_default_model_fixtures.py,
# float32 from the bf16 weights) = xlkv's, on the fixture's ids
fixture=$root/tests/fixtures/default_models/standard_logits.json
ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['ids'])))" "$fixture")
"$XLKV" logits -m "$root/models/xlkv-gutenberg-standard" --ids "$ids" -o "$tmp/logits.json" 2>"$tmp/logits.err" \
  || fail "logits: $(cat "$tmp/logits.err")"
python3 - "$fixture" "$tmp/logits.json" <<'PY' && echo "ok   standard model logits = transformers'" || fail "logits differ from transformers'"
import json, sys
ref, got = (json.load(open(p)) for p in sys.argv[1:3])
worst = max(abs(a - b) for r, row in zip(ref["rows"], ref["logits"]) for a, b in zip(row, got["logits"][r]))
print(f"     largest |xlkv - transformers| over rows {ref['rows']}: {worst:.2e} (tolerance 1e-4)")
sys.exit(0 if worst <= 1e-4 else 1)
PY
[ "$failures" -eq 0 ] && echo "all default-model checks passed" || { echo "$failures check(s) failed" >&2; exit 1; }
