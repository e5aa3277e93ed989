#!/usr/bin/env bash
# tests/cli_serve_cadence: streamed tokens of `xlkv serve` arrive one decode step apart (tests/serve/cadence_test.py),
# measured on the shipped model on the CPU backend.
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/serve/cadence_test.py" "$1"
