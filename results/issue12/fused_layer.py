"""The fused Triton memory (kernels.ReadGPU, WriteGPU) against the PyTorch memory_fast it replaces on the GPU:
numerics (eager and compiled, against the PyTorch path and float64) and one compiled 300m block, forward +
backward, kernel by kernel (bench.py's layer mode), with the kernels off (the PyTorch Functions and the scan
kernel: the previous default) and on. GPU only.   python results/issue12/fused_layer.py OUT_DIR [quick]
fused_layer_call1.json: the first configuration and a sweep of three others (the commit of this file that has
"rows=(64, 8)" in it); fused_layer_call2.json: the configuration tuned by tune_fused.py, landed in kernels.py."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import bench  # noqa: E402
import kernels  # noqa: E402
import model  # noqa: E402

out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = True
fused_on_gpu = kernels.fused_on_gpu
rows = []


def save(row):
    print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
    rows.append(row)
    bench.write_rows(os.path.join(out_dir, "fused_layer.json"), rows)


def memory_run(fn, fused, update, dtype, B=2, S=4, H=8, N=1024, D=128, n_full=4):
    """y, M, z and the gradients of a fixed random loss, from q, k, v laid out as the qkv projection leaves them."""
    torch.manual_seed(0)
    qkv = torch.randn(B, S, N, 3, H, D, device="cuda").to(dtype)
    yd = torch.randn(B, S, N, H, D, device="cuda").to(dtype).transpose(2, 3)
    g = torch.rand(1, 1, H, 1, 1, device="cuda").to(torch.float64 if dtype == torch.float64 else torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (qkv, yd, g)]
    q, k, v = (leaves[0][:, :, :, c].transpose(2, 3) for c in range(3))
    kernels.fused_on_gpu = fused_on_gpu if fused else (lambda q: False)
    y, (M, z) = fn(q, k, v, leaves[1], leaves[2], update, n_full)
    gen = torch.Generator(device="cuda").manual_seed(1)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, device="cuda", dtype=torch.float64)).sum() for t in (y, M, z))
    outs = [y, M, z] + list(torch.autograd.grad(loss, leaves))
    kernels.fused_on_gpu = fused_on_gpu
    return [t.double() for t in outs]


names = ["y", "M", "z", "dqkv", "dy_dot", "dg"]
err = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
compiled = torch.compile(model.memory_fast, fullgraph=True)
for update in ["linear", "delta"]:
    ref = memory_run(model.memory_fast, False, update, torch.float64)          # the PyTorch path in float64
    for dtype in [torch.float32, torch.bfloat16]:
        for label, fn, fused in [("torch", model.memory_fast, False), ("fused", model.memory_fast, True),
                                 ("fused-compiled", compiled, True)]:
            got = memory_run(fn, fused, update, dtype)
            save(dict(kind="numerics", update=update, dtype=str(dtype), path=label,
                      err_vs_float64={n: round(err(a, b), 8) for n, a, b in zip(names, got, ref)}))

args = bench.get_parser().parse_args(["--mode=layer", "--layer_iters=10", f"--out_dir={out_dir}"])
quick = len(sys.argv) > 2
plan = [(8192, "local", True, None), (8192, "infini-linear-fast", False, None), (8192, "infini-linear-fast", True, None),
        (8192, "infini-delta-fast", False, None), (8192, "infini-delta-fast", True, None)]
if not quick:
    plan += [(32768, "local", True, None), (32768, "infini-linear-fast", False, None),
             (32768, "infini-linear-fast", True, None), (32768, "infini-delta-fast", False, None),
             (32768, "infini-delta-fast", True, None)]
default_cfg = dict(kernels.KERNEL_CFG)
for T, variant, fused, cfg in plan:
    kernels.KERNEL_CFG = dict(cfg or default_cfg)
    kernels.fused_on_gpu = fused_on_gpu if fused else (lambda q: False)
    try:
        r = bench.layer_one(args, T, variant)
    except Exception as e:                                    # recorded, and the run goes on
        r = dict(variant=variant, T=T, error=f"{type(e).__name__}: {e}"[:1500])
    r.update(kind="layer", fused=fused, kernel_cfg=kernels.KERNEL_CFG)
    r["kernels"] = r.get("kernels", [])[:40]
    save(r)
    torch.cuda.empty_cache()
kernels.fused_on_gpu = fused_on_gpu
kernels.KERNEL_CFG = default_cfg
