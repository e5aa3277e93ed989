#!/usr/bin/env bash
# Runs on the GPU machine (device tool), after scripts/gpu-release-run.sh: the checks and figures of the last changes
# in one short command — the engine test (varlen prefill), 5+2043 at 16 GiB with the varlen prefill, KVSharer maps of
# the shipped standard model under one memory budget, and the serving benchmark (standard, cla:2, lckv:2). Everything
# it writes goes into $OUT/final.tar (what comes back from $OUT is at most 8 files).
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
res=$PWD/gpu-final
mkdir -p "$out" "$res"
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start)) s] $*"; }
finish() { tar -C "$res" -cf "$out/final.tar" . ; }
trap finish EXIT
bash scripts/gpu-session.sh >"$res/build-session.log" 2>&1 || { tail -20 "$res/build-session.log"; exit 1; }
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu:$PWD/.deps/root/lib/x86_64-linux-gnu:$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export XLKV_SHARED_DATA=$PWD/devdata XLKV_SOURCE_DIR=$PWD
stamp "built"

timeout 60 ./build/cuda_test_cuda_engine >"$res/engine.log" 2>&1
stamp "engine test exit $?"; grep -E "^check \(j\)|FAIL|PASSED|FAILED" "$res/engine.log" | head -12

timeout 70 ./build/bench_gpu --what throughput --maps standard,cla:2 --settings 5+2043 --budgets 16 --limit-s 30 \
  --out "$res/gpu.jsonl" >"$res/throughput.log" 2>&1
stamp "throughput (varlen)"; tail -4 "$res/throughput.log"

m=models/xlkv-gutenberg-standard
timeout 60 ./build/xlkv bench throughput --device cuda -m "$m" --layer-types standard,0_1_2_3_4_4,0_1_2_3_3_3,0_1_2_1_1_1 \
  --settings 128+384 --budget 256MiB --limit-s 12 --json "$res/kvsharer-gpu.jsonl" --svg "$res/kvsharer-gpu.svg" \
  >"$res/kvsharer-gpu.log" 2>&1
stamp "kvsharer maps on the GPU"; tail -8 "$res/kvsharer-gpu.log"

MAPS=standard,cla:2,lckv:2 LEVELS=256,2048 SECONDS_PER_LEVEL=6 PROMPT=128 GEN=128 BUDGET_MIB=4096 PARALLEL=4096 \
  timeout 110 bash bench/run_serve_gpu.sh build/xlkv >"$res/serve.log" 2>&1
cp bench/results/serve-tinyllama-*.json "$res/" 2>/dev/null
stamp "serve"; grep -E "^ *(256|2048) " "$res/serve.log" | head -8
