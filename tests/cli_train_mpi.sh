#!/usr/bin/env bash
# tests/cli_train_mpi: data-parallel `xlkv train` under OpenMPI's mpirun (CPU, MPI_Allreduce of the gradients).
#   - `mpirun -np 2 ... --batch 2` equals one process with --batch 4 (and -np 4 --batch 1), under cla:2 and under
#     lckv:1 (a cyclic group, m=1 b=2) with accumulation and evaluations: per-step losses within a relative 1e-6 and
#     every parameter within 2e-5 after 30 AdamW steps (measured: losses 0 to 1e-7, parameters 5e-7 to 8.8e-6; the
#     only difference is the order of the fp32 sums over the batch). A run with another seed is the negative control
#     (the comparison must fail for it).
#   - a single-process run killed after a checkpoint and resumed with 2 ranks (same global batch) ends as the
#     uninterrupted run; a resume whose global batch differs is refused with the per-rank batch to use.
#   - failures stop the whole job with a message, never a hang (each mpirun bounded by `timeout`): a rank whose data
#     directory is missing, ranks that disagree on an option, a rank killed with SIGKILL mid-run.
# Needs tinyshakespeare and tok512.bin (skipped when absent) and mpirun (scripts/setup-deps.sh installs openmpi-bin).
set -u
xlkv=$1
source "$(dirname "$0")/support/cli_train_data.sh"
compare="python3 $src/tests/support/compare_train_runs.py"

# OpenMPI in a container without a network (scripts/mpi-env.sh: shared memory and self transports, no single-copy
# mechanism, oversubscription, root allowed); OpenMPI's own allocations are not our leaks (ASan build).
source "$src/scripts/mpi-env.sh"
command -v "${mpirun_cmd[0]}" >/dev/null || { echo "FAIL mpirun not found: run scripts/setup-deps.sh (openmpi-bin)"; exit 1; }
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
mpi=(timeout 300 "${mpirun_cmd[@]}")

"$xlkv" tokenize --tokenizer "$tok" -o "$tmp/data" --valid-fraction 0.1 -t 2 "$text" 2>"$tmp/err" \
  || { cat "$tmp/err"; echo "FAIL tokenize"; exit 1; }

# ---- P ranks x batch B == one process with batch P x B --------------------------------------------------------------
for map in cla2 lckv1; do
  case $map in
    cla2) margs=(--layer-types cla:2) ;;
    lckv1) margs=(--layer-types lckv:1 --forward-passes 1 --backward-passes 2 --accum 2) ;;
  esac
  args=(--shape tiny "${margs[@]}" --data "$tmp/data" --steps 30 --seq 32 --lr 3e-3 --warmup 5 --eval-every 10
        --eval-batches 2 --seed 3 -t 1)
  "$xlkv" train "${args[@]}" --batch 4 --out "$tmp/$map-single" 2>"$tmp/$map-single.log" \
    || { tail -5 "$tmp/$map-single.log"; fail "$map: single-process run"; continue; }
  for ranks in 2 4; do
    out=$tmp/$map-np$ranks
    if "${mpi[@]}" -np $ranks "$xlkv" train "${args[@]}" --batch $((4 / ranks)) --out "$out" 2>"$out.log"; then
      result=$($compare "$tmp/$map-single/latest" "$out/latest" --loss-tol 1e-6 --param-tol 2e-5) \
        && echo "ok   $map: mpirun -np $ranks --batch $((4 / ranks)) == one process --batch 4: $result" \
        || fail "$map: mpirun -np $ranks differs from one process: $result"
      # one progress line per step (rank 0 only), the same held-out losses
      n=$(grep -c "^step" "$out.log")
      [ "$n" = 30 ] && echo "ok   $map: -np $ranks printed 30 progress lines (rank 0 only)" \
        || fail "$map: -np $ranks printed $n progress lines, expected 30"
      diff <(grep "^eval" "$tmp/$map-single.log") <(grep "^eval" "$out.log") >/dev/null \
        && echo "ok   $map: -np $ranks held-out losses equal the single process's ($(grep "^eval" "$out.log" | tail -1))" \
        || fail "$map: -np $ranks held-out losses differ: $(grep "^eval" "$out.log" | tr '\n' ' ')"
    else
      tail -15 "$out.log"; fail "$map: mpirun -np $ranks"
    fi
  done
done
# negative control: another seed must fail the same comparison (it can fail)
"$xlkv" train --shape tiny --layer-types cla:2 --data "$tmp/data" --steps 30 --seq 32 --lr 3e-3 --warmup 5 \
  --eval-every 10 --eval-batches 2 --seed 4 -t 1 --batch 4 --out "$tmp/seed4" 2>/dev/null || fail "seed-4 run"
result=$($compare "$tmp/cla2-single/latest" "$tmp/seed4/latest" --loss-tol 1e-6 --param-tol 2e-5) \
  && fail "the comparison accepted a run with another seed: $result" \
  || echo "ok   negative control: another seed is rejected by the comparison ($result)"

