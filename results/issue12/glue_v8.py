"""Fifth session, H8: the linear rule's D x D state glue as one Triton kernel each way. Checked on the CPU (Triton's
interpreter), then measured on an H200 (glue_v8_h200/, NOTES.md "Fifth session"): the loop kernels save 17-24 us a
layer in one block, ~0.2 ms a step of kernel time in training, below what a training run resolves; not kept.

What it replaces. Between the memory kernels, memory_fast turns the write's per-segment sums dM_s = sigma(K_s)^T V_s
(fp32, (B, S, H, D, D)) into the states the read needs, M_prev[s] = M_0 + sum_{t<s} dM_t, which ReadGPU casts to
bf16; the backward runs the same in reverse. Compiled, that is four inductor kernels a layer on the 300m layer at
T = 8192, batch 4 (results/issue12/layer_v6.json, us): forward triton_per_fused_add_cumsum 12.0 (M_after = M_0 +
cumsum) and triton_poi_fused__to_copy_add_cat 6.0 (M_prev = the shifted cat, cast to bf16); backward
triton_per_fused_add_cumsum_flip_select_backward 9.6 (the reverse cumsum: flip, cumsum) and
triton_poi_fused__to_copy_flip 8.8 (the flip back, cast to bf16 for the write's backward): ~36 us. The flips and the
shifted cat are index remaps of a scan's output, which inductor does not fuse into the scan, so each costs a pass.
Here one kernel each way holds a whole column of S + 1 segments of BLOCK state entries in registers, loaded one
segment down (forward) or in reverse order (backward), so that one inclusive tl.cumsum is the exclusive prefix (or
suffix) sum, and stores the bf16 operand straight away: 16.8 MB read + 8.4 MB written each way, ~5 us at an H200's
copy rate, against ~18 (expected before measuring: ~25 us a layer; measured: the column kernels lose at S = 8, the
loop kernels, one segment an iteration, win).

One precision change, to the plain path's: the read's dM reaches the suffix sum rounded to bf16 per segment (M_prev
is now a bf16 tensor, so its gradient is bf16; the read's dM kernel stores it so). The plain path (autograd through
compressive_memory) rounds it the same way: its gradient of the bf16 cast of M is bf16.

    python results/issue12/glue_v8.py --interpret          CPU: v8 equals the landed memory_fast (fp32, every output and
                                                           gradient; about a minute)
    python results/issue12/glue_v8.py OUT_DIR [alone] [check] [layer] [train] [profile]     GPU (default: the first four)
      alone  the landed glue compiled alone (forward + backward) against the two kernels, at each BLOCK
      check  bench.py --mode=check with memory_fast = v8 (its pass mark against the plain path)
      layer  bench.py --mode=layer's kernel list of one 300m block, landed and v8 (kernel sums are stable; wall is not)
      train  bench.py's train mode, local / linear landed / linear v8 built first, timed in 5 interleaved rounds
      profile  a training step at T = 8192, landed and v8 twice each: CUDA kernel time against wall time"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..")]
INTERPRET = "--interpret" in sys.argv
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import kernels  # noqa: E402
import model  # noqa: E402
from model import EPS  # noqa: E402

LANDED = model.memory_fast
PREFIX_BLOCK = 128          # state entries a program (the column of S + 1 segments: SP >= S + 1 rows in registers;
#                             SP x BLOCK fp32 values over 4 warps: 64 x 128 at S = 32, a spill from S = 128 on)


@triton.jit
def _prefix_fwd_kernel(M0, DM, MP, MOUT, S, n_full, HDD, NE, SP: tl.constexpr, BLOCK: tl.constexpr):
    """MP[s] = M_0 + sum_{t < s} dM_t in MP's dtype (the read's operand) and MOUT = M_0 + sum_{t < n_full} dM_t, for
    BLOCK entries e = (b, h, i, j) of the state. Row r of the column holds dM_{r - 1} (row 0 zeros), so the inclusive
    cumsum's row s is the exclusive sum. DM, MP are (B, S, H, D, D) contiguous, M0, MOUT (B, H, D, D); HDD = H D D."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok, r = e < NE, tl.arange(0, SP)
    col = (e // HDD) * S * HDD + e % HDD                       # (b, 0, h, i, j)
    x = tl.load(DM + col[None, :] + (r[:, None] - 1) * HDD, mask=(r[:, None] >= 1) & (r[:, None] <= S) & ok[None, :],
                other=0.0)
    c = tl.load(M0 + e, mask=ok, other=0.0)[None, :] + tl.cumsum(x, axis=0)   # row s: M_0 + sum_{t < s} dM_t
    tl.store(MP + col[None, :] + r[:, None] * HDD, c, mask=(r[:, None] < S) & ok[None, :])
    tl.store(MOUT + e, tl.sum(tl.where(r[:, None] == n_full, c, 0.0), axis=0), mask=ok)


@triton.jit
def _prefix_bwd_kernel(GMP, GMOUT, GDM, GM0, S, n_full, HDD, NE, SP: tl.constexpr, BLOCK: tl.constexpr):
    """Backward of _prefix_fwd_kernel: GDM[t] = sum_{s > t} GMP[s] + [t < n_full] GMOUT (in GDM's dtype: the write
    backward's operand), GM0 = sum_s GMP[s] + GMOUT. Row r holds GMP[S - r] (r = 1 .. S), so the inclusive cumsum's
    row r is the suffix sum past segment t = S - 1 - r."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok, r = e < NE, tl.arange(0, SP)
    col = (e // HDD) * S * HDD + e % HDD
    x = tl.load(GMP + col[None, :] + (S - r[:, None]) * HDD, mask=(r[:, None] >= 1) & (r[:, None] <= S) & ok[None, :],
                other=0.0)
    c = tl.cumsum(x.to(tl.float32), axis=0)
    go = tl.load(GMOUT + e, mask=ok, other=0.0)
    t = S - 1 - r
    tl.store(GDM + col[None, :] + t[:, None] * HDD, c + tl.where(t[:, None] < n_full, go[None, :], 0.0),
             mask=(r[:, None] < S) & ok[None, :])
    tl.store(GM0 + e, tl.sum(tl.where(r[:, None] == S, c, 0.0), axis=0) + go, mask=ok)


# The same two kernels as a loop over segments, one segment's BLOCK entries an iteration (no cross-thread scan;
# the first call on the H200 had the column kernels slower than inductor's at S = 8: glue_v8_h200/glue_v8_call1.json)
@triton.jit
def _prefix_fwd_loop_kernel(M0, DM, MP, MOUT, S, n_full, HDD, NE, SP: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < NE
    col = (e // HDD) * S * HDD + e % HDD
    m = tl.load(M0 + e, mask=ok, other=0.0)
    for s in range(S):                              # n_full is S or S - 1 (Attention: only the last may be short)
        tl.store(MP + col + s * HDD, m, mask=ok)
        if s < S - 1 or n_full == S:                # (a short last segment is in no state that is read)
            m += tl.load(DM + col + s * HDD, mask=ok, other=0.0)
    tl.store(MOUT + e, m, mask=ok)


@triton.jit
def _prefix_bwd_loop_kernel(GMP, GMOUT, GDM, GM0, S, n_full, HDD, NE, SP: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < NE
    col = (e // HDD) * S * HDD + e % HDD
    go = tl.load(GMOUT + e, mask=ok, other=0.0)
    r = tl.zeros((BLOCK,), tl.float32)              # sum of g(M_prev[s]) over s > t
    for i in range(S):
        t = S - 1 - i
        tl.store(GDM + col + t * HDD, r + tl.where(t < n_full, go, 0.0), mask=ok)
        r += tl.load(GMP + col + t * HDD, mask=ok, other=0.0).to(tl.float32)
    tl.store(GM0 + e, r + go, mask=ok)


PREFIX_KIND = "column"      # or "loop"; the GPU run picks the faster alone at T = 8192 for its layer and train parts
KINDS = {"column": (_prefix_fwd_kernel, _prefix_bwd_kernel), "loop": (_prefix_fwd_loop_kernel, _prefix_bwd_loop_kernel)}


def _prefix_launch(which, *tensors, S, n_full, block, kind):
    B, H, D, _ = tensors[-1].shape                                    # the (B, H, D, D) state each kernel writes last
    ne = B * H * D * D
    KINDS[kind or PREFIX_KIND][which][(triton.cdiv(ne, block),)](*tensors, S, n_full, H * D * D, ne,
                                                                  SP=triton.next_power_of_2(S + 1), BLOCK=block, num_warps=4)


def prefix_fwd(M0, dM, n_full, dtype, block=None, kind=None):
    B, S, H, D, _ = dM.shape
    assert S - 1 <= n_full <= S, (S, n_full)                # as Attention.forward cuts a sequence
    M_prev, M_out = dM.new_empty(B, S, H, D, D, dtype=dtype), torch.empty_like(M0)
    _prefix_launch(0, M0, dM, M_prev, M_out, S=S, n_full=n_full, block=block or PREFIX_BLOCK, kind=kind)
    return M_prev, M_out


def prefix_bwd(g_Mp, g_Mo, n_full, dtype, block=None, kind=None):
    B, S, H, D, _ = g_Mp.shape
    g_dM, g_M0 = g_Mp.new_empty(B, S, H, D, D, dtype=dtype), torch.empty_like(g_Mo)
    _prefix_launch(1, g_Mp, g_Mo, g_dM, g_M0, S=S, n_full=n_full, block=block or PREFIX_BLOCK, kind=kind)
    return g_dM, g_M0


class WriteLinearV8(torch.autograd.Function):
    """kernels.WriteGPU for the linear rule, with the prefix over segments inside: from k, v, z_0, M_0 to M_prev in
    k's dtype (what the read casts it to anyway), the state after segment n_full (fp32) and z after every segment."""

    @staticmethod
    def forward(ctx, k, v, z0, M0, n_full, eps):
        dM, zs = kernels._segment_sums(k, v, eps)
        M_prev, M_out = prefix_fwd(M0.contiguous(), dM, n_full, k.dtype)
        ctx.save_for_backward(k, v)
        ctx.n_full, ctx.eps = n_full, eps
        return M_prev, M_out, z0[:, None] + zs.cumsum(dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_Mp, g_Mo, g_z):
        k, v = ctx.saved_tensors
        g_dM, g_M0 = prefix_bwd(g_Mp.contiguous(), g_Mo.contiguous(), ctx.n_full, k.dtype)
        g_zs = g_z.flip(1).cumsum(dim=1).flip(1).contiguous()
        dk, dv = kernels._write_bwd(k, v, g_dM, g_zs, g_dM, g_zs, False, ctx.eps)   # (gs, z_prev: unused, linear)
        return dk, dv, g_z.sum(1), g_M0, None, None


def _read_bwd_v8(dy, q, Mc, z, y_dot, g, eps):
    """kernels._read_bwd with dM stored in Mc's dtype (bf16 under autocast: M_prev's own dtype)."""
    B, S, H, N, D = q.shape
    (dq_out, dq), (dyd_out, dyd) = kernels._like_qkv(q), kernels._like_qkv(y_dot)
    grid, (per, n), kw = kernels._plan("read_bwd", q, eps)
    dzp, dgp = z.new_empty(B, S, H, n, D), z.new_empty(B, S, H, n)
    kernels._read_bwd_kernel[grid](dy, q, y_dot, Mc, z, g, dq_out, dyd_out, dzp, dgp, S, H, N, per, n,
                                   *kernels._st(dy), *kernels._st(q), *kernels._st(y_dot), *kernels._st(dq), **kw)
    dm = Mc.new_empty(B, S, H, D, D)
    grid, extra, kw = kernels._plan("read_dm", q, eps)
    kernels._read_dm_kernel[grid](q, dy, z, g, dm, S, H, N, *extra, *kernels._st(q), *kernels._st(dy), **kw)
    return dq, dyd, dm, dzp.sum(3), dgp.sum((0, 1, 3)).view(1, 1, H, 1, 1)


class ReadV8(kernels.ReadGPU):
    """kernels.ReadGPU, its dM in M's dtype."""

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, Mc, z, y_dot, g = ctx.saved_tensors
        dq, dyd, dM, dz, dg = _read_bwd_v8(dy.contiguous().transpose(2, 3), q, Mc, z, y_dot, g, ctx.eps)
        return dq, dM, dz, dyd, dg.sum_to_size(ctx.g_shape), None


def memory_fast_v8(q, k, v, y_dot, g, update, n_full, memory=None):
    """model.memory_fast, the linear rule on the GPU through WriteLinearV8 and ReadV8; everything else the landed."""
    if update != "linear" or not kernels.fused_on_gpu(q):
        return LANDED(q, k, v, y_dot, g, update, n_full, memory)
    B, S, H, N, D = q.shape
    sd = torch.promote_types(q.dtype, torch.float32)
    M0, z0 = memory if memory is not None else (q.new_zeros(B, H, D, D, dtype=sd), q.new_zeros(B, H, D, dtype=sd))
    M_prev, M_out, z_after = WriteLinearV8.apply(k, v, z0, M0, n_full, EPS)
    z_prev = torch.cat([z0[:, None], z_after[:, :-1]], dim=1)
    z_out = z_after[:, n_full - 1] if n_full > 0 else z0
    return ReadV8.apply(q, M_prev, z_prev, y_dot, g, EPS).transpose(2, 3), (M_out, z_out)


def _run(fn, fused, shape, n_full, mem, dtype, seed=0):
    """fn's outputs and every gradient on q, k, v (as the qkv projection lays them out), y_dot, g and the memory."""
    B, S, H, N, D = shape
    torch.manual_seed(seed)
    qkv = torch.randn(B, S, N, 3, H, D) * 0.5
    y_dot = torch.randn(B, S, N, H, D).transpose(2, 3)
    state = [torch.randn(B, H, D, D) * 0.1, torch.rand(B, H, D) * 3] if mem else []
    leaves = [t.to(dtype if i < 2 or dtype == torch.float64 else torch.float32).clone().requires_grad_(True)
              for i, t in enumerate([qkv, y_dot, torch.rand(1, 1, H, 1, 1)] + state)]
    q, k, v = (leaves[0][:, :, :, c].transpose(2, 3) for c in range(3))
    kernels.fused_on_gpu = lambda t: fused
    try:
        y, (M, z) = fn(q, k, v, leaves[1], leaves[2], "linear", n_full, leaves[3:] if mem else None)
    finally:
        kernels.fused_on_gpu = FUSED_ON_GPU
    gen = torch.Generator().manual_seed(1)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.double)).sum() for t in (y, M, z))
    return [y, M, z] + list(torch.autograd.grad(loss, leaves))


