# tests/support/cli_stories260k.sh (sourced by the CLI tests that decode stories260K against llama2.c's golden:
# cli_generate, cli_batch): the preamble they share.
#   data    the shared data (XLKV_SHARED_DATA, else $XLKV_SOURCE_DIR/../shared/data)
#   model   stories260K.bin; golden: llama2.c's greedy 200 tokens from BOS. When either is absent the test says so and
#           exits 0.
#   tmp     a temporary directory, removed at exit
#   failures  0; the test counts its failures into it
data=${XLKV_SHARED_DATA:-${XLKV_SOURCE_DIR:-.}/../shared/data}
model=$data/models/stories260K/stories260K.bin
golden=$data/models/stories260K/expected_greedy_n200.txt
if [ ! -f "$model" ] || [ ! -f "$golden" ]; then
  echo "skipping: $model or $golden is absent (set XLKV_SHARED_DATA)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
