#!/usr/bin/env bash
# tests/cuda/cli_cuda_serve (label cuda: needs a GPU): `xlkv serve --device cuda` (tests/serve/cuda_test.py): the
# golden through 16 concurrent requests in f32, and a short bench_serve run on random tinyllama weights (check lines).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
exec python3 "$here/serve/cuda_test.py" "$1"
