"""The tables of results/issue12/NOTES.md from the JSON beside this file (CPU, no GPU needed).

  python results/issue12/tables.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CALLS = [("layer_call1.json", "1: before (per-iteration sync timing)"), ("layer_call2.json", "2: Functions"),
         ("layer_call3.json", "3: + row-major sigma, W Function, scan kernel"), ("layer_call4.json", "4: + Triton read (fast); torch = 3 without the scan kernel")]


def big_matmul(name, us, n):
    return name.startswith("nvjet") and us / n > 150      # the projections and the MLP (same in every variant)


print("One compiled 300m block, forward + backward, 32,768 tokens (bench.py --mode=layer), H200")
print(f"{'call':48s} {'variant':22s} {'T':>6s} {'ms':>7s} {'x local':>7s} {'kernel us':>9s} {'memory-path us':>14s} {'saved GB':>8s}")
for f, label in CALLS:
    rows = [r for r in json.load(open(os.path.join(HERE, f))) if "error" not in r]
    local = {r["T"]: r for r in rows if r["variant"] == "local"}
    for r in rows:
        # kernels that are neither the big matmuls nor cuDNN attention: RMSNorm, RoPE, SwiGLU (as in local) + the memory
        rest = sum(us for n, us, c in r["kernels"] if not big_matmul(n, us, c) and not n.startswith("cudnn")
                   and "cudnn::" not in n)
        lrest = sum(us for n, us, c in local[r["T"]]["kernels"] if not big_matmul(n, us, c) and not n.startswith("cudnn")
                    and "cudnn::" not in n)
        print(f"{label:48s} {r['variant']:22s} {r['T']:6d} {r['ms']:7.3f} {local[r['T']]['ms'] / r['ms']:7.3f} "
              f"{r['kernel_us']:9.0f} {rest - lrest:14.0f} {r['saved_gb']:8.3f}")

print("\nThe memory as Triton kernels (second session): layer mode, kernels off (the PyTorch Functions + the scan "
      "kernel) and on")
for f in ["fused_layer_call1.json", "fused_layer_call2.json", "fused_layer_call3.json", "fused_layer_call4.json"]:
    rows = [r for r in json.load(open(os.path.join(HERE, f))) if r.get("kind") == "layer" and "error" not in r]
    base = {r["T"]: r for r in rows if r["variant"] == "local"}
    for r in rows:
        ref = base[r["T"]]
        print(f"{f:24s} {r['variant']:20s} kernels {'on ' if r['fused'] else 'off'} {r['T']:6d} {r['ms']:7.3f} ms "
              f"{ref['ms'] / r['ms']:6.3f} x local  saved {r['saved_gb']:.3f} GB ({r['saved_gb'] / ref['saved_gb']:.2f} x)  "
              f"cfg {json.dumps(r['kernel_cfg'])}")
print("\nEach kernel alone (tune_fused.json): the fastest configuration")
tune = json.load(open(os.path.join(HERE, "tune_fused.json")))
best = {}
for r in tune[1:]:
    if "us" in r and (r["kernel"] not in best or r["us"] < best[r["kernel"]]["us"]):
        best[r["kernel"]] = r
for name, r in best.items():
    print(f"{name:16s} {r['us']:7.1f} us  {r['x_floor']:4.2f} x its byte floor  (rows, warps, stages, programs a segment) = {r['cfg']}")
