# tests/support/cli_checks.sh (sourced by cli_bench, cli_layers, cli_tokenizer): the preamble and the exit-status
# check of the CLI tests that feed a subcommand good and bad input. Set XLKV (the binary) before sourcing.
#   tmp       a temporary directory, removed at exit
#   failures  the failed checks so far; fail "what" prints FAIL: what on stderr and counts it
#   expect_status "description" status "needle" -- xlkv-args...: xlkv exits with that status and its stderr contains
#             the needle (a fixed string); stdout and stderr stay in $tmp/out and $tmp/err
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

expect_status() {
    local what=$1 want=$2 needle=$3; shift 4
    "$XLKV" "$@" >"$tmp/out" 2>"$tmp/err"
    local got=$?
    [ "$got" -eq "$want" ] || fail "$what: exit status $got, expected $want"
    grep -qF -- "$needle" "$tmp/err" || fail "$what: stderr lacks '$needle': $(cat "$tmp/err")"
}
