"""Fourth session: where the read's backward and the write's backward spend their time, by deletion (no profiler
fits the device's time). Each kernel is kernels.py's, with constexpr switches that drop one piece of its work
(the results are then wrong: timing only), plus a copy kernel of the same program shape that only moves the bytes
(loads and stores of the same tiles, no arithmetic): the floor of that access pattern as Triton compiles it.
T = 8192, batch 4, the 300m layer's tensors, the landed configurations. GPU only.
    python results/issue12/probe_v7.py OUT_DIR"""
import json
import os
import sys

import torch
import triton
import triton.language as tl
import triton.testing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), HERE]
import bench  # noqa: E402
import kernels as K  # noqa: E402
from kernels import _offs, _sigma  # noqa: E402
from model import EPS  # noqa: E402
from tune_v7 import inputs  # noqa: E402


@triton.jit
def _read_bwd_probe(DY, Q, YD, MC, Z, G, DQ, DYD, DZP, DGP, S, H, N, PER, NJ, y_b, y_s, y_h, y_n,
                    q_b, q_s, q_h, q_n, d_b, d_s, d_h, d_n, o_b, o_s, o_h, o_n,
                    EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr,
                    COPY: tl.constexpr, NO_DOT: tl.constexpr, NO_DYA: tl.constexpr, NO_DG: tl.constexpr,
                    NO_DYD: tl.constexpr, NO_DZ: tl.constexpr):
    i, j, rd = tl.program_id(0) // NJ, tl.program_id(0) % NJ, tl.arange(0, D)
    m = tl.load(MC + i * D * D + rd[:, None] * D + rd[None, :])
    z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
    dz, dg = tl.zeros((D,), tl.float32), tl.zeros((BLOCK,), tl.float32)
    for n0 in range(j * PER, j * PER + PER, BLOCK):
        rn = n0 + tl.arange(0, BLOCK)
        rows = rn < N
        off_o = _offs(i, rn, rd, S, H, o_b, o_s, o_h, o_n)
        if COPY:                                 # the bytes alone: q, dy, y_dot in; two tiles out
            x = tl.load(Q + _offs(i, rn, rd, S, H, q_b, q_s, q_h, q_n), mask=rows[:, None], other=0.0)
            dy = tl.load(DY + _offs(i, rn, rd, S, H, y_b, y_s, y_h, y_n), mask=rows[:, None], other=0.0)
            yd = tl.load(YD + _offs(i, rn, rd, S, H, d_b, d_s, d_h, d_n), mask=rows[:, None], other=0.0)
            tl.store(DQ + off_o, x + yd, mask=rows[:, None])
            tl.store(DYD + off_o, dy, mask=rows[:, None])
        else:
            _, sq = _sigma(Q, _offs(i, rn, rd, S, H, q_b, q_s, q_h, q_n), rows)
            s32 = sq.to(tl.float32)
            raw = tl.sum(s32 * z[None, :], axis=1)
            den = tl.maximum(raw, EPS)
            dy = tl.load(DY + _offs(i, rn, rd, S, H, y_b, y_s, y_h, y_n), mask=rows[:, None], other=0.0).to(tl.float32)
            if NO_DOT:
                gm = dy / den[:, None]
            else:
                gm = tl.dot((dy / den[:, None]).to(sq.dtype), tl.trans(m), input_precision=PREC)
            if NO_DYA:
                dya = raw
            else:
                dya = tl.sum(s32 * gm, axis=1)
            dden = tl.where(raw >= EPS, -g * dya / den, 0.0)
            dq = (g * gm + dden[:, None] * z[None, :]) * tl.minimum(s32, 1.0)
            tl.store(DQ + off_o, dq.to(DQ.dtype.element_ty), mask=rows[:, None])
            if not NO_DYD:
                tl.store(DYD + off_o, ((1.0 - g) * dy).to(DYD.dtype.element_ty), mask=rows[:, None])
            if not NO_DZ:
                dz += tl.sum(dden[:, None] * s32, axis=0)
            if NO_DG:
                dg += dya
            else:
                yd = tl.load(YD + _offs(i, rn, rd, S, H, d_b, d_s, d_h, d_n), mask=rows[:, None], other=0.0)
                dg += dya - tl.sum(dy * yd.to(tl.float32), axis=1)
    tl.store(DZP + tl.program_id(0) * D + rd, dz)
    tl.store(DGP + tl.program_id(0), tl.sum(dg, axis=0))


