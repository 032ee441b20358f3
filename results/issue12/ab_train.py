"""The memory kernels before and after this session's restructuring, in training (bench.py's train mode: the whole
300m model, compiled, 32,768 tokens a step), all variants built first and then timed in interleaved rounds, so
that each gets the same chip (clocks drift as it heats). GPU only.
    git show 89270e6:kernels.py > results/issue12/kernels_before.py
    python results/issue12/ab_train.py OUT_DIR [T ... | stream]
    python results/issue12/ab_train.py OUT_DIR --before kernels_v6 [T ...]    (another "before": any kernels.py of
        this layout, e.g. git show 76f5117:kernels.py > results/issue12/kernels_v6.py, the fourth session's A/B)
"before" = kernels_before.py (the kernels at commit 89270e6) with its ReadGPU handing y over as (B, S, N, H, D), the
layout model.memory_fast now expects (so the copy of dy that its old layout cost under torch.compile is gone from
both; that copy is measured in layer mode, layer_h200_v6.json against layer_cols.json)."""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), HERE]
import bench  # noqa: E402
import kernels  # noqa: E402
import model  # noqa: E402

BEFORE = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else "kernels_before"
kernels_before = __import__(BEFORE)


class ReadBefore(torch.autograd.Function):
    """kernels_before.ReadGPU (the same lines), y as (B, S, N, H, D) in and out."""

    @staticmethod
    def forward(ctx, q, M, z, y_dot, g, eps):
        H = q.shape[2]
        ctx.g_shape, ctx.eps = g.shape, eps
        Mc, z, g = M.to(q.dtype).contiguous(), z.contiguous(), g.expand(1, 1, H, 1, 1).reshape(H).contiguous()
        ctx.save_for_backward(q, Mc, z, y_dot, g)
        return kernels_before._read_fwd(q, Mc, z, y_dot, g, eps).transpose(2, 3)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, Mc, z, y_dot, g = ctx.saved_tensors
        dq, dyd, dM, dz, dg = kernels_before._read_bwd(dy.contiguous().transpose(2, 3), q, Mc, z, y_dot, g, ctx.eps)
        return dq, dM, dz, dyd, dg.sum_to_size(ctx.g_shape), None


if BEFORE == "kernels_before":
    kernels_before.ReadGPU = ReadBefore


def interleaved(plan, Ts, path):
    """bench.py's train mode for plan = [(variant, the kernels module its memory_fast uses)]: all built first, then
    timed in 5 interleaved rounds of 6 steps; the rows (x local: against the plan's first variant) go to path."""
    args = bench.get_parser().parse_args(["--mode=train", "--steps=30", "--rounds=5", "--warmup=3"])
    rows = []
    for T in Ts:
        torch._dynamo.reset()
        runs = []
        for variant, mod in plan:
            model.kernels = mod                  # memory_fast's kernels, read (and guarded on) when it is traced
            run = bench.train_setup(args, T, *bench.parse_variant(variant), variant)
            run.update(mod=mod)
            runs.append(run)
        per_round = args.steps // args.rounds
        for _ in range(args.rounds):
            for run in runs:
                model.kernels = run["mod"]
                run["ms"].append(run["time"](per_round))
        local_ms = None
        for run in runs:
            step_ms = sorted(run["ms"])[len(run["ms"]) // 2] / per_round      # the median round
            local_ms = local_ms or step_ms
            row = dict(run["row"], variant=run["variant"], kernels=run["mod"].__name__, step_ms=round(step_ms, 2),
                       tok_s=round(run["row"]["batch"] * T / step_ms * 1e3), x_local=round(local_ms / step_ms, 4),
                       round_ms=[round(ms / per_round, 2) for ms in run["ms"]],
                       kernel_cfg=getattr(run["mod"], "KERNEL_CFG", None))
            print(json.dumps(row), flush=True)
            rows.append(row)
            bench.write_rows(path, rows)
        del runs, run
        torch.cuda.empty_cache()
    model.kernels = kernels
    return rows


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out_dir = sys.argv[1]
    if "--before" in sys.argv:
        i = sys.argv.index("--before")
        del sys.argv[i:i + 2]
    if sys.argv[2:] == ["stream"]:      # streaming prefill (bench.py --mode=stream), the kernels after, then before
        args = bench.get_parser().parse_args(["--mode=stream", "--lengths", "32768", "131072", "1048576", f"--out_dir={out_dir}"])
        for mod in (kernels, kernels_before):
            model.kernels = mod
            args.tag = f"h200_{mod.__name__}"
            bench.stream(args)
        sys.exit()
    interleaved([("local", kernels), ("infini-linear-fast", kernels), ("infini-linear-fast", kernels_before),
                 ("infini-delta-fast", kernels), ("infini-delta-fast", kernels_before)],
                [int(t) for t in sys.argv[2:]] or [8192], os.path.join(out_dir, f"ab_train_{BEFORE}.json"))