FUSED_ON_GPU = kernels.fused_on_gpu


def interpret_check():
    """CPU, Triton's interpreter: v8 against the landed memory_fast, fp32, every output and gradient. (Not bf16: Triton 3.9's
    interpreter returns garbage for tl.dot on bf16 operands, ~1e10 for a 16 x 16 product of unit normals, so the
    landed kernels fail there too; the bf16 error is measured on the GPU, by the check part.)"""
    kernels.KERNEL_CFG = {k: (16, 4, 1, 16 if k in kernels.COLUMN_KERNELS else 32) for k in kernels.KERNEL_CFG}
    global PREFIX_BLOCK, PREFIX_KIND
    worst = 0.0
    # (B, S, H, N, D), n_full (S, or S - 1: a short last segment), a memory passed in, BLOCK (32, 64: several
    # programs a (b, h); 1024: one, half of it masked)
    cases = [((2, 3, 2, 40, 16), 3, True, 128), ((1, 5, 2, 37, 32), 4, True, 64), ((1, 1, 2, 24, 16), 1, False, 1024),
             ((2, 4, 1, 24, 16), 3, True, 32), ((2, 1, 1, 24, 16), 0, True, 32)]
    for kind, (shape, n_full, mem, block) in [(kind, case) for kind in KINDS for case in cases]:
        PREFIX_BLOCK, PREFIX_KIND = block, kind
        want, got = _run(LANDED, True, shape, n_full, mem, torch.float32), _run(memory_fast_v8, True, shape, n_full, mem, torch.float32)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.isfinite(a).all(), (a.shape, b.shape, a.dtype, b.dtype)
            worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
    print(f"v8 vs landed, fp32, worst relative error over every output and gradient: {worst:.2e}")
    assert worst < 1e-5
    return worst


