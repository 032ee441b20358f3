"""Registers and spill of each memory kernel at its KERNEL_CFG, compiled for an H100 / H200 (sm_90) without a GPU:
Triton compiles offline and its bundled cuobjdump reads the cubin's resource usage. The launch is specialised as
the JIT specialises the 300m layer's (pointers 16-aligned; strides, N and PER multiples of 16), else nothing is
vectorised or pipelined and the counts mean nothing. CPU only.
    python results/issue12/registers.py [path/to/another/kernels.py] [--layouts]"""
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
# pointer arguments by name: the bf16 per-token tensors and D x D operands, the rest fp32 (GDM: fp32 before 724723f)
BF16 = {"K", "V", "Q", "YD", "Y", "MC", "DY", "DQ", "DYD", "DK", "DV", "GS", "GDM"}
F32 = {"Z", "G", "OUT", "OUTZ", "DMP", "DZP", "DGP", "GZS"}
KERNELS = {  # KERNEL_CFG key: (kernel name, constexprs of its own)
    "write_fwd": ("_write_fwd_kernel", dict(DELTA=False)), "delta_w": ("_write_fwd_kernel", dict(DELTA=True)),
    "read_fwd": ("_read_fwd_kernel", {}), "read_bwd": ("_read_bwd_kernel", {}), "read_dm": ("_read_dm_kernel", {}),
    "write_bwd": ("_write_bwd_kernel", dict(DELTA=False)), "write_bwd_delta": ("_write_bwd_kernel", dict(DELTA=True)),
    "delta_dz": ("_delta_dz_kernel", {}),
}


def usage(fn, pointers, consts, warps, stages, layouts=False):
    """(registers a thread, spill stack bytes, shared memory bytes) of fn compiled for sm_90; layouts: also print
    the TTGIR's tensor layouts (which warps hold which rows and columns of a tile and of a dot's result)."""
    sig = {n: "constexpr" if n in consts else pointers.get(n, "*bf16" if n in BF16 else "*fp32" if n in F32 else "i32")
           for n in fn.arg_names}
    div = [i for i, (n, t) in enumerate(sig.items()) if t.startswith("*") or (t == "i32" and n not in ("S", "H", "NC", "NJ"))]
    src = ASTSource(fn, sig, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in div})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    if layouts:
        print("\n".join(l for l in c.asm["ttgir"].splitlines() if re.match(r"#(blocked|mma)\d* =", l)))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1)), int(re.search(r"STACK:(\d+)", out).group(1)), c.metadata.shared


if __name__ == "__main__":
    layouts = "--layouts" in sys.argv     # also the TTGIR's layouts (registers_layouts.txt: the read backward's)
    sys.argv = [a for a in sys.argv if a != "--layouts"]
    if sys.argv[1:]:                 # another kernels.py, e.g. kernels_before.py (git show 89270e6:kernels.py)
        sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
        K = __import__(os.path.splitext(os.path.basename(sys.argv[1]))[0])
    for name, cfg in K.KERNEL_CFG.items():
        kernel, own = KERNELS[name]
        fn = getattr(K, kernel)
        block, warps, stages, per = cfg
        consts = dict(EPS=1e-6, D=128, BLOCK=block, PREC="tf32", **own)
        if "BC" in fn.arg_names:
            consts["BC"] = min(per, 128)
        old_gdm = "NC" not in fn.arg_names and "NJ" not in fn.arg_names           # (the kernels before 724723f)
        if layouts:
            print(f"{name}:")
        regs, stack, smem = usage(fn, {"GDM": "*fp32"} if old_gdm else {}, consts, warps, stages, layouts)
        print(f"{name:16s} {cfg}: {regs} registers, {stack} bytes spill stack, {smem} bytes shared")
