#!/usr/bin/env bash
# tests/cli_tokenizer: `xlkv tokenizer train` end to end: trains on a generated text (plain and .xz), writes a
# tokenizer.json that `xlkv tokenize` then uses, reports running out of merges, and refuses bad input with exit status
# 2 (usage) or 1 (missing file) and a clear message. Usage: bash tests/cli_tokenizer.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_tokenizer.sh /path/to/xlkv}
source "$(dirname "$0")/support/cli_checks.sh"

for i in $(seq 1 400); do
    echo "The king and the queen spoke of love, $i nights of sorrow and mercy; the noble brother answered."
done >"$tmp/corpus.txt"

"$XLKV" tokenizer train --vocab-size 300 -o "$tmp/tokenizer.json" "$tmp/corpus.txt" 2>"$tmp/err"
status=$?
if [ "$status" -ne 0 ]; then
    fail "train: exit status $status ($(cat "$tmp/err"))"
else
    grep -qF -- "-> 300 tokens" "$tmp/err" || fail "train: no summary: $(cat "$tmp/err")"
    grep -qE '"byte_fallback":\s+true' "$tmp/tokenizer.json" || fail "tokenizer.json lacks byte_fallback"
    grep -qE '"<0xFF>":\s+258' "$tmp/tokenizer.json" || fail "tokenizer.json lacks the byte tokens"
    ls "$tmp" | grep -q '\.tmp\.' && fail "a temporary file was left behind"
    # The trained vocabulary drives `xlkv tokenize`.
    "$XLKV" tokenize --tokenizer "$tmp/tokenizer.json" -o "$tmp/shards" "$tmp/corpus.txt" 2>"$tmp/err" ||
        fail "tokenize with the trained tokenizer: $(cat "$tmp/err")"
fi

# Books separated by 0x1E lines: the separator never becomes a token.
{ cat "$tmp/corpus.txt"; printf '\036\n'; cat "$tmp/corpus.txt"; printf '\036\n'; cat "$tmp/corpus.txt"; } >"$tmp/books.txt"
"$XLKV" tokenizer train --vocab-size 300 -o "$tmp/books.json" "$tmp/books.txt" 2>"$tmp/err" || fail "books: $(cat "$tmp/err")"
grep -qF '"\u001e"' "$tmp/books.json" && fail "the 0x1E separator became a token"

# Same text compressed gives the same file.
if command -v xz >/dev/null; then
    xz -k "$tmp/corpus.txt"
    "$XLKV" tokenizer train --vocab-size 300 -o "$tmp/from_xz.json" "$tmp/corpus.txt.xz" 2>"$tmp/err" ||
        fail "train from .xz: $(cat "$tmp/err")"
    cmp -s "$tmp/tokenizer.json" "$tmp/from_xz.json" || fail ".xz input gave a different tokenizer.json"
fi

"$XLKV" tokenizer train --vocab-size 100000 -o "$tmp/big.json" "$tmp/corpus.txt" 2>"$tmp/err" || fail "big: $(cat "$tmp/err")"
grep -qF "ran out of pairs" "$tmp/err" || fail "no report of running out of merges: $(cat "$tmp/err")"

"$XLKV" tokenizer train --help >"$tmp/out" || fail "--help: non-zero exit"
grep -qF -- "--vocab-size" "$tmp/out" || fail "--help lacks --vocab-size"
expect_status "no verb" 2 "give a verb" -- tokenizer
expect_status "unknown verb" 2 "unknown verb 'fit'" -- tokenizer fit
expect_status "small vocabulary" 2 "below 259" -- tokenizer train --vocab-size 100 -o "$tmp/x.json" "$tmp/corpus.txt"
expect_status "no output" 2 "give --vocab-size" -- tokenizer train --vocab-size 300 "$tmp/corpus.txt"
expect_status "unknown option" 2 "unknown option '--bogus'" -- tokenizer train --bogus
expect_status "missing file" 1 "$tmp/absent.txt" -- tokenizer train --vocab-size 300 -o "$tmp/x.json" "$tmp/absent.txt"
[ -e "$tmp/x.json" ] && fail "a failed training wrote $tmp/x.json"

if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)" >&2
    exit 1
fi
echo "cli_tokenizer: all checks passed"
