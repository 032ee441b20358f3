"""
GPU measurements, each a mode of this one script so a single device call can run them all:

  python bench.py --mode=check    # the layer (bf16 autocast, GPU) vs the float64 reference of test_model.py
  python bench.py --mode=train    # training tokens/s, MFU, peak memory: full / local / infini-linear / infini-delta
  python bench.py --mode=stream   # prefill in streaming mode: peak memory and tokens/s, 8K .. 1M tokens
  python bench.py --mode=layer    # one compiled block, forward + backward: time, saved memory, every kernel
  python bench.py --mode=check,train,stream --out_dir=results   # (default out/bench); replacing: --overwrite=1

Training throughput: synthetic tokens (random, not zeros), forward + backward + clip + fused AdamW
step, bf16 autocast, compiled per block (model.compile_model), the same global batch of --tokens
tokens per step at every T (batch = tokens / T). Warm-up steps (compilation included) are timed
separately as compile_s and left out of tok_s. MFU = model.flops_per_token(T) x tok/s / peak.
The variants of one T are all built first and then timed in --rounds interleaved rounds (round_ms in the JSON):
a GPU's clocks drift as it heats, and a variant timed alone first would get a cooler chip than the next.

Infini variants name the memory path: "infini-linear-plain" (compressive_memory, the spec), "infini-linear-fast"
(memory_fast, the model's default: its Triton kernels on the GPU) or "infini-linear-torch" (memory_fast with
no Triton kernel: its PyTorch autograd Functions and the delta rule's scan as a loop); a bare "infini-linear"
means plain here. check and stream run plain and fast. In train and layer
modes a variant that fails (e.g. to compile) is recorded with its error and the run goes on.
"""
import gc
import json
import logging
import os
import time

import torch

import kernels
from model import Llama, compile_model, make_config
from prepare_fineweb import write_text

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}   # dense bf16 FLOP/s by datasheet


def gpu_name():
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops():
    return next((v for k, v in PEAK_BF16.items() if k in gpu_name()), None)


def write_rows(path, rows):
    # rewritten after every row, so a run cut off at the device's time limit still leaves its numbers
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text(path, json.dumps(rows, indent=1))


