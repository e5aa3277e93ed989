#!/usr/bin/env python3
"""Compares two `xlkv train` checkpoints: the per-step train losses of trainer_state.bin (fp32) and every tensor of
model.safetensors. Prints the largest differences; exits 1 when one exceeds its tolerance (relative to the value's
magnitude for losses, absolute for parameters), else 0.

usage: compare_train_runs.py CKPT_A CKPT_B --loss-tol F --param-tol F [--steps N]"""
import argparse
import json
import struct
import sys

import numpy as np

STATE_FIXED = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 6 * 4  # magic .. the six int32 (train/trainer.c)


def losses(ckpt):
    raw = open(f"{ckpt}/trainer_state.bin", "rb").read()
    assert raw[:8] == b"XLKVTST1", f"{ckpt}: not a trainer state"
    step = struct.unpack_from("<q", raw, 24)[0]
    batch = struct.unpack_from("<i", raw, 48)[0]
    return np.frombuffer(raw, dtype="<f4", count=step, offset=STATE_FIXED), batch


def tensors(ckpt):
    raw = open(f"{ckpt}/model.safetensors", "rb").read()
    n = struct.unpack_from("<Q", raw, 0)[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--loss-tol", type=float, required=True)
    p.add_argument("--param-tol", type=float, required=True)
    args = p.parse_args()
    la, batch_a = losses(args.a)
    lb, batch_b = losses(args.b)
    ok = True
    if len(la) != len(lb) or batch_a != batch_b:
        print(f"steps {len(la)} vs {len(lb)}, global batch {batch_a} vs {batch_b}")
        return 1
    loss_err = float(np.max(np.abs(la - lb) / np.maximum(np.abs(la), 1e-30)))
    ta, tb = tensors(args.a), tensors(args.b)
    if ta.keys() != tb.keys():
        print("the checkpoints hold different tensors")
        return 1
    param_err, worst = 0.0, ""
    for name in ta:
        err = float(np.max(np.abs(ta[name] - tb[name])))
        if err > param_err:
            param_err, worst = err, name
    print(f"{len(la)} steps, global batch {batch_a}: losses {la[0]:.6f} .. {la[-1]:.6f} vs {lb[0]:.6f} .. "
          f"{lb[-1]:.6f}; max relative loss difference {loss_err:.3g} (tolerance {args.loss_tol:g}); "
          f"max parameter difference {param_err:.3g} in {worst or '-'} (tolerance {args.param_tol:g})")
    ok = loss_err <= args.loss_tol and param_err <= args.param_tol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
