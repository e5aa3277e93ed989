# tests/support/cli_train_data.sh (sourced by the training CLI tests: cli_train_resume, cli_train_mpi,
# cuda/cli_cuda_train, cuda/cli_cuda_train_nccl): the preamble they share.
#   src     the source tree (XLKV_SOURCE_DIR, else .)
#   shared  the shared data (XLKV_SHARED_DATA, else $src/../shared/data)
#   text    tinyshakespeare; tok: stories260K's tok512.bin. When either is absent the test says so and exits 0.
#   tmp     a temporary directory, removed at exit
#   fail    fail "what": prints FAIL and counts into $failures
src=${XLKV_SOURCE_DIR:-.}
shared=${XLKV_SHARED_DATA:-$src/../shared/data}
text=$shared/text/tinyshakespeare.txt
tok=$shared/models/stories260K/tok512.bin
if [ ! -f "$text" ] || [ ! -f "$tok" ]; then echo "skipping: $text or $tok absent"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
