"""tests/serve/api_test: `xlkv serve` on the CPU backend with stories260K, over loopback: every route, streaming and
not, the OpenAI shapes, greedy and sampled completions equal to `xlkv generate`'s text, stop strings across token
boundaries, max_tokens, seeds, every error case (4xx with an OpenAI error body, the server healthy afterwards), the
API key, 503 + Retry-After when the queue is full, a disconnect freeing its sequence at once, concurrent clients,
and a clean SIGTERM shutdown. Usage: api_test.py XLKV_BINARY (skips when the model is absent)."""
import json
import socket
import subprocess
import sys
import threading
import time

from serve_util import Checker, Server, clean_shutdown_problems, shared_model

xlkv = sys.argv[1]
model = shared_model()
if not model:
    print("skipping: stories260K is absent (set XLKV_SHARED_DATA)")
    sys.exit(0)
t = Checker()
KEY = "test-key-123"


def generate(prompt, n, *sampling):
    out = subprocess.run([xlkv, "generate", "-m", model, "-t", "1", "-p", prompt, "-n", str(n)] + list(sampling),
                         capture_output=True, text=True, check=True).stdout
    return out[:-1] if out.endswith("\n") else out


def error_shape(body):
    e = body.get("error") if isinstance(body, dict) else None
    return isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and isinstance(e["message"], str)


# one thread: OpenMP threads spinning against each other on a loaded machine cost far more than they bring here
server = Server(xlkv, ["-m", model, "-t", "1", "--max-body-kib", "64", "--parallel", "8", "--queue", "64"], api_key=KEY)

# ---- routes and the API key -----------------------------------------------------------------------------------
status, _, body = server.request("GET", "/health", key=False)
t.check("GET /health without a key: 200 ok", status == 200 and json.loads(body) == {"status": "ok"}, (status, body))
for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/"), ("POST", "/v1/completions"),
                     ("POST", "/v1/chat/completions")]:
    status, headers, body = server.request(method, path, {"prompt": "x"} if method == "POST" else None, key=False)
    ok = status == 401 and error_shape(json.loads(body)) and json.loads(body)["error"]["code"] == "invalid_api_key"
    t.check("%s %s without the key: 401 with an OpenAI error" % (method, path), ok, (status, body[:200]))
status, _, body = server.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
t.check("a wrong key: 401", status == 401, status)
status, _, body = server.request("GET", "/v1/models", headers={"Authorization": "Basic " + KEY})
t.check("the key without 'Bearer': 401", status == 401, status)
status, _, body = server.request("GET", "/v1/models")
models = json.loads(body)
t.check("GET /v1/models: the model", status == 200 and models["object"] == "list" and
        models["data"][0]["id"] == "stories260K" and models["data"][0]["object"] == "model", body)
status, headers, body = server.request("GET", "/")
t.check("GET /: the chat page", status == 200 and headers["content-type"].startswith("text/html") and
        b"/v1/chat/completions" in body, (status, headers))
status, _, body = server.request("GET", "/?api_key=" + KEY, key=False)
t.check("GET /?api_key=KEY: the chat page (browsers cannot send the header)", status == 200, status)
status, _, body = server.request("GET", "/v1/models?api_key=" + KEY, key=False)
t.check("?api_key= does not open the API routes", status == 401, status)
status, _, body = server.request("GET", "/nope")
t.check("unknown route: 404 with an OpenAI error", status == 404 and error_shape(json.loads(body)), (status, body))
status, _, body = server.request("GET", "/v1/completions")
t.check("GET on a POST route: 405", status == 405 and error_shape(json.loads(body)), (status, body))
status, _, body = server.request("POST", "/health", {})
t.check("POST on a GET route: 405", status == 405, status)
metrics = server.metrics()
for name in ["xlkv_requests_running", "xlkv_queue_length", "xlkv_kv_blocks_used", "xlkv_kv_blocks_free",
             "xlkv_kv_blocks_total", 'xlkv_kv_bytes_per_token{model="stories260K"}', "xlkv_generated_tokens_total",
             "xlkv_generated_tokens_per_second", 'xlkv_requests_total{finish_reason="stop"}',
             'xlkv_http_responses_total{code="4xx"}']:
    t.check("metrics has " + name, name in metrics, sorted(metrics)[:5])
