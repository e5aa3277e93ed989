#!/usr/bin/env python3
"""The KVSharer study (docs/KVSHARER.md): xlkv search for the dissimilar (the paper), similar and random orders at
several numbers of shared layers, then for every distinct map and the standard map: perplexity, zero-shot accuracy on
a task subset, greedy decode speed, and KV memory per token. Two studies:

  --study stories260K (default)  stories260K (5 layers), tinyshakespeare calibration, 1/2/3 shared layers;
                                 writes bench/results/kvsharer/ (maps/, results.json, results.md)
  --study gutenberg-standard     models/xlkv-gutenberg-standard (6 layers), Gutenberg-train calibration, 1/2/3 shared
                                 layers (the rates 12.5/25/37.5/50% of 6 layers), perplexity on Gutenberg valid and
                                 WikiText-2 valid, and the same measurements on models/xlkv-gutenberg-cla2 under its
                                 trained map (cla:2, 50% of the layers share) for comparison; writes
                                 bench/results/kvsharer/gutenberg-standard/

    python3 scripts/kvsharer_study.py [--study NAME] [--xlkv build/xlkv] [--limit N] [--decode-only] [--resume]

Every xlkv command it runs is printed and stored in results.json. --resume reuses the outputs of commands already run
by an interrupted run of the same study (kept in OUT/runs-cache.json until the study completes).
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
TEXT = os.path.join(SHARED, "text")
RESULTS = os.path.join(ROOT, "bench", "results", "kvsharer")

STUDIES = {
    "stories260K": {
        "model": os.path.join(SHARED, "models", "stories260K", "stories260K.bin"),
        "calib": os.path.join(TEXT, "tinyshakespeare.txt"),
        "ppl_texts": [("gutenberg_valid", os.path.join(TEXT, "gutenberg", "gutenberg-valid.txt.xz"))],
        "ppl_tokens": 16384,
        "orders": [("dissimilar", 0), ("similar", 0), ("random", 1), ("random", 2), ("random", 3)],
        "shares": [1, 2, 3],
        "tasks": "piqa,arc_easy,copa,lambada_openai",
        "limit": 40,
        "prompt": "Once upon a time",
        "out": RESULTS,
        "compare": [],
    },
    "gutenberg-standard": {
        "model": os.path.join(ROOT, "models", "xlkv-gutenberg-standard"),
        "calib": os.path.join(TEXT, "gutenberg", "gutenberg-train-00.txt.xz"),
        "ppl_texts": [("gutenberg_valid", os.path.join(TEXT, "gutenberg", "gutenberg-valid.txt.xz")),
                      ("wikitext2_valid", os.path.join(TEXT, "wikitext2_valid.tokens.txt"))],
        "ppl_tokens": 30720,
        "orders": [("dissimilar", 0), ("similar", 0), ("random", 1), ("random", 2), ("random", 3)],
        "shares": [1, 2, 3],
        "tasks": "piqa,arc_easy,copa,lambada_openai,hellaswag",
        "limit": 200,
        "prompt": "It was a dark and stormy night",
        "out": os.path.join(RESULTS, "gutenberg-standard"),
        # (name, model, layer_types, flags): the cla:2 model under its trained map (its checkpoint's layer_types), and
        # the same map put on the standard model without training, beside the searched maps
        "compare": [("trained cla:2 (xlkv-gutenberg-cla2)", os.path.join(ROOT, "models", "xlkv-gutenberg-cla2"),
                     "0_0_2_2_4_4", []),
                    ("cla:2 map on the standard model, untrained", os.path.join(ROOT, "models",
                     "xlkv-gutenberg-standard"), "0_0_2_2_4_4", ["--layer-types", "0_0_2_2_4_4"])],
    },
}


def rel(path):
    return os.path.relpath(path, ROOT)


class Runner:
    """Runs xlkv commands from the repository root (relative paths), logs them, and with --resume reuses the stdout,
    stderr and --json output of a command already run."""

    def __init__(self, out, resume):
        self.log = []
        self.cache_path = os.path.join(out, "runs-cache.json")
        self.cache = json.load(open(self.cache_path)) if resume and os.path.exists(self.cache_path) else {}

    def run(self, cmd, json_out=None):
        cmd = [rel(c) if os.path.isabs(c) else c for c in cmd]
        shown = " ".join(shlex.quote(c) for c in cmd)
        self.log.append(shown)
        if shown in self.cache:
            print("$ (cached)", shown, flush=True)
            return self.cache[shown]
        print("$", shown, flush=True)
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            sys.exit(f"failed: {shown}\n{p.stderr}")
        r = {"stdout": p.stdout, "stderr": p.stderr, "seconds": round(time.time() - t, 1)}
        if json_out:
            r["json"] = json.load(open(json_out))
            os.remove(json_out)
        print(f"  ({r['seconds']} s)", flush=True)
        self.cache[shown] = r
        json.dump(self.cache, open(self.cache_path, "w"))
        return r

    def done(self):
        if os.path.exists(self.cache_path):
            os.remove(self.cache_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", choices=sorted(STUDIES), default="stories260K")
    ap.add_argument("--xlkv", default=os.path.join(ROOT, "build", "xlkv"))
    ap.add_argument("--ppl-tokens", type=int, help="tokens of each perplexity text (default: the study's)")
    ap.add_argument("--limit", type=int, help="items per task (default: the study's)")
    ap.add_argument("--decode-runs", type=int, default=15)
    ap.add_argument("--decode-only", action="store_true", help="reuse results.json; measure decode speed again")
    ap.add_argument("--resume", action="store_true", help="reuse the commands an interrupted run completed")
    args = ap.parse_args()
    st = dict(STUDIES[args.study])
    st["name"] = args.study
    if args.ppl_tokens: st["ppl_tokens"] = args.ppl_tokens
    if args.limit: st["limit"] = args.limit
    x = args.xlkv
    out = st["out"]
    os.makedirs(out, exist_ok=True)
    if args.decode_only:
        results = json.load(open(os.path.join(out, "results.json")))
        results["commands"] = [c for c in results["commands"] if " generate " not in c and "bench_kvsharer" not in c]
        runner = Runner(out, False)
        runner.log = results["commands"]
        decode_and_write(x, st, results, args.decode_runs, runner)
        return
    runner = Runner(out, args.resume)
    searches = []
    for order, seed in st["orders"]:
        for share in st["shares"]:
            d = os.path.join(out, "maps", f"{order}-{share}" + (f"-seed{seed}" if order == "random" else ""))
            runner.run([x, "search", "-m", st["model"], "--calib", st["calib"], "--share", str(share), "--order",
                        order, "--seed", str(seed), "-t", "1", "--out", d])
            rep = json.load(open(os.path.join(d, "report.json")))
            searches.append({"order": order, "share": share, "seed": seed, "dir": rel(d), "kv_src": rep["kv_src"],
                             "shared": rep["shared_layers"], "final_score": rep["final_score"],
                             "target_reached": rep.get("target_reached"), "tried": len(rep["pairs"]),
                             "kv_bytes_per_token": rep["kv_bytes_per_token"],
                             "distance": rep.get("distance")})
    entries = {"standard": {"model": st["model"], "map_file": None, "layer_types": None, "flags": []}}
    for s in searches:
        key = "_".join(map(str, s["kv_src"]))
        s["layer_types"] = key
        map_file = os.path.join(ROOT, s["dir"], "map.json")
        entries.setdefault(key, {"model": st["model"], "map_file": map_file, "layer_types": key,
                                 "flags": ["--kv-map", map_file]})
    for name, model, layer_types, flags in st["compare"]:
        entries[name] = {"model": model, "map_file": None, "layer_types": layer_types, "flags": flags,
                         "compare": True}
    evals = {}
    tmp = os.path.join(out, "tmp.json")
    for key, e in entries.items():
        flags = e["flags"]
        r = {"model": rel(e["model"]), "map_file": rel(e["map_file"]) if e["map_file"] else None,
             "layer_types": e["layer_types"], "flags": flags, "compare": e.get("compare", False), "ppl": {}}
        for text_name, text in st["ppl_texts"]:
            p = runner.run([x, "perplexity", "-m", e["model"], "-f", text, "--max-tokens", str(st["ppl_tokens"]),
                            "--ctx", "512", "--stride", "512", "-t", "1", "--json", tmp] + flags, tmp)
            r["ppl"][text_name] = {"ppl": p["json"]["ppl"], "tokens_scored": p["json"]["tokens_scored"]}
        p = runner.run([x, "eval", "-m", e["model"], "--tasks", st["tasks"], "--limit", str(st["limit"]), "-t", "1",
                        "--json", tmp] + flags, tmp)
        ev = p["json"]["results"]
        r["tasks"] = {t: {k: v for k, v in ev[t].items() if k in ("n", "acc", "acc_norm", "ppl")} for t in ev}
        r["mean_acc"] = statistics.mean(ev[t]["acc"] for t in ev)
        evals[key] = r
        print(key, json.dumps({"ppl": {t: v["ppl"] for t, v in r["ppl"].items()}, "mean_acc": r["mean_acc"]}),
              flush=True)
    results = {"study": st["name"], "model": rel(st["model"]),
               "calibration": rel(st["calib"]) + " (first 30 paragraphs of >= 64 tokens, cut to 64)",
               "perplexity_texts": {n: rel(t) + f" (first {st['ppl_tokens']} tokens, ctx 512, stride 512)"
                                    for n, t in st["ppl_texts"]},
               "tasks": st["tasks"] + f" (--limit {st['limit']})", "searches": searches, "maps": evals}
    results["commands"] = runner.log
    decode_and_write(x, st, results, args.decode_runs, runner)
    runner.done()


def decode_and_write(x, st, results, runs, runner):
    """Decode speed by bench/bench_kvsharer (exactly 480 greedy tokens per run whatever the map, round-robin over the
    maps so that the load of a shared machine falls on all alike); KV memory from generate's own report."""
    evals = results["maps"]
    for r in evals.values():  # results.json of the first stories260K run names the model once
        r.setdefault("model", results["model"])
    for key, r in evals.items():  # the KV memory as generate reports it
        flags = r.get("flags", ["--kv-map", os.path.join(ROOT, r["map_file"])] if r["map_file"] else [])
        p = runner.run([x, "generate", "-m", os.path.join(ROOT, r["model"]), "-p", st["prompt"], "-n", "64", "--temp",
                        "0", "-t", "1"] + flags)
        kv = re.search(r"KV layers (\d+) of (\d+); KV ([0-9.]+ \w+)/token", p["stderr"])
        r["kv_layers"] = int(kv.group(1))
        r["n_layers"] = int(kv.group(2))
        r["kv_per_token"] = kv.group(3)
        r["generate_kv_report"] = next(l for l in p["stderr"].splitlines() if "KV layers" in l)
        r["generate_text"] = p["stdout"]
    keys = list(evals)
    bench = [os.path.join(os.path.dirname(x), "bench_kvsharer"), "--tokens", "480", "--runs", str(runs), "-t", "1"]
    current = None
    for k in keys:  # maps of one model follow its -m
        if evals[k]["model"] != current:
            current = evals[k]["model"]
            bench += ["-m", os.path.join(ROOT, current)]
        if evals[k]["map_file"]: bench.append(os.path.join(ROOT, evals[k]["map_file"]))
        else: bench.append(evals[k].get("layer_types") or "standard")
    runner.cache.pop(" ".join(shlex.quote(rel(c) if os.path.isabs(c) else c) for c in bench), None)  # always fresh
    p = runner.run(bench)
    for key, line in zip(keys, p["stdout"].strip().splitlines()):
        b = json.loads(line)
        evals[key]["decode"] = b
        evals[key]["decode_median"] = b["median_tokens_per_s"]
        evals[key]["decode_best"] = b["best_tokens_per_s"]
    results["commands"] = runner.log
    json.dump(results, open(os.path.join(st["out"], "results.json"), "w"), indent=1)
    write_table(st, results)


