"""tests/serve/serve_util: what the server tests share: start `xlkv serve` on a free loopback port (--port 0, the
port read from its stderr), plain HTTP requests with http.client, server-sent-event parsing, and stopping the
server with SIGTERM while checking that it exits cleanly (status 0, no sanitizer report)."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time


def shared_model():
    data = os.environ.get("XLKV_SHARED_DATA") or os.path.join(os.environ.get("XLKV_SOURCE_DIR", "."), "..", "shared", "data")
    model = os.path.join(data, "models", "stories260K", "stories260K.bin")
    return model if os.path.isfile(model) else None


class Server:
    def __init__(self, xlkv, args, api_key=None, open_file_soft_limit=None):
        """open_file_soft_limit: the soft RLIMIT_NOFILE the server starts with (default: this process's)."""
        self.api_key = api_key
        self.stderr = tempfile.NamedTemporaryFile(mode="w+", prefix="xlkv-serve-", suffix=".log", delete=False)
        cmd = [xlkv, "serve", "--port", "0"] + list(args)
        if api_key:
            cmd += ["--api-key", api_key]
        env = dict(os.environ)
        env.pop("XLKV_API_KEY", None)
        preexec = None
        if open_file_soft_limit is not None:
            import resource
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_file_soft_limit, hard))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr, env=env, preexec_fn=preexec)
        self.port = None
        deadline = time.time() + 300  # random tinyllama weights on a GPU machine take a while
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError("xlkv serve exited with %d: %s" % (self.proc.returncode, self.log()))
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", self.log())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("xlkv serve did not start: " + self.log())

    def log(self):
        with open(self.stderr.name) as f:
            return f.read()

    def connection(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self, key=True, extra=None):
        h = {"Content-Type": "application/json"}
        if key and self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        h.update(extra or {})
        return h

    def request(self, method, path, body=None, key=True, headers=None, raw=None):
        """(status, headers dict, body bytes)."""
        c = self.connection()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers=headers if headers is not None else self.headers(key))
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, out

    def post(self, path, body, **kw):
        status, headers, out = self.request("POST", path, body, **kw)
        return status, headers, json.loads(out) if out else None

    def stream(self, path, body):
        """(status, list of data strings) of a streamed request."""
        c = self.connection()
        c.request("POST", path, body=json.dumps(body).encode(), headers=self.headers())
        r = c.getresponse()
        if r.status != 200:
            out = r.read()
            c.close()
            return r.status, [out.decode()]
        assert r.getheader("Content-Type", "").startswith("text/event-stream"), r.getheaders()
        events = parse_sse(r.read().decode())
        c.close()
        return r.status, events

    def metrics(self):
        status, _, out = self.request("GET", "/metrics")
        assert status == 200, status
        values = {}
        for line in out.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self, timeout=60):
        """SIGTERM; returns (exit status, log). A clean stop is status 0 without sanitizer reports."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9, self.log()
        log = self.log()
        os.unlink(self.stderr.name)
        return self.proc.returncode, log


def parse_sse(text):
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        for line in block.split("\n"):
            assert line.startswith("data: "), "not an SSE data line: %r" % line
            events.append(line[6:])
    return events


def clean_shutdown_problems(status, log):
    """What is wrong with a server's exit (empty when it stopped cleanly)."""
    problems = []
    if status != 0:
        problems.append("exit status %d" % status)
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "has encountered a fatal error"):
        if marker in log:
            problems.append("sanitizer report: " + marker)
    if "stopped after" not in log:
        problems.append("no 'stopped after' line")
    return problems


class Checker:
    """ok/FAIL lines like the shell tests; exit status 1 when anything failed."""

    def __init__(self):
        self.failures = 0
        self.start = time.time()

    def check(self, name, condition, detail=""):
        if condition:
            print("ok   " + name + "  [%.1f s]" % (time.time() - self.start))
        else:
            self.failures += 1
            print("FAIL " + name + (": " + str(detail) if detail != "" else ""))
        sys.stdout.flush()
        return condition

    def finish(self):
        print("%d failure(s)" % self.failures)
        sys.exit(1 if self.failures else 0)
