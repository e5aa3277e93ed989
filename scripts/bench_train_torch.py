#!/usr/bin/env python3
"""The PyTorch baseline of bench/bench_train_gpu: the same training step at the same shape, in eager mode and with
torch.compile, in the same run as the xlkv numbers (scripts/gpu-session.sh train-bench).

Model and step, as xlkv's trainer (src/train/, --shape names from src/train/model_setup.c):
  Llama blocks: RMSNorm (eps 1e-5, with gain), q/k/v/o without bias, RoPE theta 10000 on interleaved pairs (xlkv's
  training layout), grouped-query causal attention (12 query / 6 KV heads at `small`), SwiGLU FFN; final RMSNorm;
  classifier: a separate lm_head (--embeddings untied, the default) or the token embedding (tied); mean
  cross-entropy over batch x seq tokens.
  Step: zero gradients, forward, backward, global-norm clipping at 1.0, AdamW (lr 1e-4, betas 0.9/0.95, eps 1e-8,
  weight decay 0.1 on the matrices (the layers' and an untied lm_head), none on the embedding and the gains), as
  bench_train_gpu.
  Precision: fp32 parameters under bf16 autocast (products and attention in bf16 with fp32 accumulation; logits
  cast to fp32 for the loss). xlkv's bf16 mode also keeps fp32 master weights and runs its products on bf16 inputs.
Layer maps: `standard` and `cla:N` (layers in groups of N, each group's first layer computes K/V and the others read
them: xlkv's cla preset). Cyclic maps (lckv) are not reproduced here.

Output: one JSON line per (mode, map), printed and appended to --out as soon as it is measured; a (mode, map) that
fails (say torch.compile without a working Triton) gets a line with "error" and the others still run. Fields:
tokens_per_s = batch x seq / median step seconds, and MFU = flops_per_step / median step seconds / (--peak-tflops x
1e12) (989: H100 SXM bf16 dense), with THE SAME FLOP COUNT AS xlkv_train_flops (src/train/train_graph.c),
N = batch x seq:
  per layer  F(l) = 2 N (2 dim q_dim + 3 dim ffn + [l computes K/V] 2 dim kv_dim) + 4 N ((seq + 1) / 2) q_dim
  flops_per_step = 3 (2 N dim vocab + sum over layers of F(l))     (forward + 2x backward)
and mfu_6n with BENCHMARKS.md's count (its reference MFU figures use it): 6 FLOPs per token for every parameter,
the looked-up input embedding table included, i.e. flops_per_step_6n = flops_per_step + 6 N vocab dim when the
embeddings are untied (as xlkv_train_flops_6n).
--embeddings untied (default: BENCHMARKS.md's 127 M `small` model, a separate lm_head as Llama) or tied (the
classifier is the embedding table, as xlkv's named shapes for `xlkv train`).
--flops-only prints params and flops_per_step per map without running anything (tests/cli_bench_train_torch.sh
compares them with `bench_train_gpu --flops-only`).

Usage on the GPU machine (~60-90 s on an H100 with --quick):
    python3 scripts/bench_train_torch.py --quick --out bench/results/train_torch.jsonl
On a CPU (a smoke test): --device cpu --shape tiny --batch 2 --seq 32 --steps 2 --warmup 1
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # as xlkv_train_shape: dim, ffn (hidden_dim), layers, heads, kv_heads
    "tiny": (64, 176, 4, 4, 2),
    "default": (512, 1376, 8, 8, 4),
    "small": (768, 2048, 12, 12, 6),
}


def attention(q, k, v):
    """Causal grouped-query attention: q [B, H, T, hd], k/v [B, KVH, T, hd]."""
    if k.size(1) != q.size(1):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except TypeError:  # torch before 2.5: no enable_gqa; repeat the KV heads (same result)
            group = q.size(1) // k.size(1)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def rope(x, cos, sin):  # interleaved pairs (x[2i], x[2i+1]), as xlkv's training layout
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, ffn, has_kv):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.attn_norm = nn.RMSNorm(dim, eps=1e-5)
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.has_kv = has_kv
        if has_kv:
            self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
            self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
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
        o = attention(q, k, v)
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h)), kv


class Model(nn.Module):
    def __init__(self, a, kv_layers):
        super().__init__()
        self.emb = nn.Embedding(a.vocab, a.dim)
        self.lm_head = nn.Linear(a.dim, a.vocab, bias=False) if a.embeddings == "untied" else None
        self.blocks = nn.ModuleList(
            Block(a.dim, a.heads, a.kv_heads, a.ffn, i in kv_layers) for i in range(a.layers))
        self.norm = nn.RMSNorm(a.dim, eps=1e-5)
        hd = a.dim // a.heads
        freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(a.seq).float()[:, None] * freq[None, :]
        self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2 and p.device.type != "meta":
                std = 0.02 / math.sqrt(2 * a.layers) if name.endswith(("wo.weight", "w_down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens, targets):
        x = self.emb(tokens)
        kv = None
        for blk in self.blocks:
            x, kv = blk(x, self.cos, self.sin, kv)
        classifier = self.lm_head.weight if self.lm_head is not None else self.emb.weight
        logits = F.linear(self.norm(x), classifier).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def kv_layers_of(map_text, layers):
    if map_text == "standard":
        return set(range(layers))
    if map_text.startswith("cla:") and map_text[4:].isdigit() and int(map_text[4:]) > 0:
        return set(range(0, layers, int(map_text[4:])))
    raise ValueError(f"map {map_text} is not reproduced here (standard, cla:N)")


def flops_per_step(a, kv_layers):  # as xlkv_train_flops (module docstring)
    N, q_dim, kv_dim = a.batch * a.seq, a.heads * (a.dim // a.heads), a.kv_heads * (a.dim // a.heads)
    total = 2.0 * N * a.dim * a.vocab
    for i in range(a.layers):
        matmul = a.dim * q_dim * 2 + 3 * a.dim * a.ffn + (2 * a.dim * kv_dim if i in kv_layers else 0)
        total += 2 * N * matmul + 4 * N * ((a.seq + 1) / 2.0) * q_dim
    return 3.0 * total


def flops_per_step_6n(a, kv_layers):  # as xlkv_train_flops_6n (module docstring)
    lookup_table = a.vocab * a.dim if a.embeddings == "untied" else 0
    return flops_per_step(a, kv_layers) + 6.0 * a.batch * a.seq * lookup_table


def param_count(a, kv_layers):
    with torch.device("meta"):
        return sum(p.numel() for p in Model(a, kv_layers).parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(a, map_text, compiled):
    device = torch.device(a.device)
    torch.manual_seed(1)
    kv_layers = kv_layers_of(map_text, a.layers)
    model = Model(a, kv_layers).to(device)
    is_decayed = {n: p.dim() == 2 and not n.startswith("emb") for n, p in model.named_parameters()}
    decay = [p for n, p in model.named_parameters() if is_decayed[n]]
    other = [p for n, p in model.named_parameters() if not is_decayed[n]]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    if compiled:
        torch._dynamo.reset()
    fwd = torch.compile(model) if compiled else model
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq), device=device)
    targets = torch.randint(0, a.vocab, (a.batch, a.seq), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = fwd(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    flops, flops_6n = flops_per_step(a, kv_layers), flops_per_step_6n(a, kv_layers)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"tokens_per_s": round(a.batch * a.seq / med, 1), "mfu": flops / med / (a.peak_tflops * 1e12),
            "median_step_s": round(med, 6), "steps": a.steps, "warmup": a.warmup, "warmup_s": round(warmup_s, 3),
            "flops_per_step": flops, "flops_per_step_6n": flops_6n,
            "mfu_6n": flops_6n / med / (a.peak_tflops * 1e12), "peak_tflops": a.peak_tflops, "params": sum(p.numel() for p in model.parameters()),
            "loss": round(float(loss.detach()), 4), "device": name, "torch": torch.__version__}


def emit(line, out):
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="small", choices=sorted(SHAPES), help="xlkv's named shapes")
    for flag in ("layers", "dim", "heads", "kv-heads", "ffn"):
        p.add_argument("--" + flag, type=int, default=None, help="override the shape's value")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--embeddings", default="untied", choices=["untied", "tied"],
                   help="a separate classifier matrix (BENCHMARKS.md's model) or the embedding table as classifier")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --quick 2)")
    p.add_argument("--quick", action="store_true", help="5 timed steps after 2 warm-up (both modes, both maps)")
    p.add_argument("--maps", default="standard,cla:2")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    p.add_argument("--flops-only", action="store_true", help="print params and flops_per_step per map, run nothing")
    a = p.parse_args(argv)
    dim, ffn, layers, heads, kv_heads = SHAPES[a.shape]
    a.dim = a.dim or dim
    a.ffn = a.ffn or ffn
    a.layers = a.layers or layers
    a.heads = a.heads or heads
    a.kv_heads = a.kv_heads or kv_heads
    a.steps = a.steps if a.steps is not None else (5 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (2 if a.quick else 3)
    bad = [n for n in ("dim", "ffn", "layers", "heads", "kv_heads", "vocab", "batch", "seq", "steps")
           if getattr(a, n) <= 0]
    if bad or a.warmup < 0 or a.dim % a.heads or a.heads % a.kv_heads or (a.dim // a.heads) % 2:
        p.error("sizes and steps must be positive, dim a multiple of heads (even head_dim), heads of kv_heads")
    for m in a.modes.split(","):
        if m not in ("eager", "compile"):
            p.error(f"unknown mode {m} (eager, compile)")
    return a


def main(argv=None):
    a = parse_args(argv)
    maps = a.maps.split(",")
    common = {"bench": "train_torch", "shape": a.shape, "batch": a.batch, "seq": a.seq, "vocab": a.vocab,
              "dtype": "bf16-autocast", "embeddings": a.embeddings}
    if a.flops_only:
        rc = 0
        for m in maps:
            try:
                kv = kv_layers_of(m, a.layers)
                print(json.dumps({**common, "map": m, "params": param_count(a, kv), "flops_per_step": flops_per_step(a, kv),
                                  "flops_per_step_6n": flops_per_step_6n(a, kv)}))
            except ValueError as e:
                print(json.dumps({**common, "map": m, "error": str(e)}))
                rc = 1
        return rc
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_train_torch: no CUDA device (--device cpu for a smoke test)")
        torch.backends.cuda.matmul.allow_tf32 = True
    rc = 0
    for mode in a.modes.split(","):
        for m in maps:
            line = {**common, "mode": mode, "map": m}
            try:
                line.update(run(a, m, mode == "compile"))
            except Exception as e:  # one failing (mode, map) must not lose the others' lines
                line["error"] = f"{type(e).__name__}: {e}"[:2000]
                rc = 1
            emit(line, a.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
