#!/usr/bin/env bash
# tests/cli_serve_web: the chat page at / in headless Chromium (tests/serve/web_test.py): types a prompt, presses
# Enter, reads the streamed answer from the DOM. Skips without chromium or the model.
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/serve/web_test.py" "$1"
