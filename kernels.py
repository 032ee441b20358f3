"""
The compressive memory's GPU kernels (Triton), for model.memory_fast on a CUDA GPU.

model.py is the memory as equations (compressive_memory) and as PyTorch autograd Functions (memory_fast's
CPU path); this file is the same arithmetic as Triton kernels, for speed, and nothing here is needed to read
the model. Two parts: the delta rule's scan over segments, and the rest of the memory (write, read and their
backwards). Every kernel is tested against the PyTorch code through Triton's interpreter (test_model.py) and
against float64 on the GPU (bench.py --mode=check). Without Triton (CPU-only installs) nothing here runs.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:                      # CPU-only installs: model.py's PyTorch code is the only path
    triton = None


TRITON_KERNELS = True   # False: memory_fast stays in PyTorch on the GPU too (bench.py's "-torch" variants)


# The delta rule's scan is sequential over segments: as a loop of batched D x D matmuls it costs two or
# three tiny kernels a segment, each waiting on the last (32 segments at T = 32768: latency, not work). On a
# GPU with Triton it runs as one kernel each way instead. Each column block of M evolves on its own
# (W_s M_{s-1} mixes rows, not columns), so a program owns D x BN columns of one (batch, head) for all S
# segments, with W_s loaded once per step. Tested equal to the loop of model._DeltaScan (test_model.py,
# Triton's interpreter on the CPU; bench.py --mode=check on the GPU).
if triton is not None:
    @triton.jit
    def _scan_fwd_kernel(M0, DM, W, MP, MOUT, S, H, n_full, D: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
        """M_prev[s] = M_{s-1}; M_s = M_{s-1} + dM_s - W_s M_{s-1} for s < n_full; MOUT = the last state.
        DM, W, MP are (B, S, H, D, D) contiguous, M0 and MOUT (B, H, D, D)."""
        # program i = b H + h owns columns c of M; blk: offsets of those D x BN entries in a D x D matrix,
        # full: offsets of all D x D entries (W_s is needed whole)
        i, r, c = tl.program_id(0), tl.arange(0, D), tl.program_id(1) * BN + tl.arange(0, BN)
        blk, full = r[:, None] * D + c[None, :], r[:, None] * D + r[None, :]
        b, h = i // H, i % H
        m = tl.load(M0 + i * D * D + blk)
        for s in range(S):
            base = ((b * S + s) * H + h) * D * D
            tl.store(MP + base + blk, m)
            if s < n_full:
                m = m + tl.load(DM + base + blk) - tl.dot(tl.load(W + base + full), m, input_precision=PREC)
        tl.store(MOUT + i * D * D + blk, m)

    @triton.jit
    def _scan_bwd_kernel(W, GMP, GM, GDM, GM0, S, H, n_full, D: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
        """Backward of _scan_fwd_kernel: g = the gradient of M_s, from the last segment down; dM_s gets g,
        and g_{s-1} = g_s + dL/dM_prev[s] - W_s^T g_s."""
        i, r, c = tl.program_id(0), tl.arange(0, D), tl.program_id(1) * BN + tl.arange(0, BN)
        blk, full = r[:, None] * D + c[None, :], r[:, None] * D + r[None, :]
        b, h = i // H, i % H
        g = tl.load(GM + i * D * D + blk)
        for t in range(S):
            base = ((b * S + S - 1 - t) * H + h) * D * D
            if S - 1 - t < n_full:
                tl.store(GDM + base + blk, g)
                # W_s^T: W_s loaded row by row (coalesced), transposed in registers
                g = g + tl.load(GMP + base + blk) - tl.dot(tl.trans(tl.load(W + base + full)), g, input_precision=PREC)
            else:
                tl.store(GDM + base + blk, tl.zeros_like(g))
                g = g + tl.load(GMP + base + blk)
        tl.store(GM0 + i * D * D + blk, g)


def scan_on_gpu(t):
    """Whether model._DeltaScan runs as the Triton kernels: a CUDA fp32 state, a head dim tl.dot takes."""
    D = t.shape[-1]
    return (TRITON_KERNELS and triton is not None and t.is_cuda and t.dtype == torch.float32
            and 16 <= D <= 128 and D & (D - 1) == 0 and t.numel() < 2**31)   # (the kernels index in int32)


SCAN_BN = 32   # columns a program: 4 programs a (batch, head) at D = 128, so more of them run at once


def _scan_launch(kernel, *tensors, S, H, n_full):
    """One program per (batch, head) and column block; the kernels' last argument is the (B, H, D, D) state
    they write, whose size gives the number of (batch, head) pairs."""
    D = tensors[-1].shape[-1]
    BN = min(SCAN_BN, D)
    assert D % BN == 0, f"SCAN_BN ({SCAN_BN}) must divide the head dim ({D})"
    prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"   # as baddbmm runs the loop's matmuls
    kernel[(tensors[-1].numel() // (D * D), D // BN)](*tensors, S, H, n_full, D=D, BN=BN, PREC=prec)


def scan_fwd(M0, dM, W, n_full):
    """model._DeltaScan.forward on the GPU: (M_prev, the state after segment n_full); contiguous inputs."""
    B, S, H, D, _ = dM.shape
    M_prev, M = torch.empty_like(dM), torch.empty_like(M0)
    _scan_launch(_scan_fwd_kernel, M0, dM, W, M_prev, M, S=S, H=H, n_full=n_full)
    return M_prev, M


def scan_bwd(W, gM_prev, gM, n_full):
    """model._DeltaScan.backward's scan on the GPU: (the gradient of every dM_s, of M_0); contiguous inputs."""
    B, S, H, D, _ = W.shape
    gdM, g0 = torch.empty_like(W), torch.empty_like(gM)
    _scan_launch(_scan_bwd_kernel, W, gM_prev, gM, gdM, g0, S=S, H=H, n_full=n_full)
    return gdM, g0


