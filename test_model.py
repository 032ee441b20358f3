"""Tests for model.py. CPU only, float64 where exactness matters. Run: python -m pytest -q

The reference below is written straight from P2's equations as a per-segment Python loop with
explicit softmax, explicit RoPE and explicit memory reads/writes; the fast path (SDPA over folded
segments, prefix-summed / scanned memory) must compute the same function on fresh random inputs.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from model import Attention, Llama, LlamaConfig, make_config


def cfg_for(**kw):
    base = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, ffn_hidden=64, segment=8)
    base.update(kw)
    return LlamaConfig(**base)


def ref_rope(x, pos, theta):
    """x (n, D) at positions pos (n,): dim i pairs with dim i + D/2 (rotate-half convention)."""
    D = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(D // 2):
        ang = pos * theta ** (-2.0 * i / D)
        c, s = torch.cos(ang), torch.sin(ang)
        out[:, i] = x[:, i] * c - x[:, i + D // 2] * s
        out[:, i + D // 2] = x[:, i + D // 2] * c + x[:, i] * s
    return out


def ref_attention(attn, x, memory=None):
    """Infini / local attention of one layer, float64, one batch row, head and segment at a time.
    memory: per (b, h) (M, z) or None (empty). Returns (y, memory after the last complete segment)."""
    cfg = attn.cfg
    B, T, C = x.shape
    H, D, N = cfg.n_head, cfg.head_dim, cfg.segment
    x = x.double()
    qkv = x @ attn.wqkv.weight.double().t()
    q, k, v = qkv.split(C, dim=-1)
    sigma = lambda t: F.elu(t) + 1
    out = torch.zeros(B, T, C, dtype=torch.float64)
    new_mem = {}
    for b in range(B):
        for h in range(H):
            hs = slice(h * D, (h + 1) * D)
            if memory is None:
                M, z = torch.zeros(D, D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
            else:
                M, z = (t[b, h].double() for t in memory)
            for s0 in range(0, T, N):
                Q, K, V = (t[b, s0:s0 + N, hs] for t in (q, k, v))
                n = Q.shape[0]
                pos = torch.arange(n, dtype=torch.float64)               # positions restart per segment
                Qr, Kr = ref_rope(Q, pos, cfg.rope_theta), ref_rope(K, pos, cfg.rope_theta)
                scores = Qr @ Kr.t() / math.sqrt(D)
                scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
                A_dot = torch.softmax(scores, dim=-1) @ V
                if cfg.attn == "local":
                    out[b, s0:s0 + n, hs] = A_dot
                    continue
                sQ, sK = sigma(Q), sigma(K)                              # before RoPE
                empty = bool((z == 0).all())
                # eq. 7: retrieve with M_{s-1}; an empty memory reads zeros
                A_mem = torch.zeros(n, D, dtype=torch.float64) if empty else (sQ @ M) / (sQ @ z)[:, None]
                beta = attn.beta[h].double()
                g = torch.clamp(0.2 * beta + 0.5, 0, 1) if cfg.gate == "hard_sigmoid" else torch.sigmoid(beta)
                out[b, s0:s0 + n, hs] = g * A_mem + (1 - g) * A_dot       # eq. 10
                if n < N:
                    break                                                # a partial segment updates nothing we return
                if cfg.update == "linear":                               # eq. 8
                    M = M + sK.t() @ V
                else:                                                    # eq. 9
                    V_old = torch.zeros(n, D, dtype=torch.float64) if empty else (sK @ M) / (sK @ z)[:, None]
                    M = M + sK.t() @ (V - V_old)
                z = z + sK.sum(0)
            new_mem[b, h] = (M, z)
    y = out @ attn.wo.weight.double().t()
    if cfg.attn == "local":
        return y, None
    Ms = torch.stack([torch.stack([new_mem[b, h][0] for h in range(H)]) for b in range(B)])
    zs = torch.stack([torch.stack([new_mem[b, h][1] for h in range(H)]) for b in range(B)])
    return y, (Ms, zs)


def fast_attention(attn, x, memory=None):
    """The model's Attention.forward with the cos/sin tables Llama.forward would pass."""
    from model import rope_cos_sin
    cfg = attn.cfg
    cos, sin = rope_cos_sin(cfg.segment, cfg.head_dim, cfg.rope_theta, x.device, x.dtype)
    return attn(x, cos, sin, memory)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def random_infini_layer(**kw):
    attn = Attention(cfg_for(attn="infini", **kw)).double()
    with torch.no_grad():
        attn.beta.copy_(torch.randn_like(attn.beta) * 2)                 # gates away from 0.5, some saturated
    return attn


