"""
Infini-LLaMA: a small LLaMA whose attention layers can be Infini-attention.

Read top to bottom: config -> RMSNorm -> RoPE -> the compressive memory (the heart of
Infini-attention) -> memory_fast -> Attention (full / local / infini) -> SwiGLU MLP -> Block -> Llama.
memory_fast (~170 lines after compressive_memory) is the same function as compressive_memory (plus the
gate mix of eq. 10), written for speed: autograd Functions with hand-written backwards on the CPU, the
Triton kernels of kernels.py on a GPU. It is the path that runs by default (cfg.fast_memory); a first
reading can skip it. compressive_memory stays the spec: the float64 tests check memory_fast against it
(and both against test_model.py's per-segment loop, written from P2's equations).

Equation numbers refer to P2 = Munkhdalai et al. 2024, "Leave No Context Behind"
(arXiv 2404.07143); the recipe (gate, init, beta LR) follows P1 = "Probing the Limits of
Compressive Memory" (arXiv 2512.23862). Sources for every number are cited where it is used.

Shapes: B batch, T tokens, C = n_embd, H heads, D head dim, N segment length, S segments.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import kernels

# -----------------------------------------------------------------------------
# config

@dataclass
class LlamaConfig:
    vocab_size: int = 50304      # GPT-2's 50257 padded up to a multiple of 64 (faster matmuls)
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 1024
    ffn_hidden: int = 4096       # SwiGLU hidden size
    segment: int = 1024          # N: tokens per segment for "infini" and "local"
    attn: str = "infini"         # "infini" (memory + local) | "local" (segments, no memory) | "full"
    update: str = "delta"        # memory update rule: "delta" (eq. 9, P1's choice) | "linear" (eq. 8)
    gate: str = "hard_sigmoid"   # "hard_sigmoid" (P1: clamp(0.2b+0.5, 0, 1)) | "sigmoid" (P2)
    # which code path computes the infini memory: True = memory_fast (faster, leaner on a GPU), False =
    # compressive_memory (the spec). The same function either way: it never changes the model's math or
    # weights. It is saved with the config in checkpoints, but no script takes it from one: train.py
    # --resume and finetune.py use their --fast_memory flag (default 1), passkey.py this default.
    fast_memory: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        # one clear ValueError per mistake, so a bad flag never turns into a shape error deep inside
        checks = [
            (self.attn in ("infini", "local", "full"), f"attn must be 'infini', 'local' or 'full', got {self.attn!r}"),
            (self.update in ("delta", "linear"), f"update must be 'delta' or 'linear', got {self.update!r}"),
            (self.gate in ("hard_sigmoid", "sigmoid"), f"gate must be 'hard_sigmoid' or 'sigmoid', got {self.gate!r}"),
            (self.n_head > 0 and self.n_embd % self.n_head == 0,
             f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"),
            ((self.n_embd // max(self.n_head, 1)) % 2 == 0, "head dim (n_embd / n_head) must be even for RoPE"),
            (isinstance(self.segment, int) and self.segment > 0, f"segment must be a positive integer, got {self.segment!r}"),
            (min(self.vocab_size, self.n_layer, self.ffn_hidden) > 0, "vocab_size, n_layer and ffn_hidden must be positive"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


# Named sizes. "300m" is the study's model (P1): 12 layers, d 1024, 8 heads of 128, SwiGLU 4096,
# untied head; with the GPT-2 vocabulary it has 304.4M parameters.
PRESETS = {
    "300m": dict(n_layer=12, n_head=8, n_embd=1024, ffn_hidden=4096),
    "small": dict(n_layer=8, n_head=8, n_embd=512, ffn_hidden=2048),    # quick GPU runs: 85M (59M without the embedding table)
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, ffn_hidden=128, segment=16),  # CPU tests and laptops
}


def make_config(model="300m", **overrides):
    """A preset plus overrides; overrides equal to None are ignored (handy for flags)."""
    if model not in PRESETS:
        raise ValueError(f"unknown model preset {model!r}; choose one of {sorted(PRESETS)}")
    kw = {**PRESETS[model], **{k: v for k, v in overrides.items() if v is not None}}
    return LlamaConfig(**kw)

# -----------------------------------------------------------------------------
# building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32 even under bf16 autocast (llama does the same), then cast back
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


def rope_cos_sin(n_pos, head_dim, theta, device, dtype):
    """cos and sin of shape (n_pos, 1, head_dim) for positions 0..n_pos-1 (broadcast over heads).
    Angles in float64: at 1M positions float32 would lose the low-frequency phases."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    ang = torch.arange(n_pos, device=device, dtype=torch.float64)[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)[:, None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE on x (..., n_pos, H, D), real arithmetic only (complex numbers fight torch.compile)."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rot * sin).type_as(x)


