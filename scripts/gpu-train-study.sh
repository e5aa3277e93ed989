#!/usr/bin/env bash
# Runs on the GPU machine (device tool): the small-scale study of issue 5 and the project's default models, trained by
# `xlkv train --device cuda` on Gutenberg. Needs ./gpudata (git-ignored, carried with the call): tokenizer.json (made
# by `xlkv tokenizer train`, see docs/TRAINING.md), a Gutenberg train text (.xz), gutenberg-valid.txt.xz and
# wikitext2_valid.tokens.txt; and .deps (see scripts/gpu-session.sh).
#   bash scripts/gpu-train-study.sh study      # 10 configurations at 2x KV reduction + standard + lckv:2, one budget
#   bash scripts/gpu-train-study.sh defaults   # models/xlkv-gutenberg-{standard,cla2}: trained, bf16 copies, samples
# Both together: the two jobs share the GPU (each is launch-bound at this size). Results and logs go to $OUT
# (study.tar, defaults-standard.tar, defaults-cla2.tar, summary.txt); DEADLINE_S (default 560) bounds the whole run: every training is given the
# time left and checkpoints on the way, so a cut run still leaves a model and its log.
set -uo pipefail
start=$(date +%s)
deadline=${DEADLINE_S:-560}
out=${OUT:-$PWD/gpu-out}
work=$PWD/gpudata/run
mkdir -p "$out" "$work"
# .deps travels compressed (depsbundle/deps.tar.xz, ~8 MB instead of ~43 MB: the call's tree is capped at 64 MiB)
[ -d .deps/root ] || { [ -f depsbundle/deps.tar.xz ] && tar -xJf depsbundle/deps.tar.xz; }
export CMAKE_PREFIX_PATH=$PWD/.deps/root/usr
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu:$PWD/.deps/root/lib/x86_64-linux-gnu:$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
summary=$out/summary.txt
say() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$summary"; }
left() { echo $((deadline - ($(date +%s) - start))); }
xlkv=./build/xlkv

if [ ! -x "$xlkv" ] || [ "${REBUILD:-1}" = 1 ]; then
  { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j "$(nproc)"; } >"$work/build.log" 2>&1 \
    || { say "build failed"; tail -30 "$work/build.log"; exit 1; }
fi
say "built; $(nvidia-smi --query-gpu=name --format=csv,noheader)"

data=$work/tokens
if [ ! -f "$data/train-00000.bin" ]; then
  "$xlkv" tokenize --tokenizer gpudata/tokenizer.json -o "$data" --valid-fraction 0.02 gpudata/gutenberg-train-*.txt.xz \
    >"$work/tokenize.log" 2>&1 || { say "tokenize failed"; cat "$work/tokenize.log"; exit 1; }
fi
say "tokens: $(tail -1 "$work/tokenize.log")"

# seconds per step of a configuration, from a short run (the first steps include start-up, so 2 runs: 10 and 40)
probe() { # name shape-flags... -> s/step
  local name=$1; shift
  local t0 t1 t2
  t0=$(date +%s.%N); "$xlkv" train --device cuda --data "$data" --out "$work/probe-$name-a" "$@" --steps 10 --warmup 1 >/dev/null 2>&1
  t1=$(date +%s.%N); "$xlkv" train --device cuda --data "$data" --out "$work/probe-$name-b" "$@" --steps 40 --warmup 1 >/dev/null 2>&1
  t2=$(date +%s.%N)
  python3 -c "print(max(1e-4, (($t2 - $t1) - ($t1 - $t0)) / 30))"
}

# ---- the study: same shape, data, tokens and seed for every configuration ----
study_shape=(--shape default --layers 8 --dim 256 --heads 4 --kv-heads 2 --ffn 688 --max-seq 256 --batch 32 --seq 256
             --lr 2e-3 --warmup 100 --seed 1)
study_maps=(standard pizza-bottom:4 sandwich-bottom:4 lasagna-bottom:4 pizza-middle:4 sandwich-middle:4 lasagna-middle:4
            pizza-top:4 sandwich-top:4 lasagna-top:4 lckv:2)
