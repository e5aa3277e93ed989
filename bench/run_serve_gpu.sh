#!/usr/bin/env bash
# bench/run_serve_gpu.sh: the serving benchmark of issue 7 on the GPU machine. For each layer map (default:
# standard, cla:2, lckv:2) it starts `xlkv serve --random-shape tinyllama` on cuda under the same memory budget
# (--memory-budget-mib, default 16384: weights + activations + KV pool), with --ignore-eos so every request
# generates exactly --max-tokens, runs bench/bench_serve.py at rising concurrency against it, and stops it.
# Results: bench/results/serve-tinyllama-MAP.json (requests/s, output tokens/s, TTFT and ITL p50/p99, the most
# requests running at once and the longest queue). A sharing map must show proportionally more requests running
# before the queue grows (KV bytes per token: standard 22 KV layers, cla:2 11, lckv:2 3).
#   bench/run_serve_gpu.sh [build/xlkv]     env: MAPS, LEVELS, BUDGET_MIB, PARALLEL, SECONDS_PER_LEVEL, PROMPT, GEN, PORT
set -u
xlkv=${1:-build/xlkv}
here=$(cd "$(dirname "$0")" && pwd)
maps=${MAPS:-standard,cla:2,lckv:2}
levels=${LEVELS:-1,16,64,256,512,1024}
budget=${BUDGET_MIB:-16384}
parallel=${PARALLEL:-1024}
seconds=${SECONDS_PER_LEVEL:-30}
prompt=${PROMPT:-512}
gen=${GEN:-512}
port=${PORT:-8089}
status=0
for map in ${maps//,/ }; do
  log=$(mktemp)
  "$xlkv" serve --random-shape tinyllama --layer-types "$map" --device cuda --port "$port" \
    --parallel "$parallel" --queue 8192 --memory-budget-mib "$budget" --ignore-eos --max-connections 4096 \
    -c $((prompt + gen)) 2>"$log" &
  pid=$!
  for _ in $(seq 1 600); do grep -q "listening on" "$log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if ! grep -q "listening on" "$log"; then
    echo "run_serve_gpu: the server for $map did not start:"; cat "$log"; status=1; kill "$pid" 2>/dev/null; continue
  fi
  grep "xlkv serve:" "$log" | head -3
  python3 "$here/bench_serve.py" --url "http://127.0.0.1:$port" --concurrency "$levels" --duration-s "$seconds" \
    --prompt-tokens "$prompt" --max-tokens "$gen" --label "tinyllama-${map//:/}" || status=1
  kill -TERM "$pid"
  wait "$pid" || status=1
  tail -1 "$log"
  rm -f "$log"
done
exit $status
