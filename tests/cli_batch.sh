#!/usr/bin/env bash
# tests/cli_batch: `xlkv generate --batch N` and `--batch-file FILE` on the cpu engine. Greedy batch 3 of stories260K
# prints the llama2.c golden three times under `--- sequence i ---` headers; with temperature sampling sequence i
# equals a lone run with seed + i; a batch file of prompts of different lengths equals one run per line, also under a
# sharing map; flags that do not fit together, and devices or dtypes this build lacks, fail with clear messages.
set -u
xlkv=$1
source "$(dirname "$0")/support/cli_stories260k.sh"
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
compare() { # name, got, want
  if cmp -s "$2" "$3"; then echo "ok   $1"; else fail "$1"; diff "$3" "$2" | head -6; fi
}

# greedy batch 3: the golden three times
"$xlkv" generate -m "$model" -n 200 --temp 0 --batch 3 >"$tmp/out" 2>"$tmp/err" || fail "batch 3: $(cat "$tmp/err")"
for i in 0 1 2; do printf -- '--- sequence %d ---\n' "$i"; cat "$golden"; done >"$tmp/want"
compare "greedy --batch 3 = golden x 3" "$tmp/out" "$tmp/want"
grep -q "batch 3 on cpu" "$tmp/err" && grep -q "KV pool" "$tmp/err" && echo "ok   stderr reports speed and KV memory" ||
  fail "stderr report: $(cat "$tmp/err")"

# temperature: sequence i = a lone run with seed 10 + i
"$xlkv" generate -m "$model" -p "Once upon a time" -n 60 --temp 0.9 -s 10 -b 3 >"$tmp/out" 2>/dev/null || fail "sampled batch"
: >"$tmp/want"
for i in 0 1 2; do
  printf -- '--- sequence %d ---\n' "$i" >>"$tmp/want"
  "$xlkv" generate -m "$model" -p "Once upon a time" -n 60 --temp 0.9 -s $((10 + i)) >>"$tmp/want" 2>/dev/null
done
compare "sampled --batch 3 = lone runs with seeds 10, 11, 12" "$tmp/out" "$tmp/want"

# batch file: prompts of different lengths (and an empty one: BOS only), also under lckv:2
printf 'Once upon a time\nThe little dog ran to the big park with his friend\n\nLily\n' >"$tmp/prompts.txt"
for map in standard lckv:2; do
  "$xlkv" generate -m "$model" --layer-types "$map" --batch-file "$tmp/prompts.txt" -n 50 --temp 0.8 -s 3 \
    >"$tmp/out" 2>/dev/null || fail "batch file ($map)"
  : >"$tmp/want"
  i=0
  while IFS= read -r line; do
    printf -- '--- sequence %d ---\n' "$i" >>"$tmp/want"
    "$xlkv" generate -m "$model" --layer-types "$map" -p "$line" -n 50 --temp 0.8 -s $((3 + i)) >>"$tmp/want" 2>/dev/null
    i=$((i + 1))
  done <"$tmp/prompts.txt"
  compare "--batch-file = one run per line ($map)" "$tmp/out" "$tmp/want"
done

# errors: clear message, non-zero status, nothing on stdout
expect_error() { # name, expected substring, then arguments
  local name=$1 needle=$2; shift 2
  "$xlkv" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 0 ] && grep -q -- "$needle" "$tmp/err" && [ ! -s "$tmp/out" ]; then echo "ok   error: $name"; else
    fail "error: $name (status $rc, stderr: $(cat "$tmp/err"))"; fi
}
: >"$tmp/empty.txt"
expect_error "batch 0" "expects an integer" generate -m "$model" --batch 0
expect_error "batch file and prompt" "excludes" generate -m "$model" --batch-file "$tmp/prompts.txt" -p hi
expect_error "batch file and batch" "excludes" generate -m "$model" --batch-file "$tmp/prompts.txt" -b 2
expect_error "missing batch file" "cannot read the prompts" generate -m "$model" --batch-file "$tmp/none.txt"
expect_error "empty batch file" "holds no prompt" generate -m "$model" --batch-file "$tmp/empty.txt"
expect_error "unknown device" "device 'tpu' is not available in this build (devices: cpu" generate -m "$model" --device tpu
expect_error "bf16 on cpu" "needs --device cuda" generate -m "$model" --dtype bf16
expect_error "unknown dtype" "expects f32 or bf16" generate -m "$model" --device cuda --dtype f16
expect_error "chat on cuda" "cuda" chat -m "$model" --device cuda
"$xlkv" generate --help | grep -q -- "--batch-file" && echo "ok   --help" || fail "--help"
[ $failures -eq 0 ] || { echo "$failures failures"; exit 1; }
