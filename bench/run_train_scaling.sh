#!/usr/bin/env bash
# bench/run_train_scaling.sh: multi-GPU scaling of data-parallel training (issue 8). Runs
# `mpirun -np k xlkv train --device cuda` for k = 1, 2, 4, 8 (those <= the GPUs visible), the same per-rank batch
# (weak scaling: the global batch is k x batch), and reports tokens/s of the whole job (median over the steps after
# the first WARMUP_STEPS) and scaling efficiency = tokens/s on k GPUs / (k x tokens/s on 1 GPU); target >= 0.9 on one
# host. Writes bench/results/train_scaling-<device>-<commit>.json (or $JSON) and prints a table.
#
#   bash bench/run_train_scaling.sh                   # small shape, batch 8 x 1024 per GPU, 30 steps, bf16
#   RANKS="1 2" STEPS=20 bash bench/run_train_scaling.sh
#   DEVICE=cpu SHAPE_ARGS="--shape tiny" BATCH=4 SEQ=64 RANKS="1 2" bash bench/run_train_scaling.sh   # smoke test
# Environment: XLKV (default build/xlkv), DATA (token shards; default: tinyshakespeare tokenized with tok512 from
# XLKV_SHARED_DATA, ../shared/data or ./devdata), MAP (default cla:2), DTYPE (bf16), BATCH (8), SEQ (1024),
# STEPS (30), WARMUP_STEPS (5), SHAPE_ARGS ("--shape small"), RANKS, DEVICE (cuda), OUT_DIR (bench/results).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export XLKV_SOURCE_DIR=$root
source "$root/scripts/mpi-env.sh"
xlkv=${XLKV:-$root/build/xlkv}
device=${DEVICE:-cuda}
map=${MAP:-cla:2}
dtype=${DTYPE:-bf16}
batch=${BATCH:-8}
seq=${SEQ:-1024}
steps=${STEPS:-30}
warm=${WARMUP_STEPS:-5}
read -r -a shape_args <<<"${SHAPE_ARGS:---shape small}"
out_dir=${OUT_DIR:-$root/bench/results}
[ -x "$xlkv" ] || { echo "run_train_scaling: $xlkv not built (cmake --build build)"; exit 1; }
command -v "${mpirun_cmd[0]}" >/dev/null || { echo "run_train_scaling: mpirun not found (openmpi-bin)"; exit 1; }
if [ "$device" = cuda ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
  [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && gpus=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .) # what CUDA sees
  [ "${gpus:-0}" -ge 1 ] || { echo "run_train_scaling: no GPU visible (nvidia-smi -L); nothing measured"; exit 0; }
  device_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  device_args=(--device cuda --dtype "$dtype")
else
  gpus=$(nproc)
  device_name="cpu ($(nproc) cores)"
  device_args=(-t 1)
fi
ranks_list=${RANKS:-1 2 4 8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=${DATA:-}
if [ -z "$data" ]; then
  for shared in "${XLKV_SHARED_DATA:-}" "$root/../shared/data" "$root/devdata"; do
    [ -n "$shared" ] && [ -f "$shared/text/tinyshakespeare.txt" ] && [ -f "$shared/models/stories260K/tok512.bin" ] && break
    shared=""
  done
  [ -n "$shared" ] || { echo "run_train_scaling: set DATA to a token-shard directory (xlkv tokenize)"; exit 1; }
  data=$work/data
  "$xlkv" tokenize --tokenizer "$shared/models/stories260K/tok512.bin" -o "$data" --valid-fraction 0.05 \
    "$shared/text/tinyshakespeare.txt" 2>/dev/null || { echo "run_train_scaling: tokenize failed"; exit 1; }
fi
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
results=$work/runs.jsonl
: >"$results"
for k in $ranks_list; do
  if [ "$k" -gt "$gpus" ]; then echo "ranks $k: not run ($gpus ${device} devices visible)"; continue; fi
  log=$work/np$k.log
  if timeout 900 "${mpirun_cmd[@]}" -np "$k" "$xlkv" train "${shape_args[@]}" --layer-types "$map" --data "$data" \
      --out "$work/out-$k" --steps "$steps" --warmup 2 --batch "$batch" --seq "$seq" --seed 1 "${device_args[@]}" \
      2>"$log"; then
    python3 - "$log" "$k" "$warm" >>"$results" <<'PY'
import json, re, statistics, sys
log, k, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [(int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in
        re.finditer(r"^step +(\d+)/\d+ \| loss ([0-9.]+) .*\| (\d+) tok/s", open(log).read(), re.M)]
timed = [r[2] for r in rows if r[0] > warm] or [r[2] for r in rows]
print(json.dumps({"ranks": k, "tokens_per_s": statistics.median(timed), "steps_timed": len(timed),
                  "final_loss": rows[-1][1] if rows else None}))
PY
    echo "ranks $k: $(tail -1 "$results")"
  else
    echo "ranks $k: FAILED (exit $?)"; tail -20 "$log"
  fi
done
mkdir -p "$out_dir"
tag=$(echo "$device_name" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//' | tr 'A-Z' 'a-z')
json=${JSON:-$out_dir/train_scaling-$tag-$commit.json}
python3 - "$results" "$json" <<PY
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base = next((r["tokens_per_s"] for r in runs if r["ranks"] == 1), None)
for r in runs:
    r["efficiency"] = r["tokens_per_s"] / (r["ranks"] * base) if base else None
doc = {"what": "data-parallel xlkv train, weak scaling (same per-rank batch); tokens/s of the whole job, median of "
               "the steps after the first $warm; efficiency = tokens/s on k / (k x tokens/s on 1)",
       "device": "$device_name", "commit": "$commit", "shape": "${shape_args[*]}", "map": "$map",
       "dtype": "$dtype" if "$device" == "cuda" else "f32", "batch_per_rank": $batch, "seq": $seq, "steps": $steps,
       "gradient_all_reduce": "NCCL, fp32 gradients in per-layer buckets overlapped with the backward"
                              if "$device" == "cuda" else "MPI_Allreduce",
       "target_efficiency": 0.9, "runs": runs}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
print(f"{'ranks':>5} {'tokens/s':>12} {'efficiency':>10}")
for r in runs:
    eff = f"{r['efficiency']:.3f}" if r["efficiency"] is not None else "-"
    print(f"{r['ranks']:>5} {r['tokens_per_s']:>12.0f} {eff:>10}")
print(f"wrote {sys.argv[2]}")
PY
