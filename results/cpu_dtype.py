"""Why train.py's CPU default is fp32: seconds per training step (forward + backward, infini, segment 128,
batch 2) with and without bf16 autocast on the CPU, 2 threads. CPU only.
    python results/cpu_dtype.py > results/cpu_dtype.txt"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import Llama, make_config  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(2)
for preset, T in [("tiny", 256), ("small", 512)]:
    m = Llama(make_config(preset, attn="infini", segment=128))
    x = torch.randint(0, 50000, (2, T + 1))
    for dt in ["float32", "bfloat16"]:
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == "bfloat16"):
                _, loss, _ = m(x[:, :-1], x[:, 1:])
            loss.backward()
        step()
        t = time.perf_counter()
        for _ in range(3):
            step()
        print(f"{preset:6s} T={T} {dt:9s} {(time.perf_counter() - t) / 3:.3f} s/step", flush=True)