@pytest.mark.parametrize("fast_memory", [False, True])                 # compressive_memory / memory_fast
@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
@pytest.mark.parametrize("T", [32, 29, 5])                             # a multiple of the segment, not, shorter
def test_fast_path_matches_float64_reference(update, gate, T, fast_memory):
    torch.manual_seed(hash((update, gate, T)) % 2**31)
    attn = random_infini_layer(update=update, gate=gate, fast_memory=fast_memory)
    x = torch.randn(3, T, 32, dtype=torch.float64)
    y, mem = fast_attention(attn, x)
    y_ref, mem_ref = ref_attention(attn, x)
    assert rel_err(y, y_ref) < 1e-6
    if T >= 8:
        assert rel_err(mem[0], mem_ref[0]) < 1e-6 and rel_err(mem[1], mem_ref[1]) < 1e-6
    # with a memory carried in from earlier segments (the streaming case)
    x2 = torch.randn(3, T, 32, dtype=torch.float64)
    if T >= 8:
        y2, _ = fast_attention(attn, x2, mem)
        y2_ref, _ = ref_attention(attn, x2, mem_ref)
        assert rel_err(y2, y2_ref) < 1e-6


def random_memory(B, H, D, dtype):
    """A memory as earlier segments would leave it: M any sign, z positive (a sum of sigma(K) rows)."""
    return torch.randn(B, H, D, D, dtype=dtype), torch.rand(B, H, D, dtype=dtype) * 20


