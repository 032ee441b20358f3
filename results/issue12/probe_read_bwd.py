"""Where _read_bwd_kernel's time goes, and two restructurings, timed alone (eager, triton.testing.do_bench) on the
300m layer's tensors at T = 8192, batch 4. GPU only.   python results/issue12/probe_read_bwd.py OUT_DIR
  rows + dM: the backward split in two: a row-block kernel for dq, dy_dot and the dz, dg partial sums (no D x D
             accumulator), and a per-segment kernel for dM = sigma(Q)^T diag(g / den) dY alone;
  _T:        the per-segment kernels loading their left operand transposed (D x rows) instead of tl.trans.
Written against kernels.py as of commit 89270e6 (it imports that file's _offs and _read_bwd); to re-run it, check that commit out."""
import itertools
import json
import os
import sys

import torch
import triton
import triton.language as tl
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import bench  # noqa: E402
import kernels as m  # noqa: E402
from kernels import _offs, _sigma  # noqa: E402
from model import EPS  # noqa: E402


@triton.jit
def _rows_kernel(DY, Q, YD, MC, Z, G, DQ, DYD, DZP, DGP, S, H, N, y_b, y_s, y_h, y_n, q_b, q_s, q_h, q_n,
                 d_b, d_s, d_h, d_n, o_b, o_s, o_h, o_n, EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    i, blk, rd = tl.program_id(0), tl.program_id(1), tl.arange(0, D)
    rn = blk * BLOCK + tl.arange(0, BLOCK)
    rows = rn < N
    z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
    _, sq = _sigma(Q, _offs(i, rn, S, H, q_b, q_s, q_h, q_n, D), rows)
    s32 = sq.to(tl.float32)
    raw = tl.sum(s32 * z[None, :], axis=1)
    den = tl.maximum(raw, EPS)
    dy = tl.load(DY + _offs(i, rn, S, H, y_b, y_s, y_h, y_n, D), mask=rows[:, None], other=0.0).to(tl.float32)
    u = (dy / den[:, None]).to(sq.dtype)
    gm = tl.dot(u, tl.load(MC + i * D * D + rd[None, :] * D + rd[:, None]))
    dya = tl.sum(s32 * gm, axis=1)
    dden = tl.where(raw >= EPS, -g * dya / den, 0.0)
    dq = (g * gm + dden[:, None] * z[None, :]) * tl.minimum(s32, 1.0)
    tl.store(DQ + _offs(i, rn, S, H, o_b, o_s, o_h, o_n, D), dq.to(DQ.dtype.element_ty), mask=rows[:, None])
    off_d = _offs(i, rn, S, H, d_b, d_s, d_h, d_n, D)
    tl.store(DYD + off_d, ((1.0 - g) * dy).to(DYD.dtype.element_ty), mask=rows[:, None])
    yd = tl.load(YD + off_d, mask=rows[:, None], other=0.0).to(tl.float32)
    slot = i * tl.num_programs(1) + blk
    tl.store(DZP + slot * D + rd, tl.sum(dden[:, None] * s32, axis=0))
    tl.store(DGP + slot, tl.sum(dya - tl.sum(dy * yd, axis=1), axis=0))


@triton.jit
def _dm_kernel(Q, DY, Z, G, OUT, S, H, N, PER, q_b, q_s, q_h, q_n, y_b, y_s, y_h, y_n,
               EPS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, TRANS: tl.constexpr):
    i, j, rd = tl.program_id(0), tl.program_id(1), tl.arange(0, D)
    z, g = tl.load(Z + i * D + rd), tl.load(G + i % H)
    acc = tl.zeros((D, D), tl.float32)
    for n0 in range(j * PER, j * PER + PER, BLOCK):
        rn = n0 + tl.arange(0, BLOCK)
        rows = rn < N
        _, sq = _sigma(Q, _offs(i, rn, S, H, q_b, q_s, q_h, q_n, D), rows)
        raw = tl.sum(sq.to(tl.float32) * z[None, :], axis=1)
        dy = tl.load(DY + _offs(i, rn, S, H, y_b, y_s, y_h, y_n, D), mask=rows[:, None], other=0.0).to(tl.float32)
        right = (dy * (g / tl.maximum(raw, EPS))[:, None]).to(sq.dtype)
        if TRANS:                       # sigma(Q)^T loaded as a D x rows tile
            b, s, h = i // (S * H), (i // H) % S, i % H
            offt = b * q_b + s * q_s + h * q_h + rd[:, None] + rn[None, :] * q_n
            xt = tl.load(Q + offt, mask=rows[None, :], other=0.0).to(tl.float32)
            sqt = tl.where(rows[None, :], tl.where(xt > 0, xt + 1.0, tl.exp(xt)), 0.0).to(sq.dtype)
            acc += tl.dot(sqt, right)
        else:
            acc += tl.dot(tl.trans(sq), right)
    tl.store(OUT + (i * tl.num_programs(1) + j) * D * D + rd[:, None] * D + rd[None, :], acc)


out_dir = sys.argv[1]
torch.backends.cuda.matmul.allow_tf32 = True
B, S, H, N, D = 4, 8, 8, 1024, 128
torch.manual_seed(0)
bf = dict(device="cuda", dtype=torch.bfloat16)
qkv = torch.randn(B, S, N, 3, H, D, **bf)
q = qkv[:, :, :, 0].transpose(2, 3)
y_dot = torch.randn(B * S, H, N, D, **bf).view(B, S, H, N, D)
dy = torch.randn(B, S, N, H, D, **bf).transpose(2, 3)
z = torch.rand(B, S, H, D, device="cuda") * 100
Mc = (torch.randn(B, S, H, D, D, device="cuda") * 0.01).to(torch.bfloat16)
g = torch.rand(H, device="cuda")
x = torch.empty(B, S, N, H, D, **bf)
pass_us = triton.testing.do_bench(lambda: x.copy_(y_dot.transpose(2, 3))) * 1e3 / 2
st = m._st


def split_path(rows_cfg, dm_cfg, trans):
    rb, rw = rows_cfg
    db, dw, ds, dsplit = dm_cfg
    nblk = triton.cdiv(N, rb)
    dq, dyd = m._like_qkv(q)[1], torch.empty_like(y_dot)
    dzp, dgp = z.new_empty(B, S, H, nblk, D), z.new_empty(B, S, H, nblk)
    _rows_kernel[(B * S * H, nblk)](dy, q, y_dot, Mc, z, g, dq, dyd, dzp, dgp, S, H, N, *st(dy), *st(q), *st(y_dot),
                                    *st(dq), EPS=EPS, D=D, BLOCK=rb, num_warps=rw)
    per = triton.cdiv(triton.cdiv(N, dsplit), db) * db
    n = triton.cdiv(N, per)
    dmp = z.new_empty(B, S, H, n, D, D)
    _dm_kernel[(B * S * H, n)](q, dy, z, g, dmp, S, H, N, per, *st(q), *st(dy), EPS=EPS, D=D, BLOCK=db, TRANS=trans,
                               num_warps=dw, num_stages=ds)
    return dq, dyd, dmp.sum(3), dzp.sum(3), dgp.sum((0, 1, 3))


ref = m._read_bwd(dy, q, Mc, z, y_dot, g, EPS)
rows = [dict(pass_us=round(pass_us, 2),
             landed_us=round(triton.testing.do_bench(lambda: m._read_bwd(dy, q, Mc, z, y_dot, g, EPS), rep=30) * 1e3, 1))]
print(json.dumps(rows[0]), flush=True)
for rc in [(32, 4), (64, 4), (64, 8)]:                 # the row kernel alone
    try:
        nblk = triton.cdiv(N, rc[0])
        dq, dyd = m._like_qkv(q)[1], torch.empty_like(y_dot)
        dzp, dgp = z.new_empty(B, S, H, nblk, D), z.new_empty(B, S, H, nblk)
        f = lambda: _rows_kernel[(B * S * H, nblk)](dy, q, y_dot, Mc, z, g, dq, dyd, dzp, dgp, S, H, N, *st(dy), *st(q),
                                                    *st(y_dot), *st(dq), EPS=EPS, D=D, BLOCK=rc[0], num_warps=rc[1])
        rows.append(dict(part="rows", cfg=rc, us=round(triton.testing.do_bench(f, rep=20) * 1e3, 1)))
    except Exception as e:
        rows.append(dict(part="rows", cfg=rc, error=str(e)[:200]))
    print(json.dumps(rows[-1]), flush=True)
for dc, trans in itertools.product([(32, 4, 2, 2), (64, 4, 2, 2), (64, 4, 3, 2), (32, 8, 3, 2), (64, 8, 2, 1), (64, 4, 2, 1)], [False, True]):
    try:
        f = lambda: split_path((64, 4), dc, trans)
        got = f()
        err = max(((a.double().flatten() - b.double().flatten()).norm() / b.double().norm()).item() for a, b in zip(got, ref))
        rows.append(dict(part="rows(64,4) + dM", cfg=dc, trans=trans, us=round(triton.testing.do_bench(f, rep=20) * 1e3, 1),
                         max_rel_err_vs_landed=round(err, 6)))
    except Exception as e:
        rows.append(dict(part="rows(64,4) + dM", cfg=dc, trans=trans, error=str(e)[:200]))
    print(json.dumps(rows[-1]), flush=True)
bench.write_rows(os.path.join(out_dir, "probe_read_bwd.json"), rows)
