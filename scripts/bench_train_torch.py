#!/usr/bin/env python3
"""The PyTorch baseline of bench/bench_train_gpu: the same training step (Llama block: RMSNorm, RoPE, grouped-query
causal attention, SwiGLU, tied embedding/classifier, mean cross-entropy; AdamW beta 0.9/0.95, weight decay 0.1 on
matrices only, global-norm clipping at 1.0) at the same shape (default `small`: 12 layers, 768 hidden, 12/6 heads,
ffn 2048, vocab 32000, batch 16 x seq 1024), under bf16 autocast, in eager mode and with torch.compile.

Layer maps: `standard` and `cla:N` (cross-layer attention: layers in groups of N, the group's first layer computes
K/V and the others read them, as xlkv's cla preset). Cyclic maps (lckv) are not reproduced here.

Prints one JSON object per (mode, map): tokens/s, median step seconds, MFU against --peak-tflops (989, H100 bf16
dense) with the same FLOP count as xlkv (products and attention with causal halving, forward + 2x backward).
Run on the GPU machine in the same command as bench_train_gpu, e.g.
    python3 scripts/bench_train_torch.py --out bench/results/train_torch.jsonl
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, ffn, has_kv):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.attn_norm = nn.RMSNorm(dim, eps=1e-5)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.has_kv = has_kv
        if has_kv:
            self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
            self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.RMSNorm(dim, eps=1e-5)
        self.w_gate = nn.Linear(dim, ffn, bias=False)
        self.w_up = nn.Linear(dim, ffn, bias=False)
        self.w_down = nn.Linear(ffn, dim, bias=False)

    def forward(self, x, cos, sin, kv):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = rope(self.wq(h).view(B, T, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        if self.has_kv:
            k = rope(self.wk(h).view(B, T, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
            v = self.wv(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            kv = (k, v)
        k, v = kv
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h)), kv


def rope(x, cos, sin):  # interleaved pairs, as xlkv's training layout
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Model(nn.Module):
    def __init__(self, a, kv_layers):
        super().__init__()
        self.emb = nn.Embedding(a.vocab, a.dim)
        self.blocks = nn.ModuleList(
            Block(a.dim, a.heads, a.kv_heads, a.ffn, i in kv_layers) for i in range(a.layers))
        self.norm = nn.RMSNorm(a.dim, eps=1e-5)
        hd = a.dim // a.heads
        freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(a.seq).float()[:, None] * freq[None, :]
        self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * a.layers) if name.endswith(("wo.weight", "w_down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens, targets):
        x = self.emb(tokens)
        kv = None
        for blk in self.blocks:
            x, kv = blk(x, self.cos, self.sin, kv)
        logits = F.linear(self.norm(x), self.emb.weight).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def kv_layers_of(map_text, layers):
    if map_text == "standard":
        return set(range(layers))
    if map_text.startswith("cla:"):
        n = int(map_text[4:])
        return set(range(0, layers, n))
    raise SystemExit(f"bench_train_torch: map {map_text} is not reproduced here (standard, cla:N)")


def flops_per_step(a, kv_layers):  # as xlkv_train_flops
    N, q_dim, kv_dim = a.batch * a.seq, a.dim, a.kv_heads * (a.dim // a.heads)
    total = 2.0 * N * a.dim * a.vocab
    for i in range(a.layers):
        matmul = a.dim * q_dim * 2 + 3 * a.dim * a.ffn + (2 * a.dim * kv_dim if i in kv_layers else 0)
        total += 2 * N * matmul + 4 * N * ((a.seq + 1) / 2.0) * q_dim
    return 3.0 * total


def run(a, map_text, compiled):
    torch.manual_seed(1)
    kv_layers = kv_layers_of(map_text, a.layers)
    model = Model(a, kv_layers).cuda()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("emb")]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith("emb"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if compiled else model
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")
    targets = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    flops = flops_per_step(a, kv_layers)
    return {"bench": "train_torch", "mode": "compile" if compiled else "eager", "map": map_text,
            "torch": torch.__version__, "device": torch.cuda.get_device_name(), "batch": a.batch, "seq": a.seq,
            "vocab": a.vocab, "median_step_s": round(med, 6), "tokens_per_s": round(a.batch * a.seq / med, 1),
            "flops_per_step": flops, "peak_tflops": a.peak_tflops, "mfu": round(flops / med / (a.peak_tflops * 1e12), 4),
            "loss": round(float(loss), 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=6)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--maps", default="standard,cla:2")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train_torch: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    for mode in a.modes.split(","):
        for m in a.maps.split(","):
            r = run(a, m, mode == "compile")
            line = json.dumps(r)
            print(line, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
