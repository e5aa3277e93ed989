#!/usr/bin/env bash
# Runs on the GPU machine (device tool): builds xlkv against the Debian packages staged in .deps/ (see
# ../shared/tools/stage-deps.sh; the GPU machine has no package registry), runs the CUDA tests and, optionally, the
# GPU benchmark. Logs and results go to $OUT (or ./gpu-out).
#   bash scripts/gpu-session.sh [tests] [bench] [bench-quick] [train-tests] [train-bench] [train-kernels] [train-nccl]
#                               [train-scaling] [train-gemm]
# Shared data is read from ./devdata (a copy of the parts of ../shared/data the tests need, carried with the call).
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
# .deps travels compressed (depsbundle/deps.tar.xz, ~8 MB instead of ~43 MB: the call's tree is capped at 64 MiB)
[ -d .deps/root ] || { [ -f depsbundle/deps.tar.xz ] && tar -xJf depsbundle/deps.tar.xz; }
export CMAKE_PREFIX_PATH=$PWD/.deps/root/usr
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu:$PWD/.deps/root/lib/x86_64-linux-gnu:$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export XLKV_SHARED_DATA=$PWD/devdata
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if ! { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j "$(nproc)"; } >"$out/build.log" 2>&1; then
  echo "build failed:"; grep -E "error|Error" "$out/build.log" | head -40; exit 1
fi
echo "build ok"
for what in "$@"; do
  case "$what" in
    tests)
      (cd build && ctest -L cuda -V --timeout 600) >"$out/test-cuda.log" 2>&1
      echo "test-cuda exit $?"; grep -E "^(ok|FAIL|CHECK|check)|Passed|Failed|tests passed|\*\*\*" "$out/test-cuda.log" | tail -60 ;;
    cpu-tests)
      (cd build && ctest -LE cuda --output-on-failure) >"$out/test-cpu.log" 2>&1; echo "cpu tests exit $?" ;;
    bench)
      ./build/bench_gpu --out "$out/gpu.jsonl" 2>&1 | tee "$out/bench.log" | tail -60 ;;
    train-tests)
      (cd build && ctest -R "cuda_test_cuda_train|cuda_cli_cuda_train" -V --timeout 600) >"$out/test-cuda-train.log" 2>&1
      echo "train tests exit $?"; grep -E "^(ok|FAIL|check|losses)|Passed|Failed|tests passed" "$out/test-cuda-train.log" | tail -120 ;;
    train-bench)  # issue 5: xlkv (standard, cla:2, lckv:2, with the step profile) then PyTorch eager and compile, in
      # one run. Two files: train-bench.txt (everything printed, JSON lines included, written as it goes so a cut run
      # keeps it) and train-bench.tar (the JSON files and logs, at the end)
      tb=$(mktemp -d); txt=$out/train-bench.txt; : >"$txt"
      # (BENCHMARKS.md's 127 M model, untied embeddings, every map; then the tied model, standard map)
      { ./build/bench_train_gpu --profile --out "$tb/train_gpu.jsonl" 2>&1; echo "bench_train_gpu exit $?"
        ./build/bench_train_gpu --embeddings tied --maps standard --out "$tb/train_gpu.jsonl" 2>&1
        echo "bench_train_gpu --embeddings tied exit $?"; } |
        tee "$tb/train-gpu.log" | tee -a "$txt"
      { echo "# bench_train_gpu JSON lines"; cat "$tb/train_gpu.jsonl"; } >>"$txt"
      { timeout "${TORCH_TIMEOUT_S:-300}" python3 scripts/bench_train_torch.py --quick --out "$tb/train_torch.jsonl" \
          2>"$tb/train-torch.err"; echo "bench_train_torch exit $? (124: cut at ${TORCH_TIMEOUT_S:-300} s)"; } |
        tee "$tb/train-torch.log" | tee -a "$txt"
      grep -E "Error|error" "$tb/train-torch.err" | tail -5 | tee -a "$txt"
      python3 scripts/train_bench_summary.py "$tb/train_gpu.jsonl" "$tb/train_torch.jsonl" 2>&1 | tee -a "$txt"
      tar -cf "$out/train-bench.tar" -C "$tb" . ;;
    train-kernels) # issue 5: the trainer's memory-bound kernels vs a same-size memcpy, then the standard step with its
      # profile; each again with XLKV_TRAIN_NORM_ROWS=loops (the former RMSNorm kernels) for the A/B. train-kernels.txt
      { ./build/bench_train_kernels --out "$out/train_kernels.jsonl"; echo "bench_train_kernels exit $?"
        XLKV_TRAIN_NORM_ROWS=loops ./build/bench_train_kernels --out "$out/train_kernels-loops.jsonl"
        echo "bench_train_kernels (XLKV_TRAIN_NORM_ROWS=loops) exit $?"
        ./build/bench_train_gpu --maps standard --profile --out "$out/train_gpu.jsonl"; echo "bench_train_gpu exit $?"
        XLKV_TRAIN_NORM_ROWS=loops ./build/bench_train_gpu --maps standard --profile --out "$out/train_gpu-loops.jsonl"
        echo "bench_train_gpu (XLKV_TRAIN_NORM_ROWS=loops) exit $?"; } 2>&1 | tee "$out/train-kernels.txt" ;;
    train-gemm)   # issue 5: the step's products, cublasGemmEx vs cuBLASLt (heuristic, best of the top 16), then the
      # standard step with its profile unset / heuristic / tune=FILE twice (the second reads the file). train-gemm.txt
      { ./build/bench_train_gemm --out "$out/train_gemm.jsonl"; echo "bench_train_gemm exit $?"
        ./build/bench_train_gemm --unfused --out "$out/train_gemm.jsonl"; echo "bench_train_gemm --unfused exit $?"
        for lt in "" heuristic "tune=$out/gemm.tune" "tune=$out/gemm.tune"; do
          XLKV_TRAIN_GEMM_LT=$lt ./build/bench_train_gpu --maps standard --profile --out "$out/train_gpu.jsonl"
          echo "bench_train_gpu (XLKV_TRAIN_GEMM_LT=$lt) exit $?"; done
        (cd build && ctest -R cuda_test_cuda_train_gemm_lt -V --timeout 900) >"$out/test-cuda-train-gemm-lt.log" 2>&1
        echo "cuda_test_cuda_train_gemm_lt exit $?"
        grep -E "^(check|losses)|Passed|Failed|tests passed" "$out/test-cuda-train-gemm-lt.log" | tail -120
      } 2>&1 | tee "$out/train-gemm.txt" ;;
    train-nccl)   # data-parallel through NCCL (needs mpirun: openmpi-bin and libopenmpi-dev staged in .deps)
      (cd build && ctest -R cuda_cli_cuda_train_nccl -V --timeout 900) >"$out/test-cuda-train-nccl.log" 2>&1
      echo "nccl train test exit $?"; grep -E "^(ok|FAIL|check)|Passed|Failed|tests passed" "$out/test-cuda-train-nccl.log" | tail -40 ;;
    train-scaling) # tokens/s on 1, 2, 4, 8 GPUs (those visible) and scaling efficiency
      OUT_DIR="$out" bash bench/run_train_scaling.sh 2>&1 | tee "$out/train-scaling.log" | tail -20 ;;
    bench-quick)
      ./build/bench_gpu --quick --out "$out/gpu-quick.jsonl" 2>&1 | tee "$out/bench-quick.log" | tail -60 ;;
  esac
done
