"""Streaming prefill (eager, bf16 autocast, 300m infini-delta, 128K tokens in chunks of 8192) with the delta
rule's scan as model.py's sequential loop vs a log-depth (Hillis-Steele) composition of the same affine maps,
on one machine in one run: python results/compare_delta_scan.py -> compare_delta_scan_h100.json.
(The run that made the JSON loaded the two versions from files; this script carries the log-depth one.)"""
import json, os, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model
from model import normaliser


def logscan_compressive_memory(sq, sk, v, update, n_full, memory=None):
    """Retrieve from, then update, the memory of every segment at once.

    sq, sk, v: (B, S, H, N, D); sq = sigma(Q), sk = sigma(K), taken before RoPE. They stay in the compute
    dtype (bf16 under autocast, as they leave bf16 matmuls) and feed the matmuls as operands, which
    accumulate in fp32; the state M, z, the normaliser and the division are fp32 (fp64 for fp64 inputs).
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
        #       = A_s M_{s-1} + dM_s,   A_s = I - W_s,   W_s = sigma(K)^T diag(1 / sigma(K) z_{s-1}) sigma(K).
        # W_s needs only z_{s-1}, known for all segments, so every O(N) matmul is batched over segments.
        # A segment that reads an empty memory (z = 0) writes plain sigma(K)^T V: W_s = 0 there.
        empty = (z_prev == 0).all(dim=-1)[..., None, None]                        # (B, S, H, 1, 1)
        W = (sk.transpose(-1, -2) @ (sk / normaliser(sk, z_prev)).to(sk.dtype)).to(sd).masked_fill(empty, 0.0)
        # What is left is an affine scan over segments. Compose the maps M -> A M + b in log2(S) batched
        # steps (Hillis-Steele): after the step with offset o, element s is the composition of elements
        # s-2o+1 .. s. log2(S) launches instead of S, which matters at batch 1 and long sequences.
        eye = torch.eye(D, dtype=sd, device=sq.device).expand(B, 1, H, D, D)
        A, b, o = eye - W, dM, 1
        while o < S:
            b = A @ torch.cat([torch.zeros_like(b[:, :o]), b[:, :-o]], dim=1) + b
            A = A @ torch.cat([eye.expand(B, o, H, D, D), A[:, :-o]], dim=1)
            o *= 2
        M_after = b if memory is None else A @ M0[:, None] + b                   # M_s for s = 0..S-1
        M_prev = torch.cat([M0[:, None], M_after[:, :-1]], dim=1)
        M_out = M_after[:, n_full - 1] if n_full > 0 else M0
    z_out = z_after[:, n_full - 1] if n_full > 0 else z0
    # eq. 7: A_mem = sigma(Q) M_{s-1} / (sigma(Q) z_{s-1}); zeros while the memory is empty
    a_mem = (sq @ M_prev.to(sq.dtype)).to(sd) / normaliser(sq, z_prev)
    return a_mem, (M_out, z_out)

torch.backends.cuda.matmul.allow_tf32 = True
sequential = model.compressive_memory
torch.manual_seed(0)
m = model.Llama(model.make_config("300m", attn="infini", update="delta")).cuda().eval()
idx = torch.randint(0, 50257, (1, 131072), device="cuda")
rows = []
for name, fn in [("scan", logscan_compressive_memory), ("sequential", sequential)] * 2:
    model.compressive_memory = fn                      # Attention.forward looks the function up at call time
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        m(idx[:, :8192], last_only=True)               # warm-up
        torch.cuda.synchronize(); t = time.perf_counter(); mem = None
        for i in range(0, idx.shape[1], 8192):
            _, _, mem = m(idx[:, i:i + 8192], memory=mem, last_only=True)
        torch.cuda.synchronize()
    rows.append(dict(delta_scan=name, length=idx.shape[1], tok_s=round(idx.shape[1] / (time.perf_counter() - t))))
    print(rows[-1], flush=True)
out = os.environ.get("OUT", "results")
json.dump(rows, open(os.path.join(out, "compare_delta_scan_h100.json"), "w"), indent=1)
