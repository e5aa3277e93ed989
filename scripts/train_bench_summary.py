#!/usr/bin/env python3
"""Side by side: bench_train_gpu's JSON lines (xlkv, with its step profile) and bench_train_torch.py's (PyTorch eager
and torch.compile) from one run (scripts/gpu-session.sh train-bench): tokens/s, step ms, MFU (executed FLOPs, and
BENCHMARKS.md's 6N count where the line has it), and each line's speed relative to xlkv on the same map and
embeddings; then each xlkv map's five largest profile categories. Lines with "error" are listed
as failed. Usage: train_bench_summary.py train_gpu.jsonl train_torch.jsonl
"""
import json
import sys


def read(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        print(f"(no {path})")
        return []


def main(gpu_path, torch_path):
    rows = [("xlkv", j) for j in read(gpu_path)] + [("torch " + j.get("mode", "?"), j) for j in read(torch_path)]
    def key(j):  # lines written before the embeddings field were tied
        return j.get("map"), j.get("embeddings", "tied")

    xlkv_speed = {key(j): j["tokens_per_s"] for who, j in rows if who == "xlkv" and "tokens_per_s" in j}
    print(f"{'implementation':<15} {'map':<9} {'embed':<6} {'tokens/s':>10} {'step ms':>9} {'MFU':>6} {'MFU 6N':>7} "
          f"{'vs xlkv':>8}  device")
    for who, j in rows:
        if "error" in j:
            print(f"{who:<15} {j.get('map', '?'):<9} failed: {j['error'][:100]}")
            continue
        ratio = j["tokens_per_s"] / xlkv_speed[key(j)] if key(j) in xlkv_speed else float("nan")
        mfu_6n = f"{100 * j['mfu_6n']:>6.1f}%" if "mfu_6n" in j else f"{'-':>7}"
        print(f"{who:<15} {j['map']:<9} {key(j)[1]:<6} {j['tokens_per_s']:>10.0f} {1e3 * j['median_step_s']:>9.1f} "
              f"{100 * j['mfu']:>5.1f}% {mfu_6n} {ratio:>7.2f}x  {j.get('device', '?')}")
    for who, j in rows:
        profile = j.get("profile")
        if who != "xlkv" or not profile:
            continue
        top = list(profile["ms_per_step"].items())[:5]
        parts = ", ".join(f"{name} {ms:.1f} ms ({profile['percent'][name]:.0f}%)" for name, ms in top)
        print(f"xlkv {j['map']} ({key(j)[1]}) step {profile['step_ms']:.1f} ms (profiled): {parts}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(main(sys.argv[1], sys.argv[2]))
