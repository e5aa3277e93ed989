#!/usr/bin/env bash
# tests/cli_logits_chat: `xlkv logits` writes JSON that matches transformers' logits on a committed fixture, in the
# one-prompt, --prefill and --sequential modes; `xlkv chat` answers turns read from stdin, keeps the conversation in
# the cache, and honours /reset; both reject bad input with a clear message.
set -u
xlkv=$1
src=${XLKV_SOURCE_DIR:-.}
fixture=$src/tests/fixtures/hf/gqa_untied
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$fixture/logits.json'))['ids'])))")
for mode in "" "--prefill 5" "--sequential"; do
  # shellcheck disable=SC2086
  if ! "$xlkv" logits -m "$fixture" --ids "$ids" $mode -o "$tmp/out.json" 2>"$tmp/err"; then
    fail "logits $mode: $(cat "$tmp/err")"; continue
  fi
  python3 - "$tmp/out.json" "$fixture/logits.json" <<'PY' && echo "ok   logits ${mode:-(one prompt)}" || fail "logits $mode"
import json, sys
got, want = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert got["ids"] == want["ids"], "ids differ"
worst = max(abs(a - b) for ra, rb in zip(got["logits"], want["logits"]) for a, b in zip(ra, rb))
assert len(got["logits"]) == len(want["logits"]) and worst < 1e-4, f"max difference {worst}"
PY
done
expect_error() { # name, needle, args...
  local name=$1 needle=$2; shift 2
  "$xlkv" "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if [ $rc -ne 0 ] && grep -q -- "$needle" "$tmp/err"; then echo "ok   error: $name"; else
    fail "error: $name (status $rc, stderr: $(cat "$tmp/err"))"; fi
}
expect_error "ids not numbers" "entry 1" logits -m "$fixture" --ids 1,x,3
expect_error "id outside vocabulary" "outside the vocabulary" logits -m "$fixture" --ids 1,500
expect_error "prefill longer than ids" "exceeds" logits -m "$fixture" --ids 1,2 --prefill 3
expect_error "no ids" "exactly one of" logits -m "$fixture"
# the fixture has no tokenizer: the commands that read text say so in one wording (cli_model_has_tokenizer; eval,
# perplexity and search are checked in cli_eval and cli_search); serve must fail before it listens
for cmd in "chat" "generate -p hi" "serve --port 0"; do
  name=${cmd%% *}
  # shellcheck disable=SC2086 # the command's extra arguments
  timeout 60 "$xlkv" $name -m "$fixture" ${cmd#"$name"} </dev/null >"$tmp/out" 2>"$tmp/err"; rc=$?
  want="xlkv $name: the model has no tokenizer (none found beside $fixture; pass --tokenizer FILE)"
  if [ $rc -eq 1 ] && [ "$(cat "$tmp/err")" = "$want" ]; then echo "ok   error: $name without a tokenizer"; else
    fail "error: $name without a tokenizer (status $rc, stderr: $(cat "$tmp/err"))"; fi
done

data=${XLKV_SHARED_DATA:-$src/../shared/data}
model=$data/models/stories260K/stories260K.bin
if [ -f "$model" ]; then
  printf 'Once upon a time\nThe dog\n/reset\nOnce upon a time\n' |
    "$xlkv" chat -m "$model" --temp 0 -n 12 >"$tmp/chat" 2>"$tmp/err" || fail "chat: $(cat "$tmp/err")"
  lines=$(wc -l <"$tmp/chat")
  first=$(sed -n 1p "$tmp/chat"); third=$(sed -n 3p "$tmp/chat")
  if [ "$lines" -eq 3 ] && [ -n "$first" ] && [ "$first" = "$third" ] && grep -q "3 turns" "$tmp/err"; then
    echo "ok   chat: three answers, /reset restores the first"
  else fail "chat output: $(cat "$tmp/chat") / $(cat "$tmp/err")"; fi
  # the first answer equals what generate gives for the same prompt
  "$xlkv" generate -m "$model" -p "Once upon a time" --temp 0 -n 12 >"$tmp/gen" 2>/dev/null
  [ "$(cat "$tmp/gen")" = "$first" ] && echo "ok   chat answer = generate" || fail "chat '$first' vs generate '$(cat "$tmp/gen")'"
  expect_error "chat bad flag" "unknown option" chat -m "$model" --bogus
else
  echo "skipping chat: $model is absent"
fi
[ $failures -eq 0 ] || { echo "$failures failures"; exit 1; }
