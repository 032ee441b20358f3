"""Third session: the memory kernels restructured (kernels.py: column-block programs for the D x D sums, row-chunk
programs that load a segment's D x D operands once, the read's dM in a kernel of its own), against the kernels
before (kernels_before.py = kernels.py at commit 89270e6: `git show 89270e6:kernels.py > kernels_before.py`).
GPU only.   python results/issue12/tune_cols.py OUT_DIR [budget_s] [wide]
1. every kernel alone (eager, triton.testing.do_bench) on the 300m layer's tensors at T = 8192, batch 4: the
   kernels before at their tuned configuration, the new ones over a grid of configurations (tune_cols.json);
2. the new kernels against the kernels before on the same inputs (their outputs must agree to bf16 rounding);
3. one compiled 300m block, forward + backward (bench.py's layer mode), T = 8192: local, and both rules with the
   kernels before and with the new ones at the fastest configuration of step 1 (layer_cols.json); with inductor's
   code of the new linear variant (code_*.txt), to name the copy kernel that local does not have.
"wide": the row-chunk kernels alone over more rows a program and pipeline stages (tune_rows.json), on a second
instance of kernels.py; then both configurations in training, interleaved (ab_train.py; ab_train_wide.json)."""
import itertools
import json
import os
import sys
import time

import torch
import triton.testing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), HERE]
import bench  # noqa: E402
import kernels as new  # noqa: E402
import kernels_before as old  # noqa: E402
import model  # noqa: E402
from model import EPS  # noqa: E402

t_start = time.time()
out_dir = sys.argv[1]
budget = float(sys.argv[2]) if len(sys.argv) > 2 else 560
wide = sys.argv[3:] == ["wide"]
if wide:                                     # the landed configuration stays in `kernels`, for the comparison
    import importlib.util
    spec = importlib.util.spec_from_file_location("kernels_wide", os.path.join(HERE, "..", "..", "kernels.py"))
    new = sys.modules["kernels_wide"] = importlib.util.module_from_spec(spec)   # (dynamo imports it by name)
    spec.loader.exec_module(new)
os.makedirs(out_dir, exist_ok=True)
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
g_dMb = g_dM.to(torch.bfloat16)
gs = torch.randn(B, S, H, D, D, **bf)
x = torch.empty(B, S, N, H, D, **bf)
pass_us = triton.testing.do_bench(lambda: x.copy_(y_dot.transpose(2, 3))) * 1e3 / 2   # read + write: two passes
rows = [dict(pass_us=round(pass_us, 2))]
print(json.dumps(rows[0]), flush=True)


def save(name="tune_rows.json" if wide else "tune_cols.json"):
    bench.write_rows(os.path.join(out_dir, name), rows)


def us(fn):
    return round(triton.testing.do_bench(fn, warmup=3, rep=15) * 1e3, 1)


# 1a. the kernels before, at their landed configuration (the read's backward includes its dM)
before = {"write_fwd": lambda: old._segment_sums(k, v, EPS), "delta_w": lambda: old._segment_sums(k, None, EPS, z),
          "read_fwd": lambda: old._read_fwd(q, Mc, z, y_dot, g, EPS), "read_bwd+dm": lambda: old._read_bwd(dy, q, Mc, z, y_dot, g, EPS),
          "write_bwd": lambda: old._write_bwd(k, v, g_dM, g_zs, gs, z, False, EPS),
          "write_bwd_delta": lambda: old._write_bwd(k, v, g_dM, g_zs, gs, z, True, EPS), "delta_dz": lambda: old._delta_dz(k, gs, z, EPS)}
for name, fn in before.items():
    rows.append(dict(part="before", kernel=name, us=us(fn)))
    print(json.dumps(rows[-1]), flush=True)
save()


# 1b. the new kernels, each over its grid; the read's backward is two kernels (read_bwd: dq, dy_dot; read_dm: dM)
def read_bwd_rows():                         # the row-chunk kernel of new._read_bwd alone
    (dq_out, dq), (dyd_out, dyd) = new._like_qkv(q), new._like_qkv(y_dot)
    grid, (per, n), kw = new._plan("read_bwd", q, EPS)
    dzp, dgp = z.new_empty(B, S, H, n, D), z.new_empty(B, S, H, n)
    new._read_bwd_kernel[grid](dy, q, y_dot, Mc, z, g, dq_out, dyd_out, dzp, dgp, S, H, N, per, n,
                               *new._st(dy), *new._st(q), *new._st(y_dot), *new._st(dq), **kw)
    return dzp.sum(3), dgp.sum((0, 1, 3))


def read_dm():
    dm = z.new_empty(B, S, H, D, D)
    grid, extra, kw = new._plan("read_dm", q, EPS)
    new._read_dm_kernel[grid](q, dy, z, g, dm, S, H, N, *extra, *new._st(q), *new._st(dy), **kw)
    return dm


cols = list(itertools.product([32, 64], [4, 8], [2, 3], [64, 128]))
chunks = [(r, w, s, p) for r, w, s, p in itertools.product([32, 64], [4, 8], [1, 2], [64, 128, 256]) if p >= r]
if wide:
    chunks = list(itertools.product([32, 64], [4, 8], [1, 2, 3], [128, 256, 512, 1024]))
