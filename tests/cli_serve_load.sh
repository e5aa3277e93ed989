#!/usr/bin/env bash
# tests/cli_serve_load: load test of `xlkv serve` (tests/serve/load_test.py): 64 concurrent streaming clients for
# $XLKV_SERVE_LOAD_SECONDS (default 40 s in the ASan build, 30 s in release), no failed request, no leak at shutdown.
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/serve/load_test.py" "$1"
