#!/usr/bin/env python3
"""Builds the tiny Hugging Face Llama fixtures that the C loaders and the forward pass are tested against.

Run (from the repository root; needs torch (CPU), transformers >= 4.45 and safetensors):

    python3 scripts/make_hf_fixtures.py            # writes tests/fixtures/hf/<name>/
    python3 scripts/make_hf_fixtures.py --out DIR  # somewhere else

It is deterministic (seeded) and prints the size of every fixture. For each fixture <name> it writes:

  config.json, model.safetensors   transformers' own `save_pretrained(safe_serialization=True)` of a random
                                   LlamaForCausalLM (weights re-initialised with a larger spread than transformers'
                                   default 0.02 so that logits are far from uniform and discriminate bugs)
  logits.json                      {"ids": [12 ids], "logits": [[vocab floats] x 12]} from transformers' forward
                                   (eager attention, fp32), plus "shared": [{"layer_types": "...", "logits": ...}]
                                   for acyclic sharing maps (every kv_src[i] <= i), computed by the independent
                                   reference forward below on the same weights (KVSharer-style: a standard checkpoint
                                   run under a sharing map; k_proj/v_proj of non-KV layers are unused)
  reference.json                   a few raw values for the loader tests (see `reference_values`), including q_proj /
                                   k_proj rows AFTER the conversion to xlkv's interleaved RoPE convention

Fixtures:
  mha_tied          hidden 32, 4 heads, 4 KV heads, head_dim 8, 2 layers, vocab 64, ffn 96, tied, theta 1e4, fp32
  gqa_untied        hidden 32, 4 heads, 2 KV heads, head_dim 8, 3 layers, vocab 96, ffn 96, untied, theta 5e5, fp32
  gqa_headdim_bf16  hidden 32, 4 heads, 2 KV heads, head_dim 16 (!= 32/4), 4 layers, vocab 64, ffn 80, untied,
                    theta 1e4, stored as bf16; logits computed in fp32 from the bf16-rounded weights

RoPE convention. Hugging Face rotates pairs (i, i + d/2) of each head ("rotate_half"); llama2.c and xlkv rotate
interleaved pairs (2i, 2i + 1). The two are the same model once the rows of q_proj and k_proj are permuted within each
head: interleaved row 2i = HF row i, interleaved row 2i + 1 = HF row i + d/2 (`hf_to_interleaved` below, computed
independently of the C code). The reference forward uses interleaved RoPE on the permuted weights, and the script
asserts that it reproduces transformers' logits, which checks the permutation itself.
"""
import argparse
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

IDS = [1, 5, 17, 3, 42, 9, 9, 30, 2, 11, 60, 7]  # 12 ids, all < the smallest vocab (64)

FIXTURES = [
    dict(name="mha_tied", seed=1, hidden=32, heads=4, kv_heads=4, head_dim=None, layers=2, vocab=64, ffn=96,
         tied=True, theta=10000.0, bf16=False, shared_maps=["0_0"]),
    dict(name="gqa_untied", seed=2, hidden=32, heads=4, kv_heads=2, head_dim=None, layers=3, vocab=96, ffn=96,
         tied=False, theta=500000.0, bf16=False, shared_maps=["0_0_2", "0_0_0"]),
    dict(name="gqa_headdim_bf16", seed=3, hidden=32, heads=4, kv_heads=2, head_dim=16, layers=4, vocab=64, ffn=80,
         tied=False, theta=10000.0, bf16=True, shared_maps=["0_0_2_2", "0_1_1_3"]),
]