def sigma(x):
    """The memory's nonlinearity: ELU + 1 (P2 sec. 2.1.2), positive so the normaliser is positive."""
    return F.elu(x) + 1.0


def _sig(t):
    """sigma(t) evaluated in fp32 (at least); returns the pair (fp32, t's dtype): _sig(t)[0] is the fp32
    value, _sig(t)[1] the same values rounded to t's dtype (bf16 under autocast), the memory's matmul operand."""
    s = sigma(t.to(torch.promote_types(t.dtype, torch.float32)))
    return s, s.to(t.dtype)

# -----------------------------------------------------------------------------
# the compressive memory (P2 eqs. 7-9), all segments of a sequence at once

EPS = 1e-6  # floor of the normaliser sigma(q) z: an empty memory (z = 0) then reads exactly zeros, never 0/0


def raw_normaliser(s, z):
    """sigma(Q) z_{s-1} per token, (..., N, 1), as an fp32 sum (P2's denominator). s (..., N, D), z (..., D)."""
    return (s.to(z.dtype) * z.unsqueeze(-2)).sum(-1, keepdim=True)


def normaliser(s, z):
    """raw_normaliser on its floor: what the retrieval divides by."""
    return raw_normaliser(s, z).clamp_min(EPS)


def compressive_memory(sq, sk, v, update, n_full, memory=None):
    """Retrieve from, then update, the memory of every segment at once.

    sq, sk, v: (B, S, H, N, D); sq = sigma(Q), sk = sigma(K), taken before RoPE. They stay in the compute
    dtype (bf16 under autocast, as they leave bf16 matmuls) and are the matmuls' operands; each matmul's
    result comes out in that dtype (bf16: rounded) before it is cast up, and M is cast down to it for the
    retrieval. The state M, z, the scan, the normaliser and the division are fp32 (fp64 for fp64 inputs).
    n_full: how many of the S segments are complete (only those write to the memory that is returned).
    memory: (M, z) with M (B, H, D, D), z (B, H, D) left by earlier segments, or None (empty).
    Returns A_mem (B, S, H, N, D) in fp32, where segment s reads M_{s-1}, and (M, z) after segment n_full.
    """
    B, S, H, N, D = sq.shape
    sd = torch.promote_types(sq.dtype, torch.float32)                  # the state's dtype
    M0, z0 = memory if memory is not None else (sq.new_zeros(B, H, D, D, dtype=sd), sq.new_zeros(B, H, D, dtype=sd))
    # z_s = z_{s-1} + sum_t sigma(K_t) (eqs. 8, 9): every increment is known up front -> one prefix sum
    z_after = z0[:, None] + sk.sum(dim=3, dtype=sd).cumsum(dim=1)       # (B, S, H, D): z_s for s = 0..S-1
    z_prev = torch.cat([z0[:, None], z_after[:, :-1]], dim=1)           # exclusive: segment s sees z_{s-1}
    dM = (sk.transpose(-1, -2) @ v).to(sd)                              # sigma(K)^T V per segment (B, S, H, D, D)
    if update == "linear":
        # eq. 8: M_s = M_{s-1} + sigma(K)^T V, again a prefix sum over segments: no loop at all
        M_after = M0[:, None] + dM.cumsum(dim=1)
        M_prev = torch.cat([M0[:, None], M_after[:, :-1]], dim=1)
        M_out = M_after[:, n_full - 1] if n_full > 0 else M0
    else:
        # eq. 9, the delta rule, writes only what the memory does not already return for these keys:
        #   M_s = M_{s-1} + sigma(K)^T (V - sigma(K) M_{s-1} / (sigma(K) z_{s-1}))
        #       = M_{s-1} - W_s M_{s-1} + dM_s,   W_s = sigma(K)^T diag(1 / sigma(K) z_{s-1}) sigma(K).
        # W_s needs only z_{s-1}, known for all segments, so every O(N) matmul is batched over segments;
        # the scan that remains is one D x D matmul per segment. (An empty memory has M = 0, so the
        # huge W_s that the EPS floor gives there multiplies zeros: the first write is plain sigma(K)^T V.)
        W = (sk.transpose(-1, -2) @ (sk / normaliser(sk, z_prev)).to(sk.dtype)).to(sd)
        M, Ms = M0, []
        for s in range(S):
            Ms.append(M)
            if s < n_full:
                M = M + dM[:, s] - W[:, s] @ M
        M_prev, M_out = torch.stack(Ms, dim=1), M
    z_out = z_after[:, n_full - 1] if n_full > 0 else z0
    # eq. 7: A_mem = sigma(Q) M_{s-1} / (sigma(Q) z_{s-1}); zeros while the memory is empty
    a_mem = (sq @ M_prev.to(sq.dtype)).to(sd) / normaliser(sq, z_prev)
    return a_mem, (M_out, z_out)

