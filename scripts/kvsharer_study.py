#!/usr/bin/env python3
"""The KVSharer study on stories260K (docs/KVSHARER.md): xlkv search for the dissimilar (the paper), similar and
random orders at 1, 2 and 3 shared layers of 5 (the requested rates 12.5% and 25% round to 1 layer, 37.5% and 50% to
2; 3 = 60% is added), then for every distinct map and the standard map: perplexity, zero-shot accuracy on a task
subset, greedy decode speed, and KV memory per token. Writes bench/results/kvsharer/ (maps, reports, heatmaps,
results.json, results.md).

    python3 scripts/kvsharer_study.py [--xlkv build/xlkv] [--quick]

Every xlkv command it runs is printed and stored in results.json.
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("XLKV_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
MODEL = os.path.join(SHARED, "models", "stories260K", "stories260K.bin")
CALIB = os.path.join(SHARED, "text", "tinyshakespeare.txt")
PPL_TEXT = os.path.join(SHARED, "text", "gutenberg", "gutenberg-valid.txt.xz")
OUT = os.path.join(ROOT, "bench", "results", "kvsharer")
ORDERS = [("dissimilar", 0), ("similar", 0), ("random", 1), ("random", 2), ("random", 3)]
SHARES = [1, 2, 3]
TASKS = "piqa,arc_easy,copa,lambada_openai"


def rel(path):
    return os.path.relpath(path, ROOT)


def run(cmd, log):
    cmd = [rel(c) if os.path.isabs(c) else c for c in cmd]  # run from the root with relative paths
    shown = " ".join(shlex.quote(c) for c in cmd)
    print("$", shown, flush=True)
    log.append(shown)
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"failed: {shown}\n{p.stderr}")
    return p, time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xlkv", default=os.path.join(ROOT, "build", "xlkv"))
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--decode-runs", type=int, default=15)
    ap.add_argument("--decode-only", action="store_true", help="reuse results.json; measure decode speed again")
    args = ap.parse_args()
    x = args.xlkv
    if args.decode_only:
        results = json.load(open(os.path.join(OUT, "results.json")))
        results["commands"] = [c for c in results["commands"] if " generate " not in c]
        decode_and_write(x, results, args.decode_runs)
        return
    os.makedirs(OUT, exist_ok=True)
    log = []
    searches = []
    for order, seed in ORDERS:
        for share in SHARES:
            d = os.path.join(OUT, "maps", f"{order}-{share}" + (f"-seed{seed}" if order == "random" else ""))
            run([x, "search", "-m", MODEL, "--calib", CALIB, "--share", str(share), "--order", order, "--seed",
                 str(seed), "-t", "1", "--out", d], log)
            rep = json.load(open(os.path.join(d, "report.json")))
            searches.append({"order": order, "share": share, "seed": seed, "dir": rel(d), "kv_src": rep["kv_src"],
                             "shared": rep["shared_layers"], "final_score": rep["final_score"],
                             "tried": len(rep["pairs"]), "kv_bytes_per_token": rep["kv_bytes_per_token"]})
    maps = {"standard": None}
    for s in searches:
        key = "_".join(map(str, s["kv_src"]))
        s["layer_types"] = key
        maps.setdefault(key, os.path.join(ROOT, s["dir"], "map.json"))
    evals = {}
    for key, map_path in maps.items():
        flags = ["--kv-map", map_path] if map_path else []
        name = key
        r = {}
        p, sec = run([x, "perplexity", "-m", MODEL, "-f", PPL_TEXT, "--max-tokens", str(args.ppl_tokens), "--ctx",
                      "512", "--stride", "512", "-t", "1", "--json", os.path.join(OUT, "tmp_ppl.json")] + flags, log)
        ppl = json.load(open(os.path.join(OUT, "tmp_ppl.json")))
        r["ppl"] = ppl["ppl"]
        r["ppl_tokens_scored"] = ppl["tokens_scored"]
        p, sec = run([x, "eval", "-m", MODEL, "--tasks", TASKS, "--limit", str(args.limit), "-t", "1", "--json",
                      os.path.join(OUT, "tmp_eval.json")] + flags, log)
        ev = json.load(open(os.path.join(OUT, "tmp_eval.json")))["results"]
        r["tasks"] = {t: {k: v for k, v in ev[t].items() if k in ("n", "acc", "acc_norm", "ppl")} for t in ev}
        r["mean_acc"] = statistics.mean(ev[t]["acc"] for t in ev)
        evals[name] = r
        r["map_file"] = rel(map_path) if map_path else None
        print(name, json.dumps({k: r[k] for k in ("ppl", "mean_acc")}), flush=True)
    for f in ("tmp_ppl.json", "tmp_eval.json"):
        os.remove(os.path.join(OUT, f))
    results = {"model": rel(MODEL), "calibration": rel(CALIB) + " (first 30 paragraphs of >= 64 tokens, cut to 64)",
               "perplexity_text": rel(PPL_TEXT) + f" (first {args.ppl_tokens} tokens, ctx 512, stride 512)",
               "tasks": TASKS + f" (--limit {args.limit})", "searches": searches, "maps": evals, "commands": log}
    decode_and_write(x, results, args.decode_runs)


def decode_and_write(x, results, runs):
    """Decode speed by bench/bench_kvsharer (exactly 480 greedy tokens per run whatever the map, round-robin over the
    maps so that the load of a shared machine falls on all alike); KV memory from generate's own report."""
    evals, log = results["maps"], results["commands"]
    for key, r in evals.items():  # results.json of an earlier version of this script lacks map_file
        if "map_file" not in r:
            r["map_file"] = next((os.path.join(s["dir"], "map.json") for s in results["searches"]
                                  if s["layer_types"] == key), None)
    for key, r in evals.items():  # the KV memory as generate reports it
        flags = ["--kv-map", os.path.join(ROOT, r["map_file"])] if r["map_file"] else []
        p, sec = run([x, "generate", "-m", MODEL, "-p", "Once upon a time", "-n", "64", "--temp", "0", "-t", "1"]
                     + flags, log)
        kv = re.search(r"KV layers (\d+) of (\d+); KV ([0-9.]+ \w+)/token", p.stderr)
        r["kv_layers"] = int(kv.group(1))
        r["kv_per_token"] = kv.group(3)
        r["generate_kv_report"] = next(l for l in p.stderr.splitlines() if "KV layers" in l)
    keys = list(evals)
    bench = os.path.join(os.path.dirname(x), "bench_kvsharer")
    p, sec = run([bench, "-m", MODEL, "--tokens", "480", "--runs", str(runs), "-t", "1"]
                 + [os.path.join(ROOT, evals[k]["map_file"]) if evals[k]["map_file"] else "standard" for k in keys], log)
    for key, line in zip(keys, p.stdout.strip().splitlines()):
        b = json.loads(line)
        evals[key]["decode"] = b
        evals[key]["decode_median"] = b["median_tokens_per_s"]
        evals[key]["decode_best"] = b["best_tokens_per_s"]
    json.dump(results, open(os.path.join(OUT, "results.json"), "w"), indent=1)
    searches = results["searches"]
    base = evals["standard"]
    lines = ["| order | shared (rate) | map (kv_src) | KV layers | KV/token | ppl | ppl vs standard | mean acc | "
             + " | ".join(TASKS.split(",")) + " | decode tok/s (median) | vs standard | decode tok/s (best) | vs standard |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in TASKS.split(","))
             + " | ---: | ---: | ---: | ---: |"]

    def row(order, shared, key):
        r = evals[key]
        accs = " | ".join(f"{r['tasks'][t]['acc']:.3f}" for t in TASKS.split(","))
        return (f"| {order} | {shared} | {key} | {r['kv_layers']} | {r['kv_per_token']} | {r['ppl']:.2f} | "
                f"{r['ppl'] / base['ppl']:.3f}x | {r['mean_acc']:.3f} | {accs} | {r['decode_median']:.0f} | "
                f"{r['decode_median'] / base['decode_median']:.2f}x | {r['decode_best']:.0f} | "
                f"{r['decode_best'] / base['decode_best']:.2f}x |")
    lines.append(row("-", "0 (0%)", "standard"))
    for s in searches:
        lines.append(row(s["order"] + (f" (seed {s['seed']})" if s["order"] == "random" else ""), f"{s['shared']} ({100 * s['shared'] / 5:.0f}%)", s["layer_types"]))
    open(os.path.join(OUT, "results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
