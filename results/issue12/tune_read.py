"""Block size and warps of the Triton read kernels (model.READ_CFG), one compiled 300m block at T = 8192,
forward + backward (bench.py's layer mode). GPU only.  python results/issue12/tune_read.py OUT_DIR

Runs on commit dcf0228, where the read kernels are; they were removed after this measurement (tune_read.json:
slower than the PyTorch read in every configuration), so on later commits model.READ_CFG does not exist."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import bench  # noqa: E402
import model  # noqa: E402

args = bench.get_parser().parse_args(["--mode=layer", "--layer_iters=10"])
torch.backends.cuda.matmul.allow_tf32 = True
rows = []
for variant, cfg in [("local", None), ("infini-linear-torch", None), ("infini-linear-fast", ((16, 8), (16, 8))),
                     ("infini-linear-fast", ((32, 8), (32, 8))), ("infini-linear-fast", ((16, 8), (32, 8))),
                     ("infini-linear-fast", ((16, 4), (16, 4))), ("infini-linear-fast", ((64, 8), (64, 8)))]:
    if cfg:
        model.READ_CFG = dict(fwd=cfg[0], bwd=cfg[1])
    r = bench.layer_one(args, 8192, variant)
    k = {n: us for n, us, c in r["kernels"]}
    row = dict(variant=variant, read_cfg=cfg, ms=r["ms"], kernel_us=r["kernel_us"],
               read_fwd_us=k.get("_read_fwd_kernel"), read_bwd_us=k.get("_read_bwd_kernel"))
    print(json.dumps(row), flush=True)
    rows.append(row)
    torch.cuda.empty_cache()
with open(os.path.join(sys.argv[1], "tune_read.json"), "w") as f:
    json.dump(rows, f, indent=1)
