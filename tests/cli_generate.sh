#!/usr/bin/env bash
# tests/cli_generate: the llama2.c golden. Greedy decoding of stories260K for 200 tokens from BOS must reproduce
# llama2.c run.c's output byte for byte, under the standard map and under every map that leaves each layer reading
# itself (explicit string, presets that reduce to it, sliding windows wider than the text, an empty KVSharer map),
# in the default and the sequential modes. Also checks that generate's errors are clear.
set -u
xlkv=$1
source "$(dirname "$0")/support/cli_stories260k.sh"
check() { # name, then xlkv arguments
  local name=$1; shift
  if ! "$xlkv" generate -m "$model" -n 200 --temp 0 "$@" >"$tmp/out" 2>"$tmp/err"; then
    echo "FAIL $name: exit status $? ($(cat "$tmp/err"))"; failures=$((failures + 1)); return
  fi
  if cmp -s "$tmp/out" "$golden"; then echo "ok   $name"; else
    echo "FAIL $name: output differs from the golden"; diff <(cat "$golden") "$tmp/out" | head -5
    failures=$((failures + 1))
  fi
}
echo '{}' >"$tmp/empty-map.json"
check "standard (checkpoint's own map)"
check "explicit 0_1_2_3_4" --layer-types 0_1_2_3_4
check "preset standard" --layer-types standard
check "preset cla:1" --layer-types cla:1
check "preset pizza-top:5" --layer-types pizza-top:5
check "preset lasagna-middle:5" --layer-types lasagna-middle:5
check "sliding window 512 on every layer" --layer-types 0s_1s_2s_3s_4s --sliding-window 512
check "empty KVSharer map" --kv-map "$tmp/empty-map.json"
check "sequential mode, 1 thread" --sequential -t 1

# a sharing map changes the text (the test can fail)
"$xlkv" generate -m "$model" -n 200 --temp 0 --layer-types lckv:2 >"$tmp/out" 2>/dev/null
if cmp -s "$tmp/out" "$golden"; then echo "FAIL lckv:2 produced the standard text"; failures=$((failures + 1)); fi

# errors: clear message, non-zero status, nothing on stdout
expect_error() { # name, expected substring, then arguments
  local name=$1 needle=$2; shift 2
  "$xlkv" generate "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 0 ] && grep -q -- "$needle" "$tmp/err" && [ ! -s "$tmp/out" ]; then echo "ok   error: $name"; else
    echo "FAIL error: $name (status $rc, stderr: $(cat "$tmp/err"))"; failures=$((failures + 1)); fi
}
expect_error "no model" "no model given"
expect_error "missing file" "cannot" -m "$tmp/nonexistent.bin"
expect_error "bad layer map" "entry 2" -m "$model" --layer-types 0_1_x_3_4
expect_error "wrong layer count" "5 layers" -m "$model" --layer-types 0_1_2
expect_error "bad temperature" "temperature" -m "$model" --temp -1
expect_error "bad number" "expects an integer" -m "$model" -n abc
expect_error "unknown option" "unknown option" -m "$model" --frobnicate
expect_error "both maps" "kv" -m "$model" --layer-types standard --kv-map "$tmp/empty-map.json"
head -c 1000 "$model" >"$tmp/truncated.bin"
cp "$data/models/stories260K/tok512.bin" "$tmp/tok512.bin"
expect_error "truncated checkpoint" "truncated.bin" -m "$tmp/truncated.bin"
"$xlkv" generate --help | grep -q -- "--n-predict" && echo "ok   --help" || { echo "FAIL --help"; failures=$((failures + 1)); }
[ $failures -eq 0 ] || { echo "$failures failures"; exit 1; }