# -----------------------------------------------------------------------------
# the same memory, cheaper on the GPU (cfg.fast_memory). Tested equal to compressive_memory + eq. 10 in
# test_model.py (forward and every gradient, float64). Compiled, autograd through compressive_memory is
# correct but wasteful on the GPU (bench.py --mode=layer lists its kernels): it keeps an fp32 copy of sigma(Q)
# and the bf16 retrieval for the backward, reads k again to sum sigma(K) over a segment, and gets the gate's
# gradient from two extra reductions over (B, S, H, N, D) tensors. Here, autograd Functions with hand-written
# backwards keep sigma(Q), sigma(K) (bf16, row-major: the matmuls take them as they are), a row-major V (the
# operand of sigma(K)^T V), SDPA's output and one normaliser per token, and take every per-token quantity of
# the backward from the matmuls it needs anyway. They are memory_fast on the CPU and the reference for the GPU's
# Triton kernels (kernels.py), which follow their steps.

class _Write(torch.autograd.Function):
    """The write side of eqs. 8-9: sigma(K) in k's dtype, its sum over each segment (the z increments) and
    sigma(K)^T V per segment in the state dtype. Backward: dsigma(K) = V dM^T + dz (+ the delta rule's
    gradient through sigma(K) itself), dV = sigma(K) dM, and elu'(x) = min(sigma(x), 1) from the saved
    sigma(K), so k is never read again."""

    @staticmethod
    def forward(ctx, k, v):
        ctx.set_materialize_grads(False)
        sk = _sig(k)[1].contiguous()          # (B, S, H, N, D) row-major: the matmuls take it and its transpose as is
        sd = torch.promote_types(k.dtype, torch.float32)
        ctx.save_for_backward(sk, v)
        return sk, sk.sum(dim=3, dtype=sd), (sk.transpose(-1, -2) @ v).to(sd)

    @staticmethod
    def backward(ctx, g_sk, g_zs, g_dM):
        sk, v = ctx.saved_tensors
        sd = torch.promote_types(sk.dtype, torch.float32)
        dsk = torch.zeros_like(sk, dtype=sd) if g_zs is None else g_zs.unsqueeze(-2).expand(sk.shape)
        dv = None
        if g_dM is not None:
            gc = g_dM.to(sk.dtype)
            dsk = dsk + (v @ gc.transpose(-1, -2)).to(sd)
            dv = (sk @ gc).to(v.dtype)
        if g_sk is not None:
            dsk = dsk + g_sk.to(sd)
        return (dsk * sk.to(sd).clamp_max(1.0)).to(sk.dtype), dv