# stories260K: 5 layers, 4 KV heads x 8 dims (dim 64 / 8 heads, 4 kv heads), fp32: 5 x 2 x 32 x 4 = 1280 bytes
t.check("metrics: KV bytes per token of the loaded map = 1280 (5 KV layers x K,V x 4x8 x fp32)",
        metrics.get('xlkv_kv_bytes_per_token{model="stories260K"}') == 1280, metrics.get('xlkv_kv_bytes_per_token{model="stories260K"}'))

# ---- completions: shapes and equality with xlkv generate --------------------------------------------------------
prompt = "Once upon a time"
want = generate(prompt, 60, "--temp", "0")
status, _, body = server.post("/v1/completions", {"model": "stories260K", "prompt": prompt, "max_tokens": 60,
                                                  "temperature": 0})
choice = body["choices"][0] if status == 200 else {}
t.check("greedy completion = xlkv generate --temp 0", status == 200 and choice.get("text") == want,
        (status, choice.get("text"), want))
t.check("completion shape: id, object, created, model, choices, usage",
        body["id"].startswith("cmpl-") and body["object"] == "text_completion" and isinstance(body["created"], int) and
        body["model"] == "stories260K" and choice["index"] == 0 and choice["finish_reason"] == "length" and
        "logprobs" in choice and body["usage"]["completion_tokens"] == 60 and
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 60, body)
t.check("usage.prompt_tokens counts BOS + the prompt", body["usage"]["prompt_tokens"] == 5, body["usage"])

want_sampled = generate(prompt, 50, "--temp", "0.9", "--top-k", "0", "--top-p", "0.9", "-s", "7")
status, _, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 50, "temperature": 0.9,
                                                  "top_p": 0.9, "seed": 7})
t.check("sampled completion (temperature 0.9, top_p 0.9, seed 7) = xlkv generate with the same seed",
        status == 200 and body["choices"][0]["text"] == want_sampled, (body, want_sampled))
status, _, again = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 50, "temperature": 0.9,
                                                   "top_p": 0.9, "seed": 8})
t.check("another seed gives another text", again["choices"][0]["text"] != want_sampled, again)

status, _, body = server.post("/v1/completions", {"prompt": prompt})
t.check("max_tokens defaults to 16 for completions", body["usage"]["completion_tokens"] == 16, body["usage"])
status, _, body = server.post("/v1/completions", {"prompt": [1, 403, 407, 261, 378], "max_tokens": 60,
                                                  "temperature": 0})
t.check("a prompt of token ids", status == 200 and body["usage"]["prompt_tokens"] == 5, body)
status, _, body = server.post("/v1/completions", {"prompt": [prompt], "max_tokens": 60, "temperature": 0})
t.check("a prompt as a list of one string", status == 200 and body["choices"][0]["text"] == want, body)

long_want = generate(prompt, 400, "--temp", "0")
status, _, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 400, "temperature": 0})
t.check("a long greedy completion ends at the end token: finish_reason stop, = xlkv generate",
        body["choices"][0]["text"] == long_want and
        (body["choices"][0]["finish_reason"] == "stop") == (body["usage"]["completion_tokens"] < 400), body["choices"][0])

# ---- stop strings -------------------------------------------------------------------------------------------------
# a stop string that starts inside one token and ends inside another (greedy text: ", there was a little girl ...")
stop = "ttle gi"
cut = want.find(stop)
for stream in (False, True):
    req = {"prompt": prompt, "max_tokens": 60, "temperature": 0, "stop": ["zzz", stop]}
    if stream:
        req["stream"] = True
        status, events = server.stream("/v1/completions", req)
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        status, _, body = server.post("/v1/completions", req)
        text, finish = body["choices"][0]["text"], body["choices"][0]["finish_reason"]
    t.check("stop string across tokens (%s): text ends before it, finish_reason stop" % ("stream" if stream else "json"),
            cut > 0 and text == want[:cut] and finish == "stop", (text, finish, want[:cut]))
