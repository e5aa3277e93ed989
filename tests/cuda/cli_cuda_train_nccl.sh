#!/usr/bin/env bash
# tests/cuda/cli_cuda_train_nccl (label cuda: needs a GPU, mpirun and an xlkv built with NCCL): data-parallel CUDA
# training through NCCL.
#   - world size 1 through NCCL equals the plain CUDA trainer: `mpirun -np 1 xlkv train --device cuda` (the
#     gradients go through the bucketed ncclAllReduce overlapped with the backward, the same streams, events,
#     polling and bucket-coverage check as P ranks) ends with the same per-step losses and parameters as
#     `xlkv train --device cuda`, in f32 and bf16, with accumulation 2 (expected bit-identical: a sum over one rank;
#     tolerance 0 for losses, 1e-7 for parameters);
#   - with 2 or more GPUs visible: `mpirun -np 2 --batch 4` equals `-np 1 --batch 8` (f32; relative loss 1e-5,
#     parameters 1e-4: the batch sums are split in two; this is the check that the buckets are ordered right, as a
#     missing wait would read half-finished gradients), else says it was not run;
#   - a rank whose data directory is missing stops the job with a message (no hang).
# Prints "check ..." lines with the measured differences.
set -u
xlkv=$1
source "$(dirname "$0")/../support/cli_train_data.sh"
source "$src/scripts/mpi-env.sh"
command -v "${mpirun_cmd[0]}" >/dev/null || { echo "FAIL mpirun not found (openmpi-bin; staged in .deps on the GPU machine?)"; exit 1; }
compare="python3 $src/tests/support/compare_train_runs.py"
mpi=(timeout 600 "${mpirun_cmd[@]}")

"$xlkv" tokenize --tokenizer "$tok" -o "$tmp/data" --valid-fraction 0.1 "$text" 2>"$tmp/err" \
  || { cat "$tmp/err"; echo "FAIL tokenize"; exit 1; }

for dtype in f32 bf16; do
  args=(--shape tiny --layer-types lckv:1 --forward-passes 1 --backward-passes 2 --data "$tmp/data" --steps 20
        --batch 8 --seq 64 --accum 2 --lr 3e-3 --warmup 5 --eval-every 10 --eval-batches 2 --seed 3 --device cuda
        --dtype $dtype)
  "$xlkv" train "${args[@]}" --out "$tmp/plain-$dtype" 2>"$tmp/plain-$dtype.log" \
    || { tail -5 "$tmp/plain-$dtype.log"; fail "plain cuda $dtype"; continue; }
  if "${mpi[@]}" -np 1 "$xlkv" train "${args[@]}" --out "$tmp/nccl1-$dtype" 2>"$tmp/nccl1-$dtype.log"; then
    grep -q "on 1 rank (global batch 8, NCCL all-reduce)" "$tmp/nccl1-$dtype.log" \
      && echo "check nccl world 1 $dtype: $(head -1 "$tmp/nccl1-$dtype.log")" || fail "the run did not say it uses NCCL"
    result=$($compare "$tmp/plain-$dtype/latest" "$tmp/nccl1-$dtype/latest" --loss-tol 0 --param-tol 1e-7)
    [ $? -eq 0 ] && echo "ok   check nccl world 1 == plain cuda trainer ($dtype): $result" \
      || fail "nccl world 1 differs from the plain cuda trainer ($dtype): $result"
  else
    tail -15 "$tmp/nccl1-$dtype.log"; fail "mpirun -np 1 --device cuda $dtype"
  fi
done

gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
[ -n "${CUDA_VISIBLE_DEVICES:-}" ] && gpus=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .) # what CUDA sees
if [ "${gpus:-0}" -ge 2 ]; then
  args=(--shape tiny --layer-types cla:2 --data "$tmp/data" --steps 20 --seq 64 --lr 3e-3 --warmup 5 --seed 3
        --device cuda --dtype f32)
  "${mpi[@]}" -np 1 "$xlkv" train "${args[@]}" --batch 8 --out "$tmp/np1" 2>"$tmp/np1.log" || fail "-np 1 batch 8"
  if "${mpi[@]}" -np 2 "$xlkv" train "${args[@]}" --batch 4 --out "$tmp/np2" 2>"$tmp/np2.log"; then
    result=$($compare "$tmp/np1/latest" "$tmp/np2/latest" --loss-tol 1e-5 --param-tol 1e-4)
    [ $? -eq 0 ] && echo "ok   check 2 GPUs x batch 4 == 1 GPU x batch 8 (f32): $result" \
      || fail "2 GPUs x batch 4 differ from 1 GPU x batch 8: $result"
  else
    tail -15 "$tmp/np2.log"; fail "mpirun -np 2 --device cuda"
  fi
else
  echo "check 2 GPUs: not run ($gpus GPU visible)"
fi

args=(--shape tiny --layer-types cla:2 --steps 20 --seq 32 --batch 2 --seed 3 --device cuda --out "$tmp/failing")
start=$SECONDS
"${mpi[@]}" -np 1 "$xlkv" train "${args[@]}" --data "$tmp/data" : -np 1 "$xlkv" train "${args[@]}" \
  --data "$tmp/missing" >/dev/null 2>"$tmp/nodata.log"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1 of 2: .*missing.*stopping every rank" "$tmp/nodata.log" \
  && echo "ok   check a rank without data stops the job in $((SECONDS - start)) s" \
  || { cat "$tmp/nodata.log"; fail "a rank without data (exit $rc; 124 = hung until the timeout)"; }

[ $failures -eq 0 ] && echo "all nccl training checks passed" || { echo "$failures failures"; exit 1; }
