#!/usr/bin/env bash
# tests/cli_serve_api: `xlkv serve` API test (tests/serve/api_test.py): every route, streaming and not, errors, the
# API key, concurrency, disconnects, 503, shutdown; stories260K on the CPU backend (skips when the model is absent).
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/serve/api_test.py" "$1"
