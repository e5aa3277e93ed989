#!/usr/bin/env bash
# tests/cli_serve_scale: `xlkv serve` with 1536 streaming connections open at once (tests/serve/scale_test.py):
# descriptors above FD_SETSIZE, the open-file limit raised by the server, no failed request; stories260K on CPU.
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/serve/scale_test.py" "$1"