# STUDY_MAPS="lasagna-top:4 lckv:2" STUDY_STEPS=1069: only those maps, with the step count of an earlier run
[ -n "${STUDY_MAPS:-}" ] && read -r -a study_maps <<<"$STUDY_MAPS"
run_study() {
  local budget=$1 # seconds for the whole study
  local std cyc steps
  std=$(probe std "${study_shape[@]}" --layer-types standard)
  cyc=$(probe cyc "${study_shape[@]}" --layer-types lckv:2)
  # 6 acyclic and 5 cyclic configurations, run one after another
  steps=${STUDY_STEPS:-$(python3 -c "print(int(max(200, min(4000, $budget / (6 * $std + 5 * $cyc)))))")}
  say "study: $std s/step standard, $cyc s/step lckv:2 (m=7 b=2) -> $steps steps of 32 x 256 tokens each"
  for map in "${study_maps[@]}"; do
    local name=${map//:/}
    local t=$(left)
    [ "$t" -lt 30 ] && { say "study: $map skipped (time)"; continue; }
    local s0=$(date +%s.%N)
    timeout $((t - 20)) "$xlkv" train --device cuda --data "$data" --out "$work/study/$name" "${study_shape[@]}" \
      --layer-types "$map" --steps "$steps" --eval-every $((steps / 4)) --eval-batches 32 --save-every $((steps / 4)) \
      >"$work/study/$name.log" 2>&1
    local rc=$? s1=$(date +%s.%N)
    local evl=$(grep "^eval" "$work/study/$name.log" | tail -1)
    say "study: $map rc $rc, $(python3 -c "print(round($s1 - $s0, 1))") s, $evl"
    for f in wiki:gpudata/wikitext2_valid.tokens.txt gut:gpudata/gutenberg-valid.txt.xz; do
      timeout 60 "$xlkv" perplexity --device cuda -m "$work/study/$name/latest" -f "${f#*:}" --ctx 256 --stride 128 \
        --max-tokens 120000 --json "$work/study/ppl-${f%%:*}-$name.json" >>"$work/study/$name.log" 2>&1
    done
  done
  mkdir -p "$work/study-out"
  cp "$work"/study/*.log "$work"/study/*.json "$work/study-out/" 2>/dev/null
  for map in "${study_maps[@]}"; do cp "$work/study/${map//:/}/loss.svg" "$work/study-out/loss-${map//:/}.svg" 2>/dev/null; done
  tar -C "$work" -cf "$out/study.tar" study-out
}

# ---- the default models: a standard model and the same model under cla:2 ----
default_shape=(--shape default --layers 6 --dim 256 --heads 4 --kv-heads 2 --ffn 688 --max-seq 512 --batch 32 --seq 512
               --lr 2e-3 --warmup 200 --seed 7)
run_defaults() {
  local budget=$1 # seconds for both models
  local per steps
  per=$(probe def "${default_shape[@]}" --layer-types standard)
  steps=$(python3 -c "print(int(max(300, min(20000, $budget / 2 / $per))))")
  say "defaults: $per s/step -> $steps steps of 32 x 512 tokens each"
  mkdir -p "$work/defaults-out"
  for pair in standard:standard cla2:cla:2; do
    local name=${pair%%:*} map=${pair#*:}
    local t=$(left)
    [ "$t" -lt 40 ] && { say "defaults: $name skipped (time)"; continue; }
    timeout $((t - 25)) "$xlkv" train --device cuda --data "$data" --out "$work/defaults/$name" "${default_shape[@]}" \
      --layer-types "$map" --steps "$steps" --eval-every $((steps / 10)) --eval-batches 32 --save-every $((steps / 10)) \
      >"$work/defaults/$name.log" 2>&1
    say "defaults: $name rc $?, $(grep '^eval' "$work/defaults/$name.log" | tail -1)"
    local dir=$work/defaults-out/xlkv-gutenberg-$name
    "$xlkv" convert --from "$work/defaults/$name/latest" --to "$dir" --dtype bf16 >>"$work/defaults/$name.log" 2>&1
    cp "$work/defaults/$name/loss.svg" "$dir/loss.svg" 2>/dev/null
    cp "$work/defaults/$name.log" "$work/defaults-out/train-$name.log"
    for p in "It was a dark and stormy night" "The old man said"; do
      "$xlkv" generate -m "$dir" -p "$p" -n 60 -s 1 2>/dev/null >>"$work/defaults-out/samples-$name.txt"
      echo >>"$work/defaults-out/samples-$name.txt"
    done
  done
  for name in standard cla2; do # one file each: what comes back from $OUT is at most 16 MB a file
    tar -C "$work/defaults-out" -cf "$out/defaults-$name.tar" "xlkv-gutenberg-$name" "train-$name.log" "samples-$name.txt"
  done
}

mkdir -p "$work/study" "$work/defaults"
for what in "$@"; do
  case "$what" in
    study) run_study $(($(left) - 150)) & ;;   # room for 22 perplexity runs
    defaults) run_defaults $(($(left) - 90)) & ;;
  esac
done
wait
say "done"