class _DeltaW(torch.autograd.Function):
    """The delta rule's W_s = sigma(K)^T diag(1 / sigma(K) z_{s-1}) sigma(K) (eq. 9, as compressive_memory
    computes it). Saves only its normaliser per token: the scaled right operand is recomputed from sigma(K)."""

    @staticmethod
    def forward(ctx, sk, z):
        raw = raw_normaliser(sk, z)
        ctx.save_for_backward(sk, z, raw)
        return (sk.transpose(-1, -2) @ (sk / raw.clamp_min(EPS)).to(sk.dtype)).to(z.dtype)

    @staticmethod
    def backward(ctx, gW):
        sk, z, raw = ctx.saved_tensors
        rden = 1.0 / raw.clamp_min(EPS)        # (not the forward's division: the partitioner would reuse and save it)
        s32, gc = sk.to(z.dtype), gW.to(sk.dtype)
        g_right = (sk @ gc).to(z.dtype)                                    # d(sigma(K) / den)
        dden = -(g_right * s32).sum(-1, keepdim=True) * rden**2 * (raw >= EPS)
        dsk = ((s32 * rden).to(sk.dtype) @ gc.transpose(-1, -2)).to(z.dtype) + g_right * rden + dden * z.unsqueeze(-2)
        return dsk, (dden * s32).sum(-2)


class _ReadAndMix(torch.autograd.Function):
    """Eqs. 7 + 10: y = g sigma(q) M_{s-1} / (sigma(q) z_{s-1}) + (1 - g) y_dot, in one function.
    Saves sigma(q) in q's dtype (the matmul operand), the normaliser per token and M, z; y_dot is SDPA's
    output, kept alive anyway. Backward materialises one (B, S, H, N, D) tensor, u = dy / den, the operand
    of both its matmuls: G = u M^T and dM = g sigma(q)^T u. Every per-token quantity follows from G:
    dy . A_mem = sigma(q) . G, so the normaliser's and the gate's gradients need no extra pass over A_mem."""

    @staticmethod
    def forward(ctx, q, M, z, y_dot, g):
        sq = _sig(q)[1].contiguous()          # row-major per segment and head, as the matmuls want it
        raw = raw_normaliser(sq, z)                                        # before its floor: backward's mask
        Mc = M.to(sq.dtype)
        a_mem = (sq @ Mc).to(M.dtype) / raw.clamp_min(EPS)                  # as in compressive_memory
        ctx.save_for_backward(sq, raw, Mc, z, y_dot, g)
        return (g * a_mem + (1.0 - g) * y_dot.to(M.dtype)).to(y_dot.dtype)

    @staticmethod
    def backward(ctx, dy):
        sq, raw, Mc, z, y_dot, g = ctx.saved_tensors
        den = raw.clamp_min(EPS)
        dy32, s32 = dy.to(z.dtype), sq.to(z.dtype)
        u = (dy32 / den).to(sq.dtype)
        G = (u @ Mc.transpose(-1, -2)).to(z.dtype)                          # dy M^T / den
        dya = (s32 * G).sum(-1, keepdim=True)                               # dy . A_mem per token
        dden = -g * dya / den * (raw >= EPS)                                # no gradient through the floor
        dq = ((g * G + dden * z.unsqueeze(-2)) * s32.clamp_max(1.0)).to(sq.dtype)   # elu'(x) = min(sigma(x), 1)
        dM = g * (sq.transpose(-1, -2) @ u).to(z.dtype)
        dz = (dden * s32).sum(-2)
        # (dy * y_dot in y_dot's dtype, summed in fp32: casting y_dot up first would share that cast with the
        # forward's mix, and the partitioner would save an fp32 copy of y_dot)
        dg = (dya - (dy * y_dot).sum(-1, keepdim=True, dtype=z.dtype)).sum((0, 1, 3, 4), keepdim=True)
        return dq, dM, dz, ((1.0 - g) * dy32).to(y_dot.dtype), dg


