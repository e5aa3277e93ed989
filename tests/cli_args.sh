#!/usr/bin/env bash
# tests/cli_args: the option loop the subcommands share (tools/cli_args.c), on every subcommand that uses it: -h and
# --help print the usage on stdout and exit 0; an unknown option, a flag without its value, an integer out of range,
# a value outside a flag's choices (the message lists them) and a stray argument where a command takes no files exit 2
# with the message that names the problem. No model or data needed: all of it happens before anything is loaded.
# Usage: bash tests/cli_args.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_args.sh /path/to/xlkv}
source "$(dirname "$0")/support/cli_checks.sh"

for cmd in eval perplexity search chat generate logits serve tokenize convert "tokenizer train" train "bench throughput"; do
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
# train: missing value, integer and 64-bit ranges, real numbers, choices; a bad value is reported before the checks
# that come after the parse (--data and --out required)
expect_status "train: flag without value" 2 "xlkv train: option --steps needs a value" -- train --steps
expect_status "train: integer range" 2 "xlkv train: --batch expects an integer in [1, 1048576], got '0'" -- \
    train --batch 0
expect_status "train: long range" 2 "xlkv train: --warmup expects an integer in [0, 1073741824], got '-1'" -- \
    train --warmup -1
expect_status "train: short integer flag" 2 "xlkv train: -t expects an integer in [0, 4096], got '4097'" -- \
    train -t 4097
expect_status "train: float flag" 2 "xlkv train: --lr expects a number, got '1e-3x'" -- train --lr 1e-3x
expect_status "train: seed" 2 "xlkv train: --seed expects a non-negative integer, got '-1'" -- train --seed -1
expect_status "train: seed beyond 64 bits" 2 \
    "xlkv train: --seed expects a non-negative integer, got '18446744073709551616'" -- train --seed 18446744073709551616
expect_status "train: device choice" 2 "xlkv train: --device expects cpu or cuda, got 'tpu'" -- train --device tpu
expect_status "train: dtype choice" 2 "xlkv train: --dtype expects bf16 or f32, got 'fp16'" -- \
    train --data d --out o --dtype fp16
expect_status "train: kv-init choice" 2 "xlkv train: --kv-init expects copy or average, got 'mean'" -- \
    train --kv-init mean
expect_status "train: switch takes no value" 2 "xlkv train: unknown option 'yes'" -- train --resume yes
# bench throughput: the same, under its two-word name
expect_status "bench: flag without value" 2 "xlkv bench throughput: option --json needs a value" -- \
    bench throughput --shape tiny --json
expect_status "bench: integer range" 2 "xlkv bench throughput: --search-probes expects an integer in [0, 64], got '65'" \
    -- bench throughput --shape tiny --search-probes 65
expect_status "bench: float flag" 2 "xlkv bench throughput: --limit-s expects a number, got 'soon'" -- \
    bench throughput --shape tiny --limit-s soon
expect_status "bench: device choice" 2 "xlkv bench throughput: --device expects cpu or cuda, got 'tpu'" -- \
    bench throughput --shape tiny --device tpu
# files: only where a command takes them
expect_status "stray argument" 2 "xlkv perplexity: unknown option 'book.txt'" -- perplexity book.txt
expect_status "files then a bad flag" 2 "xlkv tokenize: unknown option '-q'" -- tokenize a.txt b.txt -q
expect_status "files but no output" 2 "give --tokenizer FILE, -o DIR and at least one text file" -- \
    tokenize --tokenizer t.json a.txt

if [ "$failures" -ne 0 ]; then echo "cli_args: $failures failure(s)"; exit 1; fi
echo "cli_args: all checks passed"