status, _, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 60, "temperature": 0, "stop": "\n"})
t.check("a stop string that never occurs changes nothing", body["choices"][0]["text"] == want if "\n" not in want else True)

# ---- streaming ------------------------------------------------------------------------------------------------------
status, events = server.stream("/v1/completions", {"prompt": prompt, "max_tokens": 60, "temperature": 0,
                                                   "stream": True, "stream_options": {"include_usage": True}})
chunks = [json.loads(e) for e in events[:-1]]
t.check("stream ends with [DONE]", status == 200 and events[-1] == "[DONE]", events[-3:])
t.check("streamed text = the non-streamed text", "".join(c["choices"][0]["text"] for c in chunks[:-1]) == want,
        chunks[:3])
t.check("stream chunks: text_completion, one id, finish_reason only on the last text chunk",
        all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks) and
        all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2]) and
        chunks[-2]["choices"][0]["finish_reason"] == "length", chunks[-2:])
t.check("stream_options.include_usage: a last chunk with the usage and no choices",
        chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 60, chunks[-1])
t.check("stream: more than one text chunk", len(chunks) > 3, len(chunks))

# ---- chat -------------------------------------------------------------------------------------------------------------
messages = [{"role": "system", "content": "A story."}, {"role": "user", "content": "Tell me about a cat."}]
chat_prompt = "A story.\n\nUser: Tell me about a cat.\nAssistant:"
chat_want = generate(chat_prompt, 40, "--temp", "0")
chat_want = chat_want.split("\nUser:")[0]
status, _, body = server.post("/v1/chat/completions", {"messages": messages, "max_tokens": 40, "temperature": 0})
t.check("chat: the template's prompt, greedy = xlkv generate on it",
        status == 200 and body["choices"][0]["message"] == {"role": "assistant", "content": chat_want}, (body, chat_want))
t.check("chat shape", body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and
        body["choices"][0]["finish_reason"] in ("stop", "length") and body["usage"]["prompt_tokens"] > 10, body)
status, events = server.stream("/v1/chat/completions", {"messages": messages, "max_tokens": 40, "temperature": 0,
                                                        "stream": True})
chunks = [json.loads(e) for e in events[:-1]]
t.check("chat stream: the role first, then content deltas, then an empty delta with finish_reason",
        chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""} and
        chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and
        all(c["object"] == "chat.completion.chunk" for c in chunks), (chunks[:2], chunks[-1]))
t.check("chat stream text = chat text",
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == chat_want, chunks)
status, _, body = server.post("/v1/chat/completions", {"messages": messages, "max_completion_tokens": 5})
t.check("chat: max_completion_tokens", status == 200 and body["usage"]["completion_tokens"] <= 5, body)

# ---- errors: 4xx with an OpenAI error body ---------------------------------------------------------------------------
ids_too_long = [1] + [403] * 600
errors = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1,2]", 400, None),
    ("/v1/completions", b"", 400, None),
    ("/v1/completions", {"max_tokens": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 100000]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2.5]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1.5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": 2.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "seed": "s"}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": {"bogus": 1}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "x", "logprobs": 5}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": "x", "model": 3}, 400, "model"),
    ("/v1/completions", {"prompt": ids_too_long}, 400, "prompt"),
    ("/v1/completions", {"prompt": "the " * 700}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1] + [403] * 500, "max_tokens": 20}, 400, "max_tokens"),
    ("/v1/chat/completions", {"prompt": "x"}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "extra": 1}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": []}, 400, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
]
for path, req, want_status, want_param in errors:
    raw = req if isinstance(req, bytes) else None
    status, _, body = server.request("POST", path, None if raw is not None else req, raw=raw)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    ok = status == want_status and error_shape(parsed) and (want_param is None or parsed["error"]["param"] == want_param)
    t.check("error %d (%s) for %s" % (want_status, want_param, (repr(raw) if raw is not None else json.dumps(req))[:70]), ok, (status, body[:300]))
