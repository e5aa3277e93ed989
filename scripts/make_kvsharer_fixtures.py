#!/usr/bin/env python3
"""Reference KVSharer search (SEMANTICS.md section 7), written from the text alone, for tests/test_kvsharer.c and
tests/cli_search.sh.

Run from the repository root (needs torch, safetensors and transformers):

    python3 scripts/make_kvsharer_fixtures.py

1. Writes a tiny random Llama model (6 layers, GQA 4/2 heads of 8, vocab 64, float32 safetensors) to
   tests/fixtures/kvsharer/model/, calibration token ids derived from tests/fixtures/kvsharer/calib.txt (the model
   has no tokenizer: paragraph k -> [1] + [3 + byte % 61 for its first 23 bytes]), and the search on them:
   tests/fixtures/kvsharer/tiny.json = {"model", "texts", "distance", "cases": [{order, seed, score, share,
   threshold, "pairs": [{layer, source, root, distance, score, accepted}], "kv_src"}], "applied": [{kv_src, cosine,
   ppl_ratio, ppl}]}.
2. When ../shared/data is present, the same search on stories260K with calibration paragraphs of tinyshakespeare
   (the first 30 blank-line-separated paragraphs with at least 64 tokens, cut to 64, BOS first, llama2.c encode()
   re-implemented in scripts/make_eval_fixtures.py): tests/fixtures/kvsharer/stories260K.json.

The forward is an independent float64 implementation on the Hugging Face weights (rotate_half RoPE, so no layout is
shared with the C code, which permutes K rows to interleaved pairs; the distances are norms over head_dim and do not
depend on the channel order). It is checked against transformers' final hidden states before it is used. Every
layer computes K/V here; layer i attends to the K/V of layer kv_src[i] (the layer_types / kv_src equivalent of a
KVSharer map). The script asserts that no decision sits within 1e-4 of the threshold and no two distances that the
order compares are within 1e-6 relative, so float32 arithmetic in xlkv cannot flip a decision.
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("XLKV_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "kvsharer")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

MASK64 = (1 << 64) - 1


# ---- the forward -----------------------------------------------------------------------------------------------------
def rms(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):  # x [T, heads, hd], rotate_half convention
    T, _, hd = x.shape
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    rot = torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rot * sin


def forward(sd, cfg, ids, kv_src):
    """Final hidden states after the final norm [T, dim], logits [T, vocab], post-RoPE K and V of every layer."""
    L, H, KH, hd = cfg["layers"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    eps, theta = cfg["eps"], cfg["theta"]
    x = sd["model.embed_tokens.weight"][ids]
    T = len(ids)
    ks, vs = [], []
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, sd[p + "input_layernorm.weight"], eps)
        q = rope((h @ sd[p + "self_attn.q_proj.weight"].T).view(T, H, hd), theta)
        ks.append(rope((h @ sd[p + "self_attn.k_proj.weight"].T).view(T, KH, hd), theta))
        vs.append((h @ sd[p + "self_attn.v_proj.weight"].T).view(T, KH, hd))
        k, v = ks[kv_src[i]], vs[kv_src[i]]
        assert kv_src[i] <= i
        out = torch.empty(T, H, hd, dtype=torch.float64)
        for head in range(H):
            kh = head // (H // KH)
            s = q[:, head, :] @ k[:, kh, :].T / math.sqrt(hd) + mask
            out[:, head, :] = torch.softmax(s, -1) @ v[:, kh, :]
        x = x + out.reshape(T, H * hd) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        g = h @ sd[p + "mlp.gate_proj.weight"].T
        u = h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    final = rms(x, sd["model.norm.weight"], eps)
    return final, final @ sd["lm_head.weight"].T, ks, vs


def check_against_transformers(model, sd, cfg, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    final, logits, _, _ = forward(sd, cfg, ids, list(range(cfg["layers"])))
    err = (out.hidden_states[-1][0].double() - final).abs().max().item()
    err_logits = (out.logits[0].double() - logits).abs().max().item()
    assert err < 1e-5 and err_logits < 1e-5, (err, err_logits)  # transformers builds RoPE tables in float32


# ---- the search (SEMANTICS.md section 7) -------------------------------------------------------------------------------
def nll_of(logits, ids):
    lp = torch.log_softmax(logits[:-1], -1)
    return -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()


def distances(sd, cfg, texts):
    L = cfg["layers"]
    sums_k = [0.0] * L
    sums_v = [0.0] * L
    for ids in texts:
        _, _, ks, vs = forward(sd, cfg, ids, list(range(L)))
        for i in range(L):
            sums_k[i] = sums_k[i] + ks[i]
            sums_v[i] = sums_v[i] + vs[i]
    mk = [s / len(texts) for s in sums_k]  # mean over texts, per position, head, channel
    mv = [s / len(texts) for s in sums_v]
    d = [[0.0] * L for _ in range(L)]
    for i in range(L):
        for j in range(i):
            dk = (mk[i] - mk[j]).norm(dim=-1).mean().item()  # L2 over head_dim, mean over positions and heads
            dv = (mv[i] - mv[j]).norm(dim=-1).mean().item()
            d[i][j] = d[j][i] = (dk + dv) / 2
    return d


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def ordered_pairs(d, order, seed):
    L = len(d)
    pairs = [(i, j) for i in range(1, L) for j in range(i)]  # enumeration order
    if order == "dissimilar":
        pairs = sorted(pairs, key=lambda p: -d[p[0]][p[1]])  # stable: ties keep enumeration order
    elif order == "similar":
        pairs = sorted(pairs, key=lambda p: d[p[0]][p[1]])
    else:
        state = seed
        for a in range(len(pairs) - 1, 0, -1):
            state, r = splitmix64(state)
            b = r % (a + 1)
            pairs[a], pairs[b] = pairs[b], pairs[a]
    if order != "random":
        ds = [d[i][j] for i, j in pairs]
        for a, b in zip(ds, ds[1:]):
            assert abs(a - b) > 1e-6 * max(abs(a), 1e-12), f"near-tie in the {order} order: {a} {b}"
    return pairs


def collapse(direct):
    out = []
    for i, s in enumerate(direct):
        out.append(i if s == i else out[s])
    return out


class Scorer:
    def __init__(self, sd, cfg, texts):
        self.sd, self.cfg, self.texts = sd, cfg, texts
        ident = list(range(cfg["layers"]))
        self.ref = []
        nll = 0.0
        for ids in texts:
            final, logits, _, _ = forward(sd, cfg, ids, ident)
            self.ref.append(final.flatten())
            nll += nll_of(logits, ids)
        self.n_scored = sum(len(t) - 1 for t in texts)
        self.ref_nll = nll / self.n_scored

    def score(self, kv_src):
        cos, nll = 0.0, 0.0
        for ids, ref in zip(self.texts, self.ref):
            final, logits, _, _ = forward(self.sd, self.cfg, ids, kv_src)
            f = final.flatten()
            cos += (f @ ref / (f.norm() * ref.norm())).item()
            nll += nll_of(logits, ids)
        mean_nll = nll / self.n_scored
        return {"cosine": cos / len(self.texts), "ppl_ratio": math.exp(self.ref_nll - mean_nll),
                "ppl": math.exp(mean_nll)}


def search(scorer, d, order, seed, score_name, share, threshold):
    L = len(d)
    direct = list(range(L))
    kv_src = list(range(L))
    shared, trials = 0, []
    for i, j in ordered_pairs(d, order, seed):
        if shared >= share:
            break
        trial = {"layer": i, "source": j, "root": kv_src[j], "distance": d[i][j], "score": None, "accepted": False}
        if direct[i] == i:
            direct[i] = j
            cand = collapse(direct)
            s = scorer.score(cand)["ppl_ratio" if score_name == "ppl" else "cosine"]
            assert abs(s - threshold) > 1e-4, f"score {s} too close to the threshold {threshold}"
            trial["score"] = s
            if s > threshold:
                trial["accepted"] = True
                kv_src = cand
                shared += 1
            else:
                direct[i] = i
        trials.append(trial)
    return {"order": order, "seed": seed, "score": score_name, "share": share, "threshold": threshold,
            "pairs": trials, "kv_src": kv_src, "shared": shared}


# ---- the tiny model --------------------------------------------------------------------------------------------------
TINY = {"layers": 6, "heads": 4, "kv_heads": 2, "head_dim": 8, "dim": 32, "hidden": 64, "vocab": 64, "ctx": 64,
        "eps": 1e-5, "theta": 10000.0}
TOKENS = 24


def tiny_model():
    torch.manual_seed(1234)
    c = TINY
    config = LlamaConfig(hidden_size=c["dim"], intermediate_size=c["hidden"], num_hidden_layers=c["layers"],
                         num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], head_dim=c["head_dim"],
                         vocab_size=c["vocab"], max_position_embeddings=c["ctx"], rms_norm_eps=c["eps"],
                         rope_theta=c["theta"], tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:  # larger than the default init, so that layers differ and sharing costs something
                p.copy_(torch.randn_like(p) * (0.5 / math.sqrt(p.shape[-1])) * (3.0 if "embed" in name else 1.0))
    return model, config


def tiny_texts():
    with open(os.path.join(OUT, "calib.txt"), "rb") as f:
        paragraphs = [p for p in f.read().split(b"\n\n") if p.strip()]
    return [[1] + [3 + b % 61 for b in p[:TOKENS - 1]] for p in paragraphs if len(p) >= TOKENS - 1]


def write_tiny():
    model, config = tiny_model()
    mdir = os.path.join(OUT, "model")
    os.makedirs(mdir, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
    save_file(state, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})
    config.to_json_file(os.path.join(mdir, "config.json"))
    sd = {k: v.double() for k, v in state.items()}
    texts = tiny_texts()
    check_against_transformers(model.double(), sd, TINY, texts[0])
    d = distances(sd, TINY, texts)
    scorer = Scorer(sd, TINY, texts)
    cases = [search(scorer, d, "dissimilar", 0, "cosine", 3, 0.8),
             search(scorer, d, "similar", 0, "cosine", 3, 0.8),
             search(scorer, d, "random", 7, "cosine", 4, 0.75),
             search(scorer, d, "dissimilar", 0, "ppl", 2, 1.1)]
    applied = []
    for kv_src in ([0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 3, 3], [0, 0, 0, 0, 0, 0], [0, 1, 2, 1, 1, 4]):
        applied.append(dict(kv_src=kv_src, **scorer.score(kv_src)))
    with open(os.path.join(OUT, "tiny.json"), "w") as f:
        json.dump({"model": "tests/fixtures/kvsharer/model", "texts": texts, "distance": d, "cases": cases,
                   "applied": applied, "reference_ppl": math.exp(scorer.ref_nll)}, f)
    for c in cases:
        print(f"tiny {c['order']} {c['score']} share {c['share']}: kv_src {c['kv_src']}, "
              f"{sum(not p['accepted'] and p['score'] is not None for p in c['pairs'])} rejected, "
              f"{len(c['pairs'])} tried")


# ---- stories260K -----------------------------------------------------------------------------------------------------
def paragraphs(text):
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip(" \t\r") == "":
            if cur:
                out.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


def write_stories():
    model_path = os.path.join(SHARED, "models", "stories260K", "stories260K.bin")
    text_path = os.path.join(SHARED, "text", "tinyshakespeare.txt")
    if not os.path.exists(model_path) or not os.path.exists(text_path):
        print("shared data absent: stories260K fixture not written")
        return
    from make_eval_fixtures import Llama2cTokenizer, load_llama2c
    model, vocab, seq_len = load_llama2c(model_path)
    tok = Llama2cTokenizer(os.path.join(SHARED, "models", "stories260K", "tok512.bin"), vocab)
    cfg = {"layers": 5, "heads": 8, "kv_heads": 4, "head_dim": 8, "eps": 1e-5, "theta": 10000.0}
    sd = {k: v.double() for k, v in model.state_dict().items()}
    with open(text_path, encoding="utf-8") as f:
        paras = paragraphs(f.read())
    texts = []
    for p in paras:
        ids = tok.encode(p)
        if len(ids) >= 64:
            texts.append(ids[:64])
        if len(texts) == 30:
            break
    check_against_transformers(model, sd, cfg, texts[0])
    d = distances(sd, cfg, texts)
    scorer = Scorer(sd, cfg, texts)
    cases = [search(scorer, d, "dissimilar", 0, "cosine", 2, 0.5), search(scorer, d, "similar", 0, "cosine", 2, 0.5),
             search(scorer, d, "random", 3, "cosine", 3, 0.5)]
    with open(os.path.join(OUT, "stories260K.json"), "w") as f:
        json.dump({"calib": "tinyshakespeare.txt", "calib_texts": 30, "calib_tokens": 64, "texts": texts,
                   "distance": d, "cases": cases, "reference_ppl": math.exp(scorer.ref_nll)}, f)
    for c in cases:
        print(f"stories260K {c['order']} share {c['share']}: kv_src {c['kv_src']}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    write_tiny()
    if "--tiny-only" not in sys.argv:
        write_stories()
