"""tests/serve/load_test: 64 concurrent streaming clients against `xlkv serve` (stories260K, CPU backend) for a
bounded time, on loopback. Each client loops: a random prompt, random max_tokens, stream, and checks every event
(valid JSON chunks of one id, text, one finish_reason, [DONE]); one request in ten is abandoned mid-stream on
purpose (the server must free its sequence). Passes when no request failed, the server ends with nothing running,
no queued request and no KV block held, and it stops cleanly on SIGTERM (in the ASan build: no leak, no error).
Duration: $XLKV_SERVE_LOAD_SECONDS, else 40 s in the sanitizer build and 30 s otherwise.
Usage: load_test.py XLKV_BINARY."""
import json
import os
import random
import socket
import sys
import threading
import time

from serve_util import Checker, Server, clean_shutdown_problems, parse_sse, shared_model

xlkv = sys.argv[1]
model = shared_model()
if not model:
    print("skipping: stories260K is absent (set XLKV_SHARED_DATA)")
    sys.exit(0)
sanitized = os.environ.get("XLKV_SANITIZED", "0") in ("1", "ON", "TRUE", "true")
seconds = float(os.environ.get("XLKV_SERVE_LOAD_SECONDS", "40" if sanitized else "30"))
CLIENTS = 64
print("load test: %d streaming clients for %.0f s (%s build)" % (CLIENTS, seconds, "sanitizer" if sanitized else "release"))
t = Checker()
server = Server(xlkv, ["-m", model, "-t", "1", "--parallel", "32", "--queue", "128"])
words = ["Once upon a time", "Lily", "The dog", "a big tree", "Tom was sad", "the sun", "They played", "happy"]
lock = threading.Lock()
stats = {"completed": 0, "abandoned": 0, "failed": 0, "tokens": 0, "errors": []}
stop_at = time.time() + seconds


def fail(why):
    with lock:
        stats["failed"] += 1
        if len(stats["errors"]) < 5:
            stats["errors"].append(why)


def one_request(rng, abandon):
    chat = rng.random() < 0.3
    max_tokens = rng.randint(8, 96)
    prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
    body = {"max_tokens": max_tokens, "stream": True, "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 99)}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    if abandon:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        data = json.dumps(body).encode()
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        head = s.recv(64)
        s.close()
        if not head.startswith(b"HTTP/1.1 200"):
            fail("abandoned request got %r" % head[:40])
        else:
            with lock:
                stats["abandoned"] += 1
        return
    c = server.connection(timeout=120)
    c.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read().decode()
    c.close()
    if r.status != 200:
        return fail("status %d: %s" % (r.status, raw[:200]))
    events = parse_sse(raw)
    if not events or events[-1] != "[DONE]":
        return fail("no [DONE]: %r" % events[-2:])
    chunks = [json.loads(e) for e in events[:-1]]
    ids = {ch["id"] for ch in chunks}
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"][0]["finish_reason"]]
    if len(ids) != 1 or len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        return fail("bad chunks: ids %s finishes %s" % (ids, finishes))
    with lock:
        stats["completed"] += 1
        stats["tokens"] += len(chunks)


def client(index):
    rng = random.Random(index)
    n = 0
    while time.time() < stop_at:
        n += 1
        try:
            one_request(rng, abandon=(n % 10 == index % 10))
        except Exception as e:  # a failed request, never a crash of the test
            fail("%s: %s" % (type(e).__name__, e))


threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
started = time.time()
for th in threads:
    th.start()
for th in threads:
    th.join()
elapsed = time.time() - started
print("load test: %d completed, %d abandoned on purpose, %d failed in %.1f s (%.1f requests/s)" %
      (stats["completed"], stats["abandoned"], stats["failed"], elapsed, (stats["completed"] + stats["abandoned"]) / elapsed))
t.check("no failed request", stats["failed"] == 0, stats["errors"])
t.check("requests completed (at least %d)" % CLIENTS, stats["completed"] >= CLIENTS, stats["completed"])
settled = None
deadline = time.time() + 10
while time.time() < deadline:
    m = server.metrics()
    settled = (m["xlkv_requests_running"], m["xlkv_queue_length"], m["xlkv_kv_blocks_used"])
    if settled == (0, 0, 0):
        break
    time.sleep(0.1)
t.check("afterwards nothing runs, nothing waits, no KV block is held", settled == (0, 0, 0), settled)
m = server.metrics()
t.check("metrics: no request ended in error", m['xlkv_requests_total{finish_reason="error"}'] == 0 and
        m['xlkv_http_responses_total{code="5xx"}'] == 0, m)
status, log = server.stop(timeout=120)
problems = clean_shutdown_problems(status, log)
t.check("clean shutdown%s" % (" with no leak or error reported by ASan" if sanitized else ""), not problems,
        (problems, log[-3000:]))
t.finish()
