#!/usr/bin/env bash
# tests/cli_train_resume: `xlkv tokenize` + `xlkv train` end to end. A run killed with SIGKILL after its first
# checkpoint and continued with --resume ends with the same bytes (model.safetensors, trainer_state.bin) as an
# uninterrupted run; its checkpoints load in `xlkv generate`; `xlkv convert` writes a loadable checkpoint under a
# new map; bad invocations fail with clear messages. Needs tinyshakespeare and tok512.bin from ../shared/data
# (skipped when absent).
set -u
xlkv=$1
source "$(dirname "$0")/support/cli_train_data.sh"

"$xlkv" tokenize --tokenizer "$tok" -o "$tmp/data" --valid-fraction 0.1 -t 2 "$text" 2>"$tmp/err" \
  || { cat "$tmp/err"; echo "FAIL tokenize"; exit 1; }
[ -f "$tmp/data/train-00000.bin" ] && [ -f "$tmp/data/valid-00000.bin" ] && [ -f "$tmp/data/tok512.bin" ] \
  && echo "ok   tokenize: $(tail -1 "$tmp/err")" || fail "tokenize outputs"

args=(--shape tiny --layer-types lckv:1 --forward-passes 1 --backward-passes 2 --data "$tmp/data" --steps 30
      --batch 4 --seq 32 --lr 3e-3 --warmup 5 --save-every 5 --eval-every 10 --eval-batches 2 --seed 3 -t 1)
"$xlkv" train "${args[@]}" --out "$tmp/straight" 2>"$tmp/straight.log" || { tail -5 "$tmp/straight.log"; fail "train"; }

