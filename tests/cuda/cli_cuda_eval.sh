#!/usr/bin/env bash
# tests/cuda/cli_cuda_eval (label cuda: needs a GPU): `xlkv perplexity` and `xlkv eval` on --device cuda (scored on
# the device: backend/cuda/cuda_score.c) print the CPU's numbers for stories260K.
#   - the committed task samples through cuda f32 reproduce the reference scores of scripts/make_eval_fixtures.py
#     (acc / acc_norm exactly, LAMBADA perplexity to 1e-4), as tests/cli_eval.sh checks on the CPU;
#   - perplexity (a tinyshakespeare slice, --ctx 128 --stride 48 and the default 512 / 256): cuda f32 = cpu to 1e-5
#     relative, same token count; bf16 (the cuda default) within 2e-2 relative;
#   - eval --tasks piqa,hellaswag,lambada_openai,winogrande,boolq --limit 20 on the real files: cuda f32 acc / acc_norm
#     = cpu, perplexity to 1e-4 relative; bf16 runs and its accuracies are printed next to the cpu's (near ties may
#     flip an item: at most 3 of 20 per metric);
#   - --batch-size 1 and 32 give the same numbers on cuda.
# Every line prints the numbers it compared.
set -u
xlkv=$1
src=${XLKV_SOURCE_DIR:-.}
data=${XLKV_SHARED_DATA:-$src/../shared/data}
model=$data/models/stories260K/stories260K.bin
if [ ! -f "$model" ]; then
  echo "skipping: $model is absent (set XLKV_SHARED_DATA)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
run() { # name, output file, xlkv args...
  local name=$1 out=$2; shift 2
  if ! "$xlkv" "$@" >"$out" 2>"$tmp/err"; then fail "$name: $(tail -3 "$tmp/err")"; return 1; fi
}

