"""Tile rows, warps, pipeline stages and programs a segment for each fused memory kernel (kernels.KERNEL_CFG),
timed alone (eager, triton.testing.do_bench) on the 300m layer's tensors at T = 8192, batch 4 (the same
B S = 32 segments as T = 32768 at batch 1), against the bytes each must move. GPU only.
    python results/issue12/tune_fused.py OUT_DIR
Written against kernels.py as of commit 89270e6 (KERNEL_CFG's last entry was then programs a segment); to re-run it, check that commit out."""
import itertools
import json
import os
import sys

import torch
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import bench  # noqa: E402
import kernels as m  # noqa: E402
from model import EPS  # noqa: E402

out_dir = sys.argv[1]
torch.backends.cuda.matmul.allow_tf32 = True
B, S, H, N, D = 4, 8, 8, 1024, 128
torch.manual_seed(0)
bf = dict(device="cuda", dtype=torch.bfloat16)
qkv = torch.randn(B, S, N, 3, H, D, **bf)
q, k, v = (qkv[:, :, :, c].transpose(2, 3) for c in range(3))
y_dot = torch.randn(B, S, N, H, D, **bf).transpose(2, 3)
dy = torch.randn(B, S, N, H, D, **bf).transpose(2, 3)
z = torch.rand(B, S, H, D, device="cuda") * 100
Mc = (torch.randn(B, S, H, D, D, device="cuda") * 0.01).to(torch.bfloat16)
g = torch.rand(H, device="cuda")
g_dM, g_zs = torch.randn(B, S, H, D, D, device="cuda"), torch.randn(B, S, H, D, device="cuda")
gs = torch.randn(B, S, H, D, D, **bf)
x = torch.empty(B, S, N, H, D, **bf)
pass_us = triton.testing.do_bench(lambda: x.copy_(y_dot.transpose(2, 3))) * 1e3 / 2   # read + write: two passes

jobs = {  # name: (KERNEL_CFG key, the call, passes over a (B, S, H, N, D) bf16 tensor it must make)
    "write_fwd": ("write_fwd", lambda: m._segment_sums(k, v, EPS), 2),
    "delta_w": ("delta_w", lambda: m._segment_sums(k, None, EPS, z), 1),
    "read_fwd": ("read_fwd", lambda: m._read_fwd(q, Mc, z, y_dot, g, EPS), 3),
    "read_bwd": ("read_bwd", lambda: m._read_bwd(dy, q, Mc, z, y_dot, g, EPS), 5),
    "write_bwd": ("write_bwd", lambda: m._write_bwd(k, v, g_dM, g_zs, gs, z, False, EPS), 4),
    "write_bwd_delta": ("write_bwd", lambda: m._write_bwd(k, v, g_dM, g_zs, gs, z, True, EPS), 4),
    "delta_dz": ("delta_dz", lambda: m._delta_dz(k, gs, z, EPS), 1),
}
loop = list(itertools.product([32, 64], [4, 8], [1, 2, 3], [2, 4])) + [(128, 8, 1, 2), (128, 8, 2, 2)]
grids = {"write_fwd": loop, "delta_w": loop,
         "read_bwd": list(itertools.product([16, 32, 64], [4, 8], [1, 2], [2, 4])),
         "delta_dz": list(itertools.product([32, 64], [4, 8], [1, 2], [2, 4])),
         **{n: [(r, w, 1, 1) for r in [32, 64, 128] for w in [4, 8]] for n in ["read_fwd", "write_bwd", "write_bwd_delta"]}}
rows, default = [], dict(m.KERNEL_CFG)
print(f"one pass over a (B, S, H, N, D) bf16 tensor: {pass_us:.1f} us", flush=True)
for name, (key, fn, passes) in jobs.items():
    best = None
    for cfg in grids[name]:
        m.KERNEL_CFG = dict(default, **{key: cfg})
        try:
            us = triton.testing.do_bench(fn, warmup=3, rep=15) * 1e3
            row = dict(kernel=name, cfg=cfg, us=round(us, 1), x_floor=round(us / (passes * pass_us), 2))
        except Exception as e:                       # out of shared memory or registers: recorded, skipped
            row = dict(kernel=name, cfg=cfg, error=f"{type(e).__name__}: {e}"[:200])
        rows.append(row)
        if "us" in row and (best is None or row["us"] < best["us"]):
            best = row
    print(json.dumps(dict(best=best, default=next((r for r in rows if r["kernel"] == name and tuple(r["cfg"]) == tuple(default[key])), None))), flush=True)
    bench.write_rows(os.path.join(out_dir, "tune_fused.json"), [dict(pass_us=round(pass_us, 2))] + rows)