status, _, body = server.request("POST", "/v1/completions", {"prompt": ids_too_long})
t.check("a prompt longer than the context: code context_length_exceeded",
        json.loads(body)["error"]["code"] == "context_length_exceeded", body)
status, _, body = server.request("POST", "/v1/completions", raw=json.dumps({"prompt": "a" * 100000}).encode())
t.check("a body over --max-body-kib: 413", status == 413 and error_shape(json.loads(body)), (status, body[:200]))
status, _, body = server.request("POST", "/v1/completions", raw=b'{"prompt": "a\x00b"}')
t.check("a body with a NUL byte: 400", status == 400, status)
status, _, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 60, "temperature": 0})
t.check("after every error the server still answers correctly", status == 200 and body["choices"][0]["text"] == want)
status, _, _ = server.request("GET", "/health", key=False)
t.check("and /health is ok", status == 200)

# ---- concurrent clients: each gets exactly its solo text -------------------------------------------------------------
prompts = ["Once upon a time", "The little dog", "Lily", "Tom and his mom", "One day", "The sun", "A big red ball",
           "In the park", "The cat sat", "Ben had a toy", "Sue", "The bird", "Max and Mia", "At night", "Anna", "A boy"]
solo = {p: generate(p, 80, "--temp", "0") for p in prompts}
results = {}


def client(p, stream):
    req = {"prompt": p, "max_tokens": 80, "temperature": 0}
    if stream:
        req["stream"] = True
        status, events = server.stream("/v1/completions", req)
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) if status == 200 else None
    else:
        status, _, body = server.post("/v1/completions", req)
        text = body["choices"][0]["text"] if status == 200 else None
    results[(p, stream)] = text


threads = [threading.Thread(target=client, args=(p, s)) for p in prompts for s in (False, True)]
for th in threads:
    th.start()
for th in threads:
    th.join()
bad = [k for k, v in results.items() if v != solo[k[0]]]
t.check("32 concurrent clients (16 prompts, streamed and not, batch 8 + queue): each = its solo xlkv generate",
        len(results) == 32 and not bad, bad[:3])

# ---- a client that disconnects frees its sequence at once --------------------------------------------------------------
before = server.metrics()
s = socket.create_connection(("127.0.0.1", server.port))
body = json.dumps({"prompt": prompt, "max_tokens": 500, "temperature": 0.8, "stream": True}).encode()
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
          b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
first = s.recv(4096)
s.close()
freed = False
deadline = time.time() + 3
while time.time() < deadline and not freed:
    m = server.metrics()
    freed = m["xlkv_requests_running"] == 0 and m["xlkv_kv_blocks_used"] == 0 and \
        m['xlkv_requests_total{finish_reason="cancelled"}'] + m['xlkv_requests_total{finish_reason="length"}'] + \
        m['xlkv_requests_total{finish_reason="stop"}'] > before['xlkv_requests_total{finish_reason="cancelled"}'] + \
        before['xlkv_requests_total{finish_reason="length"}'] + before['xlkv_requests_total{finish_reason="stop"}']
    time.sleep(0.02)
t.check("a streaming client that disconnects: its sequence and KV blocks are freed", first.startswith(b"HTTP/1.1 200")
        and freed, (first[:40], server.metrics().get("xlkv_kv_blocks_used")))

status, log = server.stop()
t.check("SIGTERM: clean shutdown (status 0, no sanitizer report)", not clean_shutdown_problems(status, log),
        clean_shutdown_problems(status, log))

# ---- a full queue: 503 with Retry-After; the server stays healthy ------------------------------------------------------
small = Server(xlkv, ["-m", model, "-t", "1", "--parallel", "1", "--queue", "1"])
codes = []