# ---- the committed samples against the reference scores -------------------------------------------------------
samples=$src/tests/fixtures/eval/samples
mkdir -p "$tmp/data"
for f in "$samples"/*.jsonl; do cp "$f" "$tmp/data/"; done
cp "$samples/hellaswag.txt.bz2" "$tmp/data/hellaswag_val_full.txt.bz2"
if run "eval samples on cuda f32" "$tmp/out" eval -m "$model" --tasks all --data-dir "$tmp/data" --device cuda \
     --dtype f32 --json "$tmp/samples.json"; then
  python3 - "$tmp/samples.json" "$src/tests/fixtures/eval/stories260K_tasks.json" <<'PY' &&
import json, sys
got = json.load(open(sys.argv[1]))["results"]
ref = json.load(open(sys.argv[2]))["tasks"]
bad = []
for task, r in ref.items():
    g = got[task]
    if g["n"] != r["n"] or abs(g["acc"] - r["acc"]) > 1e-12:
        bad.append(f"{task}: n/acc {g['n']}/{g['acc']} vs {r['n']}/{r['acc']}")
    if (g["acc_norm"] is None) != (r["acc_norm"] is None) or (r["acc_norm"] is not None and abs(g["acc_norm"] - r["acc_norm"]) > 1e-12):
        bad.append(f"{task}: acc_norm {g['acc_norm']} vs {r['acc_norm']}")
    if r["perplexity"] is not None and abs(g["perplexity"] - r["perplexity"]) / r["perplexity"] > 1e-4:
        bad.append(f"{task}: perplexity {g['perplexity']} vs {r['perplexity']}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
    echo "ok   cuda f32 eval --tasks all on the committed samples = reference acc / acc_norm / LAMBADA perplexity" ||
    fail "cuda f32 eval on the samples differs from the reference"
fi

# ---- perplexity: cuda = cpu ---------------------------------------------------------------------------------
# compare_ppl NAME CPU_JSON CUDA_JSON REL_TOL
compare_ppl() {
  python3 - "$2" "$3" "$4" <<'PY' && echo "ok   $1" || fail "$1"
import json, sys
cpu, gpu, tol = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), float(sys.argv[3])
rel = abs(gpu["ppl"] - cpu["ppl"]) / cpu["ppl"]
print(f"     ppl cpu {cpu['ppl']:.9g} cuda {gpu['ppl']:.9g} (relative {rel:.3g}, tolerance {tol:g}); "
      f"tokens {cpu['tokens_scored']} / {gpu['tokens_scored']}")
sys.exit(0 if rel <= tol and cpu["tokens_scored"] == gpu["tokens_scored"] else 1)
PY
}
head -c 40000 "$data/text/tinyshakespeare.txt" >"$tmp/slice.txt" 2>/dev/null
if [ -s "$tmp/slice.txt" ]; then
  for window in "--ctx 128 --stride 48" ""; do
    label=${window:-default ctx 512 stride 256}
    # shellcheck disable=SC2086
    run "perplexity cpu ($label)" "$tmp/out" perplexity -m "$model" -f "$tmp/slice.txt" $window --json "$tmp/ppl_cpu.json" || continue
    # shellcheck disable=SC2086
    run "perplexity cuda f32 ($label)" "$tmp/out" perplexity -m "$model" -f "$tmp/slice.txt" $window --device cuda \
      --dtype f32 --json "$tmp/ppl_f32.json" && compare_ppl "perplexity cuda f32 = cpu ($label)" "$tmp/ppl_cpu.json" "$tmp/ppl_f32.json" 1e-5
    # shellcheck disable=SC2086
    run "perplexity cuda bf16 ($label)" "$tmp/out" perplexity -m "$model" -f "$tmp/slice.txt" $window --device cuda \
      --json "$tmp/ppl_bf16.json" && compare_ppl "perplexity cuda bf16 close to cpu ($label)" "$tmp/ppl_cpu.json" "$tmp/ppl_bf16.json" 2e-2
  done
  run "perplexity cuda f32 --batch-size 1" "$tmp/out" perplexity -m "$model" -f "$tmp/slice.txt" --ctx 128 --stride 48 \
    --device cuda --dtype f32 --batch-size 1 --json "$tmp/ppl_b1.json" &&
    run "perplexity cuda f32 --batch-size 32" "$tmp/out" perplexity -m "$model" -f "$tmp/slice.txt" --ctx 128 \
      --stride 48 --device cuda --dtype f32 --batch-size 32 --json "$tmp/ppl_b32.json" &&
    compare_ppl "perplexity cuda --batch-size 1 = --batch-size 32" "$tmp/ppl_b1.json" "$tmp/ppl_b32.json" 0
else
  echo "skipping perplexity: $data/text/tinyshakespeare.txt is absent"
fi

# ---- eval on the real files: cuda = cpu ------------------------------------------------------------------------
# compare_eval NAME CPU_JSON CUDA_JSON EXACT(1|0)
compare_eval() {
  python3 - "$2" "$3" "$4" <<'PY' && echo "ok   $1" || fail "$1"
import json, sys
cpu = json.load(open(sys.argv[1]))["results"]
gpu = json.load(open(sys.argv[2]))["results"]
exact = sys.argv[3] == "1"
bad = []
for task in sorted(cpu):
    c, g = cpu[task], gpu[task]
    line = f"     {task:15s} n {c['n']}/{g['n']}  acc {c['acc']:.4f}/{g['acc']:.4f}"
    if c["n"] != g["n"]:
        bad.append(f"{task}: n {c['n']} vs {g['n']}")
    for metric in ("acc", "acc_norm"):
        if c.get(metric) is None:
            continue
        limit = 1e-12 if exact else 3.0 / c["n"] + 1e-12
        if abs(c[metric] - g[metric]) > limit:
            bad.append(f"{task}: {metric} cpu {c[metric]} cuda {g[metric]}")
    if c.get("acc_norm") is not None:
        line += f"  acc_norm {c['acc_norm']:.4f}/{g['acc_norm']:.4f}"
    if c.get("perplexity") is not None:
        rel = abs(g["perplexity"] - c["perplexity"]) / c["perplexity"]
        line += f"  perplexity {c['perplexity']:.6g}/{g['perplexity']:.6g} (relative {rel:.3g})"
        if rel > (1e-4 if exact else 5e-2):
            bad.append(f"{task}: perplexity relative difference {rel}")
    print(line + "   (cpu/cuda)")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
if [ -d "$data/eval" ]; then
  tasks=piqa,hellaswag,lambada_openai,winogrande,boolq
  if run "eval cpu --limit 20" "$tmp/out" eval -m "$model" --tasks $tasks --limit 20 --data-dir "$data/eval" \
       --json "$tmp/eval_cpu.json"; then
    run "eval cuda f32 --limit 20" "$tmp/out" eval -m "$model" --tasks $tasks --limit 20 --data-dir "$data/eval" \
      --device cuda --dtype f32 --json "$tmp/eval_f32.json" &&
      compare_eval "eval cuda f32 = cpu (--limit 20: acc, acc_norm exact; perplexity 1e-4)" "$tmp/eval_cpu.json" "$tmp/eval_f32.json" 1
    run "eval cuda bf16 --limit 20" "$tmp/out" eval -m "$model" --tasks $tasks --limit 20 --data-dir "$data/eval" \
      --device cuda --json "$tmp/eval_bf16.json" &&
      compare_eval "eval cuda bf16 close to cpu (at most 3 of 20 items per metric; perplexity 5e-2)" "$tmp/eval_cpu.json" "$tmp/eval_bf16.json" 0
  fi
else
  echo "skipping eval on the real files: $data/eval is absent"
fi
[ $failures -eq 0 ] || { echo "$failures failures"; exit 1; }
echo "all cuda eval checks passed"
