#!/usr/bin/env bash
# tests/cli_bench: `xlkv bench throughput` end to end on the cpu with the tiny random shape: the table, the JSON lines
# (one per map, lckv:2 holding a larger batch than standard under the same budget, exactly batch x gen tokens), the
# SVG, and the exit status and message of bad flags. Usage: bash tests/cli_bench.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_bench.sh /path/to/xlkv}
source "$(dirname "$0")/support/cli_checks.sh"

# expect_error "description" "needle" -- args...: `xlkv bench args` exits with status 2 and stderr contains the needle.
expect_error() {
    local what=$1 needle=$2; shift 3
    expect_status "$what" 2 "$needle" -- bench "$@"
}

"$XLKV" bench throughput --shape tiny --device cpu --settings 5+16 --budget 8MiB --limit-s 600 --layer-types standard,lckv:2 \
    --json "$tmp/x.jsonl" --svg "$tmp/y.svg" >"$tmp/out" 2>"$tmp/err"
status=$?
if [ "$status" -ne 0 ]; then
    fail "bench throughput: exit status $status ($(cat "$tmp/err"))"
else
    grep -qF "5+16 8MiB" "$tmp/out" || fail "table lacks the column: $(cat "$tmp/out")"
    [ "$(wc -l <"$tmp/x.jsonl")" -eq 2 ] || fail "JSON: expected 2 lines: $(cat "$tmp/x.jsonl")"
    batch() { grep "\"map\": \"$1\"" "$tmp/x.jsonl" | sed -n 's/.*"batch": \([0-9]*\),.*/\1/p'; }
    tokens() { grep "\"map\": \"$1\"" "$tmp/x.jsonl" | sed -n 's/.*"tokens": \([0-9]*\),.*/\1/p'; }
    standard=$(batch standard) lckv=$(batch lckv:2)
    if [ -z "$standard" ] || [ -z "$lckv" ]; then
        fail "JSON lacks batches: $(cat "$tmp/x.jsonl")"
    else
        [ "$lckv" -gt "$standard" ] || fail "lckv:2 batch $lckv is not larger than standard's $standard"
        [ "$(tokens standard)" -eq $((standard * 16)) ] || fail "standard: tokens $(tokens standard) != batch x 16"
        [ "$(tokens lckv:2)" -eq $((lckv * 16)) ] || fail "lckv:2: tokens $(tokens lckv:2) != batch x 16"
    fi
    grep -qF '"complete": true' "$tmp/x.jsonl" || fail "JSON: runs not complete"
    [ -s "$tmp/y.svg" ] || fail "no SVG written"
    head -c 4 "$tmp/y.svg" | grep -qF "<svg" || fail "SVG does not start with <svg"
    [ "$(tail -n 1 "$tmp/y.svg")" = "</svg>" ] || fail "SVG does not end with </svg>"
    grep -qF ">standard<" "$tmp/y.svg" || fail "SVG lacks standard"
    grep -qF ">lckv:2<" "$tmp/y.svg" || fail "SVG lacks lckv:2"
fi

expect_error "no benchmark" "which benchmark" --
expect_error "unknown benchmark" "unknown benchmark" -- latency
expect_error "unknown flag" "unknown option '--bogus'" -- throughput --shape tiny --bogus
expect_error "no model" "give a model (-m) or a shape (--shape)" -- throughput --device cpu
expect_error "both model and shape" "exclusive" -- throughput --shape tiny -m "$tmp/none"
expect_error "unknown shape" "unknown shape 'huge'" -- throughput --shape huge
expect_error "unknown map" "map 'pizza' (22 layers)" -- throughput --shape tiny --device cpu --layer-types standard,pizza
expect_error "bad setting" "'5x16' is not PROMPT+GEN" -- throughput --shape tiny --device cpu --settings 5x16
expect_error "bad setting zero" "'0+16' is not PROMPT+GEN" -- throughput --shape tiny --device cpu --settings 0+16
expect_error "bad budget" "'12XB' is neither gpu nor a size" -- throughput --shape tiny --device cpu --budget 12XB
expect_error "bad device" "--device expects cpu or cuda, got 'tpu'" -- throughput --shape tiny --device tpu
expect_error "limit not positive" "--limit-s must be > 0, got '0'" -- throughput --shape tiny --limit-s 0
expect_error "empty list item" "empty item" -- throughput --shape tiny --device cpu --layer-types standard,,lckv:2
expect_error "missing value" "--json" -- throughput --shape tiny --device cpu --json
"$XLKV" bench throughput --help >"$tmp/out" 2>&1 || fail "--help failed"
grep -qF "usage: xlkv bench throughput" "$tmp/out" || fail "--help lacks the usage line"

if [ "$failures" -ne 0 ]; then
    echo "cli_bench: $failures failure(s)" >&2
    exit 1
fi
echo "cli_bench: ok"