def burst():
    c = small.connection()
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": "Once", "max_tokens": 400}).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = r.read()
    codes.append((r.status, r.getheader("Retry-After"), body))
    c.close()


threads = [threading.Thread(target=burst) for _ in range(24)]
for th in threads:
    th.start()
for th in threads:
    th.join()
busy = [c for c in codes if c[0] == 503]
t.check("24 requests at once into --parallel 1 --queue 1: some get 503 with Retry-After and an OpenAI error",
        busy and all(c[1] == "1" and error_shape(json.loads(c[2])) for c in busy), [c[:2] for c in codes])
t.check("the others complete", all(c[0] in (200, 503) for c in codes) and any(c[0] == 200 for c in codes),
        [c[0] for c in codes])
m = small.metrics()
t.check("metrics count the refused requests", m["xlkv_requests_rejected_total"] == len(busy), m["xlkv_requests_rejected_total"])

# ---- SIGTERM with a request in flight: it finishes within the grace period ----------------------------------------------
done = {}


def inflight():
    status, events = small.stream("/v1/completions", {"prompt": "Once", "max_tokens": 300, "stream": True})
    done["events"] = events


th = threading.Thread(target=inflight)
th.start()
time.sleep(0.05)
status, log = small.stop()
th.join()
t.check("SIGTERM during a stream: the stream ends with [DONE], the server stops cleanly",
        done.get("events") and done["events"][-1] == "[DONE]" and not clean_shutdown_problems(status, log),
        (done.get("events", [])[-2:], clean_shutdown_problems(status, log)))

# ---- a KV pool that holds 7 requests at once: 12 concurrent ones all complete (the rest wait in the queue) ---------
# 1 MiB / 1280 bytes per token = 819 positions = 51 blocks of 16; 5 + 100 positions take 7 blocks: 7 fit at once
pool = Server(xlkv, ["-m", model, "-t", "1", "--parallel", "16", "--kv-pool-mib", "1"])
m = pool.metrics()
t.check("--kv-pool-mib 1: 51 blocks", m["xlkv_kv_blocks_total"] == 51, m["xlkv_kv_blocks_total"])
results = []


def pooled(i):
    status, _, body = pool.post("/v1/completions", {"prompt": prompt, "max_tokens": 100, "temperature": 0.5, "seed": i})
    results.append((status, body["usage"]["completion_tokens"] if status == 200 else body))


threads = [threading.Thread(target=pooled, args=(i,)) for i in range(12)]
for th in threads:
    th.start()
for th in threads:
    th.join()
t.check("12 requests into a pool for 7: all complete (the rest waited for room)", len(results) == 12 and
        all(r[0] == 200 for r in results), results)
status, log = pool.stop()
t.check("pool server stopped cleanly", not clean_shutdown_problems(status, log), clean_shutdown_problems(status, log))

# ---- --random-shape (the benchmarking aid): random weights, a synthetic vocabulary, a sharing map -------------------
rnd = Server(xlkv, ["--random-shape", "small", "--layer-types", "lckv:2", "-t", "1", "-c", "64", "--parallel", "2",
                    "--ignore-eos"])
status, _, body = rnd.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4})
t.check("--random-shape small --ignore-eos: exactly max_tokens tokens", status == 200 and
        body["usage"]["completion_tokens"] == 4 and body["model"] == "random-small", body)
m = rnd.metrics()
t.check("lckv:2 on the small shape: 3 of 12 layers own KV, 4x less KV per token than the standard map",
        m["xlkv_kv_layers"] == 3 and m['xlkv_kv_bytes_per_token_standard_map{model="random-small"}'] ==
        4 * m['xlkv_kv_bytes_per_token{model="random-small"}'], m)
status, log = rnd.stop()
t.check("random-shape server stopped cleanly", not clean_shutdown_problems(status, log), clean_shutdown_problems(status, log))
t.finish()
