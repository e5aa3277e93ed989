"""tests/serve/scale_test: $XLKV_SERVE_SCALE_CLIENTS (default 1536) streaming connections open at once against
`xlkv serve` (stories260K, CPU backend): more than 1024, so the server's sockets get descriptors above FD_SETSIZE
(select() cannot watch them: the server must wait with poll) and the soft open-file limit of 1024 common on Linux
must have been raised by the server. Each client connects, streams one short completion (max_tokens 8) over an
HTTP/1.1 keep-alive connection and reads it to [DONE], then holds the connection until every client has finished,
so all of them are open at the server at the same moment; the test counts the server's open descriptors then.
Passes when no request failed (no reset, no broken pipe, no 503), the server held >= clients sockets at once, it
ends with nothing running and no KV block held, and stops cleanly. This process raises its own soft limit to the
hard limit; skips with a message when the hard limit is too low. The server is started with a soft limit of 1024
(when the hard limit allows more) to check that it raises it and says so.
Usage: scale_test.py XLKV_BINARY."""
import json
import os
import resource
import sys
import threading
import time

from serve_util import Checker, Server, clean_shutdown_problems, parse_sse, shared_model

xlkv = sys.argv[1]
model = shared_model()
if not model:
    print("skipping: stories260K is absent (set XLKV_SHARED_DATA)")
    sys.exit(0)
CLIENTS = int(os.environ.get("XLKV_SERVE_SCALE_CLIENTS", "1536"))
needed = CLIENTS + 128
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and hard < needed:
    print("skipping: the hard open-file limit %d is below %d (%d clients + spare); raise it (ulimit -Hn as root)"
          % (hard, needed, CLIENTS))
    sys.exit(0)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
threading.stack_size(256 * 1024)

t = Checker()
# the server starts with the soft limit 1024 (as a login shell gives it): it must raise it itself
server = Server(xlkv, ["-m", model, "-t", "1", "--parallel", str(CLIENTS), "--queue", str(CLIENTS),
                       "--max-connections", str(CLIENTS + 64), "--kv-pool-mib", "256"], open_file_soft_limit=1024)
t.check("the server raised its soft open-file limit from 1024 and said so",
        "open-file limit raised from 1024" in server.log(), server.log()[-2000:])

print("scale test: %d streaming clients at once" % CLIENTS)
lock = threading.Lock()
stats = {"completed": 0, "failed": 0, "errors": []}
all_read = threading.Barrier(CLIENTS + 1)
release = threading.Event()


def fail(why):
    with lock:
        stats["failed"] += 1
        if len(stats["errors"]) < 5:
            stats["errors"].append(why)


def client(index):
    c = None
    try:
        c = server.connection(timeout=60)
        body = {"prompt": "Once upon a time %d" % index, "max_tokens": 8, "stream": True, "temperature": 0}
        c.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read().decode()
        events = parse_sse(raw) if r.status == 200 else []
        if r.status != 200:
            fail("status %d: %s" % (r.status, raw[:200]))
        elif not events or events[-1] != "[DONE]" or len(events) < 3:
            fail("bad stream: %r" % events[-3:])
        else:
            with lock:
                stats["completed"] += 1
    except Exception as e:  # a failed request, never a crash of the test
        fail("%s: %s" % (type(e).__name__, e))
    try:
        all_read.wait(timeout=180)
    except threading.BrokenBarrierError:
        pass
    release.wait(timeout=180)
    if c is not None:
        c.close()


started = time.time()
threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for th in threads:
    th.start()
try:
    all_read.wait(timeout=180)
except threading.BrokenBarrierError:
    pass
open_fds = len(os.listdir("/proc/%d/fd" % server.proc.pid))
try:
    m = server.metrics()
except Exception as e:  # a server that cannot take one more connection
    m = {"error": "%s: %s" % (type(e).__name__, e)}
release.set()
for th in threads:
    th.join()
elapsed = time.time() - started
print("scale test: %d completed, %d failed in %.1f s; the server held %d descriptors with every client connected" %
      (stats["completed"], stats["failed"], elapsed, open_fds))
t.check("no failed request (no reset, no broken pipe, no 503)", stats["failed"] == 0, stats["errors"])
t.check("every client completed its stream", stats["completed"] == CLIENTS, stats["completed"])
t.check("the server held >= %d sockets at once (descriptors above 1024)" % CLIENTS, open_fds >= CLIENTS, open_fds)
t.check("metrics: no 5xx, no request ended in error",
        m.get('xlkv_http_responses_total{code="5xx"}') == 0 and m.get('xlkv_requests_total{finish_reason="error"}') == 0, m)
settled = None
deadline = time.time() + 30
while time.time() < deadline:
    try:
        m = server.metrics()
    except Exception as e:
        settled = "%s: %s" % (type(e).__name__, e)
        break
    settled = (m["xlkv_requests_running"], m["xlkv_queue_length"], m["xlkv_kv_blocks_used"])
    if settled == (0, 0, 0):
        break
    time.sleep(0.1)
t.check("afterwards nothing runs, nothing waits, no KV block is held", settled == (0, 0, 0), settled)
status, log = server.stop(timeout=120)
problems = clean_shutdown_problems(status, log)
t.check("clean shutdown", not problems, (problems, log[-3000:]))
t.finish()