def gpu(out_dir, parts):
    import bench
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "glue_v8.json")
    rows = []

    def add(row):
        print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
        rows.append(row)
        bench.write_rows(path, rows)

    if "alone" in parts:                      # the landed glue compiled alone vs the two kernels, fwd + bwd
        def glue(M0, dM, n_full):
            M_after = M0[:, None] + dM.cumsum(dim=1)
            M_prev = torch.cat([M0[:, None], M_after[:, :-1]], dim=1).to(torch.bfloat16)
            return M_prev, M_after[:, n_full - 1]
        glue_c = torch.compile(glue)
        for B, S in [(4, 8), (1, 32)]:
            M0 = torch.zeros(B, 8, 128, 128, device="cuda", requires_grad=True)
            dM = torch.randn(B, S, 8, 128, 128, device="cuda", requires_grad=True)
            gP, gO = torch.randn(B, S, 8, 128, 128, device="cuda"), torch.randn(B, 8, 128, 128, device="cuda")

            def landed():
                Mp, Mo = glue_c(M0, dM, S)
                torch.autograd.backward([Mp, Mo], [gP.bfloat16(), gO])
                return dM.grad.bfloat16()               # the write's backward casts it (WriteGPU.backward)
            want_p = glue(M0, dM, S)[0]
            for kind, block in [("column", 64), ("column", 128), ("column", 256), ("loop", 256), ("loop", 512),
                                ("loop", 1024), ("loop", 2048)]:
                got_p, got_o = prefix_fwd(M0.detach(), dM.detach(), S, torch.bfloat16, block, kind)
                g_dM, _ = prefix_bwd(gP.bfloat16(), gO, S, torch.bfloat16, block, kind)
                dM.grad = None
                want_g = landed()
                ok = dict(rel_err_Mprev=bench_err(got_p, want_p), rel_err_gdM=bench_err(g_dM, want_g))
                # kernel time (the profiler's sum over the CUDA kernels), not wall time: alone, the landed side's
                # wall time is mostly autograd's Python dispatch, which in training overlaps the GPU's work
                us_landed, k_landed = kernel_us(lambda: (setattr(dM, "grad", None), landed()))
                us_v8, k_v8 = kernel_us(lambda: (prefix_fwd(M0.detach(), dM.detach(), S, torch.bfloat16, block, kind),
                                                 prefix_bwd(gP.bfloat16(), gO, S, torch.bfloat16, block, kind)))
                us_cast, _ = kernel_us(lambda: gP.bfloat16())      # both sides pay this input cast: subtracted
                add(dict(part="alone", B=B, S=S, kind=kind, block=block, us_landed=round(us_landed - us_cast, 1),
                         us_v8=round(us_v8 - us_cast, 1), kernels_landed=k_landed, kernels_v8=k_v8, **ok))
        global PREFIX_KIND, PREFIX_BLOCK
        best = min((r for r in rows if r["part"] == "alone" and r["S"] == 8), key=lambda r: r["us_v8"])
        PREFIX_KIND, PREFIX_BLOCK = best["kind"], best["block"]
        add(dict(part="chosen", kind=PREFIX_KIND, block=PREFIX_BLOCK))
    if "check" in parts:
        model.memory_fast = memory_fast_v8
        for r in bench.check(bench.get_parser().parse_args(["--mode=check"])):
            add(dict(part="check", code="v8", kind=PREFIX_KIND, block=PREFIX_BLOCK, **r))
        model.memory_fast = LANDED
    if "layer" in parts:
        args = bench.get_parser().parse_args(["--mode=layer", "--Ts", "8192", "32768"])
        for T in args.Ts:
            for name, fn, variant in [("local", LANDED, "local"), ("landed", LANDED, "infini-linear-fast"),
                                      ("v8", memory_fast_v8, "infini-linear-fast"), ("landed", LANDED, "infini-linear-fast")]:
                model.memory_fast = fn
                add(dict(part="layer", code=name, **bench.layer_one(args, T, variant)))
                torch.cuda.empty_cache()
        model.memory_fast = LANDED
    if "train" in parts:
        args = bench.get_parser().parse_args(["--mode=train", "--steps=30", "--rounds=5", "--warmup=3"])
        for T in (8192, 32768):
            torch._dynamo.reset()
            runs = []
            for name, fn, variant in [("local", LANDED, "local"), ("landed", LANDED, "infini-linear-fast"),
                                      ("v8", memory_fast_v8, "infini-linear-fast")]:
                model.memory_fast = fn           # read when Attention.forward is traced, as ab_train.py's model.kernels
                run = bench.train_setup(args, T, *bench.parse_variant(variant), variant)
                runs.append(dict(run, fn=fn, name=name))
            per_round = args.steps // args.rounds
            for _ in range(args.rounds):
                for run in runs:
                    model.memory_fast = run["fn"]
                    run["ms"].append(run["time"](per_round))
            local_ms = None
            for run in runs:
                step_ms = sorted(run["ms"])[len(run["ms"]) // 2] / per_round
                local_ms = local_ms or step_ms
                add(dict(run["row"], part="train", variant=run["variant"], code=run["name"], step_ms=round(step_ms, 2),
                         tok_s=round(run["row"]["batch"] * T / step_ms * 1e3), x_local=round(local_ms / step_ms, 4),
                         round_ms=[round(ms / per_round, 2) for ms in run["ms"]]))
            del runs, run
            torch.cuda.empty_cache()
        model.memory_fast = LANDED
    if "profile" in parts:                    # training at T = 8192: kernel time against wall time, landed and v8
        from torch.profiler import ProfilerActivity
        args = bench.get_parser().parse_args(["--mode=train", "--steps=30", "--rounds=5", "--warmup=3"])
        for name, fn in [("landed", LANDED), ("v8", memory_fast_v8), ("landed", LANDED), ("v8", memory_fast_v8)]:
            torch._dynamo.reset()
            model.memory_fast = fn
            run = bench.train_setup(args, 8192, "infini", "linear", "fast", "infini-linear-fast")
            wall = run["time"](6) / 6
            with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
                run["time"](3)
            kern = sorted(((k.key[:70], round(k.device_time_total / 3, 1), k.count // 3) for k in prof.key_averages()
                           if k.device_time_total > 0), key=lambda t: -t[1])
            add(dict(part="profile", code=name, T=8192, step_ms=round(wall, 2), kernel_ms=round(sum(k[1] for k in kern) / 1e3, 2),
                     n_kernels=sum(k[2] for k in kern), kernels=kern))
            del run
            torch.cuda.empty_cache()
        model.memory_fast = LANDED
    return rows


def bench_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def kernel_us(fn, n=20):
    """(us of CUDA kernel time per call of fn, [kernel name, us] per call), from the profiler."""
    from torch.profiler import ProfilerActivity
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    kern = [(k.key[:60], round(k.device_time_total / n, 1)) for k in prof.key_averages() if k.device_time_total > 0]
    return sum(us for _, us in kern), sorted(kern, key=lambda t: -t[1])


if __name__ == "__main__":
    if INTERPRET:
        interpret_check()
    elif len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__.split("\n\n")[-1])
    elif not torch.cuda.is_available():
        raise SystemExit("error: a CUDA GPU is needed (on the CPU: --interpret)")
    else:
        gpu(sys.argv[1], sys.argv[2:] or ["alone", "check", "layer", "train"])