# The delta rule's scan is sequential over segments: as a loop of batched D x D matmuls it costs two or
# three tiny kernels a segment, each waiting on the last (32 segments at T = 32768: latency, not work). On a
# GPU with Triton it runs as one kernel each way instead (kernels.py).
class _DeltaScan(torch.autograd.Function):
    """Eq. 9's scan M_s = M_{s-1} + dM_s - W_s M_{s-1} over the first n_full segments (the loop of
    compressive_memory). Backward runs one D x D matmul per step too, gM_{s-1} = gM_s - W_s^T gM_s (+ the
    read's gradient), and gets dW = -gM_s M_{s-1}^T for all steps in one batched matmul after the loop.
    Returns M_prev (B, S, H, D, D), M_{s-1} for every segment s, and the state after segment n_full."""

    @staticmethod
    def forward(ctx, M0, dM, W, n_full):
        B, S, H, D, _ = dM.shape
        dM, W, M0 = dM.contiguous(), W.contiguous(), M0.contiguous()
        if kernels.scan_on_gpu(dM):
            M_prev, M = kernels.scan_fwd(M0, dM, W, n_full)
        else:
            bmm = lambda t: t.reshape(B * H, D, D)                          # views: M, dMt[s], Wt[s] are contiguous
            dMt, Wt = dM.transpose(0, 1).contiguous(), W.transpose(0, 1).contiguous()   # (S, B, H, D, D)
            M, Ms = M0, []
            for s in range(S):
                Ms.append(M)
                if s < n_full:
                    M = torch.baddbmm(bmm(M + dMt[s]), bmm(Wt[s]), bmm(M), alpha=-1).view(B, H, D, D)
            M_prev = torch.stack(Ms, dim=1)
        ctx.save_for_backward(W, M_prev)
        ctx.n_full = n_full
        return M_prev, M

    @staticmethod
    @torch.autograd.function.once_differentiable      # the kernels have no backward of their own
    def backward(ctx, gM_prev, gM):
        W, M_prev = ctx.saved_tensors
        B, S, H, D, _ = M_prev.shape
        gM_prev, g = gM_prev.contiguous(), gM.contiguous()    # g: the gradient of the state after step s
        if kernels.scan_on_gpu(W):
            gdM, g = kernels.scan_bwd(W, gM_prev, g, ctx.n_full)
        else:
            bmm = lambda t: t.reshape(B * H, D, D)
            gMt, Wt = gM_prev.transpose(0, 1).contiguous(), W.transpose(0, 1).contiguous()
            gs = []
            for s in reversed(range(S)):
                if s < ctx.n_full:
                    gs.append(g)
                    g = torch.baddbmm(bmm(g + gMt[s]), bmm(Wt[s]).transpose(-1, -2), bmm(g), alpha=-1).view(B, H, D, D)
                else:
                    gs.append(torch.zeros_like(g))
                    g = g + gMt[s]
            gdM = torch.stack(gs[::-1], dim=1)
        return g, gdM, -(gdM @ M_prev.transpose(-1, -2)), None


def empty_memory(like, B, H, D):
    """The memory before the first segment, M_0 = 0 (B, H, D, D) and z_0 = 0 (B, H, D), in the state's dtype."""
    sd = torch.promote_types(like.dtype, torch.float32)
    return like.new_zeros(B, H, D, D, dtype=sd), like.new_zeros(B, H, D, dtype=sd)


