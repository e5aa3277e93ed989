#!/usr/bin/env python3
"""tests/support/bf16_input_bounds.py: a CPU check of the error bounds that tests/cuda/test_cuda_train_bf16_inputs.c
holds the fused path's bf16-input kernels to (add + RMSNorm with a bf16 branch, SwiGLU forward / backward from bf16
[gate | up] and dh, the RMSNorm backward with a bf16 dy). It emulates each kernel in NumPy float32 on bf16-rounded
inputs (round to nearest even, as the GPU and ct_bf16_rne), evaluates the fp32 formula in float64 on the unrounded
inputs, and prints the worst err / bound with the bounds written exactly as in the C test (first order in u = 2^-8,
x 1.1, fp32 slop, + u^2 of the largest value). Every ratio must be <= 1 for the GPU test to pass; the elementwise
outputs come to 0.75 - 0.9 (the bound is tight there), dgain, a sum over rows whose rounding errors cancel, to ~0.07.
Exit status 1 if a ratio exceeds 1.
Usage: python3 tests/support/bf16_input_bounds.py"""
import sys

import numpy as np

U = 2.0 ** -8
F = 2.0 ** -24
rng = np.random.default_rng(1)


def bf(x):
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


worst = 0.0


def report(name, got, want, bound):
    global worst
    largest = np.abs(want).max()
    b = 1.1 * bound + U * U * largest + 1e-30
    ratio = (np.abs(got.astype(np.float64) - want) / b).max()
    worst = max(worst, ratio)
    print(f"{name:40s} worst err / bound {ratio:.3f}; worst err rel. to max |y| "
          f"{np.abs(got - want).max() / largest:.2e}")


def uniform(shape, scale):
    return (rng.uniform(-1, 1, shape) * scale).astype(np.float32)


# SwiGLU, the `small` width
n, h = 64, 2048
g, u, d = uniform((n, h), 4), uniform((n, h), 2), uniform((n, h), 1)
gw, uw, dw = bf(g), bf(u), bf(d)
one = np.float32(1)
sig = one / (one + np.exp(-gw))
H = bf(gw * sig * uw)
DG = bf(dw * uw * sig * (one + gw * (one - sig)))
DU = bf(dw * (gw * sig))
G, Uu, D = g.astype(np.float64), u.astype(np.float64), d.astype(np.float64)
s = 1 / (1 + np.exp(-G))
q, sl, sp = s * (1 + G * (1 - s)), G * s, s * (1 - s)
q2 = sp * (1 + G * (1 - s)) + s * ((1 - s) - G * sp)
wh, wg, wu = sl * Uu, D * Uu * q, D * sl
slop = 16 * F
report("swiglu forward h", H, wh, U * (abs(Uu * q * G) + abs(sl * Uu) + abs(wh)) + slop * abs(wh))
report("swiglu backward dgate", DG, wg,
       U * (abs(Uu * q * D) + abs(D * q * Uu) + abs(D * Uu * q2 * G) + abs(wg)) + slop * abs(D * Uu) * (1 + abs(G)))
report("swiglu backward dup", DU, wu, U * (abs(sl * D) + abs(D * q * G) + abs(wu)) + slop * abs(wu))

# residual add (bf16 branch) + RMSNorm
n, dim, eps = 300, 768, 1e-5
a, b, gain = uniform((n, dim), 2), uniform((n, dim), 1), uniform(dim, 1.5)
S = a + bf(b)
ss = (S * S).sum(1, dtype=np.float32)
sc = one / np.sqrt(ss / np.float32(dim) + np.float32(eps))
Y = bf(gain * (sc[:, None] * S))
ws = a.astype(np.float64) + b
bs = U * abs(b) + F * abs(ws)
s = 1 / np.sqrt((ws * ws).mean(1) + eps)
ds = s ** 3 / dim * (abs(ws) * bs).sum(1)
wy = gain * s[:, None] * ws
report("add + rmsnorm: sum", S, ws, bs)
report("add + rmsnorm: bf16 y", Y, wy,
       abs(gain) * (s[:, None] * bs + abs(ws) * ds[:, None]) + U * abs(wy) + (dim + 8) * F * abs(wy))

# RMSNorm backward with a bf16 dy
n, dim = 1000, 768
x, dy, dx0 = uniform((n, dim), 2), uniform((n, dim), 1), uniform((n, dim), 0.5)
inv = (0.5 + abs(rng.uniform(-1, 1, n))).astype(np.float32)
dg0 = uniform(dim, 3)
dyw = bf(dy)
dot = (gain * dyw * x).sum(1, dtype=np.float32)
coef = dot * inv * inv * inv / np.float32(dim)
DX = dx0 + (inv[:, None] * gain * dyw - coef[:, None] * x)
DGn = dg0 + (dyw * x * inv[:, None]).sum(0, dtype=np.float32)
S_, X, Dy = inv.astype(np.float64)[:, None], x.astype(np.float64), dy.astype(np.float64)
dotd, dabs, c3 = (gain * Dy * X).sum(1)[:, None], abs(gain * Dy * X).sum(1)[:, None], S_ ** 3 / dim
first = S_ * gain * Dy
want = dx0 + first - c3 * dotd * X
bd = U * (abs(first) + c3 * dabs * abs(X)) + (dim + 8) * F * (abs(dx0) + abs(first) + c3 * dabs * abs(X))
term = Dy * X * S_
report("rmsnorm backward (bf16 dy): dx", DX, want, bd)
report("rmsnorm backward (bf16 dy): bf16(dx)", bf(DX), want, bd + U * abs(want))
report("rmsnorm backward (bf16 dy): dgain", DGn, dg0 + term.sum(0),
       U * abs(term).sum(0) + (n + 8) * F * (abs(term).sum(0) + abs(dg0)))
sys.exit(0 if worst <= 1.0 else 1)
