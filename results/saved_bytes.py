"""Bytes of activations one 300m-shaped attention layer saves for its backward: local, infini with
compressive_memory (plain) and with memory_fast (fast). CPU only, no timing.

One layer (n_embd 1024, 8 heads of 128, segment 1024) in bf16 at B = 1, T = 4096 (4 segments); every
saved tensor is caught by torch.autograd.graph.saved_tensors_hooks and counted once per storage (views
of one buffer share it), parameters left out. Everything saved is per token or per segment, so the
count scales linearly with tokens per step: x 8 gives bench.py's 32,768 tokens a step (B x T), per layer.
"eager" is autograd as written; "compiled" is what the min-cut partitioner of torch.compile (the one
inductor uses) chooses, run without kernel generation (backend aot_eager_decomp_partition).

  python results/saved_bytes.py            # prints a table, writes results/saved_bytes.json
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import Attention, make_config, rope_cos_sin  # noqa: E402

T, SCALE = 4096, 32768 // 4096


def saved_bytes(attn, compiled):
    torch.manual_seed(0)
    cfg = make_config("300m", attn=attn[0], update=attn[1] or "delta", fast_memory=attn[2], segment=1024)
    layer = Attention(cfg).to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    cos, sin = rope_cos_sin(cfg.segment, cfg.head_dim, cfg.rope_theta, "cpu", torch.bfloat16)
    x = torch.randn(1, T, cfg.n_embd, dtype=torch.bfloat16, requires_grad=True)
    fn = torch.compile(layer, backend="aot_eager_decomp_partition") if compiled else layer
    seen, detail = {}, []

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.data_ptr() not in seen:
            seen[st.data_ptr()] = st.nbytes()
            detail.append((tuple(t.shape), str(t.dtype).replace("torch.", ""), st.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = fn(x, cos, sin)
    return sum(seen.values()), detail


if __name__ == "__main__":
    unit = 32768 * 1024 * 2                        # one bf16 (32768 tokens, 1024) tensor: 64 MiB
    rows = []
    for name, attn in [("local", ("local", None, False)),
                       ("infini-linear plain", ("infini", "linear", False)), ("infini-linear fast", ("infini", "linear", True)),
                       ("infini-delta plain", ("infini", "delta", False)), ("infini-delta fast", ("infini", "delta", True))]:
        for compiled in [False, True]:
            try:
                n, detail = saved_bytes(attn, compiled)
            except Exception as e:                 # report, do not hide, a variant that does not trace
                print(f"{name} compiled={compiled}: {type(e).__name__}: {str(e)[:200]}")
                continue
            rows.append(dict(variant=name, compiled=compiled, mib_per_layer=round(n * SCALE / 2**20, 1),
                             units=round(n * SCALE / unit, 2),
                             tensors=[f"{s} {d} {b * SCALE / 2**20:.1f} MiB" for s, d, b in detail]))
            print(f"{name:20s} {'compiled' if compiled else 'eager':8s} {n * SCALE / 2**20:8.1f} MiB/layer "
                  f"({n * SCALE / unit:.2f} x a bf16 (32768, 1024) tensor)", flush=True)
    local = {r["compiled"]: r["mib_per_layer"] for r in rows if r["variant"] == "local"}
    for r in rows:
        r["minus_local_mib"] = round(r["mib_per_layer"] - local.get(r["compiled"], float("nan")), 1)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_bytes.json"), "w") as f:
        json.dump(rows, f, indent=1)
