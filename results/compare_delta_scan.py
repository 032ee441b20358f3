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
    """model.compressive_memory for update="delta", with the scan M_s = (I - W_s) M_{s-1} + dM_s composed
    in log2(S) batched steps (Hillis-Steele) instead of S sequential D x D matmuls."""
    assert update == "delta"
    B, S, H, N, D = sq.shape
    sd = torch.promote_types(sq.dtype, torch.float32)
    M0, z0 = memory if memory is not None else (sq.new_zeros(B, H, D, D, dtype=sd), sq.new_zeros(B, H, D, dtype=sd))
    z_after = z0[:, None] + sk.sum(dim=3, dtype=sd).cumsum(dim=1)
    z_prev = torch.cat([z0[:, None], z_after[:, :-1]], dim=1)
    empty = (z_prev == 0).all(dim=-1)[..., None, None]        # an empty memory: plain sigma(K)^T V write
    W = (sk.transpose(-1, -2) @ (sk / normaliser(sk, z_prev)).to(sk.dtype)).to(sd).masked_fill(empty, 0.0)
    eye = torch.eye(D, dtype=sd, device=sq.device).expand(B, 1, H, D, D)
    A, b, o = eye - W, (sk.transpose(-1, -2) @ v).to(sd), 1
    while o < S:      # after offset o, element s composes the maps of segments s-2o+1 .. s
        b = A @ torch.cat([torch.zeros_like(b[:, :o]), b[:, :-o]], dim=1) + b
        A = A @ torch.cat([eye.expand(B, o, H, D, D), A[:, :-o]], dim=1)
        o *= 2
    M_after = b if memory is None else A @ M0[:, None] + b
    M_prev = torch.cat([M0[:, None], M_after[:, :-1]], dim=1)
    out = (M_after[:, n_full - 1], z_after[:, n_full - 1]) if n_full > 0 else (M0, z0)
    return (sq @ M_prev.to(sq.dtype)).to(sd) / normaliser(sq, z_prev), out


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
