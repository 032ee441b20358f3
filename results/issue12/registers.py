"""Registers and spill of each memory kernel at its KERNEL_CFG, compiled for an H100 / H200 (sm_90) without a GPU:
Triton compiles offline and its bundled cuobjdump reads the cubin's resource usage. The launch is specialised as
the JIT specialises the 300m layer's (pointers 16-aligned; strides, N and PER multiples of 16), else nothing is
vectorised or pipelined and the counts mean nothing. CPU only.   python results/issue12/registers.py"""
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import kernels as K  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
bf, f32 = "*bf16", "*fp32"
KERNELS = {  # KERNEL_CFG key: (kernel, pointer dtypes, constexprs of its own)
    "write_fwd": (K._write_fwd_kernel, dict(K=bf, V=bf, Z=f32, OUT=f32, OUTZ=f32), dict(DELTA=False)),
    "delta_w": (K._write_fwd_kernel, dict(K=bf, V=bf, Z=f32, OUT=f32, OUTZ=f32), dict(DELTA=True)),
    "read_fwd": (K._read_fwd_kernel, dict(Q=bf, YD=bf, Y=bf, MC=bf, Z=f32, G=f32), {}),
    "read_bwd": (K._read_bwd_kernel, dict(DY=bf, Q=bf, YD=bf, MC=bf, Z=f32, G=f32, DQ=bf, DYD=bf, DZP=f32, DGP=f32), {}),
    "read_dm": (K._read_dm_kernel, dict(Q=bf, DY=bf, Z=f32, G=f32, OUT=f32), {}),
    "write_bwd": (K._write_bwd_kernel, dict(K=bf, V=bf, GDM=bf, GZS=f32, GS=bf, Z=f32, DK=bf, DV=bf), dict(DELTA=False)),
    "write_bwd_delta": (K._write_bwd_kernel, dict(K=bf, V=bf, GDM=bf, GZS=f32, GS=bf, Z=f32, DK=bf, DV=bf), dict(DELTA=True)),
    "delta_dz": (K._delta_dz_kernel, dict(K=bf, GS=bf, Z=f32, OUT=f32), {}),
}


def usage(fn, pointers, consts, warps, stages):
    """(registers a thread, spill stack bytes, shared memory bytes) of fn compiled for sm_90."""
    sig = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in fn.arg_names}
    div = [i for i, (n, t) in enumerate(sig.items()) if t.startswith("*") or (t == "i32" and n not in ("S", "H", "NC", "NJ"))]
    src = ASTSource(fn, sig, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in div})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1)), int(re.search(r"STACK:(\d+)", out).group(1)), c.metadata.shared


for name, (fn, pointers, own) in KERNELS.items():
    block, warps, stages, per = K.KERNEL_CFG[name]
    consts = dict(EPS=1e-6, D=128, BLOCK=block, PREC="tf32", **own)
    if name in K.COLUMN_KERNELS:
        consts["BC"] = min(per, 128)
    regs, stack, smem = usage(fn, pointers, consts, warps, stages)
    print(f"{name:16s} {K.KERNEL_CFG[name]}: {regs} registers, {stack} bytes spill stack, {smem} bytes shared")
