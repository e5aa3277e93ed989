#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang (ASan + UBSan) against the whole library and runs each for
# FUZZ_SECONDS (default 60). Corpora grow in build-fuzz/corpus_<name>, seeded from tests/fuzz/seeds_<name> when present.
# A crash stops the run and leaves crash-<hash> in build-fuzz/; `make fuzz` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
command -v clang >/dev/null || { echo "fuzz: clang is needed (apt-get install clang)" >&2; exit 1; }
mkdir -p build-fuzz
sources=$(find src -name '*.c' | sort)
blas_dir=/usr/lib/$(gcc -print-multiarch)/openblas-openmp
cflags="-g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc -I/usr/include/$(gcc -print-multiarch)/openblas-openmp -fopenmp"
for harness in tests/fuzz/fuzz_*.c; do
  name=$(basename "$harness" .c)
  short=${name#fuzz_}
  echo "fuzz: building $name"
  # shellcheck disable=SC2086
  clang $cflags "$harness" $sources -L"$blas_dir" -Wl,-rpath,"$blas_dir" -lopenblas -lcjson -lpcre2-8 -lm \
    -o "build-fuzz/$name"
  mkdir -p "build-fuzz/corpus_$short"
  [ -d "tests/fuzz/seeds_$short" ] && cp -n tests/fuzz/seeds_"$short"/* "build-fuzz/corpus_$short/" 2>/dev/null || true
  echo "fuzz: running $name for ${seconds}s"
  (cd build-fuzz && "./$name" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "corpus_$short" 2>&1 |
    grep -E "stat::number_of_executed_units|ERROR|SUMMARY" || true)
done
