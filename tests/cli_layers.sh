#!/usr/bin/env bash
# tests/cli_layers: `xlkv layers` end to end: the printed map, KV layers, plan and KV bytes for shapes, a KVSharer
# file, and the exit status and message of bad input. Usage: bash tests/cli_layers.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_layers.sh /path/to/xlkv}
source "$(dirname "$0")/support/cli_checks.sh"

# expect_output "description" "needle" -- args...: exit status 0 and stdout contains the needle (fixed string).
expect_output() {
    local what=$1 needle=$2; shift 3
    "$XLKV" layers "$@" >"$tmp/out" 2>"$tmp/err"
    local got=$?
    if [ "$got" -ne 0 ]; then fail "$what: exit status $got ($(cat "$tmp/err"))"; return; fi
    grep -qF -- "$needle" "$tmp/out" || fail "$what: output lacks '$needle':"$'\n'"$(cat "$tmp/out")"
}

# expect_error "description" status "needle" -- args...: `xlkv layers args` exits with that status and stderr contains
# the needle.
expect_error() {
    local what=$1 status=$2 needle=$3; shift 4
    expect_status "$what" "$status" "$needle" -- layers "$@"
}

lckv2=0_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_21
expect_output "lckv:2 string" "layer_types: $lckv2" -- --shape tinyllama --layer-types lckv:2
expect_output "lckv:2 bytes" "KV bytes per token: 3072 (standard map: 22528, saving 7.33x)" -- \
    --shape tinyllama --layer-types lckv:2
expect_output "lckv:2 KV layers" "KV layers (3 of 22): 0 20 21" -- --shape tinyllama --layer-types lckv:2
expect_output "lckv:2 plan" "layers 1..20: cyclic group, m + b = 7 + 2 = 9 iterations" -- \
    --shape tinyllama --layer-types lckv:2
expect_output "lckv:2 table row" "    1     20        no     -     yes       no" -- --shape tinyllama --layer-types lckv:2
expect_output "lckv:2 per 2048 tokens" "    2048        6.00 MiB       44.00 MiB" -- --shape tinyllama --layer-types lckv:2
expect_output "same map as a string" "KV bytes per token: 3072" -- --shape tinyllama --layer-types "$lckv2"
expect_output "standard by default" "KV bytes per token: 22528 (standard map: 22528, saving 1.00x)" -- --shape tinyllama
expect_output "cla:2 f32" "KV bytes per token: 22528 (standard map: 45056, saving 2.00x)" -- \
    --shape tinyllama --layer-types cla:2 --dtype f32
expect_output "yoco sliding" "layer_types: 0s_1s_2s_3s_4s_5s_6_6_6_6_6_6" -- --shape small --layer-types yoco
expect_output "explicit shape" "KV bytes per token: 192 (standard map: 256, saving 1.33x)" -- \
    --n-layers 4 --n-kv-heads 2 --head-dim 8 --layer-types 0_2_2_3
expect_output "ctx size row" "    1000" -- --shape small -c 1000
expect_output "layers only" "3 of 4 layers own KV" -- --n-layers 4 --layer-types 0_2_2_3

printf '{"5": 3, "3": 1}' >"$tmp/kv.json"
expect_output "KVSharer file" "layer_types: 0_1_2_1_4_1_6_7_8_9_10_11" -- --shape small --kv-map "$tmp/kv.json"

expect_output "help" "presets: standard, cla[:K], lckv[:W], yoco" -- --help

expect_error "bad preset value" 1 "'lckv:22': W = 22 is outside [0, 21]" -- --shape tinyllama --layer-types lckv:22
expect_error "bad string" 1 "entry 1 ('1x')" -- --n-layers 3 --layer-types 0_1x_2
expect_error "unknown preset" 1 "known preset" -- --shape small --layer-types pizza
expect_error "missing KVSharer file" 1 "$tmp/none.json" -- --shape small --kv-map "$tmp/none.json"
printf '{"5": 7}' >"$tmp/bad.json"
expect_error "bad KVSharer file" 1 "$tmp/bad.json: KVSharer map: entry \"5\": 7 does not point to a lower layer" -- \
    --shape small --kv-map "$tmp/bad.json"
expect_error "unknown flag" 2 "unknown flag '--layers'" -- --layers 3
expect_error "missing value" 2 "--layer-types needs a value" -- --shape small --layer-types
expect_error "no shape" 2 "give a model" -- --layer-types lckv:2
expect_error "bad number" 2 "--n-layers: 'x' is not a positive integer" -- --n-layers x
expect_error "bad shape" 2 "unknown shape 'huge'" -- --shape huge
expect_error "bad dtype" 2 "unknown type 'f8'" -- --shape small --dtype f8
expect_error "exclusive maps" 2 "exclusive" -- --shape small --layer-types cla:2 --kv-map "$tmp/kv.json"
expect_error "half a shape" 2 "--n-kv-heads and --head-dim go together" -- --n-layers 4 --head-dim 8
expect_error "model and shape" 2 "--model takes the shape from the model" -- -m "$tmp" --n-layers 4

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "cli_layers: all checks passed"
