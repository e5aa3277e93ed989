"""tests/serve/web_test: the chat page at / in headless Chromium, driven through the DevTools protocol over
--remote-debugging-pipe (NUL-separated JSON on file descriptors 3 and 4: no websocket library needed). It opens
the page, focuses the message box, types a prompt (Input.insertText) and presses Enter (Input.dispatchKeyEvent),
watches the answer grow in the DOM while it streams from /v1/chat/completions, and checks the final answer against
the greedy chat completion fetched from the API directly. Usage: web_test.py XLKV_BINARY (skips without chromium or
the model)."""
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from serve_util import Checker, Server, clean_shutdown_problems, shared_model

xlkv = sys.argv[1]
model = shared_model()
browser = shutil.which("chromium") or shutil.which("chromium-browser")
if not model:
    print("skipping: stories260K is absent (set XLKV_SHARED_DATA)")
    sys.exit(0)
if not browser:
    print("skipping: chromium is not installed (scripts/setup-deps.sh installs it)")
    sys.exit(0)


class DevTools:
    """A DevTools-protocol session over Chromium's debugging pipe."""

    def __init__(self, browser, profile):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        cmd = 'exec "$0" --headless --no-sandbox --disable-gpu --no-first-run --remote-debugging-pipe ' \
              '--user-data-dir="$1" about:blank 3<&%d 4>&%d' % (to_chrome_r, from_chrome_w)
        self.proc = subprocess.Popen(["bash", "-c", cmd, browser, profile], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.session = None

    def call(self, method, params=None, timeout=60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError("%s: %s" % (method, reply["error"]))
                    return reply["result"]
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        raise RuntimeError("%s: no reply in %d s" % (method, timeout))

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


t = Checker()
server = Server(xlkv, ["-m", model, "-t", "1"], api_key="webkey")
prompt = "Tell me a story about a cat."
c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
c.request("POST", "/v1/chat/completions", headers=server.headers(),
          body=json.dumps({"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 60}))
want = json.loads(c.getresponse().read())["choices"][0]["message"]["content"]
profile = tempfile.mkdtemp(prefix="xlkv-chromium-")
devtools = DevTools(browser, profile)
try:
    url = "http://127.0.0.1:%d/?api_key=webkey&temperature=0&max_tokens=60" % server.port
    target = devtools.call("Target.createTarget", {"url": url})["targetId"]
    devtools.session = devtools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    deadline = time.time() + 60
    model_name = None
    while time.time() < deadline and model_name in (None, "…", ""):
        model_name = devtools.evaluate("document.readyState === 'complete' ? document.getElementById('model').textContent : null")
        time.sleep(0.1)
    t.check("the page loads and shows the model from /v1/models", model_name == "stories260K", model_name)
    devtools.evaluate("document.getElementById('prompt').focus()")
    devtools.call("Input.insertText", {"text": prompt})
    for kind in ("keyDown", "keyUp"):
        devtools.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
                                                 **({"text": "\r"} if kind == "keyDown" else {})})
    lengths = []
    status = None
    deadline = time.time() + 120
    while time.time() < deadline:
        state = devtools.evaluate("JSON.stringify({status: document.getElementById('status').textContent, "
                                  "answer: (document.getElementById('answer-1') || {}).textContent || '', "
                                  "user: (document.querySelector('.message.user') || {}).textContent || '', "
                                  "box: document.getElementById('prompt').value})")
        state = json.loads(state)
        if not lengths or lengths[-1] != len(state["answer"]):
            lengths.append(len(state["answer"]))
        status = state["status"]
        if status in ("done", "error"):
            break
        time.sleep(0.02)
    print("answer length as it streamed:", lengths)
    t.check("typing a prompt and pressing Enter sends it (shown as the user's message, box cleared)",
            state["user"] == prompt and state["box"] == "", state)
    t.check("the answer streams to the end (#status done)", status == "done", state)
    t.check("the streamed answer in the DOM = the API's greedy answer", state["answer"] == want and len(want) > 0,
            (state["answer"], want))
finally:
    devtools.close()
    shutil.rmtree(profile, ignore_errors=True)
status, log = server.stop()
t.check("server stopped cleanly", not clean_shutdown_problems(status, log), clean_shutdown_problems(status, log))
t.finish()
