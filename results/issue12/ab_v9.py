"""H9, sixth session: the write's backward kernel writes the qkv projection's whole gradient (the memory's dk, dv
plus SDPA's gradients through RoPE and the read's dq), so that the memory's dk, dv are neither written nor read back
by the inductor kernel that assembled that gradient. Measured against the tree before it, in the same process:
    git show 1a18c5b:model.py > results/issue12/model_v8.py; git show 1a18c5b:kernels.py > results/issue12/kernels_v8.py
    python results/issue12/ab_v9.py OUT_DIR [check] [layer] [train] [stream] [stream_profile]
check: bench.py --mode=check of this tree (float64 reference; eager and compiled); layer: bench.py's layer mode
(one compiled 300m block, every kernel listed), this tree and the one before; train: bench.py's train mode, local /
linear / delta of both trees built first, then timed in 5 interleaved rounds, T = 8192 and 32768; stream: bench.py's
streaming prefill of both trees' fast path, taking turns. GPU only."""
import json
import os
import sys
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), HERE]
import bench  # noqa: E402
import kernels  # noqa: E402
import model  # noqa: E402
import kernels_v8  # noqa: E402
import model_v8  # noqa: E402

model_v8.kernels = kernels_v8            # the tree before: its model.py with its kernels.py
TREES = {"v9": model, "v8": model_v8}


def with_tree(name, fn, *a):
    """fn(*a) with bench.py building its models from tree `name` (train mode: bench.Llama; layer mode imports Block)."""
    saved = bench.Llama, sys.modules["model"]
    bench.Llama, sys.modules["model"] = TREES[name].Llama, TREES[name]
    try:
        return fn(*a)
    finally:
        bench.Llama, sys.modules["model"] = saved


def layer(args, out):
    rows = []
    for T in (8192,):
        for variant, tree in [("local", "v9"), ("infini-linear-fast", "v9"), ("infini-linear-fast", "v8"),
                              ("infini-delta-fast", "v9"), ("infini-delta-fast", "v8"), ("local", "v9")]:
            row = dict(with_tree(tree, bench.layer_one, args, T, variant), tree=tree)
            print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
            rows.append(row)
            bench.write_rows(out, rows)
            torch.cuda.empty_cache()


def train(args, out):
    rows = []
    plan = [("local", "v9"), ("infini-linear-fast", "v9"), ("infini-linear-fast", "v8"),
            ("infini-delta-fast", "v9"), ("infini-delta-fast", "v8")]
    for T in (8192, 32768):
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = 16
        runs = []
        for variant, tree in plan:
            run = with_tree(tree, bench.train_setup, args, T, *bench.parse_variant(variant), variant)
            run.update(tree=tree)
            runs.append(run)
        per_round = args.steps // args.rounds
        for _ in range(args.rounds):
            for run in runs:
                run["ms"].append(run["time"](per_round))
        local_ms = None
        for run in runs:
            step_ms = sum(run["ms"]) / len(run["ms"]) / per_round              # the mean, as bench.py
            local_ms = local_ms or step_ms
            row = dict(run["row"], variant=run["variant"], tree=run["tree"], step_ms=round(step_ms, 2),
                       tok_s=round(run["row"]["batch"] * T / step_ms * 1e3), x_local=round(local_ms / step_ms, 4),
                       round_ms=[round(ms / per_round, 2) for ms in run["ms"]], loss=round(run["last_loss"](), 4))
            print(json.dumps(row), flush=True)
            rows.append(row)
            bench.write_rows(out, rows)
        del runs, run
        torch.cuda.empty_cache()


def stream(args, out, length=131072, rounds=8):
    """bench.py's streaming prefill (eager, batch 1, chunks of 8192 tokens, the memory carried), of the fast path of
    both trees, taking turns (and going first) for `rounds` rounds (one prefill of `length` tokens each)."""
    import time
    built = {}
    for tree in TREES:
        torch.manual_seed(0)
        cfg = bench.make_config(args.model, attn="infini", segment=args.segment, fast_memory=True)
        built[tree] = TREES[tree].Llama(cfg).cuda().eval()
    idx, rows = torch.randint(0, 50257, (1, length), device="cuda"), []
    for r in range(rounds + 1):                                      # round 0: warm-up, not recorded
        for tree, m in list(built.items())[::1 if r % 2 else -1]:      # the trees take turns going first
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                mem = None
                for i in range(0, length, args.chunk):
                    _, _, mem = m(idx[:, i:i + args.chunk], memory=mem, last_only=True)
            torch.cuda.synchronize()
            if r:
                rows.append(dict(tree=tree, round=r, length=length, tok_s=round(length / (time.perf_counter() - t0))))
                print(json.dumps(rows[-1]), flush=True)
    bench.write_rows(out, rows)


def stream_profile(args, out, chunks=4):
    """Where streaming's time goes in each tree: wall time, CUDA kernel time and kernel launches of `chunks` chunks
    of prefill (after one chunk of warm-up), and the top kernels."""
    import time
    from torch.profiler import ProfilerActivity, profile
    rows = []
    idx = torch.randint(0, 50257, (1, args.chunk * (chunks + 1)), device="cuda")
    for tree in list(TREES) * 2:
        torch.manual_seed(0)
        cfg = bench.make_config(args.model, attn="infini", segment=args.segment, fast_memory=True)
        m = TREES[tree].Llama(cfg).cuda().eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            _, _, mem = m(idx[:, :args.chunk], last_only=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for i in range(1, chunks + 1):
                    _, _, mem = m(idx[:, i * args.chunk:(i + 1) * args.chunk], memory=mem, last_only=True)
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        kern = sorted(((e.key, e.device_time_total / chunks, e.count // chunks) for e in prof.key_averages() if e.device_time_total > 0),
                      key=lambda t: -t[1])
        rows.append(dict(tree=tree, wall_ms_chunk=round(wall * 1e3 / chunks, 2),
                         cuda_ms_chunk=round(sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / chunks, 2),
                         kernels=[[n[:80], round(us, 1), c] for n, us, c in kern[:40]]))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "kernels"}), flush=True)
        del m
        torch.cuda.empty_cache()
    bench.write_rows(out, rows)


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out_dir, parts = sys.argv[1], sys.argv[2:] or ["check", "layer", "train"]
    os.makedirs(out_dir, exist_ok=True)
    args = bench.get_parser().parse_args(["--mode=train", "--steps=30", "--rounds=5", "--warmup=3"])
    print(torch.__version__, __import__("triton").__version__, torch.cuda.get_device_name(), flush=True)
    for part in parts:
        try:
            if part == "check":
                rows = bench.check(args)
                bench.write_rows(os.path.join(out_dir, "ab_v9_check.json"), rows)
            else:
                globals()[part](args, os.path.join(out_dir, f"ab_v9_{part}.json"))
        except Exception:
            traceback.print_exc()
            print(f"PART {part} FAILED", flush=True)
