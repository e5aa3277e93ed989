#!/usr/bin/env python3
"""Reference values for xlkv's evaluation commands (tests/test_eval.c matches them to 1e-4).

Run from the repository root (needs torch (CPU) and transformers; reads ../shared/data, or $XLKV_SHARED_DATA):

    python3 scripts/make_eval_fixtures.py

Deterministic. Writes tests/fixtures/eval/:

  samples/<task>.jsonl, samples/hellaswag.txt.bz2
        a few items of every task format, copied from the real files of ../shared/data/eval (first items, plus the
        longest boolq item so that left-truncation to the model's context is exercised)
  stories260K_tasks.json
        for every sample: each request's context / continuation token ids, summed log-likelihood and greedy flag,
        and the task's acc, acc_norm (and LAMBADA perplexity) -- stories260K run by transformers in float64
  stories260K_perplexity.json
        the Hugging Face fixed-length perplexity recipe on a slice of tinyshakespeare with stories260K
  hf_gqa_untied_perplexity.json
        the same recipe and a few loglikelihood requests on token ids with the committed tiny fixture
        tests/fixtures/hf/gqa_untied (no tokenizer, no shared data needed)

Independent of the C code: the tokenizer is llama2.c's run.c encode() re-implemented below (dummy prefix space, one
symbol per UTF-8 character, byte fallback to ids 3 + byte, then greedy merges of the best-scoring pair, leftmost on
ties); the model is transformers' LlamaForCausalLM with the llama2.c weights (q/k rows permuted from llama2.c's
interleaved RoPE order to Hugging Face's half-split order), checked against llama2.c's own greedy output.

Scoring follows lm-evaluation-harness (HFLM): _encode_pair moves the context's trailing spaces to the continuation,
context ids = encode(context), continuation ids = encode(context + continuation)[len(context ids):], BOS first
(add_bos_token=True); the input is (context + continuation)[-(max_len + 1):][:-1]; loglik = sum of log-softmax of
the continuation tokens; is_greedy = all continuation tokens are argmax. acc = argmax loglik == gold; acc_norm =
argmax loglik / len(choice bytes) == gold; LAMBADA perplexity = exp(-mean loglik).
"""
import bz2
import json
import math
import os
import re
import struct
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("XLKV_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "eval")

# task -> (format, query suffix); the same table as src/eval/tasks.c, written out again here
TASKS = {
    "piqa": ("mc", "Answer:"),
    "arc_easy": ("mc", "\nAnswer:"),
    "arc_challenge": ("mc", "\nAnswer:"),
    "winogrande": ("winogrande", ""),
    "hellaswag": ("hellaswag", ""),
    "lambada_openai": ("lambada", ""),
    "boolq": ("mc", "\nAnswer:"),
    "openbook_qa": ("mc", ""),
    "copa": ("mc", ""),
    "siqa": ("mc", ""),
    "commonsense_qa": ("mc", ""),
}
N_SAMPLES = 6
PPL_CHARS = 3000  # tinyshakespeare slice (ASCII, so bytes = characters)
PPL_SETTINGS = [(128, 48), (64, 64), (200, 100)]


# ---- llama2.c tokenizer (run.c) ------------------------------------------------------------------------------------
class Llama2cTokenizer:
    def __init__(self, path, vocab_size):
        with open(path, "rb") as f:
            data = f.read()
        off = 4
        self.pieces, self.scores = [], []
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + length])
            self.scores.append(score)
            off += length
        self.lookup = {}
        for i, p in enumerate(self.pieces):
            self.lookup.setdefault(p, i)

    def encode(self, text, bos=True):
        raw = text.encode("utf-8")
        ids = [1] if bos else []
        if not raw:
            return ids
        toks = [self.lookup[b" "]]
        i = 0
        while i < len(raw):  # one UTF-8 character at a time
            j = i + 1
            while j < len(raw) and (raw[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            ch = raw[i:j]
            if ch in self.lookup:
                toks.append(self.lookup[ch])
            else:
                toks.extend(b + 3 for b in ch)
            i = j
        while True:
            best, best_id, best_i = -1e10, -1, -1
            for k in range(len(toks) - 1):
                m = self.lookup.get(self.pieces[toks[k]] + self.pieces[toks[k + 1]], -1)
                if m != -1 and self.scores[m] > best:
                    best, best_id, best_i = self.scores[m], m, k
            if best_i == -1:
                break
            toks[best_i:best_i + 2] = [best_id]
        return ids + toks

    def decode(self, prev, tok):
        piece = self.pieces[tok]
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]
        m = re.fullmatch(rb"<0x([0-9A-F]{2})>", piece)
        return bytes([int(m.group(1), 16)]) if m else piece


# ---- stories260K in transformers -----------------------------------------------------------------------------------
def load_llama2c(path):
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack_from("<7i", data, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // heads
    kv_dim = kv_heads * hd
    flat = torch.frombuffer(bytearray(data[28:]), dtype=torch.float32).double()
    off = 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        t = flat[off:off + n].reshape(shape)
        off += n
        return t

    emb = take(vocab, dim)
    rms_att = take(layers, dim)
    wq = take(layers, dim, dim)
    wk = take(layers, kv_dim, dim)
    wv = take(layers, kv_dim, dim)
    wo = take(layers, dim, dim)
    rms_ffn = take(layers, dim)
    w1 = take(layers, hidden, dim)
    w2 = take(layers, dim, hidden)
    w3 = take(layers, hidden, dim)
    rms_final = take(dim)
    config = LlamaConfig(hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=seq_len, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=shared, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).to(torch.float64).eval()

    def to_hf(w, n_heads):  # llama2.c interleaved RoPE rows (2i, 2i+1) -> HF rows (i, i + hd/2)
        return w.reshape(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(n_heads * hd, dim)

    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    if not shared:
        raise SystemExit("untied llama2.c checkpoints are not handled here")
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rms_att[i]
        sd[p + "self_attn.q_proj.weight"] = to_hf(wq[i], heads)
        sd[p + "self_attn.k_proj.weight"] = to_hf(wk[i], kv_heads)
        sd[p + "self_attn.v_proj.weight"] = wv[i]
        sd[p + "self_attn.o_proj.weight"] = wo[i]
        sd[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        sd[p + "mlp.gate_proj.weight"] = w1[i]
        sd[p + "mlp.down_proj.weight"] = w2[i]
        sd[p + "mlp.up_proj.weight"] = w3[i]
    sd["lm_head.weight"] = emb
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model, vocab, seq_len


def check_greedy(model, tok, expected_path):
    """llama2.c run.c, greedy, 200 steps from BOS, must be reproduced byte for byte."""
    ids = [1]
    with torch.no_grad():
        for _ in range(199):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
    text = b"".join(tok.decode(a, b) for a, b in zip(ids[:-1], ids[1:]))
    expected = open(expected_path, "rb").read()
    assert expected.startswith(text) or text.startswith(expected.rstrip(b"\n")), (text[:200], expected[:200])
    print(f"stories260K greedy output matches llama2.c ({len(text)} bytes compared)")


# ---- lm-evaluation-harness scoring ---------------------------------------------------------------------------------
def hellaswag_preprocess(text):  # lm_eval/tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def encode_pair(tok, context, continuation):  # HFLM._encode_pair with add_bos_token=True
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def loglikelihood(model, max_len, ctx, cont):
    inp = (ctx + cont)[-(max_len + 1):][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inp])).logits[0].double()
    n = min(len(cont), len(inp))  # a continuation longer than max_len: only its last max_len tokens (xlkv's rule)
    logp = torch.log_softmax(logits, dim=-1)[-n:]
    target = torch.tensor(cont[-n:])
    ll = float(logp.gather(1, target[:, None]).sum())
    greedy = bool((logits[-n:].argmax(-1) == target).all())
    return ll, greedy


def read_items(task, fmt):
    if fmt == "hellaswag":
        lines = bz2.open(os.path.join(SHARED, "eval", "hellaswag_val_full.txt.bz2"), "rt", encoding="utf-8").read()
        lines = lines.split("\n")
        items = []
        for r in range(N_SAMPLES):
            rec = lines[6 * r:6 * r + 6]
            items.append(dict(raw="\n".join(rec) + "\n", context=hellaswag_preprocess(rec[0]), gold=int(rec[1]),
                              endings=[hellaswag_preprocess(e) for e in rec[2:6]]))
        return items
    rows = open(os.path.join(SHARED, "eval", task + ".jsonl"), encoding="utf-8").read().splitlines()
    chosen = rows[:N_SAMPLES]
    if task == "boolq":  # the longest item: its passage exceeds 512 tokens, so the request is left-truncated
        chosen = chosen[:N_SAMPLES - 1] + [max(rows, key=len)]
    return [dict(raw=r + "\n", **json.loads(r)) for r in chosen]


def requests_of(fmt, suffix, item):
    """[(context, continuation text without delimiter)], gold."""
    if fmt == "mc":
        return [(item["query"] + suffix, c) for c in item["choices"]], item["gold"]
    if fmt == "winogrande":
        return [(o, item["continuation"]) for o in item["context_options"]], item["gold"]
    if fmt == "lambada":
        return [(item["context"], item["continuation"])], 0
    return [(item["context"], e) for e in item["endings"]], item["gold"]


def task_fixtures(model, tok, max_len):
    os.makedirs(os.path.join(OUT, "samples"), exist_ok=True)
    out = {}
    for task, (fmt, suffix) in TASKS.items():
        items = read_items(task, fmt)
        if fmt == "hellaswag":
            with bz2.open(os.path.join(OUT, "samples", "hellaswag.txt.bz2"), "wb") as f:
                f.write("".join(i["raw"] for i in items).encode("utf-8"))
        else:
            with open(os.path.join(OUT, "samples", task + ".jsonl"), "w", encoding="utf-8") as f:
                f.write("".join(i["raw"] for i in items))
        examples, correct, correct_norm, ll_sum = [], 0, 0, 0.0
        for item in items:
            reqs, gold = requests_of(fmt, suffix, item)
            scored = []
            for context, choice in reqs:
                ctx_ids, cont_ids = encode_pair(tok, context, " " + choice)
                ll, greedy = loglikelihood(model, max_len, ctx_ids, cont_ids)
                scored.append(dict(context_ids=ctx_ids, cont_ids=cont_ids, loglik=ll, is_greedy=greedy,
                                   bytes=len(choice.encode("utf-8"))))
            lls = [s["loglik"] for s in scored]
            if fmt == "lambada":
                correct += scored[0]["is_greedy"]
                ll_sum += lls[0]
            else:
                pred = max(range(len(lls)), key=lambda c: (lls[c], -c))
                norm = [lls[c] / scored[c]["bytes"] for c in range(len(lls))]
                pred_norm = max(range(len(lls)), key=lambda c: (norm[c], -c))
                correct += pred == gold
                correct_norm += pred_norm == gold
            examples.append(dict(gold=gold, requests=scored))
        n = len(items)
        result = dict(format=fmt, n=n, acc=correct / n, examples=examples)
        result["acc_norm"] = None if fmt in ("lambada", "winogrande") else correct_norm / n
        result["perplexity"] = math.exp(-ll_sum / n) if fmt == "lambada" else None
        out[task] = result
        print(f"{task:16s} n={n} acc={result['acc']:.3f} acc_norm={result['acc_norm']} "
              f"max request tokens={max(len(r['context_ids']) + len(r['cont_ids']) for e in examples for r in e['requests'])}")
    return out


# ---- perplexity: the Hugging Face recipe (docs: "Perplexity of fixed-length models") -------------------------------
def hf_perplexity(model, ids, max_length, stride):
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc, windows = 0.0, 0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
        # the loss averages over the shifted labels that are not -100; weigh it by exactly that count (the recipe's
        # `num_valid_tokens - batch_size` undercounts windows whose first label is masked)
        num_loss_tokens = int((target_ids[:, 1:] != -100).sum())
        if num_loss_tokens > 0:
            nll_sum += float(outputs.loss.double()) * num_loss_tokens
            n_tokens += num_loss_tokens
            windows += 1
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return dict(ctx=max_length, stride=stride, nll_sum=nll_sum, n_scored=n_tokens, windows=windows,
                ppl=math.exp(nll_sum / n_tokens))


def hf_fixture_reference():
    """gqa_untied (committed), token ids only: perplexity windows and a few loglikelihood requests."""
    path = os.path.join(ROOT, "tests", "fixtures", "hf", "gqa_untied")
    model = LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").to(torch.float64).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = [1] + torch.randint(3, vocab, (299,), generator=g).tolist()
    ppl = [hf_perplexity(model, ids, c, s) for c, s in [(64, 24), (128, 128), (100, 1)]]
    requests = []
    for n_ctx, n_cont in [(1, 1), (5, 3), (40, 10), (125, 8)]:  # the last one is left-truncated to 128 + 1 tokens
        ctx = [1] + torch.randint(3, vocab, (n_ctx - 1,), generator=g).tolist()
        cont = torch.randint(3, vocab, (n_cont,), generator=g).tolist()
        ll, greedy = loglikelihood(model, model.config.max_position_embeddings, ctx, cont)
        requests.append(dict(context_ids=ctx, cont_ids=cont, loglik=ll, is_greedy=greedy))
    # a request whose continuation is the model's own greedy choice, so is_greedy is true at least once
    ctx = ids[:20]
    cont = []
    with torch.no_grad():
        for _ in range(3):
            cont.append(int(model(torch.tensor([ctx + cont])).logits[0, -1].argmax()))
    ll, greedy = loglikelihood(model, model.config.max_position_embeddings, ctx, cont)
    assert greedy
    requests.append(dict(context_ids=ctx, cont_ids=cont, loglik=ll, is_greedy=greedy))
    return dict(model="tests/fixtures/hf/gqa_untied", ids=ids, perplexity=ppl, requests=requests)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    hf = hf_fixture_reference()
    with open(os.path.join(OUT, "hf_gqa_untied_perplexity.json"), "w") as f:
        json.dump(hf, f, indent=1)
    print("hf_gqa_untied:", [(p["ctx"], p["stride"], round(p["ppl"], 4)) for p in hf["perplexity"]])

    model_path = os.path.join(SHARED, "models", "stories260K", "stories260K.bin")
    if not os.path.exists(model_path):
        print(f"{model_path} absent: stories260K fixtures not rebuilt", file=sys.stderr)
        return
    model, vocab, max_len = load_llama2c(model_path)
    tok = Llama2cTokenizer(os.path.join(SHARED, "models", "stories260K", "tok512.bin"), vocab)
    check_greedy(model, tok, os.path.join(SHARED, "models", "stories260K", "expected_greedy_n200.txt"))

    text = open(os.path.join(SHARED, "text", "tinyshakespeare.txt"), encoding="utf-8").read()[:PPL_CHARS]
    ids = tok.encode(text)
    ppl = [hf_perplexity(model, ids, c, s) for c, s in PPL_SETTINGS]
    with open(os.path.join(OUT, "stories260K_perplexity.json"), "w") as f:
        json.dump(dict(file="text/tinyshakespeare.txt", chars=PPL_CHARS, ids=ids, perplexity=ppl), f, indent=1)
    print("tinyshakespeare slice:", len(ids), "tokens;", [(p["ctx"], p["stride"], round(p["ppl"], 4)) for p in ppl])

    tasks = task_fixtures(model, tok, max_len)
    with open(os.path.join(OUT, "stories260K_tasks.json"), "w") as f:
        json.dump(dict(model="models/stories260K/stories260K.bin", max_len=max_len, tasks=tasks), f, indent=1)


if __name__ == "__main__":
    main()