def memory_fast(q, k, v, y_dot, g, update, n_full, memory=None, written=None):
    """compressive_memory + the gate mix of eq. 10, from q, k before sigma: (y (B, S, H, N, D) in y_dot's
    dtype, (M, z)). q, k, v, y_dot (B, S, H, N, D); g broadcastable to (1, 1, H, 1, 1) in the state dtype.
    written: on a CUDA GPU, the write already done by kernels.QKVWriteGPU (dM, z_after, W; k, v unused), and
    the read then runs as kernels.ReadGPU; else the PyTorch Functions."""
    B, S, H, N, D = q.shape
    M0, z0 = memory if memory is not None else empty_memory(q, B, H, D)
    fused = written is not None
    if fused:
        dM, z_after, W = written
    else:
        sk, zs, dM = _Write.apply(k, v)
        z_after = z0[:, None] + zs.cumsum(dim=1)                           # the same lines as compressive_memory
    z_prev = torch.cat([z0[:, None], z_after[:, :-1]], dim=1)
    if update == "linear":
        M_after = M0[:, None] + dM.cumsum(dim=1)
        M_prev = torch.cat([M0[:, None], M_after[:, :-1]], dim=1)
        M_out = M_after[:, n_full - 1] if n_full > 0 else M0
    else:
        if not fused:                        # (the Triton write returned W_s with dM)
            # compiled, the partitioner would save the fp32 cast of sigma(K) that W's forward and backward share;
            # under a checkpoint it recomputes it from the bf16 sigma(K) instead (eager: _DeltaW's saves are all)
            W = (checkpoint(_DeltaW.apply, sk, z_prev, use_reentrant=False) if torch.compiler.is_compiling()
                 else _DeltaW.apply(sk, z_prev))
        M_prev, M_out = _DeltaScan.apply(M0, dM, W, n_full)
    z_out = z_after[:, n_full - 1] if n_full > 0 else z0
    y = (kernels.ReadGPU.apply(q, M_prev, z_prev, y_dot, g, EPS).transpose(2, 3) if fused
         else _ReadAndMix.apply(q, M_prev, z_prev, y_dot, g))
    return y, (M_out, z_out)

# -----------------------------------------------------------------------------
# attention

