#!/usr/bin/env bash
# tests/cli_eval: `xlkv perplexity` and `xlkv eval` end to end on stories260K: the committed task samples reproduce
# the reference scores of scripts/make_eval_fixtures.py through the CLI (acc, acc_norm, JSON), --limit on the real
# data, a sharing map, and the failures users meet: unknown task, absent data, malformed lines (stop and skip), no
# tokenizer, a text file that does not exist, bad flag values.
set -u
xlkv=$1
src=${XLKV_SOURCE_DIR:-.}
data=${XLKV_SHARED_DATA:-$src/../shared/data}
model=$data/models/stories260K/stories260K.bin
if [ ! -f "$model" ]; then
  echo "skipping: $model is absent (set XLKV_SHARED_DATA)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
pass() { echo "ok   $1"; }
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
# expect_error NAME NEEDLE xlkv-args...: non-zero exit and NEEDLE on stderr
expect_error() {
  local name=$1 needle=$2; shift 2
  if "$xlkv" "$@" >"$tmp/out" 2>"$tmp/err"; then fail "$name: exit status 0"; return; fi
  if grep -qF -- "$needle" "$tmp/err"; then pass "$name"; else fail "$name: stderr lacks '$needle': $(cat "$tmp/err")"; fi
}

# the committed samples, laid out as a data directory, against the reference scores
samples=$src/tests/fixtures/eval/samples
mkdir -p "$tmp/data"
for f in "$samples"/*.jsonl; do cp "$f" "$tmp/data/"; done
cp "$samples/hellaswag.txt.bz2" "$tmp/data/hellaswag_val_full.txt.bz2"
if "$xlkv" eval -m "$model" --tasks all --data-dir "$tmp/data" --json "$tmp/samples.json" -t 2 >"$tmp/out" 2>"$tmp/err"; then
  if python3 - "$tmp/samples.json" "$src/tests/fixtures/eval/stories260K_tasks.json" <<'PY'
import json, math, sys
got = json.load(open(sys.argv[1]))["results"]
ref = json.load(open(sys.argv[2]))["tasks"]
bad = []
for task, r in ref.items():
    g = got[task]
    if g["n"] != r["n"] or abs(g["acc"] - r["acc"]) > 1e-12:
        bad.append(f"{task}: n/acc {g['n']}/{g['acc']} vs {r['n']}/{r['acc']}")
    if (g["acc_norm"] is None) != (r["acc_norm"] is None) or (r["acc_norm"] is not None and abs(g["acc_norm"] - r["acc_norm"]) > 1e-12):
        bad.append(f"{task}: acc_norm {g['acc_norm']} vs {r['acc_norm']}")
    if r["perplexity"] is not None and abs(g["perplexity"] - r["perplexity"]) / r["perplexity"] > 1e-4:
        bad.append(f"{task}: perplexity {g['perplexity']} vs {r['perplexity']}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
  then pass "eval --tasks all on the committed samples = reference acc / acc_norm / LAMBADA perplexity"
  else fail "eval on the samples differs from the reference"; fi
  grep -q "^lambada_openai" "$tmp/out" && grep -q "acc_norm" "$tmp/out" && pass "results table" || fail "results table: $(cat "$tmp/out")"
else
  fail "eval on the samples: $(cat "$tmp/err")"
fi

# the real data with --limit, and a sharing map (runs; scores may differ)
if [ -d "$data/eval" ]; then
  if "$xlkv" eval -m "$model" --tasks piqa,hellaswag,lambada_openai --limit 5 --data-dir "$data/eval" --json "$tmp/real.json" >"$tmp/out" 2>"$tmp/err" &&
     python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; sys.exit(0 if all(r[t]['n']==5 for t in ('piqa','hellaswag','lambada_openai')) else 1)" "$tmp/real.json"; then
    pass "eval --limit 5 on the real files"
  else fail "eval --limit 5: $(cat "$tmp/err")"; fi
  if "$xlkv" eval -m "$model" --tasks copa --limit 4 --data-dir "$data/eval" --layer-types lckv:2 >"$tmp/out" 2>"$tmp/err"; then
    pass "eval under a sharing map (--layer-types lckv:2)"
  else fail "eval --layer-types lckv:2: $(cat "$tmp/err")"; fi
else
  echo "skipping the real-data runs: $data/eval is absent"
fi

# perplexity: a small text, JSON, and windows that must match the reference slice
head -c 3000 "$data/text/tinyshakespeare.txt" >"$tmp/slice.txt" 2>/dev/null
if [ -s "$tmp/slice.txt" ]; then
  if "$xlkv" perplexity -m "$model" -f "$tmp/slice.txt" --ctx 128 --stride 48 --json "$tmp/ppl.json" >"$tmp/out" 2>"$tmp/err" &&
     python3 - "$tmp/ppl.json" "$src/tests/fixtures/eval/stories260K_perplexity.json" <<'PY'
import json, sys
got = json.load(open(sys.argv[1]))
ref = [p for p in json.load(open(sys.argv[2]))["perplexity"] if p["ctx"] == 128 and p["stride"] == 48][0]
ok = got["tokens_scored"] == ref["n_scored"] and abs(got["ppl"] - ref["ppl"]) / ref["ppl"] < 1e-4
print(got["ppl"], ref["ppl"])
sys.exit(0 if ok else 1)
PY
  then pass "perplexity --ctx 128 --stride 48 = reference"
  else fail "perplexity on the slice: $(cat "$tmp/err" "$tmp/out")"; fi
  grep -q "ETA" "$tmp/err" && pass "progress line with ETA on stderr" || fail "no ETA on stderr"
  printf 'first book\n\x1e\nsecond book\n\x1e\n' | xz -c >"$tmp/books.txt.xz"
  "$xlkv" perplexity -m "$model" -f "$tmp/books.txt.xz" --ctx 16 >"$tmp/out" 2>"$tmp/err" && grep -q "2 streams" "$tmp/err" &&
    pass "perplexity on an .xz file: one stream per book" || fail "perplexity .xz: $(cat "$tmp/err")"
fi

# failures
expect_error "unknown task lists the known ones" "unknown task 'pika'; known tasks: piqa, arc_easy" eval -m "$model" --tasks piqa,pika
expect_error "no --tasks" "no tasks given" eval -m "$model"
expect_error "absent data directory" "data directory /nonexistent not found" eval -m "$model" --tasks copa --data-dir /nonexistent
mkdir -p "$tmp/bad"
printf '{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a", "b"], "gold": 5}\n{"query": "r", "choices": ["a", "b"], "gold": 1}\n' >"$tmp/bad/copa.jsonl"
expect_error "malformed line stops the run with file:line" "$tmp/bad/copa.jsonl:2: \"gold\" is 5, outside the 2 choices" eval -m "$model" --tasks copa --data-dir "$tmp/bad"
if "$xlkv" eval -m "$model" --tasks copa --data-dir "$tmp/bad" --on-error skip >"$tmp/out" 2>"$tmp/err" &&
   grep -q "skipped 1 malformed item (first: $tmp/bad/copa.jsonl:2:" "$tmp/err" && grep -qE "^copa +2 " "$tmp/out"; then
  pass "--on-error skip counts and continues"
else fail "--on-error skip: $(cat "$tmp/err" "$tmp/out")"; fi
expect_error "--on-error value" "--on-error expects stop or skip" eval -m "$model" --tasks copa --on-error maybe
expect_error "model without a tokenizer" "has no tokenizer" eval -m "$src/tests/fixtures/hf/gqa_untied" --tasks copa --data-dir "$tmp/bad"
expect_error "perplexity: model without a tokenizer" "has no tokenizer" perplexity -m "$src/tests/fixtures/hf/gqa_untied" -f "$tmp/slice.txt"
expect_error "perplexity: absent file" "/nonexistent.txt" perplexity -m "$model" -f /nonexistent.txt
expect_error "perplexity: no file" "no text given" perplexity -m "$model"
expect_error "perplexity: --ctx beyond the model" "--ctx 1024 exceeds the model's context of 512" perplexity -m "$model" -f "$tmp/slice.txt" --ctx 1024
expect_error "perplexity: --stride beyond --ctx" "--stride 300 exceeds --ctx 256" perplexity -m "$model" -f "$tmp/slice.txt" --ctx 256 --stride 300
printf 'not xz' >"$tmp/bad.txt.xz"
expect_error "perplexity: corrupt .xz" "not a valid .xz file" perplexity -m "$model" -f "$tmp/bad.txt.xz"

if [ $failures -ne 0 ]; then echo "$failures failure(s)"; exit 1; fi
echo "all passed"
