#!/usr/bin/env bash
# tests/cuda/cli_cuda_generate (label cuda: needs a GPU): the CLI on --device cuda through the engine.
#   - greedy stories260K for 200 tokens in f32 reproduces the llama2.c golden byte for byte, alone and as --batch 4
#     (four identical golden texts);
#   - `xlkv logits --device cuda --dtype f32` matches the CPU logits JSON to 1e-4 on the gqa_untied fixture, as one
#     prompt, with --prefill and --sequential;
#   - bf16 (the cuda default) runs and produces text.
set -u
xlkv=$1
src=${XLKV_SOURCE_DIR:-.}
data=${XLKV_SHARED_DATA:-$src/../shared/data}
model=$data/models/stories260K/stories260K.bin
golden=$data/models/stories260K/expected_greedy_n200.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
compare() { # name, got, want
  if cmp -s "$2" "$3"; then echo "ok   $1"; else fail "$1"; diff "$3" "$2" | head -6; fi
}

if [ -f "$model" ] && [ -f "$golden" ]; then
  "$xlkv" generate -m "$model" -n 200 --temp 0 --device cuda --dtype f32 >"$tmp/out" 2>"$tmp/err" ||
    fail "generate on cuda: $(cat "$tmp/err")"
  compare "cuda f32 greedy n200 = golden" "$tmp/out" "$golden"
  "$xlkv" generate -m "$model" -n 200 --temp 0 --device cuda --dtype f32 --batch 4 >"$tmp/out" 2>"$tmp/err" ||
    fail "generate --batch 4 on cuda: $(cat "$tmp/err")"
  for i in 0 1 2 3; do printf -- '--- sequence %d ---\n' "$i"; cat "$golden"; done >"$tmp/want"
  compare "cuda f32 greedy --batch 4 = golden x 4" "$tmp/out" "$tmp/want"
  "$xlkv" generate -m "$model" -n 100 --temp 0.8 -s 1 --device cuda -b 2 >"$tmp/out" 2>"$tmp/err" ||
    fail "generate bf16 on cuda: $(cat "$tmp/err")"
  [ "$(grep -c -- '--- sequence' "$tmp/out")" -eq 2 ] && [ "$(wc -c <"$tmp/out")" -gt 100 ] &&
    echo "ok   cuda bf16 batch 2 produces text" || fail "cuda bf16 output: $(head -c 300 "$tmp/out")"
else
  echo "skipping generate: $model or $golden is absent (set XLKV_SHARED_DATA)"
fi

fixture=$src/tests/fixtures/hf/gqa_untied
ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$fixture/logits.json'))['ids'])))")
for mode in "" "--prefill 5" "--sequential"; do
  # shellcheck disable=SC2086
  "$xlkv" logits -m "$fixture" --ids "$ids" $mode -o "$tmp/cpu.json" 2>"$tmp/err" || { fail "cpu logits: $(cat "$tmp/err")"; continue; }
  # shellcheck disable=SC2086
  if ! "$xlkv" logits -m "$fixture" --ids "$ids" $mode --device cuda --dtype f32 -o "$tmp/cuda.json" 2>"$tmp/err"; then
    fail "cuda logits $mode: $(cat "$tmp/err")"; continue
  fi
  python3 - "$tmp/cuda.json" "$tmp/cpu.json" <<'PY' && echo "ok   cuda logits ${mode:-(one prompt)} = cpu to 1e-4" || fail "cuda logits $mode"
import json, sys
got, want = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert got["ids"] == want["ids"], "ids differ"
assert len(got["logits"]) == len(want["logits"]), "row count differs"
worst = max(abs(a - b) for ra, rb in zip(got["logits"], want["logits"]) for a, b in zip(ra, rb))
assert worst < 1e-4, f"max difference {worst}"
PY
done
[ $failures -eq 0 ] || { echo "$failures failures"; exit 1; }
