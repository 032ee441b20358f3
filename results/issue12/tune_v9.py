"""H9's kernel (kernels._write_bwd: the qkv projection's whole gradient) alone on the 300m layer's tensors, T = 8192,
batch 4, over tile rows, warps, pipeline stages and rows a program, for both rules; each configuration checked equal
to the landed one. GPU only.
    python results/issue12/tune_v9.py OUT_DIR"""
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import kernels  # noqa: E402
from model import EPS, rope_cos_sin  # noqa: E402


def inputs(delta, B=4, S=8, N=1024, H=8, D=128, dt=torch.bfloat16):
    g = torch.Generator("cuda").manual_seed(0)
    r = lambda *s, dtype=dt: torch.randn(*s, device="cuda", dtype=dtype, generator=g)
    qkv = r(B, S, N, 3, H, D)
    cos, sin = rope_cos_sin(N, D, 10000.0, "cuda", torch.float32)              # (N, 1, D)
    g_q, g_qr, g_kr, g_v = (r(B, S, N, H, D) for _ in range(4))
    g_dM, g_zs = r(B, S, H, D, D) * 0.01, r(B, S, H, D, dtype=torch.float32) * 0.01
    z_prev = torch.rand(B, S, H, D, device="cuda", generator=g) * 100 + 1
    gs = r(B, S, H, D, D) * 0.01 if delta else g_dM
    return qkv, g_q, g_qr, g_kr, g_v, cos, sin, g_dM, g_zs, gs, z_prev, delta, EPS


def time_us(fn, n=20):
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) * 1e3 / n


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rows, landed = [], dict(kernels.KERNEL_CFG)
    for delta in (False, True):
        name = "write_bwd_delta" if delta else "write_bwd"
        args = inputs(delta)
        ref = kernels._write_bwd(*args)
        for cfg in [landed[name]] + list(itertools.product((16, 32, 64), (4, 8), (1, 2, 3), (256, 1024))):
            kernels.KERNEL_CFG[name] = tuple(cfg)
            try:
                got = kernels._write_bwd(*args)
                err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                row = dict(rule="delta" if delta else "linear", cfg=list(cfg), us=round(time_us(lambda: kernels._write_bwd(*args)), 1),
                           rel_err_vs_landed=err)
            except Exception as e:                                  # e.g. out of shared memory
                row = dict(rule="delta" if delta else "linear", cfg=list(cfg), error=f"{type(e).__name__}: {e}"[:200])
            print(json.dumps(row), flush=True)
            rows.append(row)
        kernels.KERNEL_CFG[name] = landed[name]
        ok = sorted((r for r in rows if "us" in r and r["rule"] == ("delta" if delta else "linear")), key=lambda r: r["us"])
        print("best", [(r["cfg"], r["us"]) for r in ok[:5]], flush=True)
    with open(os.path.join(out_dir, "tune_v9.json"), "w") as f:
        json.dump(rows, f, indent=1)
