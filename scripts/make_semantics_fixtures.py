#!/usr/bin/env python3
"""Reference logits for cross-layer KV maps, cyclic ones included, written from SEMANTICS.md alone.

Run from the repository root (needs torch and safetensors; the HF fixtures must exist, see make_hf_fixtures.py):

    python3 scripts/make_semantics_fixtures.py

For the fixture checkpoints in tests/fixtures/hf/<name>/ it runs an independent float64 implementation of
SEMANTICS.md sections 2-4 on the *Hugging Face* weights (rotate_half RoPE on the stored rows, so it shares no
convention with the C code, which permutes rows to interleaved pairs), and writes
tests/fixtures/semantics/<name>.json:

    {"model": "tests/fixtures/hf/<name>", "ids": [...],
     "cases": [{"layer_types": "...", "mode": "sequential" | "plan", "iterations": k, "sliding_window": W,
                "force_nodiag": bool, "logits": [[...] per position]}]}

"sequential" processes one token at a time (the decode rule); "plan" runs the prompt as one chunk through the
iteration plan with k iterations per cyclic group (targets zeroed before the first iteration). The script asserts
that the standard map reproduces transformers' logits from logits.json, and that the plan with n iterations equals
the sequential mode (the exactness property), so the reference checks itself before it is used.
"""
import json
import math
import os

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "gqa_untied": [  # 3 layers
        ("0_2_2", "sequential", 0), ("0_2_2", "plan", 2), ("0_2_2", "plan", 12),
        ("2_2_2", "sequential", 0), ("2_2_2", "plan", 3),
        ("1_1s_2", "sequential", 0), ("0s_0s_2s", "plan", 1),
    ],
    "gqa_headdim_bf16": [  # 4 layers
        ("0_3_3_3", "sequential", 0), ("0_3_3_3", "plan", 9), ("0_2_2_3", "plan", 4),
        ("1_1_3_3", "sequential", 0), ("1_1_3_3", "plan", 2),
        ("0_0_2_2", "sequential", 0),
    ],
}
SLIDING_WINDOW = 4


def parse_map(text):
    kv_src, sliding = [], []
    for entry in text.split("_"):
        sliding.append(entry.endswith("s"))
        kv_src.append(int(entry.rstrip("s")))
    return kv_src, sliding


def plan_of(kv_src):
    """SEMANTICS.md section 3, transcribed."""
    L, i, steps = len(kv_src), 0, []
    while i < L:
        if kv_src[i] > i:
            top = kv_src[i]
            while top < max(kv_src[i:top + 1]):
                top = max(kv_src[i:top + 1])
            steps.append(("cyclic", i, top))
            i = top + 1
        else:
            j = i + 1
            while j < L and kv_src[j] <= j:
                j += 1
            steps.append(("run", i, j - 1))
            i = j
    return steps


