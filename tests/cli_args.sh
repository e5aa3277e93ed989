#!/usr/bin/env bash
# tests/cli_args: the option loop the subcommands share (tools/cli_args.c), on every subcommand that uses it: -h and
# --help print the usage on stdout and exit 0; an unknown option, a flag without its value, an integer out of range,
# a value outside a flag's choices (the message lists them) and a stray argument where a command takes no files exit 2
# with the message that names the problem. No model or data needed: all of it happens before anything is loaded.
# Usage: bash tests/cli_args.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_args.sh /path/to/xlkv}
source "$(dirname "$0")/support/cli_checks.sh"

for cmd in eval perplexity search chat generate logits serve tokenize convert "tokenizer train"; do
    for help in -h --help; do
        # shellcheck disable=SC2086 # "tokenizer train" is two words
        $XLKV $cmd $help >"$tmp/out" 2>"$tmp/err"
        status=$?
        [ "$status" -eq 0 ] || fail "$cmd $help: exit status $status"
        grep -q "^usage: xlkv $cmd" "$tmp/out" || fail "$cmd $help: no usage line on stdout: $(head -2 "$tmp/out")"
        [ -s "$tmp/err" ] && fail "$cmd $help: wrote on stderr: $(cat "$tmp/err")"
    done
    # shellcheck disable=SC2086
    expect_status "$cmd unknown option" 2 "xlkv $cmd: unknown option '--no-such-flag'; see xlkv $cmd --help" -- \
        $cmd --no-such-flag
done

# the model options come first, then the command's own flags; each reports a missing value by name
expect_status "model flag without value" 2 "xlkv eval: option --layer-types needs a value" -- eval --layer-types
expect_status "own flag without value" 2 "xlkv perplexity: option --stride needs a value" -- perplexity -f x --stride
expect_status "sampling flag without value" 2 "xlkv chat: option --top-p needs a value" -- chat --top-p
expect_status "file flag without value" 2 "xlkv tokenize: option -o needs a value" -- tokenize -o
# integers in their range
expect_status "integer range" 2 "xlkv serve: --port expects an integer in [0, 65535], got '65536'" -- serve --port 65536
expect_status "integer text" 2 "xlkv logits: --prefill expects an integer in [1, 1073741824], got '2x'" -- \
    logits --prefill 2x
expect_status "short integer flag" 2 "xlkv generate: -b expects an integer in [1, 65536], got '0'" -- generate -b 0
# real numbers
expect_status "float flag" 2 "xlkv tokenize: --valid-fraction expects a number, got 'half'" -- \
    tokenize --valid-fraction half
expect_status "double flag" 2 "xlkv search: --threshold expects a number, got 'inf'" -- search --threshold inf
# choices: two, three
expect_status "two choices" 2 "xlkv convert: --dtype expects f32 or bf16, got 'fp16'" -- convert --dtype fp16
expect_status "three choices" 2 "xlkv search: --order expects dissimilar, similar or random, got 'up'" -- \
    search --order up
# a later value of a flag wins; an earlier error stops the parse
expect_status "first error wins" 2 "xlkv eval: --limit expects an integer in [1, 1073741824], got '0'" -- \
    eval --limit 0 --on-error maybe
# files: only where a command takes them
expect_status "stray argument" 2 "xlkv perplexity: unknown option 'book.txt'" -- perplexity book.txt
expect_status "files then a bad flag" 2 "xlkv tokenize: unknown option '-q'" -- tokenize a.txt b.txt -q
expect_status "files but no output" 2 "give --tokenizer FILE, -o DIR and at least one text file" -- \
    tokenize --tokenizer t.json a.txt

if [ "$failures" -ne 0 ]; then echo "cli_args: $failures failure(s)"; exit 1; fi
echo "cli_args: all checks passed"
