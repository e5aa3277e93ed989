#!/usr/bin/env bash
# tests/cli_bench_train_torch: the training benchmarks' parts that need no GPU.
#   - scripts/bench_train_torch.py builds the same model as xlkv's trainer and counts the same FLOPs: its --flops-only
#     parameter count and flops_per_step equal `bench_train_gpu --flops-only` exactly, for the small and tiny shapes
#     under standard, cla:2 and cla:3 and an odd batch x seq, with untied and tied embeddings, and so do both FLOP
#     counts (executed, and BENCHMARKS.md's 6N); the negative control: another vocabulary must differ.
#   - the 6N count reproduces BENCHMARKS.md's reference MFU figures from their tokens/s (PyTorch on the 127 M `small`
#     model: 214,712 tokens/s = 17.8%, 406,415 = 33.6% against 989 TFLOP/s), and the model has 127 M parameters.
#   - on the CPU (bf16 autocast), a tiny shape for 2 steps in both modes (eager and torch.compile) and both maps writes
#     4 JSON lines with positive tokens/s and MFU, the FLOP count of xlkv, a last loss near ln(vocab), and the same
#     loss in both modes (same seed, same model).
#   - a map it does not reproduce (lckv:2) gets an "error" line and exit status 1, the other lines still written.
#   - bench_train_gpu without a usable GPU writes one JSON line with "error" per map to --out (the lines are not lost
#     when a map fails) and exits 1; a bad option exits 2. Built without CUDA, it says so.
#   - scripts/train_bench_summary.py puts both files side by side.
# Needs python3 with torch (skipped when absent). Usage: bash tests/cli_bench_train_torch.sh /path/to/xlkv
set -u
XLKV=${1:?usage: cli_bench_train_torch.sh /path/to/xlkv}
src=${XLKV_SOURCE_DIR:-.}
bench=$(dirname "$XLKV")/bench_train_gpu
script=$src/scripts/bench_train_torch.py
python3 -c "import torch" 2>/dev/null || { echo "skipping: python3 with torch is absent"; exit 0; }
[ -x "$bench" ] || { echo "FAIL: $bench is not built"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# CUDA's runtime, probed without a device, is not ours to leak-check (ASan build)
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0:protect_shadow_gap=0

# 1. same parameters and FLOPs as xlkv
compare_flops() { # what, then the options both take
    local what=$1; shift
    "$bench" --flops-only "$@" >"$tmp/c.jsonl" 2>"$tmp/c.err" || { fail "$what: bench_train_gpu --flops-only: $(cat "$tmp/c.err")"; return; }
    python3 "$script" --flops-only "$@" >"$tmp/p.jsonl" 2>"$tmp/p.err" || { fail "$what: --flops-only: $(cat "$tmp/p.err")"; return; }
    python3 - "$tmp/c.jsonl" "$tmp/p.jsonl" "$what" <<'PY' || failures=$((failures + 1))
import json, sys
c = [json.loads(l) for l in open(sys.argv[1])]
p = [json.loads(l) for l in open(sys.argv[2])]
ok = len(c) == len(p) > 0
for x, y in zip(c, p):
    same = (x["map"] == y["map"] and x["params"] == y["params"] and x["flops_per_step"] == y["flops_per_step"]
            and x["flops_per_step_6n"] == y["flops_per_step_6n"] and x["embeddings"] == y["embeddings"])
    print(f"check flops {sys.argv[3]} {x['map']} {x['embeddings']}: xlkv params {x['params']} flops "
          f"{x['flops_per_step']:.6e} (6N {x['flops_per_step_6n']:.6e}), torch params {y['params']} flops "
          f"{y['flops_per_step']:.6e} (6N {y['flops_per_step_6n']:.6e}) {'same' if same else 'DIFFERENT'}")
    ok = ok and same
if not ok:
    print(f"FAIL: the torch baseline's model or FLOP count differs from xlkv's ({sys.argv[3]})")
sys.exit(0 if ok else 1)
PY
}
compare_flops small --shape small --maps standard,cla:2,cla:3
compare_flops "small tied" --shape small --embeddings tied --maps standard,cla:2
compare_flops "tiny odd sizes" --shape tiny --vocab 300 --batch 3 --seq 37 --maps standard,cla:2
compare_flops "tiny odd sizes tied" --shape tiny --embeddings tied --vocab 300 --batch 3 --seq 37 --maps standard
# BENCHMARKS.md's reference figures, recomputed with the 6N count of its model (untied, the default)
"$bench" --flops-only --shape small --maps standard >"$tmp/ref.jsonl" 2>"$tmp/ref.err" || fail "flops-only: $(cat "$tmp/ref.err")"
"$bench" --flops-only --shape small --embeddings tied --maps standard >"$tmp/ref_tied.jsonl" 2>/dev/null
python3 - "$tmp/ref.jsonl" "$tmp/ref_tied.jsonl" <<'PY' || failures=$((failures + 1))
import json, sys
j, t = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
ok = 127.0e6 <= j["params"] < 127.1e6 and j["flops_per_step_6n"] > j["flops_per_step"]
for tokens_per_s, stated in ((214712, 17.8), (406415, 33.6)):
    mfu = 100 * tokens_per_s * j["flops_per_step_6n"] / (16 * 1024) / 989e12
    executed = 100 * tokens_per_s * j["flops_per_step"] / (16 * 1024) / 989e12
    good = round(mfu, 1) == stated
    print(f"check BENCHMARKS.md reference {tokens_per_s} tokens/s: 6N MFU {mfu:.2f}% (stated {stated}%), executed "
          f"{executed:.2f}% {'ok' if good else 'DIFFERENT'}")
    ok = ok and good
# tied: the table is the classifier, so both counts are the same product count
same = t["flops_per_step_6n"] == t["flops_per_step"] == j["flops_per_step"] and t["params"] < 103e6
print(f"check tied small: params {t['params']}, 6N count = executed count {'ok' if same else 'DIFFERENT'}")
if not (ok and same):
    print("FAIL: the 6N count does not reproduce BENCHMARKS.md's reference MFU")
sys.exit(0 if ok and same else 1)
PY
# negative control: the comparison must see a different vocabulary
"$bench" --flops-only --shape tiny --vocab 300 --maps standard >"$tmp/c.jsonl" 2>/dev/null
python3 "$script" --flops-only --shape tiny --vocab 301 --maps standard >"$tmp/p.jsonl" 2>/dev/null
python3 -c "
import json, sys
c, p = json.load(open('$tmp/c.jsonl')), json.load(open('$tmp/p.jsonl'))
sys.exit(0 if c['flops_per_step'] != p['flops_per_step'] and c['params'] != p['params'] else 1)" ||
    fail "negative control: vocab 300 vs 301 compared equal"

# 2. both modes on the CPU, tiny shape, 2 steps
out=$tmp/torch.jsonl
timeout 900 python3 "$script" --device cpu --shape tiny --layers 2 --vocab 256 --batch 2 --seq 32 --steps 2 --warmup 1 \
    --modes eager,compile --maps standard,cla:2 --out "$out" >"$tmp/run.out" 2>"$tmp/run.err"
status=$?
[ "$status" -eq 0 ] || fail "bench_train_torch.py on the CPU: exit status $status: $(tail -5 "$tmp/run.err")"
"$bench" --flops-only --shape tiny --vocab 256 --batch 2 --seq 32 --maps standard,cla:2 >"$tmp/tiny.jsonl" 2>/dev/null
# (the C tiny shape has 4 layers; the torch run has 2: compare with the script's own count at 2 layers)
python3 "$script" --flops-only --shape tiny --layers 2 --vocab 256 --batch 2 --seq 32 --maps standard,cla:2 >"$tmp/tiny2.jsonl"
python3 - "$out" "$tmp/tiny2.jsonl" "$tmp/run.out" <<'PY' || failures=$((failures + 1))
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
flops = {j["map"]: j["flops_per_step"] for j in map(json.loads, open(sys.argv[2]))}
printed = [json.loads(l) for l in open(sys.argv[3]) if l.startswith("{")]
ok = [(j["mode"], j["map"]) for j in lines] == [("eager", "standard"), ("eager", "cla:2"), ("compile", "standard"),
                                                ("compile", "cla:2")] and printed == lines
for j in lines:
    good = ("error" not in j and j["tokens_per_s"] > 0 and j["mfu"] > 0 and j["median_step_s"] > 0
            and j["flops_per_step"] == flops[j["map"]] and abs(j["loss"] - math.log(256)) < 1.0
            and j["device"] == "cpu" and j["steps"] == 2)
    print(f"check torch {j['mode']} {j['map']}: tokens/s {j.get('tokens_per_s')} mfu {j.get('mfu')} "
          f"loss {j.get('loss')} (ln 256 = {math.log(256):.3f}) {'ok' if good else 'BAD: ' + json.dumps(j)}")
    ok = ok and good
by = {(j["mode"], j["map"]): j.get("loss", 0) for j in lines}
for m in ("standard", "cla:2"):  # same seed, same model: eager and compiled losses agree (bf16 rounding apart)
    same = abs(by.get(("eager", m), 0) - by.get(("compile", m), 1)) < 0.02
    print(f"check torch eager vs compile loss {m}: {by.get(('eager', m))} vs {by.get(('compile', m))} "
          f"{'ok' if same else 'DIFFERENT'}")
    ok = ok and same
if not ok:
    print("FAIL: bench_train_torch.py on the CPU did not write the expected 4 lines")
sys.exit(0 if ok else 1)
PY

# 3. a map it does not reproduce
python3 "$script" --device cpu --shape tiny --layers 2 --vocab 64 --batch 1 --seq 8 --steps 1 --warmup 0 --modes eager \
    --maps lckv:2,standard --out "$tmp/bad.jsonl" >/dev/null 2>&1
status=$?
[ "$status" -eq 1 ] || fail "lckv:2 in the torch baseline: exit status $status, expected 1"
python3 -c "
import json, sys
l = [json.loads(x) for x in open('$tmp/bad.jsonl')]
sys.exit(0 if len(l) == 2 and 'not reproduced' in l[0].get('error', '') and 'tokens_per_s' in l[1] else 1)" ||
    fail "lckv:2 in the torch baseline: expected an error line then a measured line: $(cat "$tmp/bad.jsonl")"

# 4. bench_train_gpu: a line per map even when they fail; bad options
"$bench" --shape tiny --vocab 64 --batch 1 --seq 8 --steps 1 --warmup 0 --maps standard,bogus,cla:2 --profile \
    --out "$tmp/gpu.jsonl" >"$tmp/gpu.out" 2>"$tmp/gpu.err"
status=$?
if grep -q "built without CUDA" "$tmp/gpu.out"; then
    echo "check bench_train_gpu: built without CUDA (said so, status $status)"
    [ "$status" -eq 0 ] || fail "bench_train_gpu without CUDA: exit status $status"
else
    python3 - "$tmp/gpu.jsonl" "$status" <<'PY' || failures=$((failures + 1))
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
status = int(sys.argv[2])
maps = [j["map"] for j in lines]
bogus = lines[1] if len(lines) == 3 else {}
ok = maps == ["standard", "bogus", "cla:2"] and "error" in bogus and status == 1
for j in (lines[0], lines[2]) if len(lines) == 3 else ():  # no GPU here: errors; on a GPU: measured with a profile
    ok = ok and ("error" in j or ("tokens_per_s" in j and "ms_per_step" in j.get("profile", {})))
print(f"check bench_train_gpu lines: maps {maps}, exit status {status}, "
      f"first: {lines[0].get('error', 'measured') if lines else None} {'ok' if ok else 'BAD'}")
if not ok:
    print("FAIL: bench_train_gpu should write a JSON line per map (an error line for a failing one) and exit 1")
sys.exit(0 if ok else 1)
PY
fi
# 5. the side-by-side summary of scripts/gpu-session.sh train-bench reads both files (failed maps listed as such)
python3 "$src/scripts/train_bench_summary.py" "$tmp/gpu.jsonl" "$out" >"$tmp/summary.txt" 2>&1 &&
    grep -q "^torch compile   cla:2" "$tmp/summary.txt" && grep -q "^torch eager     standard" "$tmp/summary.txt" ||
    fail "train_bench_summary.py: $(cat "$tmp/summary.txt")"
"$bench" --steps 0 >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "must be positive" "$tmp/err" || fail "bench_train_gpu --steps 0: $(cat "$tmp/err")"
"$bench" --dtype fp8 >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "unknown option --dtype fp8" "$tmp/err" || fail "bench_train_gpu --dtype fp8: $(cat "$tmp/err")"
"$bench" --profile --steps >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "needs a value" "$tmp/err" || fail "bench_train_gpu --steps without a value: $(cat "$tmp/err")"

if [ "$failures" -ne 0 ]; then echo "$failures failure(s)"; exit 1; fi
echo "ok cli_bench_train_torch"
