"""tests/serve/cuda_test (label cuda: needs a GPU): `xlkv serve --device cuda`.
  - stories260K in f32: 16 concurrent greedy requests from BOS for 200 tokens each return the llama2.c golden;
    streamed and not; then a clean SIGTERM;
  - random weights in the tinyllama shape (bf16) under cla:2 with --ignore-eos: bench/bench_serve.py at concurrency
    1 and 64 for 10 s each; prints "check" lines with requests/s, output tokens/s, TTFT and ITL, and fails on any
    failed request. Usage: cuda_test.py XLKV_BINARY."""
import json
import os
import subprocess
import sys
import threading

from serve_util import Checker, Server, clean_shutdown_problems, shared_model

xlkv = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
t = Checker()
model = shared_model()
if model:
    golden = open(os.path.join(os.path.dirname(model), "expected_greedy_n200.txt")).read()
    server = Server(xlkv, ["-m", model, "--device", "cuda", "--dtype", "f32", "--parallel", "16"])
    texts = []

    def client(stream):
        req = {"prompt": "", "max_tokens": 200, "temperature": 0}
        if stream:
            req["stream"] = True
            status, events = server.stream("/v1/completions", req)
            texts.append("".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) if status == 200 else None)
        else:
            status, _, body = server.post("/v1/completions", req)
            texts.append(body["choices"][0]["text"] if status == 200 else None)

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wrong = [x for x in texts if x is None or x + "\n" != golden]
    t.check("cuda f32: 16 concurrent greedy requests (8 streamed) = the llama2.c golden", len(texts) == 16 and not wrong,
            wrong[:1])
    status, log = server.stop()
    t.check("cuda server stopped cleanly", not clean_shutdown_problems(status, log), (clean_shutdown_problems(status, log), log[-2000:]))
else:
    print("skipping the golden check: stories260K is absent (set XLKV_SHARED_DATA)")

server = Server(xlkv, ["--random-shape", "tinyllama", "--layer-types", "cla:2", "--device", "cuda", "--parallel", "128",
                       "--ignore-eos", "-c", "1024", "--max-connections", "1024"])
out = os.path.join(os.environ.get("TMPDIR", "/tmp"), "xlkv-cuda-serve-bench.json")
rc = subprocess.run([sys.executable, os.path.join(here, "..", "..", "bench", "bench_serve.py"), "--url",
                     "http://127.0.0.1:%d" % server.port, "--concurrency", "1,64", "--duration-s", "10",
                     "--prompt-tokens", "256", "--max-tokens", "128", "--out", out]).returncode
levels = json.load(open(out))["levels"] if os.path.exists(out) else []
for level in levels:
    print("check tinyllama cla:2 bf16 concurrency %d: %.2f requests/s, %.1f output tokens/s, TTFT p50 %s ms p99 %s ms, "
          "ITL p50 %s ms p99 %s ms, peak running %d" % (level["concurrency"], level["requests_per_s"],
          level["output_tokens_per_s"], level["ttft_ms_p50"], level["ttft_ms_p99"], level["itl_ms_p50"],
          level["itl_ms_p99"], level["peak_running"]))
t.check("bench_serve against the cuda server: no failed request", rc == 0 and len(levels) == 2 and
        all(l["failed"] == 0 and l["requests"] > 0 for l in levels), levels)
status, log = server.stop()
t.check("tinyllama cuda server stopped cleanly", not clean_shutdown_problems(status, log), (clean_shutdown_problems(status, log), log[-2000:]))
t.finish()