def write_table(st, results):
    evals, searches = results["maps"], results["searches"]
    tasks = st["tasks"].split(",")
    texts = [n for n, _ in st["ppl_texts"]]
    base = evals["standard"]

    def ppl_of(r, t):  # results.json of the first stories260K run has a single perplexity
        return r["ppl"][t]["ppl"] if isinstance(r["ppl"], dict) else r["ppl"]
    ppl_head = " | ".join(f"ppl {t} | vs standard" for t in texts) if len(texts) > 1 else "ppl | ppl vs standard"
    lines = ["| order | shared (rate) | map (kv_src) | KV layers | KV/token | " + ppl_head + " | mean acc | "
             + " | ".join(tasks) + " | decode tok/s (median) | vs standard | decode tok/s (best) | vs standard |",
             "| --- | --- | --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in texts) + " | ---: | "
             + " | ".join("---:" for _ in tasks) + " | ---: | ---: | ---: | ---: |"]

    def row(order, shared, key):
        r = evals[key]
        ppls = " | ".join(f"{ppl_of(r, t):.2f} | {ppl_of(r, t) / ppl_of(base, t):.3f}x" for t in texts)
        accs = " | ".join(f"{r['tasks'][t]['acc']:.3f}" for t in tasks)
        kv_src = r.get("layer_types") or key
        return (f"| {order} | {shared} | {kv_src} | {r['kv_layers']} | {r['kv_per_token']} | {ppls} | "
                f"{r['mean_acc']:.3f} | {accs} | {r['decode_median']:.0f} | "
                f"{r['decode_median'] / base['decode_median']:.2f}x | {r['decode_best']:.0f} | "
                f"{r['decode_best'] / base['decode_best']:.2f}x |")
    n_layers = base.get("n_layers", 5)
    lines.append(row("-", "0 (0%)", "standard"))
    for s in searches:
        lines.append(row(s["order"] + (f" (seed {s['seed']})" if s["order"] == "random" else ""),
                         f"{s['shared']} ({100 * s['shared'] / n_layers:.1f}%)", s["layer_types"]))
    for key, r in evals.items():
        if r.get("compare"):
            shared = n_layers - r["kv_layers"]
            lines.append(row(key, f"{shared} ({100 * shared / n_layers:.1f}%)", key))
    open(os.path.join(st["out"], "results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