def hf_to_interleaved(w, n_heads, head_dim):
    """Rows of an HF q_proj/k_proj [n_heads*head_dim, dim] reordered so that RoPE pairs are (2i, 2i+1)."""
    dim = w.shape[1]
    return w.reshape(n_heads, 2, head_dim // 2, dim).transpose(1, 2).reshape(n_heads * head_dim, dim)


def build_model(fx):
    kwargs = dict(hidden_size=fx["hidden"], intermediate_size=fx["ffn"], num_hidden_layers=fx["layers"],
                  num_attention_heads=fx["heads"], num_key_value_heads=fx["kv_heads"], vocab_size=fx["vocab"],
                  max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=fx["tied"],
                  bos_token_id=1, eos_token_id=2, rope_theta=fx["theta"])
    if fx["head_dim"] is not None:
        kwargs["head_dim"] = fx["head_dim"]
    config = LlamaConfig(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(fx["seed"])
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
            if fx["bf16"]:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    if fx["tied"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_interleaved(x, positions, theta):
    """x [T, heads, d]; rotates pairs (2i, 2i+1) by angle p * theta^(-2i/d)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions[:, None].double() * inv[None, :]  # [T, d/2]
    cos, sin = torch.cos(ang).float()[:, None, :], torch.sin(ang).float()[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def reference_forward(model, ids, kv_src):
    """Independent forward (interleaved RoPE on permuted weights) under an acyclic layer map kv_src (kv_src[i] <= i):
    layer i's queries attend to the keys/values that layer kv_src[i] produced, causal mask."""
    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    nh, nkv, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    hd = getattr(cfg, "head_dim", None) or dim // nh
    theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    eps = cfg.rms_norm_eps
    T = len(ids)
    pos = torch.arange(T)
    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    kv = {}
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        wq = hf_to_interleaved(sd[p + "self_attn.q_proj.weight"], nh, hd)
        q = rope_interleaved((h @ wq.T).view(T, nh, hd), pos, theta)
        if i in kv_src:  # a KV layer computes its K/V (only those are ever used)
            wk = hf_to_interleaved(sd[p + "self_attn.k_proj.weight"], nkv, hd)
            k = rope_interleaved((h @ wk.T).view(T, nkv, hd), pos, theta)
            v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(T, nkv, hd)
            kv[i] = (k, v)
        k, v = kv[kv_src[i]]
        group = nh // nkv
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        att = torch.einsum("thd,shd->hts", q, k) / hd ** 0.5
        att = att.masked_fill(~mask[None], float("-inf")).softmax(-1)
        o = torch.einsum("hts,shd->thd", att, v).reshape(T, nh * hd)
        x = x + o @ sd[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        g = h @ sd[p + "mlp.gate_proj.weight"].T
        u = h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, sd["model.norm.weight"], eps)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ head.T


def reference_values(model, fx):
    """A few raw tensor values the C loader tests compare against (all fp32, after bf16 rounding if any)."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    last = cfg.num_hidden_layers - 1
    wq = hf_to_interleaved(sd["model.layers.0.self_attn.q_proj.weight"], nh, hd)
    wk = hf_to_interleaved(sd[f"model.layers.{last}.self_attn.k_proj.weight"], nkv, hd)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return {
        "embed_row3": sd["model.embed_tokens.weight"][3].tolist(),
        # row 1 of head 1 in interleaved order = HF row hd + hd/2 (the partner of HF row hd)
        "q_proj_layer0_row": hd + 1,
        "q_proj_layer0_interleaved": wq[hd + 1].tolist(),
        "q_proj_layer0_hf": sd["model.layers.0.self_attn.q_proj.weight"][hd + 1].tolist(),
        "k_proj_last_layer_row": 2,
        "k_proj_last_layer_interleaved": wk[2].tolist(),
        "v_proj_layer0_row0": sd["model.layers.0.self_attn.v_proj.weight"][0].tolist(),
        "down_proj_last_layer_row1": sd[f"model.layers.{last}.mlp.down_proj.weight"][1].tolist(),
        "input_layernorm_layer1": sd["model.layers.1.input_layernorm.weight"].tolist(),
        "final_norm": sd["model.norm.weight"].tolist(),
        "output_row5": head[5].tolist(),
    }


def rounded(rows):
    return [[float(f"{v:.7g}") for v in row] for row in rows]


def make_fixture(fx, out_root):
    model = build_model(fx)
    out = os.path.join(out_root, fx["name"])
    os.makedirs(out, exist_ok=True)
    with torch.no_grad():
        hf_logits = model(torch.tensor([IDS])).logits[0].float()
        standard = reference_forward(model, IDS, list(range(fx["layers"])))
        err = (standard - hf_logits).abs().max().item()
        assert err < 1e-4, f"{fx['name']}: reference forward differs from transformers by {err}"
        shared = []
        for text in fx["shared_maps"]:
            kv_src = [int(t) for t in text.split("_")]
            assert all(j <= i for i, j in enumerate(kv_src))
            shared.append({"layer_types": text, "logits": rounded(reference_forward(model, IDS, kv_src).tolist())})
    save_model = model.to(torch.bfloat16) if fx["bf16"] else model
    save_model.save_pretrained(out, safe_serialization=True)
    model = model.float()
    with open(os.path.join(out, "logits.json"), "w") as f:
        json.dump({"ids": IDS, "logits": rounded(hf_logits.tolist()), "shared": shared,
                   "note": "logits from transformers (fp32, eager); shared maps from the reference forward"}, f)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference_values(model, fx), f)
    for extra in ("generation_config.json",):
        path = os.path.join(out, extra)
        if os.path.exists(path):
            os.remove(path)
    total = 0
    for name in sorted(os.listdir(out)):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print(f"  {fx['name']}/{name}: {size} bytes")
    print(f"{fx['name']}: {total} bytes total, reference forward vs transformers max |diff| {err:.2e}")
    assert total < 300 * 1024, f"{fx['name']} is too large ({total} bytes)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "hf"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for fx in FIXTURES:
        make_fixture(fx, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
