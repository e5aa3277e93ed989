#!/usr/bin/env bash
# tests/cuda/cli_cuda_train (label cuda: needs a GPU): `xlkv train --device cuda` end to end on tinyshakespeare.
#   - f32: the CUDA run's per-step losses match the CPU run's (same flags) to 1e-3 relative (printed side by side),
#     under standard, cla:2, lckv:1 and standard with --untied-embeddings (a classifier matrix of its own);
#   - bf16 (the default) trains: the held-out loss goes down;
#   - a CUDA run killed with SIGKILL after its first checkpoint and continued with --resume ends with the same
#     model.safetensors and trainer_state.bin bytes as an uninterrupted CUDA run (f32 and bf16: every reduction has
#     a fixed order);
#   - checkpoints written by the CUDA trainer load in `xlkv generate` (CPU and --device cuda);
#   - the progress line shows MFU against 989 TFLOP/s; --dtype without --device cuda is refused;
#   - flash attention (the bf16 default at head_dim 64: --shape default, lckv:1 with sliding layers off, seq 100): its
#     per-step losses track the f32 run within 3e-2 relative, two runs give the same checkpoint bytes, and
#     XLKV_TRAIN_ATTENTION=flash with --dtype f32 is refused with the reason.
set -u
xlkv=$1
source "$(dirname "$0")/../support/cli_train_data.sh"

"$xlkv" tokenize --tokenizer "$tok" -o "$tmp/data" --valid-fraction 0.1 "$text" 2>"$tmp/err" \
  || { cat "$tmp/err"; echo "FAIL tokenize"; exit 1; }

# f32: CUDA vs CPU, per-step losses
common=(--shape tiny --data "$tmp/data" --steps 12 --batch 4 --seq 64 --lr 3e-3 --warmup 3 --seed 5 --eval-every 12
        --eval-batches 2)
for map in standard cla:2 lckv:1 untied; do
  extra=(--layer-types $map)
  [ "$map" = lckv:1 ] && extra+=(--forward-passes 1 --backward-passes 2)
  [ "$map" = untied ] && extra=(--layer-types standard --untied-embeddings)
  "$xlkv" train "${common[@]}" "${extra[@]}" --out "$tmp/cpu-$map" -t 1 2>"$tmp/cpu.log" \
    || { tail -3 "$tmp/cpu.log"; fail "cpu train $map"; continue; }
  "$xlkv" train "${common[@]}" "${extra[@]}" --out "$tmp/gpu-$map" --device cuda --dtype f32 \
    2>"$tmp/gpu.log" || { tail -3 "$tmp/gpu.log"; fail "cuda train $map"; continue; }
  python3 - "$tmp/cpu.log" "$tmp/gpu.log" "$map" <<'PY' || failures=$((failures + 1))
import re, sys
def losses(path):
    return [float(m.group(1)) for m in re.finditer(r"^step +\d+/\d+ \| loss ([0-9.]+)", open(path).read(), re.M)]
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(a - b) / abs(a) for a, b in zip(cpu, gpu)) if cpu and len(cpu) == len(gpu) else float("inf")
print(f"check cli f32 {sys.argv[3]}: cpu {' '.join(f'{x:.4f}' for x in cpu)}")
print(f"check cli f32 {sys.argv[3]}: gpu {' '.join(f'{x:.4f}' for x in gpu)}")
ok = worst <= 1e-3
print(f"{'ok  ' if ok else 'FAIL'} cli f32 {sys.argv[3]}: cuda vs cpu loss per step, worst relative difference {worst:.2e} (tolerance 1e-3)")
sys.exit(0 if ok else 1)
PY
done
grep -q "MFU .*%" "$tmp/gpu.log" && echo "ok   progress line: $(grep 'step    12/12' "$tmp/gpu.log")" || fail "no MFU in the cuda progress line"
grep -q "against 989 TFLOP/s" "$tmp/gpu.log" && echo "ok   MFU basis: 989 TFLOP/s" || fail "MFU basis not stated"