def check(args):
    """The 300m-shaped Infini layer on the GPU under bf16 autocast (TF32 on, as in training) against
    test_model.ref_attention, the float64 per-segment loop written from P2 eqs. 7-10, for both memory
    paths, the fast one eager and compiled (its Triton kernels inside inductor's graph, as in training); and
    the fast path's gradients (x, wqkv, wo, beta) against the plain path's on the GPU."""
    import copy
    from model import Attention, rope_cos_sin
    from test_model import ref_attention
    rows = []
    kernels.TRITON_KERNELS = True                      # (a "-torch" variant may have switched it off)
    err = lambda a, b: ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()
    for update in ["linear", "delta"]:
        torch.manual_seed(0)
        cfg = make_config("300m", attn="infini", update=update, segment=1024)
        layer = Attention(cfg)
        with torch.no_grad():
            layer.beta.normal_(0, 2.0)
        x = torch.randn(2, 3 * 1024 + 500, cfg.n_embd)                   # 3 full segments + a short one
        y_ref, mem_ref = ref_attention(copy.deepcopy(layer).double(), x.double())
        dy = torch.randn_like(y_ref).float().cuda()                        # one upstream gradient for both paths
        cos, sin = rope_cos_sin(cfg.segment, cfg.head_dim, cfg.rope_theta, "cuda", torch.float32)
        grads = {}
        for memory in ["plain", "fast", "fast-compiled"]:          # compiled: as train.py runs it
            layer.cfg = make_config("300m", attn="infini", update=update, segment=1024, fast_memory=memory != "plain")
            lay = copy.deepcopy(layer).float().cuda()
            run = torch.compile(lay) if memory == "fast-compiled" else lay
            xc = x.to("cuda", copy=True).requires_grad_(True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y, mem = run(xc, cos, sin)
            (y.float() * dy).sum().backward()
            grads[memory] = [xc.grad, lay.wqkv.weight.grad, lay.wo.weight.grad, lay.beta.grad]
            row = dict(update=update, memory=memory, rel_err_out=err(y.detach(), y_ref),
                       rel_err_M=err(mem[0], mem_ref[0]), rel_err_z=err(mem[1], mem_ref[1]),
                       finite=bool(torch.isfinite(y).all()))
            if memory != "plain":
                row["grad_rel_err_vs_plain"] = {k: err(a, b) for k, a, b in zip(["x", "wqkv", "wo", "beta"], grads[memory], grads["plain"])}
                row["ok"] = check_passes(row, rows[-1] if memory == "fast" else rows[-2])
            print(f"check {update:6s} {memory:13s}: output rel err {row['rel_err_out']:.2e}, M {row['rel_err_M']:.2e}, "
                  f"z {row['rel_err_z']:.2e} (bf16 projections + attention, fp32/TF32 memory)"
                  + (f"; grads vs plain {row['grad_rel_err_vs_plain']}" if memory != "plain" else "")
                  + ("" if row.get("ok", True) else "  FAILED"), flush=True)
            rows.append(row)
    return rows


def check_passes(row, plain):
    """check's pass mark for a fast-path row: finite, no further from float64 than the spec path's row (5 % slack
    for bf16 rounding in other places), gradients within 5e-3 of the spec path's (measured on an H200: output
    4.59e-3 against 4.61e-3, M 3.14e-3 against 3.46e-3, gradients 5e-4 to 2.2e-3)."""
    return bool(row["finite"] and row["rel_err_out"] <= 1.05 * plain["rel_err_out"]     # (a NaN compares False)
                and row["rel_err_M"] <= 1.05 * plain["rel_err_M"] and row["rel_err_z"] <= 1.05 * plain["rel_err_z"]
                and all(e < 5e-3 for e in row["grad_rel_err_vs_plain"].values()))


def train_throughput(args):
    """Training tokens/s of every variant at every T. The variants of one T are all built, compiled and warmed up
    first, then timed in --rounds rounds that take turns: a GPU's clocks drift over a run as it heats up, and
    variants timed one after another would each get a different chip (in layer mode the first variant's matmuls
    ran 3-5 % faster than the same matmuls a minute later)."""
    rows, path = [], os.path.join(args.out_dir, f"bench_{args.tag}.json")
    for T in args.Ts:
        torch._dynamo.reset()      # a fresh compile per T (the variants of a T share inductor's caches: the first's
        # compile_s is the honest one); all blocks of all its variants share Block.forward's code, one cache entry each
        torch._dynamo.config.recompile_limit = max(8, 2 * len(args.variants))
        runs = []
        for variant in args.variants:
            attn, update, memory = parse_variant(variant)
            try:
                runs.append(train_setup(args, T, attn, update, memory, variant))
            except Exception as e:                              # e.g. a compile failure: keep the other rows
                row = dict(attn=attn, update=update or None, memory=memory, T=T, error=f"{type(e).__name__}: {e}"[:500])
                print(json.dumps(row), flush=True)
                rows.append(row)
                write_rows(path, rows)
            torch.cuda.empty_cache()                            # (after the except: its traceback held the model)
        per_round = args.steps // args.rounds
        for _ in range(args.rounds):
            for run in [r for r in runs if "error" not in r]:
                kernels.TRITON_KERNELS = run["triton"]
                try:
                    run["ms"].append(run["time"](per_round))
                except Exception as e:                          # e.g. out of memory: the others go on
                    run["error"] = f"{type(e).__name__}: {e}"[:500]
                    del run["step"], run["time"]                # (they hold its model)
                    torch.cuda.empty_cache()
        for run in runs:
            if "error" in run:
                rows.append(dict(run["row"], error=run["error"]))
                print(json.dumps(rows[-1]), flush=True)
                write_rows(path, rows)
                continue
            row = run["row"]
            dt = sum(run["ms"]) / 1e3 / (per_round * len(run["ms"]))
            tok_s = row["batch"] * T / dt
            peak = peak_flops()
            row.update(tok_s=round(tok_s), mfu=round(run["flops_per_token"] * tok_s / peak, 4) if peak else None,
                       step_ms=round(dt * 1e3, 1), round_ms=[round(ms / per_round, 1) for ms in run["ms"]],
                       loss=round(run["last_loss"](), 3))
            if (run["variant"], T) == (args.profile, args.profile_T):
                kernels.TRITON_KERNELS = run["triton"]
                try:
                    profile(run["step"], os.path.join(args.out_dir, f"profile_{run['variant']}_{T}.txt"))
                except Exception as e:                          # the timed row stands without its profile
                    row["profile_error"] = f"{type(e).__name__}: {e}"[:500]
            print(json.dumps(row), flush=True)
            rows.append(row)
            write_rows(path, rows)
        runs.clear()                     # they hold their models (the loop variable too), and later modes
        run = None                       # measure memory
        torch.cuda.empty_cache()
    ok = [r for r in rows if "error" not in r]
    # the table, with ratios against full and local attention measured in this same run
    full = {r["T"]: r for r in ok if r["attn"] == "full"}
    local = {r["T"]: r for r in ok if r["attn"] == "local"}
    ratio = lambda r, ref, k: r[k] / ref[r["T"]][k] if ref.get(r["T"], {}).get(k) else float("nan")
    print(f"\n{'variant':20s} {'T':>6s} {'B':>3s} {'tok/s':>9s} {'x full':>7s} {'x local':>7s} {'MFU':>6s} "
          f"{'peak GB':>8s} {'x local':>7s} {'compile s':>9s}")
    for r in ok:
        name = "-".join(str(r[k]) for k in ("attn", "update", "memory") if r[k])
        print(f"{name:20s} {r['T']:6d} {r['batch']:3d} {r['tok_s']:9d} {ratio(r, full, 'tok_s'):7.2f} "
              f"{ratio(r, local, 'tok_s'):7.3f} {r['mfu'] or 0:6.3f} {r['peak_gb']:8.2f} "
              f"{ratio(r, local, 'peak_gb'):7.2f} {r['compile_s']:9.1f}")
    for r in rows:
        if "error" in r:
            print(f"FAILED {r['attn']} {r['update'] or ''} {r['memory'] or ''} T={r['T']}: {r['error']}")
    return rows


def parse_variant(v):
    """"infini-linear-fast" -> ("infini", "linear", "fast"); the memory path defaults to plain for infini.
    A name that is none of the variants exits with one line (checked before any GPU work)."""
    attn, update, memory = (v.split("-") + [None, None])[:3]
    if attn not in ("full", "local", "infini") or update not in (None, "linear", "delta") \
            or memory not in (None, "plain", "fast", "torch") or (attn != "infini" and (update or memory)):
        raise SystemExit(f"error: unknown variant {v!r}: full, local or infini-<linear|delta>[-plain|-fast|-torch]")
    return attn, update, (memory or "plain") if attn == "infini" else None


def variant_config(args, attn, update, memory, reset=True):
    """A fresh start for one variant (compile caches reset unless reset=0, seed 0) and its model config;
    "-torch" switches memory_fast's Triton kernels off until the next variant."""
    if reset:
        torch._dynamo.reset()  # a fresh compile per configuration: honest compile_s, no recompile limit
    torch.manual_seed(0)
    kernels.TRITON_KERNELS = memory != "torch"
    return make_config(args.model, attn=attn, update=update or "delta", segment=args.segment,
                       fast_memory=memory not in (None, "plain"))


def train_setup(args, T, attn, update, memory, variant):
    """One variant at one T, built, compiled and warmed up: its row so far (compile_s, peak memory of its own
    weights, optimizer state and steps), and a function that times n steps (milliseconds)."""
    gc.collect()                   # a previous T's models, freed only when their reference cycles are collected:
    torch.cuda.empty_cache()       # else during this warm-up, and this peak would come out below its true value
    base = torch.cuda.memory_allocated()                       # the other variants' models, resident
    torch.cuda.reset_peak_memory_stats()
    cfg = variant_config(args, attn, update, memory, reset=False)
    model = Llama(cfg).cuda()
    opt = model.configure_optimizers(lr=1e-4, weight_decay=0.1, beta_lr=0.01, fused=True)
    if args.compile:
        compile_model(model)
    B = args.tokens // T
    data = torch.randint(0, 50257, (B, T + 1), device="cuda")
    losses = []

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss, _ = model(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[:] = [loss]

    def time_steps(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    row = dict(attn=attn, update=update or None, memory=memory, T=T, batch=B,
               peak_gb=round((torch.cuda.max_memory_allocated() - base) / 2**30, 2),
               compile_s=round(time.perf_counter() - t0, 1))
    return dict(variant=variant, row=row, step=step, time=time_steps, ms=[], triton=kernels.TRITON_KERNELS,
                flops_per_token=model.flops_per_token(T), last_loss=lambda: losses[0].item())


def profile(step, path):
    """Where the time of one configuration goes: the top CUDA kernels over 3 steps."""
    from torch.profiler import ProfilerActivity
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    print(table)
    with open(path, "w") as f:
        f.write(table)


def stream(args):
    """Prefill a long prompt chunk by chunk. infini carries (M, z) between chunks, so activation memory
    is that of one chunk whatever the length; full attention takes the prompt in one call."""
    rows, path = [], os.path.join(args.out_dir, f"streaming_{args.tag}.json")
    kernels.TRITON_KERNELS = True                      # (a "-torch" variant may have switched it off)
    for attn, memory in [("infini", "fast"), ("infini", "plain"), ("full", None)]:
        torch.manual_seed(0)
        model = Llama(make_config(args.model, attn=attn, segment=args.segment, fast_memory=memory != "plain")).cuda().eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):   # warm-up: kernels, allocator
            model(torch.randint(0, 50257, (1, args.chunk), device="cuda"), last_only=True)
        for length in args.lengths:
            if attn == "full" and length > args.full_max:
                continue
            idx = torch.randint(0, 50257, (1, length), device="cuda")
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            try:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    t0 = time.perf_counter()
                    if attn == "full":
                        logits = model(idx, last_only=True)[0]
                    else:
                        mem = None
                        for i in range(0, length, args.chunk):
                            logits, _, mem = model(idx[:, i:i + args.chunk], memory=mem, last_only=True)
                    torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                row = dict(attn=attn, memory=memory, length=length, peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                           tok_s=round(length / dt))
            except torch.cuda.OutOfMemoryError:
                row = dict(attn=attn, memory=memory, length=length, peak_gb=None, tok_s=None, oom=True)
            print(json.dumps(row), flush=True)
            rows.append(row)
            write_rows(path, rows)
        del model
        torch.cuda.empty_cache()
    return rows


def layer(args):
    """One 300m Block (attention + MLP, as one layer of training), compiled as compile_model compiles it:
    forward + backward under bf16 autocast with an fp32 residual input, as in the model. Reports the
    median of 5 back-to-back runs of --layer_iters iterations (per iteration), the memory one forward keeps for the backward,
    and every CUDA kernel of one iteration (name, microseconds, launches), so variants can be diffed
    kernel by kernel against local attention in the same run."""
    rows, path = [], os.path.join(args.out_dir, f"layer_{args.tag}.json")
    os.makedirs(args.out_dir, exist_ok=True)
    for T in args.Ts:
        for variant in args.variants:
            if parse_variant(variant)[0] == "full":
                continue
            try:
                row = layer_one(args, T, variant)
            except Exception as e:                              # keep the other rows
                row = dict(variant=variant, T=T, error=f"{type(e).__name__}: {e}"[:500])
            torch.cuda.empty_cache()
            print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
            rows.append(row)
            write_rows(path, rows)
    rows_ok = [r for r in rows if "error" not in r]
    local = {r["T"]: r for r in rows_ok if r["variant"] == "local"}
    print(f"\n{'variant':24s} {'T':>6s} {'ms':>7s} {'+ms':>7s} {'x local':>7s} {'saved GB':>8s} {'peak GB':>8s} {'kernels':>7s}")
    for r in rows_ok:
        ref = local.get(r["T"])
        print(f"{r['variant']:24s} {r['T']:6d} {r['ms']:7.3f} {r['ms'] - ref['ms'] if ref else 0:7.3f} "
              f"{ref['ms'] / r['ms'] if ref else float('nan'):7.3f} {r['saved_gb']:8.3f} {r['peak_gb']:8.3f} {r['n_kernels']:7d}")
    for r in rows:
        if "error" in r:
            print(f"FAILED {r['variant']} T={r['T']}: {r['error']}")
    return rows


def layer_one(args, T, variant):
    """One variant of layer mode at one T: the JSON row."""
    from model import Block, rope_cos_sin
    attn, update, memory = parse_variant(variant)
    cfg = variant_config(args, attn, update, memory)
    block = Block(cfg).cuda()
    if attn == "infini":
        with torch.no_grad():
            block.attn.beta.normal_(0, 1.0)
    if args.compile:
        block.compile()
    code_log, code_logger = None, logging.getLogger("torch._inductor.codecache.__output_code")
    if args.dump_code:                    # inductor's generated code of this variant, for reading the kernels
        torch._logging.set_logs(output_code=True)
        code_log = logging.FileHandler(os.path.join(args.out_dir, f"code_{variant}_{T}.txt"), mode="w")
        code_logger.addHandler(code_log)
    B = args.tokens // T
    x = torch.randn(B, T, cfg.n_embd, device="cuda", requires_grad=True)
    dy = torch.randn(B, T, cfg.n_embd, device="cuda")
    cos, sin = rope_cos_sin(cfg.segment, cfg.head_dim, cfg.rope_theta, "cuda", torch.float32)

    def fwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return block(x, cos, sin)[0]

    def fb():
        fwd().backward(dy)
        x.grad = None
        for p in block.parameters():
            p.grad = None

    for _ in range(3):
        fb()
    torch.cuda.synchronize()
    if code_log is not None:
        code_logger.removeHandler(code_log)
        code_log.close()
        torch._logging.set_logs()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fwd()
    saved_gb = (torch.cuda.memory_allocated() - base) / 2**30     # what the forward keeps for backward
    out.backward(dy)
    peak_gb = (torch.cuda.max_memory_allocated() - base) / 2**30
    del out
    fb()
    times = []                                   # back to back, as in training: 5 runs of layer_iters
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(args.layer_iters):
            fb()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / args.layer_iters)
    times.sort()
    from torch.profiler import ProfilerActivity
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fb()
        torch.cuda.synchronize()
    kern = sorted(((k.key, k.device_time_total / 5, k.count // 5) for k in prof.key_averages()
                   if k.device_time_total > 0), key=lambda t: -t[1])
    return dict(variant=variant, T=T, batch=B, ms=round(times[len(times) // 2], 4), ms_min=round(times[0], 4),
                saved_gb=round(saved_gb, 3), peak_gb=round(peak_gb, 3),
                kernel_us=round(sum(t[1] for t in kern), 1), n_kernels=sum(t[2] for t in kern),
                kernels=[[n, round(us, 1), c] for n, us, c in kern])


def get_parser():
    from prepare_fineweb import ArgumentParser
    p = ArgumentParser(description=__doc__)
    p.add_argument("--mode", default="check,train,stream", help="comma-separated: check, train, stream, layer")
    p.add_argument("--model", default="300m", help="size preset (model.py)")
    p.add_argument("--segment", type=int, default=1024, help="segment length of local / infini")
    p.add_argument("--Ts", type=int, nargs="+", default=[8192, 32768, 4096, 16384], help="training sequence lengths")
    p.add_argument("--variants", nargs="+", default=["full", "local", "infini-linear-plain", "infini-linear-fast",
                                                      "infini-delta-plain", "infini-delta-fast"],
                   help="attention[-update[-plain|-fast|-torch]] variants to time (plain = compressive_memory, "
                        "fast = memory_fast, torch = memory_fast without its Triton kernels)")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step (batch = tokens / T)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument("--rounds", type=int, default=5, help="train mode: the timed steps in this many rounds (a divisor of --steps), the variants taking turns")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--compile", type=int, default=1, help="1 = torch.compile each block")
    p.add_argument("--profile", default="infini-linear-fast", help="variant to profile (kernel table), or none")
    p.add_argument("--profile_T", type=int, default=8192, help="sequence length of the profile")
    p.add_argument("--layer_iters", type=int, default=30, help="timed forward + backward passes of one block (layer mode)")
    p.add_argument("--dump_code", type=int, default=0, help="1 = layer mode writes inductor's code per variant")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072, 1048576],
                   help="streaming prompt lengths")
    p.add_argument("--chunk", type=int, default=8192, help="streaming chunk, a multiple of the segment")
    p.add_argument("--full_max", type=int, default=131072, help="longest prompt tried with full attention")
    p.add_argument("--out_dir", default="out/bench", help="where the JSON goes (default: git-ignored scratch; the "
                   "committed measurements in results/ are written only when asked for)")
    p.add_argument("--tag", default=None, help="file-name tag; default: the GPU's short name")
    p.add_argument("--overwrite", type=int, default=0, choices=(0, 1), help="1 = replace this run's output files "
                   "in --out_dir if they exist")
    return p


MODES = ("check", "train", "stream", "layer")


def check_args(args):
    """Every flag mistake as one line, before the GPU is looked for: a typo costs no device time. Sets args.tag."""
    modes = args.mode.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"error: unknown --mode {bad[0]!r}: a comma-separated list of {', '.join(MODES)}")
    if len(set(modes)) < len(modes):                       # the second would replace the first's file
        raise SystemExit(f"error: --mode={args.mode} names a mode twice")
    try:                                                   # the preset and --segment, as the modes build them
        make_config(args.model, segment=args.segment)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e} (--model, --segment)")
    timed = "train" in modes or "layer" in modes
    if timed and any(T <= 0 or T % args.segment for T in args.Ts):
        raise SystemExit(f"error: every --Ts must be a positive multiple of --segment ({args.segment}), got {args.Ts}")
    if timed and args.tokens < max(args.Ts):
        raise SystemExit(f"error: --tokens ({args.tokens}) must be at least the longest --Ts ({max(args.Ts)}): "
                         "batch = tokens / T")
    if "train" in modes and args.steps < 1:
        raise SystemExit(f"error: train mode needs --steps of at least 1, got {args.steps}")
    if "layer" in modes and args.layer_iters < 1:
        raise SystemExit(f"error: layer mode needs --layer_iters of at least 1, got {args.layer_iters}")
    if "stream" in modes and (args.chunk <= 0 or args.chunk % args.segment):
        raise SystemExit(f"error: --chunk ({args.chunk}) must be a positive multiple of --segment ({args.segment}): "
                         "the memory cannot continue from a chunk that ends mid-segment")
    if "stream" in modes and min(args.lengths) <= 0:
        raise SystemExit(f"error: every --lengths must be positive, got {args.lengths}")
    for v in args.variants:
        parse_variant(v)
    if args.profile != "none":
        try:
            parse_variant(args.profile)
        except SystemExit as e:
            raise SystemExit(f"{e} (--profile, or none)")
    if "train" in modes and (args.rounds < 1 or args.steps % args.rounds):
        raise SystemExit(f"error: --rounds must be at least 1 and divide --steps ({args.steps}), got {args.rounds}")
    if "train" in modes and args.warmup < 1:
        raise SystemExit("error: train mode needs --warmup of at least 1 (compilation, and the peak memory is "
                         "measured over those steps)")
    check_out_dir(args)
    args.tag = args.tag or next((k.lower() for k in PEAK_BF16 if k in gpu_name()), "gpu")
    taken = [f for f in output_files(args, modes) if os.path.exists(os.path.join(args.out_dir, f))]
    if taken and not args.overwrite:
        raise SystemExit(f"error: {os.path.join(args.out_dir, taken[0])} exists"
                         + (f" (and {len(taken) - 1} more of this run's files)" if len(taken) > 1 else "")
                         + "; pass another --out_dir or --tag, or --overwrite=1 to replace them")