# ---- resume with another world size ------------------------------------------------------------------------------
args=(--shape tiny --layer-types cla:2 --data "$tmp/data" --steps 40 --seq 32 --lr 3e-3 --warmup 5 --save-every 5
      --seed 5 -t 1 --accum 2)
"$xlkv" train "${args[@]}" --batch 4 --out "$tmp/straight" 2>"$tmp/straight.log" || fail "straight run"
"$xlkv" train "${args[@]}" --batch 4 --out "$tmp/killed" 2>"$tmp/killed.log" &
pid=$!
for _ in $(seq 1 2000); do
  [ -e "$tmp/killed/latest" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.01
done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
echo "note: the 1-process run was killed with SIGKILL at $(readlink "$tmp/killed/latest")"
"${mpi[@]}" -np 2 "$xlkv" train "${args[@]}" --batch 4 --out "$tmp/killed" --resume 2>"$tmp/refused.log" \
  && fail "a resume with another global batch was accepted" \
  || { grep -q "that is --batch 2 per rank" "$tmp/refused.log" \
         && echo "ok   resume with 2 ranks x batch 4 (global 8, saved 4) refused: $(grep -o 'the saved run.*' "$tmp/refused.log" | head -1)" \
         || { cat "$tmp/refused.log"; fail "resume refusal message"; }; }
if "${mpi[@]}" -np 2 "$xlkv" train "${args[@]}" --batch 2 --out "$tmp/killed" --resume 2>"$tmp/resumed.log"; then
  grep -q "resumed from" "$tmp/resumed.log" || echo "note: no checkpoint before the kill; the 2-rank run started over"
  result=$($compare "$tmp/straight/latest" "$tmp/killed/latest" --loss-tol 1e-6 --param-tol 2e-5) \
    && echo "ok   1 process killed, resumed on 2 ranks == uninterrupted 1-process run: $result" \
    || fail "resumed on 2 ranks differs: $result"
else
  tail -15 "$tmp/resumed.log"; fail "resume on 2 ranks"
fi

# ---- failures stop the job -----------------------------------------------------------------------------------------
args=(--shape tiny --layer-types cla:2 --steps 20 --seq 32 --batch 2 --seed 3 -t 1 --out "$tmp/failing")
start=$SECONDS
"${mpi[@]}" -np 1 "$xlkv" train "${args[@]}" --data "$tmp/data" : -np 1 "$xlkv" train "${args[@]}" \
  --data "$tmp/missing" >/dev/null 2>"$tmp/nodata.log"
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1 of 2: .*missing.*stopping every rank" "$tmp/nodata.log"; then
  echo "ok   rank 1 without data stops the job in $((SECONDS - start)) s: $(grep -m1 'rank 1 of 2' "$tmp/nodata.log")"
else
  cat "$tmp/nodata.log"; fail "a rank without data (exit $rc; 124 = hung until the timeout)"
fi
"${mpi[@]}" -np 1 "$xlkv" train "${args[@]}" --data "$tmp/data" : -np 1 "$xlkv" train "${args[@]}" \
  --data "$tmp/data" --seq 16 >/dev/null 2>"$tmp/disagree.log"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "the ranks disagree on the seq" "$tmp/disagree.log" \
  && echo "ok   ranks with different --seq refused: $(grep -m1 -o 'the ranks disagree.*' "$tmp/disagree.log")" \
  || { cat "$tmp/disagree.log"; fail "ranks that disagree (exit $rc)"; }
# a rank killed mid-run: mpirun ends the job (bounded by timeout: 124 would mean a hang)
timeout 120 "${mpirun_cmd[@]}" -np 2 "$xlkv" train "${args[@]}" --steps 1000000 \
  --data "$tmp/data" >/dev/null 2>"$tmp/lost.log" &
guard=$!
for _ in $(seq 1 3000); do grep -q "^step" "$tmp/lost.log" 2>/dev/null && break; sleep 0.01; done
launcher=$(pgrep -P $guard | head -1)
victim=$(pgrep -P "${launcher:-0}" | tail -1)
start=$SECONDS
if [ -n "$victim" ]; then
  kill -9 "$victim"
  wait $guard
  rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "exited on signal 9" "$tmp/lost.log" \
    && echo "ok   a rank killed with SIGKILL ends the job in $((SECONDS - start)) s (exit $rc): $(grep -m1 -o 'process rank .*' "$tmp/lost.log")" \
    || { cat "$tmp/lost.log"; fail "a lost rank (exit $rc; 124 = hung until the timeout)"; }
else
  kill $guard 2>/dev/null; wait $guard 2>/dev/null
  cat "$tmp/lost.log"; fail "could not find a rank to kill"
fi

[ $failures -eq 0 ] && echo "all mpi training checks passed" || { echo "$failures failures"; exit 1; }
