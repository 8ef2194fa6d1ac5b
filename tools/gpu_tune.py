"""Times the Triton LSTM/GRU layer kernels (forward, backward) over block-size variants, the
split across programs and the weights kept on chip, on a CUDA GPU, in microseconds per time
step. Compiles every variant in parallel worker processes first (Triton's disk cache), then
times them one by one. The on-chip variant runs streaming where a shape does not fit on chip
(triton_common.launch_split; tools/triton_sm90.py shows which).

    python tools/gpu_tune.py [--defaults-only]   # only the default and the on-chip variant
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor

import torch
import triton

from rnnkernels.testing import layer_args

T = 256
SHAPES = [  # cell, B, H, dtype
    ("lstm", 16, 768, torch.float16),
    ("lstm", 64, 512, torch.float32),
    ("lstm", 16, 128, torch.float32),
    ("lstm", 64, 512, torch.float16),
    ("gru", 16, 768, torch.float16),
    ("gru", 64, 512, torch.float32),
    ("gru", 16, 128, torch.float32),
    ("gru", 64, 512, torch.float16),
]
COMMON = {"MAX_SPLIT": 1024, "WEIGHTS_ON_CHIP": False}  # knobs of triton_common, defaults
VARIANTS = {  # knobs of the cell's module or of triton_common; the default, then on chip, first
    "lstm": [
        dict(MAX_BLOCK_B=bb, MAX_BLOCK_H=bh, BLOCK_K_BYTES=k, NUM_WARPS=w)
        for bb, bh, k, w in [(16, 32, 256, 4), (32, 32, 256, 4), (16, 16, 256, 4),
                             (16, 64, 256, 4), (16, 32, 512, 4), (16, 32, 256, 8)]
    ],
    "gru": [
        dict(MAX_BLOCK_H=bh, BLOCK_K_BYTES=k, NUM_WARPS=w)
        for bh, k, w in [(32, 256, 4), (64, 256, 4), (16, 256, 4), (32, 512, 4), (32, 256, 8)]
    ],
}  # fmt: skip
for variants in VARIANTS.values():
    variants.insert(1, dict(WEIGHTS_ON_CHIP=True))


def setup(cell, B, H, dtype, knobs):
    from rnnkernels.ops import triton_common
    from rnnkernels.ops.gru import triton as gru
    from rnnkernels.ops.lstm import triton as lstm

    module = lstm if cell == "lstm" else gru
    for k, v in COMMON.items():
        setattr(triton_common, k, knobs.get(k, v))
    for k, v in knobs.items():
        if k not in COMMON:
            setattr(module, k, v)
    args = layer_args(cell, T, B, H, None, None, False, dtype, device="cuda")
    if cell == "lstm":
        y, hT, cT, gates, cells = module.lstm_fwd(*args)
        gy, ghT, gcT = (torch.randn_like(v) for v in (y, hT, cT))

        def fwd():
            module.lstm_fwd(*args)

        def bwd():
            module.lstm_bwd(gy, ghT, gcT, *args[1:], y, gates, cells)
    else:
        y, hT, gates, hn = module.gru_fwd(*args)
        gy, ghT = torch.randn_like(y), torch.randn_like(hT)

        def fwd():
            module.gru_fwd(*args)

        def bwd():
            module.gru_bwd(gy, ghT, *args[1:], y, gates, hn)

    return fwd, bwd


def compile_one(job):
    fwd, bwd = setup(*job)
    fwd(), bwd()
    torch.cuda.synchronize()


def main():
    """``--defaults-only``: time the first two variants of each cell (default, on chip)."""
    count = 2 if "--defaults-only" in sys.argv else None
    jobs = [(*s, v) for s in SHAPES for v in VARIANTS[s[0]][:count]]
    with ProcessPoolExecutor(12, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        list(pool.map(compile_one, jobs))
    print(f"{'cell':5} {'B':>3} {'H':>4} {'dtype':8} {'variant':55} fwd us/step bwd us/step")
    for job in jobs:
        cell, B, H, dtype, knobs = job
        try:
            fwd, bwd = setup(*job)
            times = [triton.testing.do_bench(f, warmup=20, rep=100, return_mode="median")
                     for f in (fwd, bwd)]  # fmt: skip
            cols = " ".join(f"{ms * 1000 / T:11.2f}" for ms in times)
        except Exception as e:  # noqa: BLE001 - a tuning table: report and go on
            cols = f"failed: {type(e).__name__}: {str(e)[:80]}"
        name = ",".join(f"{k}={v}" for k, v in knobs.items())
        print(f"{cell:5} {B:3} {H:4} {str(dtype)[6:]:8} {name:55} {cols}", flush=True)


if __name__ == "__main__":
    main()
