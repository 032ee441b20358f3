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
# memory's D x D matmuls on tiles of BLOCK rows. Two shapes of program:
#   a column block: BC columns of a segment's D x D sum over all its rows (the sum needs no second pass, and
#     the accumulator is D x BC, not D x D: fewer registers, more programs at once)
#   a row chunk: PER rows of a segment, a tile at a time, loading the segment's D x D operands once
#   _write_fwd_kernel    columns: sigma(K)^T V and sum sigma(K), or the delta rule's W_s            reads k, v
#   _read_fwd_kernel     rows: y = g sigma(q) M / (sigma(q) z) + (1 - g) y_dot                       q, y_dot -> y
#   _read_bwd_kernel     rows: dq, dy_dot; dz, dg summed over the chunk                          dy, q, y_dot
#   _read_dm_kernel      columns: dM = g sigma(Q)^T diag(1 / den) dY                                     q, dy
#   _write_bwd_kernel    rows: the qkv projection's gradient: the write's dk, dv (+ the delta rule's terms
#                        through W_s) plus SDPA's gradients through RoPE and the read's dq     k, v, 4 grads -> dqkv
#   _delta_dz_kernel     rows: the delta rule's gradient of z through W_s, summed over the chunk            k
# About 16 passes for the linear rule (the read's dM reads q and dy again: fewer registers, no partial sums),
# and nothing per token saved but y (1.03-1.04x local's peak). The retrieval
# stays fp32 before its division (the PyTorch path rounds it to bf16), and the write's backward takes elu'(k)
# from sigma(k) before its rounding to bf16 (the Functions: after). Tested against the PyTorch path through
# Triton's interpreter on the CPU (test_model.py) and against float64 on the GPU, eager and compiled
# (bench.py --mode=check). Timings and the choices they made: results/issue12/NOTES.md.
if triton is not None:
    @triton.jit
    def _offs(i, rn, rc, S, H, st_b, st_s, st_h, st_n):
        """Offsets of rows rn, columns rc of (batch, segment, head) i = (b S + s) H + h in a (B, S, H, N, D) tensor."""
        b, s, h = i // (S * H), (i // H) % S, i % H
        return b * st_b + s * st_s + h * st_h + rn[:, None] * st_n + rc[None, :]

    @triton.jit
    def _elu1(x, rows):
        """sigma(x) = ELU + 1 of a raw tile, in fp32; zero rows past N."""
        x = x.to(tl.float32)
        return tl.where(rows[:, None], tl.where(x > 0, x + 1.0, tl.exp(x)), 0.0)

    @triton.jit
    def _sigma(X, off, rows):
        """sigma of a tile loaded from X, in fp32 and rounded to X's dtype (the matmul operand)."""
        s = _elu1(tl.load(X + off, mask=rows[:, None], other=0.0), rows)
        return s, s.to(X.dtype.element_ty)

    @triton.jit
    def _prefetch(Q, YD, i, n0, end, N, rd, S, H, q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n, BLOCK: tl.constexpr):
        """Raw tiles of q and y_dot at rows n0 .. n0 + BLOCK of segment-head i, zero past N or the chunk's end."""
        rn = n0 + tl.arange(0, BLOCK)
        ok = ((rn < N) & (rn < end))[:, None]
        return (tl.load(Q + _offs(i, rn, rd, S, H, q_b, q_s, q_h, q_n), mask=ok, other=0.0),
                tl.load(YD + _offs(i, rn, rd, S, H, d_b, d_s, d_h, d_n), mask=ok, other=0.0))

    @triton.jit
    def _delta_terms(sk, z, gs, EPS: tl.constexpr, PREC: tl.constexpr):
        """Per row n of a tile, the terms of W_s's backward: W_s = sum_n sigma(k_n)^T sigma(k_n) / den_n with
        den_n = sigma(k_n) z_{s-1}, so dsigma(k_n) = Y_n / den_n + dden_n z_{s-1}, Y = sigma(K) (gW + gW^T) and
        dden_n = -(Y_n . sigma(k_n)) / (2 den_n^2), none through the floor. (sigma(K) in fp32, Y, den, dden.)"""
        sf = sk.to(tl.float32)
        raw = tl.sum(sf * z[None, :], axis=1)
        den = tl.maximum(raw, EPS)
        y = tl.dot(sk, gs, input_precision=PREC)
        return sf, y, den, tl.where(raw >= EPS, -0.5 * tl.sum(y * sf, axis=1) / (den * den), 0.0)

    @triton.jit
    def _write_fwd_kernel(K, V, Z, OUT, OUTZ, S, H, N, NC, k_b, k_s, k_h, k_n, v_b, v_s, v_h, v_n,
                          EPS: tl.constexpr, D: tl.constexpr, BC: tl.constexpr, BLOCK: tl.constexpr,
                          DELTA: tl.constexpr, PREC: tl.constexpr):
        """Columns c of OUT[i] = sigma(K)^T V over the N rows of segment-head i, and OUTZ[i] = sum sigma(K) (stored
        by the first column block). DELTA: W_s = sigma(K)^T diag(1 / sigma(K) z) sigma(K) instead, V and OUTZ unused."""
        i, cb, rd = tl.program_id(0) // NC, tl.program_id(0) % NC, tl.arange(0, D)
        rc = cb * BC + tl.arange(0, BC)
        # sum sigma(K) as a dot too, against a one-hot column: a tl.sum over a tile's rows would cross warps
        # through shared memory and a barrier every tile (77 -> 53 us alone: results/issue12/tune_v7.json)
        acc, zacc = tl.zeros((D, BC), tl.float32), tl.zeros((D, 16), tl.float32)
        if DELTA:
            z = tl.load(Z + i * D + rd)
        for n0 in range(0, N, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            _, sk = _sigma(K, _offs(i, rn, rd, S, H, k_b, k_s, k_h, k_n), rows)
            if DELTA:
                den = tl.maximum(tl.sum(sk.to(tl.float32) * z[None, :], axis=1), EPS)
                if BC == D:
                    right = sk
                else:                                # the columns of sigma(K) this program owns
                    right = _sigma(K, _offs(i, rn, rc, S, H, k_b, k_s, k_h, k_n), rows)[1]
                right = (right.to(tl.float32) / den[:, None]).to(sk.dtype)
            else:
                right = tl.load(V + _offs(i, rn, rc, S, H, v_b, v_s, v_h, v_n), mask=rows[:, None], other=0.0)
                one = (rows[:, None] & (tl.arange(0, 16)[None, :] == 0)).to(sk.dtype)
                zacc += tl.dot(tl.trans(sk), one, input_precision=PREC)         # column 0: sum sigma(K)
            acc += tl.dot(tl.trans(sk), right, input_precision=PREC)
        tl.store(OUT + i * D * D + rd[:, None] * D + rc[None, :], acc)
        if not DELTA:
            if cb == 0:
                tl.store(OUTZ + i * D + rd, tl.sum(zacc, axis=1))

    @triton.jit
    def _read_fwd_kernel(Q, YD, Y, MC, Z, G, S, H, N, PER, NJ, q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n,
                         y_b, y_s, y_h, y_n, EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """_ReadAndMix.forward for rows j PER .. (j + 1) PER of segment-head i: y = g sigma(q) M / (sigma(q) z) +
        (1 - g) y_dot, the retrieval in fp32 before its division."""
        i, j, rd = tl.program_id(0) // NJ, tl.program_id(0) % NJ, tl.arange(0, D)
        m = tl.load(MC + i * D * D + rd[:, None] * D + rd[None, :])
        z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
        # the next tile's q and y_dot are loaded before this tile's arithmetic, so that their latency overlaps it
        # (82 -> 78 us alone, at the one pipeline stage that was fastest without it: results/issue12/tune_v7.json)
        nq, nyd = _prefetch(Q, YD, i, j * PER, j * PER + PER, N, rd, S, H, q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n, BLOCK)
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            sq, yd = _elu1(nq, rows).to(Q.dtype.element_ty), nyd
            nq, nyd = _prefetch(Q, YD, i, n0 + BLOCK, j * PER + PER, N, rd, S, H, q_b, q_s, q_h, q_n,
                                d_b, d_s, d_h, d_n, BLOCK)
            raw = tl.sum(sq.to(tl.float32) * z[None, :], axis=1)                       # sigma(q) z_{s-1}
            a = tl.dot(sq, m, input_precision=PREC)
            y = g * a / tl.maximum(raw, EPS)[:, None] + (1.0 - g) * yd.to(tl.float32)
            tl.store(Y + _offs(i, rn, rd, S, H, y_b, y_s, y_h, y_n), y.to(Y.dtype.element_ty), mask=rows[:, None])

    @triton.jit
    def _read_bwd_kernel(DY, Q, YD, MC, Z, G, DQ, DYD, DZP, DGP, S, H, N, PER, NJ, y_b, y_s, y_h, y_n,
                         q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n, o_b, o_s, o_h, o_n,
                         EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """_ReadAndMix.backward but dM, for rows j PER .. (j + 1) PER of segment-head i: dq and dy_dot (sharing
        strides o_*); the rows' dz and dg go to slot (i, j), summed after (no atomics)."""
        i, j, rd = tl.program_id(0) // NJ, tl.program_id(0) % NJ, tl.arange(0, D)
        m = tl.load(MC + i * D * D + rd[:, None] * D + rd[None, :])
        z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
        dz, dg = tl.zeros((D,), tl.float32), tl.zeros((BLOCK,), tl.float32)
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            _, sq = _sigma(Q, _offs(i, rn, rd, S, H, q_b, q_s, q_h, q_n), rows)
            s32 = sq.to(tl.float32)
            raw = tl.sum(s32 * z[None, :], axis=1)
            den = tl.maximum(raw, EPS)
            dy = tl.load(DY + _offs(i, rn, rd, S, H, y_b, y_s, y_h, y_n), mask=rows[:, None], other=0.0).to(tl.float32)
            gm = tl.dot((dy / den[:, None]).to(sq.dtype), tl.trans(m), input_precision=PREC)   # dy M^T / den
            dya = tl.sum(s32 * gm, axis=1)                                              # dy . A_mem per token
            dden = tl.where(raw >= EPS, -g * dya / den, 0.0)                           # none through the floor
            dq = (g * gm + dden[:, None] * z[None, :]) * tl.minimum(s32, 1.0)          # elu'(x) = min(sigma(x), 1)
            off_o = _offs(i, rn, rd, S, H, o_b, o_s, o_h, o_n)
            tl.store(DQ + off_o, dq.to(DQ.dtype.element_ty), mask=rows[:, None])
            tl.store(DYD + off_o, ((1.0 - g) * dy).to(DYD.dtype.element_ty), mask=rows[:, None])
            dz += tl.sum(dden[:, None] * s32, axis=0)
            yd = tl.load(YD + _offs(i, rn, rd, S, H, d_b, d_s, d_h, d_n), mask=rows[:, None], other=0.0)
            dg += dya - tl.sum(dy * yd.to(tl.float32), axis=1)
        tl.store(DZP + tl.program_id(0) * D + rd, dz)
        tl.store(DGP + tl.program_id(0), tl.sum(dg, axis=0))

    @triton.jit
    def _read_dm_kernel(Q, DY, Z, G, OUT, S, H, N, NC, q_b, q_s, q_h, q_n, y_b, y_s, y_h, y_n,
                        EPS: tl.constexpr, D: tl.constexpr, BC: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """Columns c of the read's dM[i] = g sigma(Q)^T diag(1 / den) dY over the N rows of segment-head i
        (u = dy / den rounded as _read_bwd_kernel's matmul operand)."""
        i, cb, rd = tl.program_id(0) // NC, tl.program_id(0) % NC, tl.arange(0, D)
        rc = cb * BC + tl.arange(0, BC)
        z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
        acc = tl.zeros((D, BC), tl.float32)
        for n0 in range(0, N, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            _, sq = _sigma(Q, _offs(i, rn, rd, S, H, q_b, q_s, q_h, q_n), rows)
            den = tl.maximum(tl.sum(sq.to(tl.float32) * z[None, :], axis=1), EPS)
            dy = tl.load(DY + _offs(i, rn, rc, S, H, y_b, y_s, y_h, y_n), mask=rows[:, None], other=0.0)
            acc += tl.dot(tl.trans(sq), (dy.to(tl.float32) / den[:, None]).to(sq.dtype), input_precision=PREC)
        tl.store(OUT + i * D * D + rd[:, None] * D + rc[None, :], g * acc)

    @triton.jit
    def _rope_bwd(G, o, op, cos, sin_p, sgn, rows):
        """The gradient through rotate-half RoPE (model.apply_rope) of a tile of G: g cos + rot^T(g sin), where
        rot^T takes column d + D/2 for d < D/2 and minus column d - D/2 past it (op: the partner columns' offsets)."""
        g = tl.load(G + o, mask=rows[:, None], other=0.0).to(tl.float32)
        gp = tl.load(G + op, mask=rows[:, None], other=0.0).to(tl.float32)
        return g * cos + sgn[None, :] * gp * sin_p

    @triton.jit
    def _write_bwd_kernel(QKV, GQ, GQR, GKR, GV, COS, SIN, GDM, GZS, GS, Z, OUT, S, H, N, PER, NJ,
                          x_b, x_s, x_h, x_n, g_b, g_s, g_h, g_n,
                          EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, DELTA: tl.constexpr, PREC: tl.constexpr):
        """The qkv projection's whole gradient, rows j PER .. (j + 1) PER of segment-head i, into OUT laid out as QKV
        ((B, S, N, 3, H, D), strides x_*, q, k, v H D apart): the write's backward, dsigma(K) = V dM^T + dz (DELTA:
        + the gradient through W_s, GS = gW + gW^T), dk = dsigma(K) elu'(k), dv = sigma(K) dM; plus SDPA's gradients
        of q and k through RoPE (GQR, GKR) and of v (GV), and the read's of q (GQ), all four (B, S, N, H, D) alike
        (strides g_*). Adding them here saves writing the memory's dk, dv and reading them back in another kernel."""
        i, j, rd = tl.program_id(0) // NJ, tl.program_id(0) % NJ, tl.arange(0, D)
        HD, rp = H * D, (rd + D // 2) % D                                # rp: rotate-half's partner columns
        sgn = tl.where(rd < D // 2, 1.0, -1.0)
        gdm, gzs = tl.load(GDM + i * D * D + rd[:, None] * D + rd[None, :]), tl.load(GZS + i * D + rd)
        if DELTA:
            z, gs = tl.load(Z + i * D + rd), tl.load(GS + i * D * D + rd[:, None] * D + rd[None, :])
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            x = _offs(i, rn, rd, S, H, x_b, x_s, x_h, x_n)
            o, op = _offs(i, rn, rd, S, H, g_b, g_s, g_h, g_n), _offs(i, rn, rp, S, H, g_b, g_s, g_h, g_n)
            cos = tl.load(COS + rn[:, None] * D + rd[None, :], mask=rows[:, None], other=0.0).to(tl.float32)
            sin_p = tl.load(SIN + rn[:, None] * D + rp[None, :], mask=rows[:, None], other=0.0).to(tl.float32)
            s32, sk = _sigma(QKV + HD, x, rows)
            v = tl.load(QKV + 2 * HD + x, mask=rows[:, None], other=0.0)
            dsk = tl.dot(v, tl.trans(gdm), input_precision=PREC) + gzs[None, :]
            dv = tl.dot(sk, gdm, input_precision=PREC) + tl.load(GV + o, mask=rows[:, None], other=0.0).to(tl.float32)
            tl.store(OUT + 2 * HD + x, dv.to(OUT.dtype.element_ty), mask=rows[:, None])
            if DELTA:                                # + the gradient through W_s
                _, y, den, dden = _delta_terms(sk, z, gs, EPS, PREC)
                dsk += y / den[:, None] + dden[:, None] * z[None, :]
            dk = dsk * tl.minimum(s32, 1.0) + _rope_bwd(GKR, o, op, cos, sin_p, sgn, rows)
            tl.store(OUT + HD + x, dk.to(OUT.dtype.element_ty), mask=rows[:, None])
            dq = tl.load(GQ + o, mask=rows[:, None], other=0.0).to(tl.float32) + _rope_bwd(GQR, o, op, cos, sin_p, sgn, rows)
            tl.store(OUT + x, dq.to(OUT.dtype.element_ty), mask=rows[:, None])

    @triton.jit
    def _delta_dz_kernel(K, GS, Z, OUT, S, H, N, PER, NJ, k_b, k_s, k_h, k_n,
                         EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr):
        """The gradient of z_{s-1} through W_s: sum over rows j PER .. (j + 1) PER of dden_n sigma(k_n), to slot (i, j)."""
        i, j, rd = tl.program_id(0) // NJ, tl.program_id(0) % NJ, tl.arange(0, D)
        z, gs = tl.load(Z + i * D + rd), tl.load(GS + i * D * D + rd[:, None] * D + rd[None, :])
        acc = tl.zeros((D,), tl.float32)
        for n0 in range(j * PER, j * PER + PER, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            rows = rn < N
            _, sk = _sigma(K, _offs(i, rn, rd, S, H, k_b, k_s, k_h, k_n), rows)
            sf, _, _, dden = _delta_terms(sk, z, gs, EPS, PREC)
            acc += tl.sum(dden[:, None] * sf, axis=0)
        tl.store(OUT + tl.program_id(0) * D + rd, acc)


def fused_on_gpu(q):
    """Whether memory_fast runs as the Triton kernels: CUDA, bf16 or fp32 (fp16 cannot hold 1 / EPS), a head dim
    tl.dot takes, and offsets that fit the kernels' int32 arithmetic: the qkv buffer's span (q's, and k, v H D and
    2 H D past it) and the (B, S, H, D, D) sums."""
    B, S, H, N, D = q.shape
    span = 1 + sum((n - 1) * st for n, st in zip(q.shape, q.stride())) + 2 * H * D
    return (TRITON_KERNELS and triton is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float32)
            and 16 <= D <= 128 and D & (D - 1) == 0 and max(span, B * S * H * D * D) < 2**31)


# per kernel: (rows a tile, warps, pipeline stages, columns a program (column-block kernels: at most D) or rows a
# program (row-chunk kernels: a multiple of the tile)). The fastest alone on the 300m layer's tensors on an H200
# (results/issue12/tune_cols.json, tune_rows.json; write_fwd with its one-hot dot: tune_v7.json; write_bwd at 32-row
# tiles, 127 -> 121 us and no spill: tune_v7_h5.json; write_bwd as the qkv gradient, 329 -> 247 us linear and
# 408 -> 371 delta: results/issue12/ab_v9_h200/tune_v9_call2.json): a whole segment's columns per program won for
# every column-block kernel, and 512-1024 rows for the row-chunk kernels tuned again (not delta_dz).
KERNEL_CFG = dict(write_fwd=(32, 4, 3, 128), delta_w=(32, 8, 3, 128), read_fwd=(32, 8, 1, 512), read_bwd=(32, 4, 3, 1024),
                  read_dm=(32, 8, 3, 128), write_bwd=(32, 4, 2, 1024), write_bwd_delta=(16, 4, 2, 1024),
                  delta_dz=(32, 4, 1, 256))


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


COLUMN_KERNELS = ("write_fwd", "delta_w", "read_dm")


def _plan(name, t, eps):
    """The launch of kernel KERNEL_CFG[name] for the (B, S, H, N, D) tensor t: (grid, the kernel's NC or its
    PER and NJ, the keywords). B S H n programs, the n of a segment-head adjacent (they share its operands in L2);
    eps is the normaliser's floor (model.EPS)."""
    B, S, H, N, D = t.shape
    block, warps, stages, per = KERNEL_CFG[name]
    kw = dict(EPS=eps, D=D, BLOCK=block, PREC=_prec(t), num_warps=warps, num_stages=stages)
    if name in COLUMN_KERNELS:
        bc = min(per, D)
        while bc > 32 and B * S * H * (D // bc) < 256:     # few segment-heads (streaming at batch 1): fill the
            bc //= 2                                         # GPU, about two programs an SM of an H100 / H200
        return (B * S * H * (D // bc),), (D // bc,), dict(kw, BC=bc)
    per = min(triton.cdiv(per, block), triton.cdiv(N, block)) * block    # whole tiles, no more than a segment
    n = triton.cdiv(N, per)
    return (B * S * H * n,), (per, n), kw


def _segment_sums(k, v, eps, z=None):
    """(sigma(K)^T V, sum sigma(K)) per segment, fp32 (B, S, H, D, D), (B, S, H, D); or, given z_{s-1}, (W_s, None)."""
    B, S, H, N, D = k.shape
    grid, extra, kw = _plan("write_fwd" if z is None else "delta_w", k, eps)
    out, outz = k.new_empty(B, S, H, D, D, dtype=torch.float32), k.new_empty(B, S, H, D, dtype=torch.float32)
    v = k if v is None else v
    _write_fwd_kernel[grid](k, v, outz if z is None else z, out, outz, S, H, N, *extra, *_st(k), *_st(v),
                            DELTA=z is not None, **kw)
    return out, outz if z is None else None                  # (the delta rule's launch writes no sums of sigma(K))


def _read_fwd(q, Mc, z, y_dot, g, eps):
    """y = g sigma(q) M / (sigma(q) z) + (1 - g) y_dot as wo's input lays it out: (B, S, N, H, D), contiguous."""
    B, S, H, N, D = q.shape
    out, y = _like_qkv(y_dot)
    grid, extra, kw = _plan("read_fwd", q, eps)
    _read_fwd_kernel[grid](q, y_dot, out, Mc, z, g, S, H, N, *extra, *_st(q), *_st(y_dot), *_st(y), **kw)
    return out


def _read_bwd(dy, q, Mc, z, y_dot, g, eps):
    """dq, dy_dot, dM, dz, dg of _read_fwd (the row chunks' dz, dg added here)."""
    B, S, H, N, D = q.shape
    (dq_out, dq), (dyd_out, dyd) = _like_qkv(q), _like_qkv(y_dot)
    grid, (per, n), kw = _plan("read_bwd", q, eps)
    dzp, dgp = z.new_empty(B, S, H, n, D), z.new_empty(B, S, H, n)
    _read_bwd_kernel[grid](dy, q, y_dot, Mc, z, g, dq_out, dyd_out, dzp, dgp, S, H, N, per, n,
                           *_st(dy), *_st(q), *_st(y_dot), *_st(dq), **kw)
    dm = z.new_empty(B, S, H, D, D)
    grid, extra, kw = _plan("read_dm", q, eps)
    _read_dm_kernel[grid](q, dy, z, g, dm, S, H, N, *extra, *_st(q), *_st(dy), **kw)
    return dq, dyd, dm, dzp.sum(3), dgp.sum((0, 1, 3)).view(1, 1, H, 1, 1)


def _delta_dz(k, gs, z_prev, eps):
    """The gradient of z_{s-1} through W_s, (B, S, H, D), given gs = gW + gW^T in k's dtype."""
    B, S, H, N, D = k.shape
    grid, (per, n), kw = _plan("delta_dz", k, eps)
    out = z_prev.new_empty(B, S, H, n, D)
    _delta_dz_kernel[grid](k, gs, z_prev, out, S, H, N, per, n, *_st(k), **kw)
    return out.sum(3)


def _write_bwd(qkv, g_q, g_qr, g_kr, g_v, cos, sin, g_dM, g_zs, gs, z_prev, delta, eps):
    """The gradient of qkv (B, S, N, 3, H, D), contiguous: the write's dk, dv (from the gradients of sigma(K)^T V in
    k's dtype, of sum sigma(K) and (delta) of W_s) plus the gradients g_* (B, S, N, H, D) of q, RoPE(q), RoPE(k), v."""
    k = qkv[:, :, :, 1].transpose(2, 3)
    B, S, H, N, D = k.shape
    g_q, g_qr, g_kr, g_v = (t.contiguous() for t in (g_q, g_qr, g_kr, g_v))
    out = torch.empty_like(qkv)
    grid, extra, kw = _plan("write_bwd_delta" if delta else "write_bwd", k, eps)
    _write_bwd_kernel[grid](qkv, g_q, g_qr, g_kr, g_v, cos, sin, g_dM, g_zs, gs, z_prev, out, S, H, N, *extra,
                            *_st(k), *_st(g_q.transpose(2, 3)), DELTA=delta, **kw)
    return out


class QKVWriteGPU(torch.autograd.Function):
    """RoPE for SDPA and the write side of eqs. 8-9 in Triton, from the qkv projection's output qkv (B, S, N, 3, H,
    D), contiguous, as one Function, so that its backward writes qkv's whole gradient in one kernel: the memory's
    dk, dv plus SDPA's gradients through RoPE and the read's gradient of q (which the inductor would otherwise add
    in a kernel of its own, reading the memory's dk, dv back). Returns q and v (views of qkv: q for the read, v for
    SDPA), RoPE(q), RoPE(k) (for SDPA), sigma(K)^T V per segment, z_s after every segment and, for the delta rule,
    W_s (else an empty tensor). One function for the write too, because W_s depends on z_{s-1}: its backward sums
    the gradient of z through W_s before dk. cos, sin: (N, 1, D) RoPE tables of a segment's positions."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, z0, delta, eps):
        from model import apply_rope                     # (model.py imports this file)
        q, k, v = qkv.unbind(3)                                                     # (B, S, N, H, D) views
        k_, v_ = k.transpose(2, 3), v.transpose(2, 3)                               # (B, S, H, N, D)
        dM, zs = _segment_sums(k_, v_, eps)
        z_after = z0[:, None] + zs.cumsum(dim=1)
        z_prev = torch.cat([z0[:, None], z_after[:, :-1]], dim=1).contiguous()
        W = _segment_sums(k_, None, eps, z_prev)[0] if delta else dM.new_empty(0)
        assert cos.is_contiguous() and sin.is_contiguous()            # the kernel reads them as (N, D)
        ctx.save_for_backward(qkv, cos, sin, z_prev)
        ctx.delta, ctx.eps = delta, eps
        return q, v, apply_rope(q, cos, sin), apply_rope(k, cos, sin), dM, z_after, W

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_q, g_v, g_qr, g_kr, g_dM, g_z, g_W):
        qkv, cos, sin, z_prev = ctx.saved_tensors
        k = qkv[:, :, :, 1].transpose(2, 3)
        g_z, g_z0 = g_z.clone(), torch.zeros_like(z_prev[:, 0])
        gs = (g_W + g_W.transpose(-1, -2)).to(k.dtype).contiguous() if ctx.delta else g_dM   # (unused: linear)
        if ctx.delta:                             # the gradient of z_{s-1} through W_s goes to z_{s-1}'s parts
            gzp = _delta_dz(k, gs, z_prev, ctx.eps)
            g_z[:, :-1] += gzp[:, 1:]
            g_z0 += gzp[:, 0]
        g_zs = g_z.flip(1).cumsum(dim=1).flip(1)                               # z_s = z_0 + sum_{t <= s} zs_t
        g_qkv = _write_bwd(qkv, g_q, g_qr, g_kr, g_v, cos, sin, g_dM.to(k.dtype).contiguous(), g_zs.contiguous(),
                           gs, z_prev, ctx.delta, ctx.eps)
        return g_qkv, None, None, g_z0 + g_z.sum(1), None, None


class ReadGPU(torch.autograd.Function):
    """model._ReadAndMix in Triton, but y comes out as wo's input lays it out: (B, S, N, H, D), contiguous (the caller
    transposes). Its gradient then arrives contiguous too: compiled, dynamo makes an autograd Function's incoming
    gradients contiguous (a copy, had y been a transposed view). Saves nothing per token of its own: q is a view of
    the qkv projection's output, which stays alive anyway (SDPA saves v, a view of the same buffer), and y_dot is
    SDPA's output."""

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
        dq, dyd, dM, dz, dg = _read_bwd(dy.contiguous().transpose(2, 3), q, Mc, z, y_dot, g, ctx.eps)
        return dq, dM, dz, dyd, dg.sum_to_size(ctx.g_shape), None
