"""Columns a program (kernels.SCAN_BN) of the delta rule's Triton scan: training tokens/s of the 300m model
(bench.py's train mode) and the scan kernels' time in one compiled block (layer mode), T = 8192 and 32768.
GPU only.  python results/issue12/tune_scan.py OUT_DIR"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import bench  # noqa: E402
import kernels  # noqa: E402

args = bench.get_parser().parse_args(["--mode=train", "--steps=10", "--warmup=3", "--profile=none", "--layer_iters=10"])
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
rows = []
for T in [8192, 32768]:
    for variant, bn in [("local", None), ("infini-delta-fast", 32), ("infini-delta-fast", 16)]:
        if bn:
            kernels.SCAN_BN = bn
        torch._dynamo.reset()
        run = bench.train_setup(args, T, *bench.parse_variant(variant), variant)
        ms = run["time"](args.steps)        # (bench.train_one, since replaced by train_setup, timed the same steps)
        r = dict(run["row"], tok_s=round(run["row"]["batch"] * T * args.steps / (ms / 1e3)))
        del run
        torch.cuda.empty_cache()
        if bn:
            k = {n: us for n, us, c in bench.layer_one(args, T, variant)["kernels"]}
            r.update(scan_fwd_us=k.get("_scan_fwd_kernel"), scan_bwd_us=k.get("_scan_bwd_kernel"))
            torch.cuda.empty_cache()
        r.update(variant=variant, scan_bn=bn)
        print(json.dumps(r), flush=True)
        rows.append(r)
        with open(os.path.join(sys.argv[1], "tune_scan.json"), "w") as f:
            json.dump(rows, f, indent=1)
