#!/usr/bin/env python3
"""bench/bench_serve: a load generator for `xlkv serve` (or any OpenAI-compatible server). At each concurrency level
it keeps N streaming clients busy (each sends its next request as soon as the previous one ends) for a fixed time
or request count, and measures requests/s, output tokens/s, time to first token (TTFT: request sent -> first
content chunk) and inter-token latency (ITL: gaps between content chunks; one chunk per token on xlkv), p50 and p99;
it polls /metrics meanwhile for the most requests running at once and the longest queue (how many requests the
KV pool holds before queuing). Prompts are token ids (exact lengths, any Llama-style vocabulary: ids 3..258 are the
byte tokens), max_tokens is fixed; run the server with --ignore-eos for exact output lengths. Results: one JSON
file (bench/results/serve-LABEL.json by default) with the server's model, map and KV figures and one entry per
level. Python standard library only.

Thousands of clients: the clients are spread over --workers processes (default: one per 128 clients, at most the
CPU count), since one Python process with thousands of threads shares one interpreter lock and falls behind the
server: events then pile up in the socket and arrive "together" (ITL p50 ~0, huge p99) although the server sent
them one decode step apart. Each event's time is the moment the read that returned it came back (the body is read
unbuffered, read1 on the socket; events are parsed only after the stream ends). The soft open-file limit is
raised to the hard one (one socket per client). Failed requests: the first few distinct errors are reported.

  bench/bench_serve.py --url http://127.0.0.1:8080 --concurrency 1,4,16,64 --duration-s 20 --label stories
"""
import argparse
import datetime
import http.client
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Target:
    def __init__(self, url, api_key):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = "Bearer " + api_key

    def get(self, path):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        c.request("GET", path, headers=self.headers)
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            raise RuntimeError("GET %s: %d %s" % (path, r.status, body[:200]))
        return body.decode()

    def metrics(self):
        values = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name.split("{")[0] if "{model=" in name else name] = float(value)
        return values