class Reference:
    def __init__(self, directory):
        self.cfg = json.load(open(os.path.join(directory, "config.json")))
        self.w = {k: v.double() for k, v in load_file(os.path.join(directory, "model.safetensors")).items()}
        c = self.cfg
        self.L, self.H, self.KVH = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
        self.D = c.get("head_dim") or c["hidden_size"] // self.H
        self.eps = c["rms_norm_eps"]
        self.theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def rms(self, x, g):
        return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps)

    def rope(self, x, positions):  # x [n, heads, D], HF rotate_half convention
        half = self.D // 2
        inv = 1.0 / (self.theta ** (torch.arange(0, self.D, 2, dtype=torch.float64) / self.D))
        ang = torch.tensor(positions, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :], torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def layer(self, i, x, positions, kv, kv_src, sliding, force_nodiag):
        """x [n, hidden] at `positions`; kv: layer -> (K [T, KVH, D], V) indexed by absolute position."""
        p = f"model.layers.{i}."
        h = self.rms(x, self.w[p + "input_layernorm.weight"])
        n = x.shape[0]
        q = self.rope((h @ self.w[p + "self_attn.q_proj.weight"].T).view(n, self.H, self.D), positions)
        if i in kv:  # a KV layer writes its K/V at these positions before anyone reads them
            k = self.rope((h @ self.w[p + "self_attn.k_proj.weight"].T).view(n, self.KVH, self.D), positions)
            v = (h @ self.w[p + "self_attn.v_proj.weight"].T).view(n, self.KVH, self.D)
            kv[i][0][positions] = k
            kv[i][1][positions] = v
        K, V = kv[kv_src[i]]
        out = torch.zeros(n, self.H, self.D, dtype=torch.float64)
        group = self.H // self.KVH
        for r, t in enumerate(positions):
            visible = [s for s in range(t + 1)
                       if not ((kv_src[i] > i or force_nodiag) and s == t)
                       and not (sliding[i] and t - s >= SLIDING_WINDOW)]
            if not visible:
                continue  # zero output
            for head in range(self.H):
                kh = K[visible, head // group]
                scores = (kh @ q[r, head]) / math.sqrt(self.D)
                out[r, head] = torch.softmax(scores, 0) @ V[visible, head // group]
        x = x + out.reshape(n, -1) @ self.w[p + "self_attn.o_proj.weight"].T
        h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
        gate, up = h @ self.w[p + "mlp.gate_proj.weight"].T, h @ self.w[p + "mlp.up_proj.weight"].T
        return x + (torch.nn.functional.silu(gate) * up) @ self.w[p + "mlp.down_proj.weight"].T

    def logits(self, x):
        return self.rms(x, self.w["model.norm.weight"]) @ self.lm_head.T

    def new_cache(self, kv_src, T):
        return {j: (torch.zeros(T, self.KVH, self.D, dtype=torch.float64),
                    torch.zeros(T, self.KVH, self.D, dtype=torch.float64)) for j in set(kv_src)}

    def sequential(self, ids, kv_src, sliding, force_nodiag=False):
        kv, rows = self.new_cache(kv_src, len(ids)), []
        for t, token in enumerate(ids):
            x = self.w["model.embed_tokens.weight"][[token]]
            for i in range(self.L):
                x = self.layer(i, x, [t], kv, kv_src, sliding, force_nodiag)
            rows.append(self.logits(x)[0])
        return torch.stack(rows)

    def plan(self, ids, kv_src, sliding, iterations, force_nodiag=False):
        n = len(ids)
        kv, positions = self.new_cache(kv_src, n), list(range(n))
        x = self.w["model.embed_tokens.weight"][ids]
        for kind, first, last in plan_of(kv_src):
            if kind == "run":
                for i in range(first, last + 1):
                    x = self.layer(i, x, positions, kv, kv_src, sliding, force_nodiag)
                continue
            group_input = x
            for j in range(first, last + 1):
                if j in kv:
                    kv[j][0].zero_()
                    kv[j][1].zero_()
            for _ in range(iterations):
                x = group_input
                for i in range(first, last + 1):
                    x = self.layer(i, x, positions, kv, kv_src, sliding, force_nodiag)
        return self.logits(x)


def main():
    out_dir = os.path.join(ROOT, "tests/fixtures/semantics")
    os.makedirs(out_dir, exist_ok=True)
    for name, cases in CASES.items():
        directory = os.path.join(ROOT, "tests/fixtures/hf", name)
        ref = Reference(directory)
        golden = json.load(open(os.path.join(directory, "logits.json")))
        ids = golden["ids"][:8]
        standard = list(range(ref.L))
        got = ref.plan(ids, standard, [False] * ref.L, 1)
        want = torch.tensor(golden["logits"][:8], dtype=torch.float64)
        assert (got - want).abs().max() < 1e-4, f"{name}: reference disagrees with transformers"
        records = []
        for text, mode, iterations in cases:
            kv_src, sliding = parse_map(text)
            assert len(kv_src) == ref.L
            seq = ref.sequential(ids, kv_src, sliding)
            if mode == "sequential":
                logits = seq
            else:
                logits = ref.plan(ids, kv_src, sliding, iterations)
                exact = ref.plan(ids, kv_src, sliding, len(ids))
                assert (exact - seq).abs().max() < 1e-9, f"{name} {text}: plan with n iterations != sequential"
            records.append({"layer_types": text, "mode": mode, "iterations": iterations,
                            "sliding_window": SLIDING_WINDOW, "force_nodiag": False,
                            "logits": [[round(float(v), 9) for v in row] for row in logits]})
        # force_nodiag on the standard map
        seq = ref.sequential(ids, standard, [False] * ref.L, force_nodiag=True)
        records.append({"layer_types": "_".join(map(str, standard)), "mode": "sequential", "iterations": 0,
                        "sliding_window": SLIDING_WINDOW, "force_nodiag": True,
                        "logits": [[round(float(v), 9) for v in row] for row in seq]})
        path = os.path.join(out_dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump({"model": f"tests/fixtures/hf/{name}", "ids": ids, "cases": records}, f)
        print(f"{path}: {len(records)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