# the same run, killed after its first checkpoint, then resumed
"$xlkv" train "${args[@]}" --out "$tmp/killed" 2>"$tmp/killed.log" &
pid=$!
for _ in $(seq 1 2000); do
  [ -e "$tmp/killed/latest" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.02
done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
killed_at=$(readlink "$tmp/killed/latest")
echo "note: killed with SIGKILL, latest checkpoint: $killed_at"
[ "$killed_at" != "checkpoint-000030" ] || echo "note: the run finished before the kill; resume is still checked"
"$xlkv" train "${args[@]}" --out "$tmp/killed" --resume 2>"$tmp/resumed.log" || { tail -5 "$tmp/resumed.log"; fail "resume"; }
grep -q "resumed from" "$tmp/resumed.log" && echo "ok   $(grep 'resumed from' "$tmp/resumed.log")" || fail "no resume message"
for f in model.safetensors trainer_state.bin config.json; do
  cmp -s "$tmp/straight/latest/$f" "$tmp/killed/latest/$f" && echo "ok   killed + resumed == uninterrupted: $f" \
    || fail "killed + resumed run differs from the uninterrupted one in $f"
done
[ -f "$tmp/straight/loss.svg" ] && grep -q "<svg" "$tmp/straight/loss.svg" && echo "ok   loss.svg" || fail "loss.svg"
grep -q "step    30/30 | loss" "$tmp/straight.log" && grep -q "tok/s" "$tmp/straight.log" && grep -q "eval     30" "$tmp/straight.log" \
  && echo "ok   progress lines: $(grep 'step    30/30' "$tmp/straight.log")" || fail "progress lines"
ls "$tmp/straight" | grep -q "checkpoint-000025" && fail "old checkpoints are not removed" || echo "ok   only the newest checkpoint is kept"

# checkpoints load in generate; convert writes a loadable checkpoint under a new map
"$xlkv" generate -m "$tmp/straight/latest" -p "ROMEO:" -n 16 -s 1 >"$tmp/gen.txt" 2>"$tmp/gen.err" \
  && echo "ok   generate from the trained checkpoint: $(tr '\n' ' ' <"$tmp/gen.txt" | head -c 60)" || fail "generate: $(cat "$tmp/gen.err")"
"$xlkv" convert --from "$tmp/straight/latest" --to "$tmp/conv" --layer-types standard --kv-init copy 2>"$tmp/conv.err" \
  && fail "convert from a map without the needed k_proj should fail" \
  || { grep -q "k_proj" "$tmp/conv.err" && echo "ok   convert refuses missing W_K: $(cat "$tmp/conv.err")" || fail "convert message: $(cat "$tmp/conv.err")"; }
"$xlkv" train --shape tiny --data "$tmp/data" --steps 2 --batch 2 --seq 16 --out "$tmp/std" -t 2 2>/dev/null || fail "standard run"
"$xlkv" convert --from "$tmp/std/latest" --to "$tmp/conv" --layer-types cla:2 --kv-init average 2>"$tmp/conv.err" \
  && "$xlkv" generate -m "$tmp/conv" -p "ROMEO:" -n 8 -s 1 >/dev/null 2>&1 \
  && grep -q '"layer_types":.*"0_0_2_2"' "$tmp/conv/config.json" && echo "ok   convert --kv-init average -> cla:2 loads" \
  || fail "convert average: $(cat "$tmp/conv.err")"

# --untied-embeddings: a classifier of its own in the checkpoint (tie_word_embeddings false), which loads and runs
"$xlkv" train --shape tiny --untied-embeddings --data "$tmp/data" --steps 2 --batch 2 --seq 16 --out "$tmp/untied" -t 2 \
  2>"$tmp/untied.err" || fail "untied run: $(tail -3 "$tmp/untied.err")"
grep -q '"tie_word_embeddings":[[:space:]]*false' "$tmp/untied/latest/config.json" \
  && grep -q '"lm_head.weight"' "$tmp/untied/latest/model.safetensors" \
  && ! grep -q '"lm_head.weight"' "$tmp/std/latest/model.safetensors" \
  && "$xlkv" generate -m "$tmp/untied/latest" -p "ROMEO:" -n 8 -s 1 >/dev/null 2>&1 \
  && echo "ok   --untied-embeddings: lm_head.weight saved, tie_word_embeddings false, loads in generate" \
  || fail "untied checkpoint: $(head -c 300 "$tmp/untied/latest/config.json")"
check_error_early() { if "$@" >/dev/null 2>"$tmp/err"; then fail "$* succeeded"; else grep -q "modify a --shape" "$tmp/err" \
  && echo "ok   error: $(head -1 "$tmp/err")" || fail "message: $(cat "$tmp/err")"; fi; }
check_error_early "$xlkv" train --init-from "$tmp/std/latest" --untied-embeddings --data "$tmp/data" --out "$tmp/x"

# convert --dtype bf16 (a release copy): half the bytes, BF16 tensors, the same map, and the same greedy text
"$xlkv" convert --from "$tmp/straight/latest" --to "$tmp/half" --dtype bf16 2>"$tmp/half.err" || fail "convert bf16: $(cat "$tmp/half.err")"
full=$(stat -c %s "$tmp/straight/latest/model.safetensors"); half=$(stat -c %s "$tmp/half/model.safetensors")
[ $((half * 2)) -lt $((full + 4096)) ] && [ $((half * 2)) -gt $((full - 4096)) ] && grep -q '"BF16"' "$tmp/half/model.safetensors" \
  && echo "ok   convert --dtype bf16: $full -> $half bytes" || fail "bf16 sizes $full -> $half"
map_of() { grep -o '"layer_types":[[:space:]]*"[^"]*"' "$1/config.json"; }
[ -n "$(map_of "$tmp/half")" ] && [ "$(map_of "$tmp/half")" = "$(map_of "$tmp/straight/latest")" ] \
  && echo "ok   convert without --layer-types keeps the map" || fail "map not kept"
"$xlkv" generate -m "$tmp/half" -p "ROMEO:" -n 16 -s 1 >"$tmp/gen-half.txt" 2>/dev/null || fail "generate from the bf16 copy"
cmp -s "$tmp/gen.txt" "$tmp/gen-half.txt" && echo "ok   the bf16 copy writes the same greedy text" \
  || echo "note: the bf16 copy's greedy text differs (rounding): $(tr '\n' ' ' <"$tmp/gen-half.txt" | head -c 60)"

# bad invocations
check_error() { # expected-substring command...
  local want=$1; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then fail "$* succeeded"; return; fi
  grep -q -- "$want" "$tmp/err" && echo "ok   error: $(head -1 "$tmp/err")" || fail "$*: message '$(cat "$tmp/err")' lacks '$want'"
}
check_error "no such data directory" "$xlkv" train --shape tiny --data "$tmp/none" --out "$tmp/x"
check_error "needs b >= 2" "$xlkv" train --shape tiny --layer-types lckv:1 --backward-passes 1 --data "$tmp/data" --out "$tmp/x"
check_error "unknown model shape" "$xlkv" train --shape huge --data "$tmp/data" --out "$tmp/x"
printf '{"model_type": "llama", "hidden_size": ' >"$tmp/bad.json"
check_error "not valid JSON" "$xlkv" train --model-config "$tmp/bad.json" --data "$tmp/data" --out "$tmp/x"
printf 'garbage' >"$tmp/killed/latest/trainer_state.bin"
check_error "not a trainer state" "$xlkv" train "${args[@]}" --steps 40 --out "$tmp/killed" --resume
check_error "exactly one of" "$xlkv" train --data "$tmp/data" --out "$tmp/x"
[ $failures -eq 0 ] && echo "all train CLI checks passed" || { echo "$failures failure(s)"; exit 1; }