@triton.jit
def _write_bwd_probe(K, V, GDM, GZS, DK, DV, S, H, N, PER, NJ, k_b, k_s, k_h, k_n, v_b, v_s, v_h, v_n,
                     o_b, o_s, o_h, o_n, D: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr,
                     COPY: tl.constexpr, NO_DV: tl.constexpr, NO_DSK: tl.constexpr):
    i, j, rd = tl.program_id(0) // NJ, tl.program_id(0) % NJ, tl.arange(0, D)
    gdm, gzs = tl.load(GDM + i * D * D + rd[:, None] * D + rd[None, :]), tl.load(GZS + i * D + rd)
    for n0 in range(j * PER, j * PER + PER, BLOCK):
        rn = n0 + tl.arange(0, BLOCK)
        rows = rn < N
        off_o = _offs(i, rn, rd, S, H, o_b, o_s, o_h, o_n)
        if COPY:
            x = tl.load(K + _offs(i, rn, rd, S, H, k_b, k_s, k_h, k_n), mask=rows[:, None], other=0.0)
            v = tl.load(V + _offs(i, rn, rd, S, H, v_b, v_s, v_h, v_n), mask=rows[:, None], other=0.0)
            tl.store(DV + off_o, v, mask=rows[:, None])
            tl.store(DK + off_o, x, mask=rows[:, None])
        else:
            s32, sk = _sigma(K, _offs(i, rn, rd, S, H, k_b, k_s, k_h, k_n), rows)
            v = tl.load(V + _offs(i, rn, rd, S, H, v_b, v_s, v_h, v_n), mask=rows[:, None], other=0.0)
            if NO_DSK:
                dsk = v.to(tl.float32) + gzs[None, :]
            else:
                dsk = tl.dot(v, tl.trans(gdm), input_precision=PREC) + gzs[None, :]
            if NO_DV:
                tl.store(DV + off_o, sk, mask=rows[:, None])
            else:
                tl.store(DV + off_o, tl.dot(sk, gdm, input_precision=PREC).to(DV.dtype.element_ty), mask=rows[:, None])
            tl.store(DK + off_o, (dsk * tl.minimum(s32, 1.0)).to(DK.dtype.element_ty), mask=rows[:, None])


if __name__ == "__main__":
    out_dir = sys.argv[1]
    torch.backends.cuda.matmul.allow_tf32 = True
    q, k, v, y_dot, dy, z, Mc, g = inputs(4, 8, 8, 1024, 128, "cuda")
    B, S, H, N, D = q.shape
    x = torch.empty_like(y_dot.transpose(2, 3))
    us = lambda fn: round(triton.testing.do_bench(fn, warmup=3, rep=25) * 1e3, 1)
    rows = [dict(pass_us=round(us(lambda: x.copy_(y_dot.transpose(2, 3))) / 2, 2))]
    (dq_out, dq), (dyd_out, dyd) = K._like_qkv(q), K._like_qkv(y_dot)
    grid, (per, n), kw = K._plan("read_bwd", q, EPS)
    dzp, dgp = z.new_empty(B, S, H, n, D), z.new_empty(B, S, H, n)
    flags = ["COPY", "NO_DOT", "NO_DYA", "NO_DG", "NO_DYD", "NO_DZ"]
    cases = [[], ["COPY"], ["NO_DOT"], ["NO_DYA"], ["NO_DG"], ["NO_DYD"], ["NO_DZ"], ["NO_DYA", "NO_DZ"],
             ["NO_DOT", "NO_DYA", "NO_DG", "NO_DZ"]]
    for rep in range(2):
        for case in cases:
            f = {a: a in case for a in flags}
            run = lambda: _read_bwd_probe[grid](dy, q, y_dot, Mc, z, g, dq_out, dyd_out, dzp, dgp, S, H, N, per, n,
                                                *K._st(dy), *K._st(q), *K._st(y_dot), *K._st(dq), **kw, **f)
            rows.append(dict(kernel="read_bwd", cfg=K.KERNEL_CFG["read_bwd"], drop=case, us=us(run)))
            print(json.dumps(rows[-1]), flush=True)
    # the copy kernel at other program shapes: is the pattern's floor the configuration's?
    for cfg in [(32, 8, 3, 1024), (64, 4, 3, 1024), (32, 4, 3, 256), (64, 8, 2, 512), (32, 4, 1, 1024)]:
        K.KERNEL_CFG["read_bwd_copy"] = cfg
        K.KERNEL_CFG["read_bwd"], saved = cfg, K.KERNEL_CFG["read_bwd"]
        grid2, (per2, n2), kw2 = K._plan("read_bwd", q, EPS)
        K.KERNEL_CFG["read_bwd"] = saved
        dzp2, dgp2 = z.new_empty(B, S, H, n2, D), z.new_empty(B, S, H, n2)
        f = {a: a == "COPY" for a in flags}
        run = lambda: _read_bwd_probe[grid2](dy, q, y_dot, Mc, z, g, dq_out, dyd_out, dzp2, dgp2, S, H, N, per2, n2,
                                             *K._st(dy), *K._st(q), *K._st(y_dot), *K._st(dq), **kw2, **f)
        rows.append(dict(kernel="read_bwd", cfg=cfg, drop=["COPY"], us=us(run)))
        print(json.dumps(rows[-1]), flush=True)
    bench.write_rows(os.path.join(out_dir, "probe_v7.json"), rows)
    g_dMb, g_zs = (torch.randn(B, S, H, D, D, device="cuda") * 0.01).to(torch.bfloat16), torch.randn(B, S, H, D, device="cuda")
    (dk_out, dk), (dv_out, dv) = K._like_qkv(k), K._like_qkv(v)
    grid, (per, n), kw = K._plan("write_bwd", k, EPS)
    kw.pop("EPS")
    for rep in range(2):
        for case in [[], ["COPY"], ["NO_DV"], ["NO_DSK"], ["NO_DV", "NO_DSK"]]:
            f = {a: a in case for a in ["COPY", "NO_DV", "NO_DSK"]}
            run = lambda: _write_bwd_probe[grid](k, v, g_dMb, g_zs, dk_out, dv_out, S, H, N, per, n, *K._st(k), *K._st(v),
                                                 *K._st(dk), **kw, **f)
            rows.append(dict(kernel="write_bwd", cfg=K.KERNEL_CFG["write_bwd"], drop=case, us=us(run)))
            print(json.dumps(rows[-1]), flush=True)
    bench.write_rows(os.path.join(out_dir, "probe_v7.json"), rows)
