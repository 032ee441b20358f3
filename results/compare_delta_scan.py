"""Streaming prefill (eager, bf16 autocast, 300m infini-delta, chunks of 8192) with the delta rule's scan as
a sequential loop (results/model_sequential_delta.py, commit 7fea3f2) vs the log-depth scan in model.py,
on the same machine in one run: python results/compare_delta_scan.py"""
import importlib.util, json, os, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model
spec = importlib.util.spec_from_file_location("seq", os.path.join(os.path.dirname(__file__), "model_sequential_delta.py"))
seq = importlib.util.module_from_spec(spec); spec.loader.exec_module(seq)
torch.backends.cuda.matmul.allow_tf32 = True
scan = model.compressive_memory
torch.manual_seed(0)
m = model.Llama(model.make_config("300m", attn="infini", update="delta")).cuda().eval()
idx = torch.randint(0, 50257, (1, 131072), device="cuda")
rows = []
for name, fn in [("scan", scan), ("sequential", seq.compressive_memory)] * 2:
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
