#!/usr/bin/env bash
# Runs on the GPU machine (device tool): one time-boxed pass over everything that needs the GPU before a release —
# the CUDA tests, then the figures the README quotes (batch-1 decode with the GEMV variants, the throughput protocol's
# 5+2043 ratios, the serving benchmark under one memory budget, trainer speed, evaluation on the GPU). Every part has
# its own time limit so the whole stays inside one 10-minute command; what a part leaves is in $OUT either way.
#   XLKV_COMMIT=abc1234 bash scripts/gpu-release-run.sh
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start)) s] $*"; }
bash scripts/gpu-session.sh >"$out/build-session.log" 2>&1 || { cat "$out/build-session.log"; exit 1; }
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu:$PWD/.deps/root/lib/x86_64-linux-gnu:$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export XLKV_SHARED_DATA=$PWD/devdata
stamp "built"

(cd build && timeout 220 ctest -L cuda -V --timeout 200) >"$out/test-cuda.log" 2>&1
stamp "cuda tests exit $?"
grep -E "tests passed|Failed|\*\*\*|FAIL" "$out/test-cuda.log" | grep -v "0 failures\|differ" | head -20

{
  timeout 45 ./build/bench_gpu_step --batch 1 --context 512
  for v in default plain; do
    if [ $v = default ]; then unset XLKV_GEMV; else export XLKV_GEMV=$v; fi
    echo "== XLKV_GEMV=$v"
    timeout 25 ./build/bench_gpu --what decode --maps standard,lckv:2 --runs 3 --out "$out/gpu.jsonl" | tail -4
  done
  unset XLKV_GEMV
} >"$out/decode-b1.log" 2>&1
stamp "b1 decode"; grep -E "tokens/s at batch 1|^standard|^lckv|== " "$out/decode-b1.log"

timeout 100 ./build/bench_gpu --what throughput --maps standard,cla:2 --settings 5+2043 --budgets 16 --limit-s 40 \
  --out "$out/gpu.jsonl" >"$out/throughput.log" 2>&1
stamp "throughput"; tail -5 "$out/throughput.log"

MAPS=standard,cla:2,lckv:2 LEVELS=256,2048 SECONDS_PER_LEVEL=6 PROMPT=128 GEN=128 BUDGET_MIB=4096 PARALLEL=4096 \
  timeout 100 bash bench/run_serve_gpu.sh build/xlkv >"$out/serve.log" 2>&1
cp bench/results/serve-tinyllama-*.json "$out/" 2>/dev/null
stamp "serve"; grep -iE "concurrency|running|req/s|tokens/s" "$out/serve.log" | head -12

timeout 45 ./build/bench_train_gpu --out "$out/train_gpu.jsonl" >"$out/train-bench.log" 2>&1
stamp "train bench"; tail -6 "$out/train-bench.log"

{
  for m in models/xlkv-gutenberg-standard models/xlkv-gutenberg-cla2; do
    timeout 12 ./build/xlkv perplexity --device cuda -m "$m" -f devdata/text/tinyshakespeare.txt --ctx 512 --max-tokens 8000 2>&1 | tail -1
    timeout 12 ./build/xlkv perplexity -m "$m" -f devdata/text/tinyshakespeare.txt --ctx 512 --max-tokens 8000 2>&1 | tail -1
  done
} >"$out/eval-gpu.log" 2>&1
stamp "eval"; cat "$out/eval-gpu.log"