# The rest of the memory. Compiled from PyTorch, model.py's _Write, _DeltaW and _ReadAndMix
# make about 35 memory-bound passes over (B, S, H, N, D) tensors a layer (about 50 for the delta rule) and keep
# sigma(Q), sigma(K), a row-major V and the mixed output for the backward (1.07-1.16x local attention's peak
# memory), because the inductor cannot fuse elementwise work into a matmul. These kernels read q, k, v where the
# qkv projection left them (its output, which the backward keeps anyway), apply sigma in registers and do the
# memory's D x D matmuls on tiles of BLOCK rows:
#   _write_fwd_kernel   per segment: sigma(K)^T V and sum sigma(K), or the delta rule's W_s   reads k, v
#   _read_fwd_kernel    per row block: y = g sigma(q) M / (sigma(q) z) + (1 - g) y_dot       q, y_dot -> y
#   _read_bwd_kernel    per segment: dq, dy_dot row by row; dM, dz, dg summed over its rows  dy, q, y_dot
#   _write_bwd_kernel   per row block: dk, dv (+ the delta rule's terms through W_s)          k, v -> dk, dv
#   _delta_dz_kernel    per segment: the delta rule's gradient of z through W_s             k
# About 17 passes for the linear rule, and nothing per token saved but y (1.00-1.07x local's peak). They run at
# 1.7-5x their byte floors (results/issue12/tune_fused.json), so the time saved is smaller than the passes
# suggest (results/issue12/NOTES.md). The retrieval stays fp32 before its division (the PyTorch path rounds it
# to bf16), and the write's backward takes elu'(k) from sigma(k) before its rounding to bf16 (the Functions: after).
# Tested against the PyTorch path through Triton's interpreter on the CPU (test_model.py) and against
# float64 on the GPU, eager and compiled (bench.py --mode=check).
if triton is not None:
    @triton.jit
    def _offs(i, rn, S, H, st_b, st_s, st_h, st_n, D: tl.constexpr):
        """Offsets of rows rn of (batch, segment, head) i = (b S + s) H + h in a (B, S, H, N, D) tensor."""
        b, s, h = i // (S * H), (i // H) % S, i % H
        return b * st_b + s * st_s + h * st_h + rn[:, None] * st_n + tl.arange(0, D)[None, :]

    @triton.jit
    def _sigma(X, off, rows):
        """sigma(x) = ELU + 1 of a tile, in fp32 and rounded to X's dtype (the matmul operand); zero rows past N."""
        x = tl.load(X + off, mask=rows[:, None], other=0.0).to(tl.float32)
        s = tl.where(rows[:, None], tl.where(x > 0, x + 1.0, tl.exp(x)), 0.0)
        return s, s.to(X.dtype.element_ty)

    @triton.jit
    def _write_fwd_kernel(K, V, Z, OUT, OUTZ, S, H, N, PER, k_b, k_s, k_h, k_n, v_b, v_s, v_h, v_n,
                          EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, DELTA: tl.constexpr, PREC: tl.constexpr):
        """OUT[i, j] = sigma(K)^T V (DELTA: sigma(K)^T diag(1 / sigma(K) z) sigma(K), V unused) over rows j PER ..
        (j + 1) PER of segment-head i, and OUTZ[i, j] their sum of sigma(K) (DELTA: zeros, unused)."""
        i, j, rd = tl.program_id(0), tl.program_id(1), tl.arange(0, D)
        acc, zacc = tl.zeros((D, D), tl.float32), tl.zeros((D,), tl.float32)
        if DELTA:
            z = tl.load(Z + i * D + rd)
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            s32, sk = _sigma(K, _offs(i, rn, S, H, k_b, k_s, k_h, k_n, D), rows)
            if DELTA:
                raw = tl.sum(sk.to(tl.float32) * z[None, :], axis=1)
                right = (sk.to(tl.float32) / tl.maximum(raw, EPS)[:, None]).to(sk.dtype)
            else:
                right = tl.load(V + _offs(i, rn, S, H, v_b, v_s, v_h, v_n, D), mask=rows[:, None], other=0.0)
                zacc += tl.sum(sk.to(tl.float32), axis=0)
            acc += tl.dot(tl.trans(sk), right, input_precision=PREC)
        slot = i * tl.num_programs(1) + j
        tl.store(OUT + slot * D * D + rd[:, None] * D + rd[None, :], acc)
        tl.store(OUTZ + slot * D + rd, zacc)

    @triton.jit
    def _read_fwd_kernel(Q, YD, Y, MC, Z, G, S, H, N, q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n,
                         y_b, y_s, y_h, y_n, EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """_ReadAndMix.forward for rows tile * BLOCK .. of segment-head i: y = g sigma(q) M / (sigma(q) z) +
        (1 - g) y_dot, the retrieval in fp32 before its division."""
        i, rd = tl.program_id(0), tl.arange(0, D)
        rn = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        rows = rn < N
        _, sq = _sigma(Q, _offs(i, rn, S, H, q_b, q_s, q_h, q_n, D), rows)
        raw = tl.sum(sq.to(tl.float32) * tl.load(Z + i * D + rd)[None, :], axis=1)     # sigma(q) z_{s-1}
        a = tl.dot(sq, tl.load(MC + i * D * D + rd[:, None] * D + rd[None, :]), input_precision=PREC)
        g = tl.load(G + i % H)
        yd = tl.load(YD + _offs(i, rn, S, H, d_b, d_s, d_h, d_n, D), mask=rows[:, None], other=0.0)
        y = g * a / tl.maximum(raw, EPS)[:, None] + (1.0 - g) * yd.to(tl.float32)
        tl.store(Y + _offs(i, rn, S, H, y_b, y_s, y_h, y_n, D), y.to(Y.dtype.element_ty), mask=rows[:, None])

    @triton.jit
    def _read_bwd_kernel(DY, Q, YD, MC, Z, G, DQ, DYD, DMP, DZP, DGP, S, H, N, PER, y_b, y_s, y_h, y_n,
                         q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n, o_b, o_s, o_h, o_n,
                         EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """_ReadAndMix.backward over rows j PER .. (j + 1) PER of segment-head i. dq and dy_dot share
        strides (o_*); dM, dz, dg of the rows go to slot (i, j), summed after (no atomics)."""
        i, j, rd = tl.program_id(0), tl.program_id(1), tl.arange(0, D)
        mt = tl.load(MC + i * D * D + rd[None, :] * D + rd[:, None])                   # M^T
        z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
        dm, dz, dg = tl.zeros((D, D), tl.float32), tl.zeros((D,), tl.float32), tl.zeros((BLOCK,), tl.float32)
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            off_q, off_y = _offs(i, rn, S, H, q_b, q_s, q_h, q_n, D), _offs(i, rn, S, H, y_b, y_s, y_h, y_n, D)
            _, sq = _sigma(Q, off_q, rows)
            s32 = sq.to(tl.float32)
            raw = tl.sum(s32 * z[None, :], axis=1)
            den = tl.maximum(raw, EPS)
            dy = tl.load(DY + off_y, mask=rows[:, None], other=0.0).to(tl.float32)
            u = (dy / den[:, None]).to(sq.dtype)
            gm = tl.dot(u, mt, input_precision=PREC)                                   # dy M^T / den
            dya = tl.sum(s32 * gm, axis=1)                                              # dy . A_mem per token
            dden = tl.where(raw >= EPS, -g * dya / den, 0.0)                           # none through the floor
            dq = (g * gm + dden[:, None] * z[None, :]) * tl.minimum(s32, 1.0)          # elu'(x) = min(sigma(x), 1)
            off_o = _offs(i, rn, S, H, o_b, o_s, o_h, o_n, D)
            tl.store(DQ + off_o, dq.to(DQ.dtype.element_ty), mask=rows[:, None])
            tl.store(DYD + off_o, ((1.0 - g) * dy).to(DYD.dtype.element_ty), mask=rows[:, None])
            dm += tl.dot(tl.trans(sq), u, input_precision=PREC)
            dz += tl.sum(dden[:, None] * s32, axis=0)
            yd = tl.load(YD + _offs(i, rn, S, H, d_b, d_s, d_h, d_n, D), mask=rows[:, None], other=0.0)
            dg += dya - tl.sum(dy * yd.to(tl.float32), axis=1)
        slot = i * tl.num_programs(1) + j
        tl.store(DMP + slot * D * D + rd[:, None] * D + rd[None, :], g * dm)
        tl.store(DZP + slot * D + rd, dz)
        tl.store(DGP + slot, tl.sum(dg, axis=0))

    @triton.jit
    def _write_bwd_kernel(K, V, GDM, GZS, GS, Z, DK, DV, S, H, N, k_b, k_s, k_h, k_n, v_b, v_s, v_h, v_n,
                          o_b, o_s, o_h, o_n,
                          EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, DELTA: tl.constexpr, PREC: tl.constexpr):
        """dsigma(K) = V dM^T + dz (DELTA: + the gradient through W_s, with GS = gW + gW^T), dk = dsigma(K)
        elu'(k); dV = sigma(K) dM. dk and dv are laid out alike (strides o_*)."""
        i, rd = tl.program_id(0), tl.arange(0, D)
        rn = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        rows = rn < N
        off_k, off_v = _offs(i, rn, S, H, k_b, k_s, k_h, k_n, D), _offs(i, rn, S, H, v_b, v_s, v_h, v_n, D)
        s32, sk = _sigma(K, off_k, rows)
        v = tl.load(V + off_v, mask=rows[:, None], other=0.0)
        gdm = tl.load(GDM + i * D * D + rd[:, None] * D + rd[None, :]).to(sk.dtype)
        dsk = tl.dot(v, tl.trans(gdm), input_precision=PREC) + tl.load(GZS + i * D + rd)[None, :]
        off_o = _offs(i, rn, S, H, o_b, o_s, o_h, o_n, D)
        tl.store(DV + off_o, tl.dot(sk, gdm, input_precision=PREC).to(DV.dtype.element_ty), mask=rows[:, None])
        if DELTA:
            # W_s = sum_n sigma(k_n)^T sigma(k_n) / den_n, den_n = sigma(k_n) z_{s-1}:
            # dsigma(k_n) = Y_n / den_n - (Y_n . sigma(k_n)) / (2 den_n^2) z_{s-1},  Y = sigma(K) (gW + gW^T)
            z, sf = tl.load(Z + i * D + rd), sk.to(tl.float32)
            raw = tl.sum(sf * z[None, :], axis=1)
            den = tl.maximum(raw, EPS)
            y = tl.dot(sk, tl.load(GS + i * D * D + rd[:, None] * D + rd[None, :]), input_precision=PREC)
            dden = tl.where(raw >= EPS, -0.5 * tl.sum(y * sf, axis=1) / (den * den), 0.0)
            dsk += y / den[:, None] + dden[:, None] * z[None, :]
        tl.store(DK + off_o, (dsk * tl.minimum(s32, 1.0)).to(DK.dtype.element_ty), mask=rows[:, None])

    @triton.jit
    def _delta_dz_kernel(K, GS, Z, OUT, S, H, N, PER, k_b, k_s, k_h, k_n,
                         EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """The gradient of z_{s-1} through W_s: sum over rows j PER .. (j + 1) PER of dden_n sigma(k_n)."""
        i, j, rd = tl.program_id(0), tl.program_id(1), tl.arange(0, D)
        z, gs = tl.load(Z + i * D + rd), tl.load(GS + i * D * D + rd[:, None] * D + rd[None, :])
        acc = tl.zeros((D,), tl.float32)
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            _, sk = _sigma(K, _offs(i, rn, S, H, k_b, k_s, k_h, k_n, D), rows)
            sf = sk.to(tl.float32)
            raw = tl.sum(sf * z[None, :], axis=1)
            den = tl.maximum(raw, EPS)
            y = tl.dot(sk, gs, input_precision=PREC)
            dden = tl.where(raw >= EPS, -0.5 * tl.sum(y * sf, axis=1) / (den * den), 0.0)
            acc += tl.sum(dden[:, None] * sf, axis=0)
        tl.store(OUT + (i * tl.num_programs(1) + j) * D + rd, acc)


def fused_on_gpu(q):
    """Whether memory_fast runs as the Triton kernels: CUDA, bf16 or fp32 (fp16 cannot hold 1 / EPS), a head dim
    tl.dot takes, and offsets that fit the kernels' int32 arithmetic: q's span (the qkv buffer) and the
    per-segment D x D partial sums."""
    B, S, H, N, D = q.shape
    span = 1 + sum((n - 1) * st for n, st in zip(q.shape, q.stride()))
    states = B * S * H * D * D * max(cfg[3] for cfg in KERNEL_CFG.values())
    return (TRITON_KERNELS and triton is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float32)
            and 16 <= D <= 128 and D & (D - 1) == 0 and max(span, states) < 2**31)


# per kernel: (rows a tile, warps, pipeline stages, programs a segment); the row-block kernels run one
# program per tile, so the last entry is theirs only in name
KERNEL_CFG = dict(write_fwd=(64, 4, 2, 2), delta_w=(32, 8, 3, 2), read_fwd=(64, 4, 1, 1), read_bwd=(32, 4, 1, 2),
                  write_bwd=(64, 8, 1, 1), delta_dz=(32, 4, 1, 4))   # (the fastest in results/issue12/tune_fused.json)


def _st(t):
    """The (B, S, H, N) strides of a (B, S, H, N, D) tensor whose last stride is 1."""
    assert t.stride(-1) == 1
    return t.stride()[:4]


def _prec(t):
    return "tf32" if t.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _like_qkv(t):
    """An empty (B, S, N, H, D) tensor, as the qkv projection lays out q, k, v, and its (B, S, H, N, D) view
    (the kernels are handed the tensor itself and the view's strides)."""
    B, S, H, N, D = t.shape
    out = t.new_empty(B, S, N, H, D)
    return out, out.transpose(2, 3)


def _split(name, N):
    """Rows each program of a per-segment kernel covers (a multiple of its tile), and programs a segment."""
    block, split = KERNEL_CFG[name][0], KERNEL_CFG[name][3]
    per = triton.cdiv(triton.cdiv(N, split), block) * block
    return per, triton.cdiv(N, per)


def _launch(kernel, name, t, n, *args, eps, **kw):
    """kernel on (B S H, n) programs for the (B, S, H, N, D) tensor t, configured by KERNEL_CFG[name]; eps is
    the normaliser's floor (model.EPS)."""
    B, S, H, N, D = t.shape
    block, warps, stages, _ = KERNEL_CFG[name]
    kernel[(B * S * H, n)](*args, **kw, EPS=eps, D=D, BLOCK=block, PREC=_prec(t), num_warps=warps, num_stages=stages)


def _segment_sums(k, v, eps, z=None):
    """(sigma(K)^T V, sum sigma(K)) per segment, or, given z_{s-1}, W_s. fp32 (B, S, H, D, D), (B, S, H, D)."""
    B, S, H, N, D = k.shape
    name = "write_fwd" if z is None else "delta_w"
    per, n = _split(name, N)
    out, outz = k.new_empty(B, S, H, n, D, D, dtype=torch.float32), k.new_empty(B, S, H, n, D, dtype=torch.float32)
    v = k if v is None else v
    _launch(_write_fwd_kernel, name, k, n, k, v, outz if z is None else z, out, outz, S, H, N, per,
            *_st(k), *_st(v), eps=eps, DELTA=z is not None)
    return out.sum(3), outz.sum(3)


def _read_fwd(q, Mc, z, y_dot, g, eps):
    """y = g sigma(q) M / (sigma(q) z) + (1 - g) y_dot, laid out as wo's input."""
    B, S, H, N, D = q.shape
    out, y = _like_qkv(y_dot)
    _launch(_read_fwd_kernel, "read_fwd", q, triton.cdiv(N, KERNEL_CFG["read_fwd"][0]), q, y_dot, out, Mc, z, g,
            S, H, N, *_st(q), *_st(y_dot), *_st(y), eps=eps)
    return y


def _read_bwd(dy, q, Mc, z, y_dot, g, eps):
    """dq, dy_dot, dM, dz, dg of _read_fwd (each segment's partial sums added here)."""
    B, S, H, N, D = q.shape
    per, n = _split("read_bwd", N)
    (dq_out, dq), (dyd_out, dyd) = _like_qkv(q), _like_qkv(y_dot)
    dmp, dzp, dgp = z.new_empty(B, S, H, n, D, D), z.new_empty(B, S, H, n, D), z.new_empty(B, S, H, n)
    _launch(_read_bwd_kernel, "read_bwd", q, n, dy, q, y_dot, Mc, z, g, dq_out, dyd_out, dmp, dzp, dgp, S, H, N, per,
            *_st(dy), *_st(q), *_st(y_dot), *_st(dq), eps=eps)
    return dq, dyd, dmp.sum(3), dzp.sum(3), dgp.sum((0, 1, 3)).view(1, 1, H, 1, 1)


def _delta_dz(k, gs, z_prev, eps):
    """The gradient of z_{s-1} through W_s, (B, S, H, D), given gs = gW + gW^T in k's dtype."""
    B, S, H, N, D = k.shape
    per, n = _split("delta_dz", N)
    out = z_prev.new_empty(B, S, H, n, D)
    _launch(_delta_dz_kernel, "delta_dz", k, n, k, gs, z_prev, out, S, H, N, per, *_st(k), eps=eps)
    return out.sum(3)


def _write_bwd(k, v, g_dM, g_zs, gs, z_prev, delta, eps):
    """dk, dv of the write: from the gradients of sigma(K)^T V, of sum sigma(K) and (delta) of W_s."""
    B, S, H, N, D = k.shape
    (dk_out, dk), (dv_out, dv) = _like_qkv(k), _like_qkv(v)
    _launch(_write_bwd_kernel, "write_bwd", k, triton.cdiv(N, KERNEL_CFG["write_bwd"][0]), k, v, g_dM, g_zs, gs,
            z_prev, dk_out, dv_out, S, H, N, *_st(k), *_st(v), *_st(dk), eps=eps, DELTA=delta)
    return dk, dv


class WriteGPU(torch.autograd.Function):
    """The write side of eqs. 8-9 in Triton: from k, v (B, S, H, N, D) and z_0 (B, H, D) to sigma(K)^T V
    per segment, z_s after every segment and, for the delta rule, W_s (else an empty tensor). One function,
    because W_s depends on z_{s-1}: its backward sums the gradient of z through W_s before dk."""

    @staticmethod
    def forward(ctx, k, v, z0, delta, eps):
        dM, zs = _segment_sums(k, v, eps)
        z_after = z0[:, None] + zs.cumsum(dim=1)
        z_prev = torch.cat([z0[:, None], z_after[:, :-1]], dim=1).contiguous()
        W = _segment_sums(k, None, eps, z_prev)[0] if delta else dM.new_empty(0)
        ctx.save_for_backward(k, v, z_prev)
        ctx.delta, ctx.eps = delta, eps
        return dM, z_after, W

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_dM, g_z, g_W):
        k, v, z_prev = ctx.saved_tensors
        g_z, g_z0 = g_z.clone(), torch.zeros_like(z_prev[:, 0])
        gs = (g_W + g_W.transpose(-1, -2)).to(k.dtype).contiguous() if ctx.delta else g_dM   # (unused: linear)
        if ctx.delta:                             # the gradient of z_{s-1} through W_s goes to z_{s-1}'s parts
            gzp = _delta_dz(k, gs, z_prev, ctx.eps)
            g_z[:, :-1] += gzp[:, 1:]
            g_z0 += gzp[:, 0]
        g_zs = g_z.flip(1).cumsum(dim=1).flip(1)                               # z_s = z_0 + sum_{t <= s} zs_t
        dk, dv = _write_bwd(k, v, g_dM.contiguous(), g_zs.contiguous(), gs, z_prev, ctx.delta, ctx.eps)
        return dk, dv, g_z0 + g_z.sum(1), None, None


class ReadGPU(torch.autograd.Function):
    """model._ReadAndMix in Triton. Saves nothing per token of its own: q is a view of the qkv projection's output,
    which stays alive anyway (SDPA saves v, a view of the same buffer), and y_dot is SDPA's output."""

    @staticmethod
    def forward(ctx, q, M, z, y_dot, g, eps):
        H = q.shape[2]
        ctx.g_shape, ctx.eps = g.shape, eps
        Mc, z, g = M.to(q.dtype).contiguous(), z.contiguous(), g.expand(1, 1, H, 1, 1).reshape(H).contiguous()
        ctx.save_for_backward(q, Mc, z, y_dot, g)
        return _read_fwd(q, Mc, z, y_dot, g, eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, Mc, z, y_dot, g = ctx.saved_tensors
        dq, dyd, dM, dz, dg = _read_bwd(dy if dy.stride(-1) == 1 else dy.contiguous(), q, Mc, z, y_dot, g, ctx.eps)
        return dq, dM, dz, dyd, dg.sum_to_size(ctx.g_shape), None