jobs = {  # name: (KERNEL_CFG key, the call, passes over a (B, S, H, N, D) bf16 tensor it must make, the grid)
    "write_fwd": ("write_fwd", lambda: new._segment_sums(k, v, EPS), 2, cols),
    "delta_w": ("delta_w", lambda: new._segment_sums(k, None, EPS, z), 1, cols),
    "read_fwd": ("read_fwd", lambda: new._read_fwd(q, Mc, z, y_dot, g, EPS), 3, chunks),
    "read_bwd": ("read_bwd", read_bwd_rows, 5, chunks),
    "read_dm": ("read_dm", read_dm, 2, cols),
    "write_bwd": ("write_bwd", lambda: new._write_bwd(k, v, g_dMb, g_zs, gs, z, False, EPS), 4,
                  [c for c in chunks if c[0] == 64]),
    "write_bwd_delta": ("write_bwd_delta", lambda: new._write_bwd(k, v, g_dMb, g_zs, gs, z, True, EPS), 4,
                        [c for c in chunks if c[0] == 64]),
    "delta_dz": ("delta_dz", lambda: new._delta_dz(k, gs, z, EPS), 1,
                 list(itertools.product([32, 64], [4, 8], [1], [256, 1024]))),
}
if wide:
    jobs = {n: j for n, j in jobs.items() if n in ("read_fwd", "read_bwd", "write_bwd", "write_bwd_delta")}
default, best = dict(new.KERNEL_CFG), {}
for name, (key, fn, passes, grid) in jobs.items():
    for cfg in grid:
        new.KERNEL_CFG = dict(default, **{key: cfg})
        try:
            row = dict(part="new", kernel=name, cfg=cfg, us=us(fn))
            row["x_floor"] = round(row["us"] / (passes * pass_us), 2)
        except Exception as e:                       # out of shared memory or registers: recorded, skipped
            row = dict(part="new", kernel=name, cfg=cfg, error=f"{type(e).__name__}: {e}"[:200])
        rows.append(row)
        if "us" in row and (name not in best or row["us"] < best[name]["us"]):
            best[name] = row
    print(json.dumps(best.get(name)), flush=True)
    save()
new.KERNEL_CFG = dict(default, **{jobs[n][0]: tuple(best[n]["cfg"]) for n in jobs if n in best})
rows.append(dict(part="chosen", kernel_cfg=new.KERNEL_CFG, seconds=round(time.time() - t_start)))
print(json.dumps(rows[-1]), flush=True)
save()
if wide:
    import ab_train  # noqa: E402
    import kernels  # noqa: E402
    ab_train.interleaved([("local", kernels), ("infini-linear-fast", kernels), ("infini-linear-fast", new),
                          ("infini-delta-fast", kernels), ("infini-delta-fast", new)], [8192],
                         os.path.join(out_dir, "ab_train_wide.json"))
    sys.exit()

# 2. the new kernels against the kernels before, on the same inputs, at the chosen configuration
err = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
pairs = {"write_fwd": (new._segment_sums(k, v, EPS), old._segment_sums(k, v, EPS)),
         "delta_w": (new._segment_sums(k, None, EPS, z)[:1], old._segment_sums(k, None, EPS, z)[:1]),
         "read_fwd": ([new._read_fwd(q, Mc, z, y_dot, g, EPS).transpose(2, 3)], [old._read_fwd(q, Mc, z, y_dot, g, EPS)]),
         "read_bwd": (new._read_bwd(dy, q, Mc, z, y_dot, g, EPS), old._read_bwd(dy, q, Mc, z, y_dot, g, EPS)),
         "write_bwd": (new._write_bwd(k, v, g_dMb, g_zs, gs, z, False, EPS), old._write_bwd(k, v, g_dM, g_zs, gs, z, False, EPS)),
         "write_bwd_delta": (new._write_bwd(k, v, g_dMb, g_zs, gs, z, True, EPS), old._write_bwd(k, v, g_dM, g_zs, gs, z, True, EPS)),
         "delta_dz": ([new._delta_dz(k, gs, z, EPS)], [old._delta_dz(k, gs, z, EPS)])}
rows.append(dict(part="new vs before", rel_err={n: [round(err(a, b), 6) for a, b in zip(*p)] for n, p in pairs.items()}))
print(json.dumps(rows[-1]), flush=True)
save()

# 3. layer mode: the kernels before and the new ones in the same run
args = bench.get_parser().parse_args(["--mode=layer", "--layer_iters=10", f"--out_dir={out_dir}"])
layer_rows = []
for variant, mod, dump in [("local", new, False), ("infini-linear-fast", old, False), ("infini-linear-fast", new, True),
                           ("infini-delta-fast", old, False), ("infini-delta-fast", new, False)]:
    if time.time() - t_start > budget:
        layer_rows.append(dict(variant=variant, skipped="time budget"))
        break
    model.kernels = mod
    args.dump_code = int(dump)
    try:
        r = bench.layer_one(args, 8192, variant)
    except Exception as e:                                    # recorded, and the run goes on
        r = dict(variant=variant, T=8192, error=f"{type(e).__name__}: {e}"[:1500])
    r.update(kernels_module=mod.__name__, kernel_cfg=getattr(mod, "KERNEL_CFG", None))
    r["kernels"] = r.get("kernels", [])[:45]
    print(json.dumps({a: b for a, b in r.items() if a != "kernels"}), flush=True)
    layer_rows.append(r)
    bench.write_rows(os.path.join(out_dir, "layer_cols.json"), layer_rows)
    torch.cuda.empty_cache()
model.kernels = new
loc = next((r for r in layer_rows if r.get("variant") == "local" and "ms" in r), None)
for r in layer_rows:
    if loc and "ms" in r:
        print(f"{r['variant']:22s} {r['kernels_module']:15s} {r['ms']:7.3f} ms  {loc['ms'] / r['ms']:.3f} x local  "
              f"saved {r['saved_gb']:.3f} GB")