class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)   # q, k, v in one matmul
        self.wo = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        if cfg.attn == "infini":
            # eq. 10's gate parameter, one scalar per head. beta = 0 -> gate 0.5: memory and local
            # attention start equal (ports that start it at -100 or +10 never let it move).
            self.beta = nn.Parameter(torch.zeros(cfg.n_head))

    def gate(self):
        """Memory weight g per head: A = g * A_mem + (1 - g) * A_dot (eq. 10)."""
        if self.cfg.gate == "hard_sigmoid":
            return torch.clamp(0.2 * self.beta + 0.5, 0.0, 1.0)
        return torch.sigmoid(self.beta)

    def forward(self, x, cos, sin, memory=None):
        B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        qkv = self.wqkv(x).view(B, T, 3, H, D)                            # q, k, v: qkv.unbind(dim=2)

        if self.cfg.attn == "full":
            # plain causal attention over the whole sequence, global positions
            q, k, v = qkv.unbind(dim=2)                                    # each (B, T, H, D)
            q, k, v = (t.transpose(1, 2) for t in (apply_rope(q, cos, sin), apply_rope(k, cos, sin), v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # flash kernel on GPU
            return self.wo(y.transpose(1, 2).reshape(B, T, C)), None

        # cut the sequence into S segments of N tokens; a short last segment is zero-padded at its
        # end, which cannot change any real token's output under a causal mask. A sequence shorter than
        # one segment is that segment, unpadded (a 256-token prompt at --segment=100000 is not 100000 tokens)
        N = min(self.cfg.segment, T)
        S, n_full = -(-T // N), T // self.cfg.segment   # n_full counts whole segments: a short one writes no memory
        cos, sin = cos[:N], sin[:N]                     # (a caller may pass the tables of a whole segment)
        if S * N != T:
            qkv = F.pad(qkv, (0, 0, 0, 0, 0, 0, 0, S * N - T))
        qkv = qkv.view(B, S, N, 3, H, D)
        per_head = lambda t: t.transpose(2, 3)                                      # (B, S, H, N, D)
        written = None
        if self.cfg.attn == "infini" and self.cfg.fast_memory and kernels.fused_on_gpu(per_head(qkv[:, :, :, 0])):
            # on a GPU: RoPE and the memory's write as one Function, whose backward writes the qkv projection's
            # whole gradient in one kernel (SDPA's gradients through RoPE plus the memory's); the same arithmetic
            memory = memory if memory is not None else empty_memory(qkv, B, H, D)    # (made once: the read takes it too)
            q, v, q_rot, k_rot, *written = kernels.QKVWriteGPU.apply(qkv, cos, sin, memory[1], self.cfg.update == "delta", EPS)
            k = None
        else:
            q, k, v = qkv.unbind(dim=3)                                    # each (B, S, N, H, D)
            q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        # A_dot: causal softmax attention inside each segment. Folding the segments into the batch
        # dimension runs every segment in one SDPA call; RoPE positions restart at 0 per segment.
        fold = lambda t: t.reshape(B * S, N, H, D).transpose(1, 2)         # (B*S, H, N, D)
        y = F.scaled_dot_product_attention(fold(q_rot), fold(k_rot), fold(v), is_causal=True)
        y = y.view(B, S, H, N, D)

        new_memory = None
        if self.cfg.attn == "infini":
            # autocast off: we choose each op's precision ourselves (see compressive_memory), since under
            # autocast even .float() tensors would be multiplied in bf16. sigma(Q), sigma(K) are evaluated
            # in fp32 and stored in q's compute dtype (bf16 under autocast), the matmuls' operands; the
            # state M, z, the normaliser sigma(Q) z (a sum over ~1e5 terms: it needs the range) and the
            # division are fp32.
            with torch.autocast(device_type=x.device.type, enabled=False):
                g = self.gate().to(torch.promote_types(q.dtype, torch.float32)).view(1, 1, H, 1, 1)
                if self.cfg.fast_memory:                                            # the same function, hand-written backwards
                    y, new_memory = memory_fast(per_head(q), k if k is None else per_head(k), per_head(v), y, g,
                                                self.cfg.update, n_full, memory, written)
                else:
                    # _sig(.)[1]: sigma in q's and k's compute dtype (the [0] entry, fp32, is unused here)
                    a_mem, new_memory = compressive_memory(
                        _sig(per_head(q))[1], _sig(per_head(k))[1], per_head(v), self.cfg.update, n_full, memory)
                    y = (g * a_mem + (1.0 - g) * y.to(a_mem.dtype)).to(y.dtype)   # eq. 10

        y = y.transpose(2, 3).reshape(B, S * N, C)[:, :T]                  # (B, S, N, H, D) -> (B, T, C)
        return self.wo(y), new_memory


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, memory=None):
        a, memory = self.attn(self.attn_norm(x), cos, sin, memory)
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return x, memory

# -----------------------------------------------------------------------------
# the model

class UnalignedMemory(list):
    """The per-layer memory returned after a chunk whose length is not a multiple of the segment: the
    state after its last complete segment, readable (e.g. to compare), but refused as a memory input."""


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)   # untied, as in P1
        self.apply(self._init_weights)
        # residual-branch output projections: std 0.02 / sqrt(2 n_layer), so the residual stream's
        # variance does not grow with depth (GPT-2, P1)
        for name, p in self.named_parameters():
            if name.endswith("attn.wo.weight") or name.endswith("mlp.w2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out the token embedding table (a lookup, no FLOPs).
        The untied lm_head is a real matmul, so it stays in."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, memory=None, last_only=False):
        """idx (B, T) token ids -> (logits, loss, memory).

        memory: per layer (M, z) carried from an earlier call (infini only), or None. Segments are
        counted from the start of idx, so when streaming, feed chunks whose lengths are multiples of
        the segment (the last chunk may be shorter). The returned memory is the state after the last
        complete segment of idx (None for "full" and "local"); after a chunk that ends mid-segment it
        is an UnalignedMemory, which forward refuses: continuing from it would skip that chunk's last
        partial segment and misalign every later one (logits silently off by tens of percent).
        targets: (B, T) ids, -1 = ignored. last_only: logits for the last position only (generation).
        """
        cfg = self.cfg
        B, T = idx.shape
        if isinstance(memory, UnalignedMemory):
            raise ValueError("this memory comes from a chunk that ended mid-segment and cannot be continued: "
                             f"stream in chunks of whole segments ({cfg.segment} tokens); only the last may be shorter")
        x = self.tok_emb(idx)
        # local/infini: positions restart each segment (a sequence shorter than one is that segment, unpadded)
        n_pos = T if cfg.attn == "full" else min(cfg.segment, T)
        cos, sin = rope_cos_sin(n_pos, cfg.head_dim, cfg.rope_theta, idx.device, x.dtype)
        layer_mem = memory if memory is not None else [None] * cfg.n_layer
        new_memory = []
        for block, mem in zip(self.blocks, layer_mem):
            x, mem = block(x, cos, sin, mem)
            new_memory.append(mem)
        if last_only:
            x = x[:, -1:]
        logits, loss = self.head(x, targets)
        if cfg.attn != "infini":
            return logits, loss, None
        return logits, loss, (new_memory if T % cfg.segment == 0 else UnalignedMemory(new_memory))

    def head(self, x, targets=None):
        """Final norm, vocabulary projection and loss (its own method so compile_model can fuse it)."""
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def gates(self):
        """(n_layer, n_head) memory-gate values g in [0, 1]; None unless attn == "infini"."""
        if self.cfg.attn != "infini":
            return None
        with torch.no_grad():
            return torch.stack([b.attn.gate().float() for b in self.blocks]).cpu()

    def configure_optimizers(self, lr, weight_decay=0.1, beta_lr=0.01, betas=(0.9, 0.95), eps=1e-8, fused=None):
        """AdamW with three groups: >=2-D weights decay; norms (1-D) do not; the gate parameters beta
        get their own LR and no decay (HFB, the Hugging Face blog "A failed experiment: Infini-Attention,
        and why we should keep trying?": with the model's small LR and decay on beta, gates never leave
        0.5). Each group keeps its peak LR in 'base_lr' for the schedule to scale."""
        decay, no_decay, gate = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("attn.beta"):
                gate.append(p)
            elif p.dim() >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [dict(params=decay, weight_decay=weight_decay, base_lr=lr),
                  dict(params=no_decay, weight_decay=0.0, base_lr=lr)]
        if gate:
            groups.append(dict(params=gate, weight_decay=0.0, base_lr=beta_lr))
        for g in groups:
            g["lr"] = g["base_lr"]
        if fused is None:
            fused = all(p.is_cuda for p in self.parameters())
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 x (params without the embedding table) for the matmuls, plus
        6 x n_layer x n_embd x context for causal attention, context = T for full, the segment otherwise.
        (The memory's D x D matmuls add about 4% at d 1024 and are left out, as in P1's accounting.)"""
        cfg = self.cfg
        ctx = seq_len if cfg.attn == "full" else min(cfg.segment, seq_len)
        return 6 * self.num_params() + 6 * cfg.n_layer * cfg.n_embd * ctx

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, memory=None):
        """Greedy decoding, used by the passkey test. For infini, pass `memory` from streaming the part
        of the prompt before idx (idx must then start on a segment boundary). Each call re-reads idx
        from that memory, so the memory returned by those calls is never needed."""
        for _ in range(max_new_tokens):
            logits, _, _ = self(idx, memory=memory, last_only=True)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx


def compile_model(model):
    """torch.compile each block and the head, in place (state_dict keys unchanged). The blocks are
    identical, so one compiled graph serves all of them: compile time is that of one layer, not
    n_layer, and the delta rule's segment loop is unrolled once. Compiling the head fuses the fp32
    upcast and log-softmax over the 50K vocabulary instead of materialising them."""
    for block in model.blocks:
        block.compile()
    model.head = torch.compile(model.head)
    return model
