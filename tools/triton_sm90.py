"""Compiles the Triton LSTM and GRU layer kernels for an NVIDIA GPU on a machine without one
(Triton's own ptxas; sm_90, the H100/H200, by default) and prints per kernel: streaming or weights
on chip, the blocks, registers per thread, stack bytes (registers spilled to local memory) and
shared memory, with the weights on chip wherever a program gets one hidden tile, whatever the
budget. It is how triton_common.ON_CHIP_ELEMENTS was set. Speed needs a GPU (tools/gpu-check.sh).

    python tools/triton_sm90.py [--arch 90] [--ieee] [--shapes lstm:16:128:float32 ...]

fp32 dots are tf32 (torch's default for cuDNN) unless --ieee.

Run it without TRITON_INTERPRET, with the Triton version of the GPU machines in front
(PYTHONPATH=<a pip --target install of triton==3.6.0>:.), since the registers depend on it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
import triton

SHAPES = [  # cell, B, H, P, dtype
    (cell, 16, H, 0, dtype)
    for cell in ("lstm", "gru")
    for dtype in ("float32", "float16")
    for H in (64, 128, 256, 384, 512, 768, 1024)
] + [("lstm", 16, 256, 128, "float16")]
SMS = 132  # an H100 / H200


def compile_variants(cell: str, B: int, H: int, P: int, dtype: str, arch: int, ieee: bool):
    """Runs the cell's forward and backward launchers on CPU tensors with launches caught, once
    streaming and once with the weights on chip, and compiles what each would launch; returns
    a line per kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from rnnkernels.ops import triton_common
    from rnnkernels.ops.gru import triton as gru
    from rnnkernels.ops.lstm import triton as lstm

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    lines = []

    class Compile:
        """Stands in for a @triton.jit kernel: kernel[grid](*args, **kwargs) compiles for
        ``target`` what Triton's launcher would, specialised on the same arguments."""

        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: self.compile(grid, args, kwargs)

        def compile(self, grid, args, kwargs):
            fn = self.fn
            kwargs.pop("launch_cooperative_grid", None)
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            bound, specialization, _ = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(
                backend, kwargs, bound, specialization, None
            )
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)  # fmt: skip
            regs, stack, instructions = resources(kernel.asm["cubin"])
            blocks = " ".join(f"{k}={kwargs[k]}" for k in kwargs if k.startswith("BLOCK"))
            mode = "on chip" if kwargs["STATIONARY"] else "streaming"
            lines.append(
                f"{cell} B{B} H{H}{f' P{P}' if P else ''} {dtype} {kwargs['PRECISION']} "
                f"{fn.__name__:17} {mode:9} "
                f"grid {grid} {blocks}: {regs} registers, {stack} B stack, "
                f"{kernel.metadata.shared // 1024} KB shared, {instructions} instructions"
            )

    module = lstm if cell == "lstm" else gru
    for name in [n for n in dir(module) if n.endswith("_kernel")]:
        setattr(module, name, Compile(getattr(module, name)))
    triton_common.split_programs = lambda device, nb, tiles, phases: max(1, min(tiles, SMS // nb))
    triton_common.ON_CHIP_ELEMENTS = dict.fromkeys(triton_common.ON_CHIP_ELEMENTS, 2**40)
    torch.backends.cudnn.allow_tf32 = not ieee
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    gates, R = (4, P or H) if cell == "lstm" else (3, H)
    gx = torch.randn(2, B, gates * H, generator=g).to(dt)
    w_hh = torch.randn(gates * H, R, generator=g).to(dt)
    h0, c0 = torch.zeros(B, R, dtype=dt), torch.zeros(B, H, dtype=dt)
    w_hr = torch.randn(P, H, generator=g).to(dt) if P else None
    for on_chip in (False, True):
        triton_common.WEIGHTS_ON_CHIP = on_chip
        if cell == "lstm":
            y, hT, cT, saved, cells = lstm.lstm_fwd(gx, w_hh, w_hr, h0, c0, None, False)
            lstm.lstm_bwd(y, hT, cT, w_hh, w_hr, h0, c0, None, False, y, saved, cells)
        else:
            y, hT, saved, hn = gru.gru_fwd(gx, w_hh, None, h0, None, False)
            gru.gru_bwd(y, hT, w_hh, None, h0, None, False, y, saved, hn)
    return lines


def resources(cubin: bytes) -> tuple[int, int, int]:
    """Registers per thread, stack bytes and SASS instructions of the one kernel in ``cubin``
    (cuobjdump)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True)
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True)
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage.stdout)
    return int(found[1]), int(found[2]), len(re.findall(r"/\*[0-9a-f]{4,8}\*/", sass.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--ieee", action="store_true", help="fp32 dots in ieee, not tf32")
    parser.add_argument("--shapes", nargs="*", help="cell:B:H:dtype or cell:B:H:P:dtype")
    args = parser.parse_args()
    assert not os.environ.get("TRITON_INTERPRET"), "compiling needs TRITON_INTERPRET unset"
    shapes = SHAPES
    if args.shapes:
        parsed = [s.split(":") for s in args.shapes]
        shapes = [(p[0], int(p[1]), int(p[2]), int(p[3]) if len(p) == 5 else 0, p[-1])
                  for p in parsed]  # fmt: skip
    print(f"triton {triton.__version__}, sm_{args.arch}")
    with ProcessPoolExecutor(os.cpu_count(), max_tasks_per_child=1) as pool:  # patches modules
        jobs = [pool.submit(compile_variants, *shape, args.arch, args.ieee) for shape in shapes]
        for job in jobs:
            print("\n".join(job.result()), flush=True)


if __name__ == "__main__":
    main()