def check_out_dir(args):
    """--out_dir a folder that is or can be made, and writable: said now, not when the first row is written."""
    d = args.out_dir
    if os.path.exists(d) and not os.path.isdir(d):
        raise SystemExit(f"error: --out_dir={d} is a file, not a folder")
    parent = d
    while not os.path.exists(parent):                      # the nearest existing folder makes the missing ones
        parent = os.path.dirname(os.path.normpath(parent)) or "."
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out_dir={d} cannot be written ({parent} is not a writable folder)")


def output_files(args, modes):
    """The file names (in --out_dir) that these modes write: as train_throughput, stream, layer and __main__ name them."""
    files = [f"{dict(check='check', train='bench', stream='streaming', layer='layer')[m]}_{args.tag}.json" for m in modes]
    if "train" in modes and args.profile in args.variants and args.profile_T in args.Ts:
        files.append(f"profile_{args.profile}_{args.profile_T}.txt")
    if "layer" in modes and args.dump_code:
        files += [f"code_{v}_{T}.txt" for T in args.Ts for v in args.variants if parse_variant(v)[0] != "full"]
    return files


if __name__ == "__main__":
    args = get_parser().parse_args()
    check_args(args)
    if not torch.cuda.is_available():
        raise SystemExit("error: bench.py measures a CUDA GPU and none is available")
    torch.backends.cuda.matmul.allow_tf32 = True                  # as in train.py: fp32 memory matmuls on TF32 cores
    torch.backends.cudnn.allow_tf32 = True
    print(f"{gpu_name()} | torch {torch.__version__}", flush=True)
    out = {}
    for mode in args.mode.split(","):
        out[mode] = {"check": check, "train": train_throughput, "stream": stream, "layer": layer}[mode](args)
    if "check" in out:
        write_rows(os.path.join(args.out_dir, f"check_{args.tag}.json"), out["check"])
        if any(r.get("ok") is False for r in out["check"]):
            raise SystemExit("error: the fast memory path failed --mode=check (FAILED above): its errors against "
                             "float64 or the spec path are larger than the spec path's own")