def one_request(target, model, prompt, max_tokens, timeout):
    """Streams one completion; returns a record (or raises)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    c = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    sent = time.perf_counter()
    c.request("POST", "/v1/completions", body=body, headers=target.headers)
    r = c.getresponse()
    if r.status != 200:
        text = r.read()
        c.close()
        return {"status": r.status, "error": text[:200].decode(errors="replace")}
    arrivals, buffer = [], b""  # (arrival time, event payload): parsed after the stream, not while it runs
    while True:
        data = r.read1(65536)
        if not data:
            break
        now = time.perf_counter()
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.startswith(b"data: "):
                arrivals.append((now, event[6:]))
    c.close()
    done = time.perf_counter()
    chunk_times, usage = [], None
    for at, payload in arrivals:
        if payload == b"[DONE]":
            continue
        chunk = json.loads(payload)
        if chunk.get("usage"):
            usage = chunk["usage"]
        elif chunk.get("choices") and chunk["choices"][0].get("text"):
            chunk_times.append(at)
    return {"status": 200, "sent": sent, "done": done, "chunks": chunk_times,
            "completion_tokens": usage["completion_tokens"] if usage else len(chunk_times)}


def raise_open_file_limit(needed):
    """Soft RLIMIT_NOFILE up to the hard limit; warns when the hard limit is short of `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            print("bench_serve: cannot raise the open-file limit from %d: %s" % (soft, e), file=sys.stderr)
    if soft != resource.RLIM_INFINITY and soft < needed:
        print("bench_serve: warning: the open-file limit %d is below %d (clients + spare); raise it with ulimit -n"
              % (soft, needed), file=sys.stderr)
    return soft


def worker_clients(target, model, concurrency, indices, args, stop_at, budget, out):
    """One worker process: a thread per client index; puts its list of records on `out`."""
    records, lock = [], threading.Lock()

    def client(index):
        rng = random.Random(index * 7919 + concurrency)
        while time.perf_counter() < stop_at:
            if budget is not None:
                with budget.get_lock():
                    if budget.value <= 0:
                        return
                    budget.value -= 1
            prompt = [1] + [rng.randrange(3, 259) for _ in range(args.prompt_tokens - 1)]
            try:
                record = one_request(target, model, prompt, args.max_tokens, args.timeout_s)
            except Exception as e:
                record = {"status": -1, "error": "%s: %s" % (type(e).__name__, e), "at": time.perf_counter()}
            if record["status"] != 200 and "at" not in record:
                record["at"] = time.perf_counter()
            with lock:
                records.append(record)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in indices]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.put(records)


def first_distinct_errors(failed, n=5):
    """The first n distinct errors, in the order they happened."""
    seen = []
    for r in sorted(failed, key=lambda r: r.get("at", 0)):
        e = r.get("error") or ("status %d" % r["status"] if r["status"] != 200 else "200 without a content chunk")
        if e not in seen:
            seen.append(e)
            if len(seen) == n:
                break
    return seen


def run_level(target, model, concurrency, args):
    stop_at = time.perf_counter() + args.duration_s
    budget = multiprocessing.Value("l", args.requests) if args.requests else None
    peak = {"running": 0, "queued": 0, "kv_blocks_used": 0}
    polling = [True]

    def poll():
        while polling[0]:
            try:
                m = target.metrics()
                peak["running"] = max(peak["running"], int(m.get("xlkv_requests_running", 0)))
                peak["queued"] = max(peak["queued"], int(m.get("xlkv_queue_length", 0)))
                peak["kv_blocks_used"] = max(peak["kv_blocks_used"], int(m.get("xlkv_kv_blocks_used", 0)))
            except Exception:
                pass
            time.sleep(0.2)

    workers = args.workers or min(os.cpu_count() or 1, (concurrency + 127) // 128)
    workers = max(1, min(workers, concurrency))
    started = time.perf_counter()
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker_clients, args=(target, model, concurrency,
             range(w, concurrency, workers), args, stop_at, budget, out)) for w in range(workers)]
    for p in procs:  # forked before the poller thread starts
        p.start()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    records = []
    for _ in procs:
        records += out.get()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    polling[0] = False
    ok = [r for r in records if r["status"] == 200 and r["chunks"]]
    failed = [r for r in records if r["status"] != 200 or not r.get("chunks")]
    ttft = [r["chunks"][0] - r["sent"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["chunks"], r["chunks"][1:])]
    tokens = sum(r["completion_tokens"] for r in ok)
    ms = lambda v: None if v is None else round(v * 1000, 3)
    return {
        "concurrency": concurrency, "seconds": round(elapsed, 3), "requests": len(ok), "failed": len(failed),
        "rejected_503": sum(1 for r in failed if r["status"] == 503),
        "requests_per_s": round(len(ok) / elapsed, 3), "output_tokens_per_s": round(tokens / elapsed, 1),
        "output_tokens": tokens,
        "ttft_ms_p50": ms(percentile(ttft, 0.5)), "ttft_ms_p99": ms(percentile(ttft, 0.99)),
        "itl_ms_p50": ms(percentile(itl, 0.5)), "itl_ms_p99": ms(percentile(itl, 0.99)),
        "itl_ms_mean": ms(statistics.fmean(itl)) if itl else None,
        "peak_running": peak["running"], "peak_queued": peak["queued"], "peak_kv_blocks_used": peak["kv_blocks_used"],
        "workers": workers, "errors": first_distinct_errors(failed),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", default=os.environ.get("XLKV_API_KEY"))
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma-separated levels")
    ap.add_argument("--duration-s", type=float, default=20, help="seconds per level")
    ap.add_argument("--requests", type=int, default=0, help="requests per level (0 = as many as the time allows)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--label", default=None, help="name of the run (default: the served model)")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/serve-LABEL.json)")
    ap.add_argument("--workers", type=int, default=0,
                    help="client processes (default: one per 128 clients, at most the CPU count)")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x]
    raise_open_file_limit(max(levels) + 64)
    target = Target(args.url, args.api_key)
    model_info = json.loads(target.get("/v1/models"))["data"][0]
    before = target.metrics()
    label = args.label or model_info["id"]
    result = {
        "bench": "serve", "label": label, "url": args.url, "model": model_info,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens, "duration_s_per_level": args.duration_s,
        "kv_bytes_per_token": before.get("xlkv_kv_bytes_per_token"),
        "kv_bytes_per_token_standard_map": before.get("xlkv_kv_bytes_per_token_standard_map"),
        "kv_blocks_total": before.get("xlkv_kv_blocks_total"), "kv_pool_bytes": before.get("xlkv_kv_pool_bytes"),
        "levels": [],
    }
    print("%-11s %8s %9s %10s %10s %10s %9s %9s %8s %7s %6s" % ("concurrency", "requests", "req/s", "tokens/s",
          "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "running", "queued", "failed"))
    for level in levels:
        r = run_level(target, model_info["id"], level, args)
        result["levels"].append(r)
        fmt = lambda v: "-" if v is None else "%.1f" % v
        print("%-11d %8d %9.2f %10.1f %8sms %8sms %7sms %7sms %8d %7d %6d" % (
            level, r["requests"], r["requests_per_s"], r["output_tokens_per_s"], fmt(r["ttft_ms_p50"]),
            fmt(r["ttft_ms_p99"]), fmt(r["itl_ms_p50"]), fmt(r["itl_ms_p99"]), r["peak_running"], r["peak_queued"],
            r["failed"]))
        for e in r["errors"]:
            print("  error: %s" % e)
        sys.stdout.flush()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "serve-%s.json" % label)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", out)
    return 1 if any(l["failed"] for l in result["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