# bf16 learns; killed + resumed == uninterrupted, in both dtypes
for dtype in bf16 f32; do
  args=(--shape tiny --layer-types lckv:1 --forward-passes 1 --backward-passes 2 --data "$tmp/data" --steps 60
        --batch 8 --seq 64 --lr 3e-3 --warmup 5 --save-every 10 --eval-every 20 --eval-batches 4 --seed 3
        --device cuda --dtype $dtype)
  "$xlkv" train "${args[@]}" --out "$tmp/straight-$dtype" 2>"$tmp/straight.log" || { tail -5 "$tmp/straight.log"; fail "train $dtype"; continue; }
  first=$(grep -m1 "^eval" "$tmp/straight.log" | awk '{print $NF}'); last=$(grep "^eval" "$tmp/straight.log" | tail -1 | awk '{print $NF}')
  python3 -c "import sys; sys.exit(0 if float('$last') < float('$first') else 1)" \
    && echo "ok   cuda $dtype learns: held-out loss $first (step 20) -> $last (step 60)" || fail "cuda $dtype held-out loss $first -> $last"
  "$xlkv" train "${args[@]}" --out "$tmp/killed-$dtype" 2>"$tmp/killed.log" &
  pid=$!
  for _ in $(seq 1 3000); do
    [ -e "$tmp/killed-$dtype/latest" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.02
  done
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  echo "note: killed with SIGKILL at $(readlink "$tmp/killed-$dtype/latest")"
  "$xlkv" train "${args[@]}" --out "$tmp/killed-$dtype" --resume 2>"$tmp/resumed.log" || { tail -5 "$tmp/resumed.log"; fail "resume $dtype"; continue; }
  grep -q "resumed from" "$tmp/resumed.log" && echo "ok   $dtype $(grep 'resumed from' "$tmp/resumed.log")" || fail "no resume message"
  for f in model.safetensors trainer_state.bin; do
    cmp -s "$tmp/straight-$dtype/latest/$f" "$tmp/killed-$dtype/latest/$f" \
      && echo "ok   cuda $dtype killed + resumed == uninterrupted: $f" || fail "cuda $dtype killed + resumed differs in $f"
  done
  "$xlkv" generate -m "$tmp/straight-$dtype/latest" -p "ROMEO:" -n 24 -s 1 >"$tmp/gen.txt" 2>"$tmp/gen.err" \
    && echo "ok   generate (cpu) from the cuda $dtype checkpoint: $(tr '\n' ' ' <"$tmp/gen.txt" | head -c 70)" \
    || fail "generate: $(cat "$tmp/gen.err")"
  "$xlkv" generate -m "$tmp/straight-$dtype/latest" -p "ROMEO:" -n 24 -s 1 --device cuda >"$tmp/gen.txt" 2>"$tmp/gen.err" \
    && echo "ok   generate --device cuda from the cuda $dtype checkpoint" || fail "generate --device cuda: $(cat "$tmp/gen.err")"
done

# flash attention (bf16 default where head_dim is 64): tracks f32, deterministic, refused in f32
flash_args=(--shape default --layer-types lckv:1 --forward-passes 1 --backward-passes 2 --data "$tmp/data" --steps 12
            --batch 4 --seq 100 --lr 1e-3 --warmup 3 --seed 7 --eval-every 12 --eval-batches 2 --device cuda)
"$xlkv" train "${flash_args[@]}" --dtype f32 --out "$tmp/flash-f32" 2>"$tmp/flash-f32.log" || { tail -3 "$tmp/flash-f32.log"; fail "default-shape f32"; }
for run in a b; do
  "$xlkv" train "${flash_args[@]}" --dtype bf16 --out "$tmp/flash-$run" 2>"$tmp/flash-$run.log" || { tail -3 "$tmp/flash-$run.log"; fail "flash bf16 run $run"; }
done
python3 - "$tmp/flash-f32.log" "$tmp/flash-a.log" <<'PY' || failures=$((failures + 1))
import re, sys
def losses(path):
    return [float(m.group(1)) for m in re.finditer(r"^step +\d+/\d+ \| loss ([0-9.]+)", open(path).read(), re.M)]
f32, flash = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(a - b) / abs(a) for a, b in zip(f32, flash)) if f32 and len(f32) == len(flash) else float("inf")
print(f"check cli flash: f32  {' '.join(f'{x:.4f}' for x in f32)}")
print(f"check cli flash: bf16 {' '.join(f'{x:.4f}' for x in flash)}")
ok = worst <= 3e-2
print(f"{'ok  ' if ok else 'FAIL'} cli bf16 flash vs f32 (default shape, lckv:1, seq 100): worst relative loss difference {worst:.2e} (tolerance 3e-2)")
sys.exit(0 if ok else 1)
PY
for f in model.safetensors trainer_state.bin; do
  cmp -s "$tmp/flash-a/latest/$f" "$tmp/flash-b/latest/$f" && echo "ok   cuda bf16 flash: two runs give the same $f" \
    || fail "cuda bf16 flash: two runs differ in $f"
done
if XLKV_TRAIN_ATTENTION=flash "$xlkv" train "${flash_args[@]}" --dtype f32 --out "$tmp/x" 2>"$tmp/err"; then fail "flash accepted in f32"
else grep -q "XLKV_TRAIN_ATTENTION=flash needs --dtype bf16" "$tmp/err" && echo "ok   error: $(tail -1 "$tmp/err")" || fail "message: $(cat "$tmp/err")"; fi

if "$xlkv" train --shape tiny --data "$tmp/data" --out "$tmp/x" --dtype f32 2>"$tmp/err"; then fail "--dtype without cuda accepted"
else grep -q "applies to --device cuda" "$tmp/err" && echo "ok   error: $(cat "$tmp/err")" || fail "message: $(cat "$tmp/err")"; fi
[ $failures -eq 0 ] && echo "all cuda train CLI checks passed" || { echo "$failures failure(s)"; exit 1; }