def layer_and_grads(attn, x, memory, run=fast_attention, seed=5):
    """Outputs (y, M, z) and the gradients of a random linear function of all three with respect to
    x, every weight, beta and the memory passed in (when given)."""
    x = x.detach().clone().requires_grad_(True)
    memory = None if memory is None else tuple(t.detach().clone().requires_grad_(True) for t in memory)
    y, (M, z) = run(attn, x, memory)
    gen = torch.Generator().manual_seed(seed)
    w = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
    loss = (y * w(y)).sum() + (M * w(M)).sum() + (z * w(z)).sum()
    inputs = [x, attn.wqkv.weight, attn.wo.weight, attn.beta] + list(memory or [])
    return [y, M, z] + list(torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("fast_memory", [False, True])
@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("T", [32, 29])
def test_gradients_match_float64_reference(update, T, fast_memory):
    # the reference loop is differentiable: its gradients are P2's equations differentiated by autograd
    torch.manual_seed(7)
    attn = random_infini_layer(update=update, gate="sigmoid", fast_memory=fast_memory)
    x = torch.randn(2, T, 32, dtype=torch.float64)
    for memory in [None, random_memory(2, 4, 8, torch.float64)]:
        got = layer_and_grads(attn, x, memory)
        want = layer_and_grads(attn, x, memory, run=ref_attention)
        assert len(got) == len(want) == (7 if memory is None else 9)
        for a, b in zip(got, want):
            assert rel_err(a, b) < 1e-9 if b.norm() > 0 else a.norm() == 0


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fast_memory_equals_compressive_memory(update, dtype, tol):
    # memory_fast (hand-written backwards) against autograd through the spec,
    # forward and all gradients, with and without a memory passed in, short last segment included
    for T in [32, 29, 5]:
        torch.manual_seed(hash((update, T)) % 2**31)
        spec = random_infini_layer(update=update, gate="sigmoid", fast_memory=False).to(dtype)
        fast = random_infini_layer(update=update, gate="sigmoid", fast_memory=True).to(dtype)
        fast.load_state_dict(spec.state_dict())
        x = torch.randn(3, T, 32, dtype=dtype)
        M, z = random_memory(3, 4, 8, dtype)
        # (M, 0): the normaliser sits on its floor, where it passes no gradient to z
        for memory in [None, (M, z), (M, torch.zeros_like(z))]:
            for a, b in zip(layer_and_grads(fast, x, memory), layer_and_grads(spec, x, memory)):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert rel_err(a, b) < tol if b.norm() > 0 else a.norm() == 0


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_fast_memory_bf16_autocast_close_to_compressive_memory(update):
    # the precision the GPU trains in: both paths cast the same tensors to bf16, so they agree to bf16
    # rounding (gradients of q/k/v go through bf16 matmul operands in both)
    torch.manual_seed(4)
    spec = random_infini_layer(update=update, fast_memory=False).float()
    fast = random_infini_layer(update=update, fast_memory=True).float()
    fast.load_state_dict(spec.state_dict())
    x = torch.randn(2, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = layer_and_grads(fast, x, None), layer_and_grads(spec, x, None)
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and rel_err(a.double(), b.double()) < 2e-2


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("uses", ["y", "M", "z"])
def test_memory_fast_when_only_some_outputs_are_used(update, uses):
    # a loss on the layer output alone (training), or on the returned memory alone: the Functions then get
    # None for the unused gradients and must still give the spec's (float64)
    from model import compressive_memory, memory_fast, _sig
    torch.manual_seed(len(uses) + len(update))
    B, S, H, N, D = 2, 3, 2, 8, 8
    args = [torch.randn(B, S, H, N, D, dtype=torch.float64) for _ in range(4)] + [torch.rand(1, 1, H, 1, 1, dtype=torch.float64)]

    def spec(q, k, v, y_dot, g):
        a_mem, mem = compressive_memory(_sig(q)[1], _sig(k)[1], v, update, S)
        return g * a_mem + (1 - g) * y_dot, mem

    grads = []
    for fn in [memory_fast, spec]:
        leaves = [t.clone().requires_grad_(True) for t in args]
        y, (M, z) = fn(*leaves, update, S) if fn is memory_fast else fn(*leaves)
        out = {"y": y, "M": M, "z": z}[uses]
        gen = torch.Generator().manual_seed(1)
        grads.append(torch.autograd.grad((out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum(),
                                         leaves, allow_unused=True))
    for a, b in zip(*grads):
        if b is None or b.norm() == 0:
            assert a is None or a.norm() == 0
        else:
            assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_memory_fast_under_torch_compile(update):
    # dynamo traces the autograd.Functions and the checkpoint, and the min-cut partitioner that inductor
    # uses decides what to save; aot_eager_decomp_partition runs exactly that without generating kernels
    from model import memory_fast
    torch.manual_seed(6)
    B, S, H, N, D = 2, 3, 4, 8, 8
    args = [torch.randn(B, S, H, N, D) for _ in range(4)] + [torch.rand(1, 1, H, 1, 1)]
    memory = random_memory(B, H, D, torch.float32)
    runs = []
    for fn in [memory_fast, torch.compile(memory_fast, backend="aot_eager_decomp_partition", fullgraph=True)]:
        leaves = [t.clone().requires_grad_(True) for t in args + list(memory)]
        y, (M, z) = fn(*leaves[:5], update, S - 1, tuple(leaves[5:]))
        gen = torch.Generator().manual_seed(0)
        loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in (y, M, z))
        runs.append([y, M, z] + list(torch.autograd.grad(loss, leaves)))
    for a, b in zip(*runs):
        assert rel_err(a, b) < 1e-5


TRITON_SCAN_CHECK = """
import torch
import kernels
import model
def run(args, n_full, weights):
    leaves = [t.clone().requires_grad_(True) for t in args]
    M_prev, M = model._DeltaScan.apply(*leaves, n_full)
    ((M_prev * weights[0]).sum() + (M * weights[1]).sum()).backward()
    return [M_prev, M] + [t.grad for t in leaves]
worst = 0.0
for B, S, H, D in [(2, 5, 3, 16), (1, 4, 2, 32), (1, 3, 1, 64)]:
    for n_full in [S, S - 1, 0]:
        torch.manual_seed(S * D + n_full)
        M0, dM = torch.randn(B, H, D, D), torch.randn(B, S, H, D, D)
        W = torch.randn(B, S, H, D, D) / D ** 0.5                   # any W: the scan is linear in M
        weights = [torch.randn(B, S, H, D, D), torch.randn(B, H, D, D)]
        want = run([M0, dM, W], n_full, weights)                     # CPU tensors: the loop
        kernels.scan_on_gpu = lambda t: True                          # the kernels, in Triton's interpreter
        got = run([M0, dM, W], n_full, weights)
        kernels.scan_on_gpu = lambda t: False
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.isfinite(a).all()
            worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
print(worst)
"""


def worst_error_in_triton_interpreter(script):
    """Run a check script in a fresh process with Triton's interpreter on (it must be switched on before
    triton.jit runs), so the GPU's kernels run on the CPU; the worst relative error it prints last."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.split()[-1])


def test_triton_delta_scan_equals_loop():
    # the GPU's scan kernels (forward and backward) against _DeltaScan's loop; all segments full, the last
    # one partial (n_full = S - 1) and none full; M_prev, the final state and every gradient
    assert worst_error_in_triton_interpreter(TRITON_SCAN_CHECK) < 1e-5


TRITON_MEMORY_CHECK = """
import torch
import kernels
import model
from test_model import cfg_for, layer_and_grads
# 16-row tiles; 16 columns a column-block program (two of them at D = 32), 32 rows a row-chunk one: several tiles
# a program, several programs a segment, and a last chunk that is cut short
kernels.KERNEL_CFG = {k: (16, 4, 1, 16 if k in kernels.COLUMN_KERNELS else 32) for k in kernels.KERNEL_CFG}
worst = 0.0
for update in ["linear", "delta"]:
    # (batch, heads, head dim, segment, T, memory in): a short last segment (padded; it writes no memory), a
    # segment that is not a multiple of the tile, and "tiny z": z_0 ~ 1e-9 under a non-zero M_0, so the first
    # segment's normalisers sit on their EPS floor and only the floor's masks keep the gradient from flowing through it
    for B, H, D, N, T, mem in [(2, 2, 16, 40, 110, "random"), (1, 2, 32, 37, 111, None), (1, 2, 16, 24, 48, "tiny z")]:
        torch.manual_seed(N)
        attn = model.Attention(cfg_for(attn="infini", update=update, n_head=H, n_embd=H * D, segment=N))
        with torch.no_grad():
            attn.beta.copy_(torch.randn_like(attn.beta))
        x = torch.randn(B, T, H * D)
        memory = [torch.randn(B, H, D, D) * 0.1, torch.rand(B, H, D) * (3 if mem == "random" else 1e-9)] if mem else None
        runs = []
        for fused in [False, True]:                                   # True: the kernels, in Triton's interpreter
            kernels.fused_on_gpu = lambda q: fused
            runs.append(layer_and_grads(attn, x, memory))
        for a, b in zip(*runs):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.isfinite(a).all()
            worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
print(worst)
"""


def test_triton_memory_kernels_equal_pytorch_functions():
    # the GPU's path (kernels.QKVWriteGPU, ReadGPU: RoPE, the memory and the qkv projection's gradient) against the
    # layer with memory_fast's PyTorch Functions: outputs, state and the gradients of x, every weight, beta and
    # the memory passed in; both rules, a short last segment, a memory passed in, segments that are not a
    # multiple of the tile, and a memory whose z is ~1e-9 (the normaliser on its floor: the masks of its gradient)
    assert worst_error_in_triton_interpreter(TRITON_MEMORY_CHECK) < 1e-5


def test_triton_memory_only_on_cuda():
    # the CPU never takes the Triton path (it would need the interpreter), whatever TRITON_KERNELS says
    from kernels import fused_on_gpu
    assert not fused_on_gpu(torch.zeros(1, 2, 2, 16, 16, dtype=torch.bfloat16))


def test_triton_launch_plan(monkeypatch):
    # the kernels' grids (kernels._plan): a row-chunk kernel's chunks are whole tiles and cover every row once;
    # a column-block kernel splits a segment's columns only when there are few segment-heads (streaming at
    # batch 1), so that the GPU still gets about two programs an SM
    kernels = pytest.importorskip("kernels")
    if kernels.triton is None:
        pytest.skip("no Triton")
    shape = lambda *s: torch.zeros(1).expand(*s)                       # (only the shape is read)
    grid, (nc,), kw = kernels._plan("write_fwd", shape(4, 8, 8, 1024, 128), 1e-6)
    assert (nc, kw["BC"], grid) == (1, 128, (256,))                    # training: whole segments a program
    grid, (nc,), kw = kernels._plan("write_fwd", shape(1, 8, 8, 1024, 128), 1e-6)
    assert (nc, kw["BC"], grid) == (4, 32, (256,))                     # streaming: 64 segment-heads
    monkeypatch.setitem(kernels.KERNEL_CFG, "read_bwd", (32, 4, 1, 100))   # 100 rows -> 4 tiles of 32
    grid, (per, n), kw = kernels._plan("read_bwd", shape(1, 2, 2, 1000, 64), 1e-6)
    assert (per, n, grid, kw["BLOCK"]) == (128, 8, (32,), 32)           # 8 chunks of 128 >= 1000 > 7 of them
    grid, (per, n), kw = kernels._plan("read_fwd", shape(1, 2, 2, 100, 64), 1e-6)
    assert per == 128 and n == 1 and per >= 100 > per - kw["BLOCK"]    # a short segment: no tiles past its end


def test_local_matches_reference():
    torch.manual_seed(1)
    attn = Attention(cfg_for(attn="local")).double()
    x = torch.randn(2, 27, 32, dtype=torch.float64)
    assert rel_err(fast_attention(attn, x)[0], ref_attention(attn, x)[0]) < 1e-6


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_bf16_autocast_close_to_reference(update):
    # bf16 matmuls (8 mantissa bits) in the projections and local attention; the memory itself runs in
    # fp32 inside an autocast-disabled region. Stated tolerance: 3% relative error on the layer output.
    torch.manual_seed(2)
    attn = random_infini_layer(update=update).float()
    x = torch.randn(2, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = fast_attention(attn, x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert rel_err(y.double(), ref_attention(attn.double(), x.double())[0]) < 3e-2


def tiny_model(attn, update="delta", **kw):
    torch.manual_seed(0)
    m = Llama(cfg_for(attn=attn, update=update, **kw)).double()
    for b in m.blocks:
        if attn == "infini":
            with torch.no_grad():
                b.attn.beta.normal_(0, 1.0)
    return m.eval()


@pytest.mark.parametrize("attn", ["infini", "local", "full"])
def test_causal(attn):
    m = tiny_model(attn)
    idx = torch.randint(0, 97, (2, 30))
    logits = m(idx)[0]
    for t in [0, 7, 8, 20, 29]:
        idx2 = idx.clone()
        idx2[:, t] = (idx2[:, t] + 1) % 97
        logits2 = m(idx2)[0]
        assert torch.equal(logits[:, :t], logits2[:, :t]), f"position {t} leaked backwards"
        assert not torch.allclose(logits[:, t], logits2[:, t])


@pytest.mark.parametrize("attn,sees_past", [("local", False), ("infini", True), ("full", True)])
def test_only_local_ignores_earlier_segments(attn, sees_past):
    m = tiny_model(attn)
    idx = torch.randint(0, 97, (1, 24))
    idx2 = idx.clone()
    idx2[0, 3] = (idx2[0, 3] + 1) % 97                              # change a token in segment 0
    later = slice(8, 24)                                            # segments 1 and 2
    changed = not torch.allclose(m(idx)[0][:, later], m(idx2)[0][:, later], rtol=0, atol=1e-12)
    assert changed == sees_past


@pytest.mark.parametrize("attn", ["infini", "local", "full"])
def test_batch_rows_isolated_and_no_state_leaks(attn):
    m = tiny_model(attn)
    idx = torch.randint(0, 97, (3, 21))
    ref = m(idx[:1])[0]
    idx2 = idx.clone()
    idx2[1:] = torch.randint(0, 97, (2, 21))
    out = m(idx2)[0]
    assert torch.allclose(out[:1], ref, rtol=0, atol=1e-12)          # other rows do not leak into row 0
    assert torch.equal(m(idx[:1])[0], ref)                            # no memory kept between calls


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_streaming_equals_one_call(update):
    m = tiny_model("infini", update)
    idx = torch.randint(0, 97, (2, 45))                              # 5 full segments + 5 tokens
    full_logits, _, full_mem = m(idx)
    chunks, mem, outs = [16, 8, 16, 5], None, []
    pos = 0
    for n in chunks:
        logits, _, mem = m(idx[:, pos:pos + n], memory=mem)
        outs.append(logits)
        pos += n
    assert rel_err(torch.cat(outs, 1), full_logits) < 1e-10
    for (M1, z1), (M2, z2) in zip(mem, full_mem):
        assert rel_err(M1, M2) < 1e-10 and rel_err(z1, z2) < 1e-10
    # last_only returns the last position's logits of the same computation
    assert rel_err(m(idx, last_only=True)[0][:, -1], full_logits[:, -1]) < 1e-12


def test_memory_precision_is_what_the_readme_says():
    # README: under bf16 the memory's matmul results are rounded to bf16 before the fp32 cast, M is cast to
    # bf16 for retrieval, and the state stays fp32. Check each on one segment of the linear rule.
    from model import compressive_memory
    torch.manual_seed(0)
    sq, sk, v = (torch.rand(1, 2, 1, 8, 4).bfloat16() for _ in range(3))
    a_mem, (M, z) = compressive_memory(sq, sk, v, "linear", n_full=2)
    assert M.dtype == z.dtype == a_mem.dtype == torch.float32
    dM = (sk.transpose(-1, -2) @ v).float()                           # bf16 results, cast up
    assert torch.equal(M, dM[:, 0] + dM[:, 1])
    norm = (sq[:, 1].float() * sk[:, 0].float().sum(2)[:, :, None]).sum(-1, keepdim=True)
    assert torch.equal(a_mem[:, 1], (sq[:, 1] @ dM[:, 0].bfloat16()).float() / norm.clamp_min(1e-6))
    readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")).read()
    assert "operands that accumulate in fp32" not in readme and "rounded to bf16 before it is cast to fp32" in readme


@pytest.mark.parametrize("attn", ["infini", "local"])
def test_prompt_shorter_than_a_segment_is_not_padded(attn, monkeypatch):
    # a 7-token prompt at segment 8 attends over 7 positions, not a zero-padded segment (passkey.py at a long
    # --segment ran for minutes on short lengths), and reads as the first 7 tokens of a whole segment do: outputs,
    # the memory carried in, the gradients; the memory it returns is that of no complete segment (it refuses to go on)
    shapes, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: shapes.append(q.shape) or sdpa(q, *a, **k))
    torch.manual_seed(0)
    m = Llama(make_config("tiny", attn=attn, segment=8)).double()
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        memory = m(idx[:, :8])[2]                    # a segment before (None for local)
    def run(T):
        m.zero_grad()
        logits, _, mem = m(idx[:, 8:8 + T], memory=memory)
        logits[:, :7].sum().backward()
        return logits[:, :7], [p.grad.clone() for p in m.parameters() if p.grad is not None], mem
    shapes.clear()
    short, short_grads, mem = run(7)
    assert shapes and all(s[-2] == 7 for s in shapes), shapes
    whole, whole_grads, _ = run(8)
    assert torch.allclose(short, whole, atol=1e-12, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(short_grads, whole_grads))
    if attn == "infini":
        with pytest.raises(ValueError, match="ended mid-segment"):
            m(idx[:, :8], memory=mem)


def test_unaligned_chunk_cannot_be_continued():
    # a chunk that ends mid-segment returns the memory after its last complete segment; continuing from
    # it would misalign every later segment, so forward refuses it (one clear error, not wrong logits)
    m = tiny_model("infini", "delta")
    idx = torch.randint(0, 97, (1, 40))
    _, _, mem = m(idx[:, :12])                                        # 1 segment + 4 tokens
    assert isinstance(mem, list) and len(mem) == m.cfg.n_layer        # still readable
    with pytest.raises(ValueError, match="ended mid-segment"):
        m(idx[:, 12:], memory=mem)
    _, _, mem = m(idx[:, :16])                                        # aligned: continues exactly
    assert rel_err(m(idx[:, 16:], memory=mem)[0], m(idx)[0][:, 16:]) < 1e-10
    # generate() feeds a tail of 1..segment tokens (then longer) with a memory and ignores what it returns
    out = m.generate(idx[:, 16:19], 10, memory=mem)
    assert torch.equal(out[:, :3], idx[:, 16:19]) and out.shape == (1, 13)


@pytest.mark.parametrize("attn", ["infini", "local"])
def test_gradients_through_memory_path(attn):
    # segment 1's input is zero, so segment 1's local attention reads v = 0: its output can depend on
    # segment 0 (and on the K/V weights through segment 0's tokens) only through the memory.
    torch.manual_seed(3)
    layer = Attention(cfg_for(attn=attn)).double()
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    x[:, 8:] = 0
    x.requires_grad_(True)
    y, _ = fast_attention(layer, x)
    y[:, 8:].pow(2).sum().backward()
    gk = layer.wqkv.weight.grad[32:64].norm().item()                  # K rows
    gv = layer.wqkv.weight.grad[64:96].norm().item()                  # V rows
    gx = x.grad[:, :8].norm().item()
    if attn == "infini":
        assert gk > 0 and gv > 0 and gx > 0 and layer.beta.grad.abs().sum() > 0
    else:
        assert gk == 0 and gv == 0 and gx == 0


def test_beta_gets_gradient_in_full_model_and_gates_read():
    m = tiny_model("infini")
    idx = torch.randint(0, 97, (2, 24))
    m(idx, targets=idx)[1].backward()
    for b in m.blocks:
        assert b.attn.beta.grad is not None and b.attn.beta.grad.abs().sum() > 0
    g = m.gates()
    assert g.shape == (2, 4) and ((g >= 0) & (g <= 1)).all()
    fresh = Llama(cfg_for(attn="infini"))
    assert torch.equal(fresh.gates(), torch.full((2, 4), 0.5))         # beta = 0 -> gate 0.5 (P1)
    assert Llama(cfg_for(attn="full")).gates() is None


def test_300m_parameter_count():
    with torch.device("meta"):
        m = Llama(make_config("300m"))
    # 2 x 50304 x 1024 (embedding + untied head) + 12 x (4 x 1024^2 + 3 x 1024 x 4096 + 2 x 1024 + 8) + 1024
    assert m.num_params(non_embedding=False) == 304_374_880
    assert m.num_params() == 304_374_880 - 50304 * 1024


def test_optimizer_groups():
    m = Llama(cfg_for(attn="infini"))
    opt = m.configure_optimizers(lr=6e-5, weight_decay=0.1, beta_lr=0.01)
    by_lr = {(g["base_lr"], g["weight_decay"]): g["params"] for g in opt.param_groups}
    assert {id(p) for p in by_lr[(0.01, 0.0)]} == {id(b.attn.beta) for b in m.blocks}
    assert all(p.dim() >= 2 for p in by_lr[(6e-5, 0.1)])
    assert all(p.dim() == 1 for p in by_lr[(6e-5, 0.0)])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))


def test_init_scales_output_projections():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=64, n_layer=4, n_head=4, n_embd=256, ffn_hidden=512, segment=8))
    assert abs(m.blocks[0].attn.wqkv.weight.std().item() - 0.02) < 2e-3
    assert abs(m.blocks[0].attn.wo.weight.std().item() - 0.02 / math.sqrt(8)) < 1e-3
    assert abs(m.blocks[0].mlp.w2.weight.std().item() - 0.02 / math.sqrt(8)) < 1e-3


@pytest.mark.parametrize("kw,msg", [
    (dict(attn="sparse"), "attn must be"),
    (dict(update="hebbian"), "update must be"),
    (dict(gate="tanh"), "gate must be"),
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(segment=0), "segment must be a positive"),
    (dict(segment=-8), "segment must be a positive"),
])
def test_bad_config_raises(kw, msg):
    with pytest.raises(ValueError, match=msg):
        cfg_for(**kw)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        make_config("7b")
