"""tests/serve/cadence_test: streamed tokens reach the client one decode step apart, not in bursts. A few concurrent
streaming requests (--ignore-eos, 48 tokens each) to `xlkv serve` with the shipped model models/xlkv-gutenberg-cla2
on the CPU backend; the client reads the body unbuffered (read1 on the socket) and stamps each SSE event when the
read that returned it came back. The server's step time is the wall time of the run divided by the engine steps it
reports in /metrics (xlkv_engine_steps_total; nothing else runs). Passes when, for every request, the median gap
between consecutive content events is >= 30% of that step time (a server that buffers tokens, or a connection that
waits for a timeout before sending, gives a median gap near 0) and every event came in a read of its own more often
than not. Usage: cadence_test.py XLKV_BINARY."""
import http.client
import json
import os
import statistics
import sys
import threading
import time

from serve_util import Checker, Server, clean_shutdown_problems

xlkv = sys.argv[1]
source = os.environ.get("XLKV_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
model = os.path.join(source, "models", "xlkv-gutenberg-cla2")
if not os.path.isfile(os.path.join(model, "model.safetensors")):
    print("skipping: %s is absent" % model)
    sys.exit(0)
REQUESTS, TOKENS = 3, 48
t = Checker()
server = Server(xlkv, ["-m", model, "-t", "1", "--parallel", "4", "--ignore-eos"])


def stream(index, out):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {"prompt": "It was a dark and stormy night %d" % index, "max_tokens": TOKENS, "stream": True,
            "temperature": 0}
    c.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    reads, buffer = [], b""  # per read: (time, number of content events)
    while True:
        data = r.read1(65536)
        if not data:
            break
        now = time.perf_counter()
        buffer += data
        n = 0
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.startswith(b"data: {") and b'"text":""' not in event:
                n += 1
        if n:
            reads.append((now, n))
    c.close()
    out[index] = (r.status, reads)


steps_before = server.metrics()["xlkv_engine_steps_total"]
results = {}
threads = [threading.Thread(target=stream, args=(i, results)) for i in range(REQUESTS)]
started = time.perf_counter()
for th in threads:
    th.start()
for th in threads:
    th.join()
wall = time.perf_counter() - started
steps = server.metrics()["xlkv_engine_steps_total"] - steps_before
step_s = wall / steps if steps else float("inf")
print("cadence test: %d requests x %d tokens, %d engine steps in %.3f s: %.2f ms a step" %
      (REQUESTS, TOKENS, steps, wall, step_s * 1000))
for i in range(REQUESTS):
    status, reads = results.get(i, (None, []))
    times = [at for at, n in reads for _ in range(n)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    median = statistics.median(gaps) if gaps else 0
    single = sum(1 for _, n in reads if n == 1)
    print("request %d: status %s, %d content events in %d reads, gap median %.2f ms, p90 %.2f ms" %
          (i, status, len(times), len(reads), median * 1000,
           (sorted(gaps)[int(0.9 * (len(gaps) - 1))] if gaps else 0) * 1000))
    t.check("request %d streamed %d tokens" % (i, TOKENS), status == 200 and len(times) >= TOKENS - 2, len(times))
    t.check("request %d: median gap between events >= 30%% of a step (%.2f ms >= %.2f ms)" %
            (i, median * 1000, 0.3 * step_s * 1000), median >= 0.3 * step_s, gaps)
    t.check("request %d: most events arrive in a read of their own (%d of %d reads)" % (i, single, len(reads)),
            single * 2 > len(times), reads)
status, log = server.stop(timeout=60)
problems = clean_shutdown_problems(status, log)
t.check("clean shutdown", not problems, (problems, log[-3000:]))
t.finish()
