"""What every Triton kernel of the package shares: activations that also run in Triton's
interpreter, the precision of fp32 dots, tile loads, the split of a batch tile's hidden tiles
across programs with a barrier between the phases of a step, and the choice between streaming
the recurrent weights every step and keeping each program's slice of them on chip."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from rnnkernels.backends import TRITON_INDEX_LIMIT, triton_interpreted


@triton.jit
def sigmoid(x):
    return 1 / (1 + tl.exp(-x))  # exp overflow gives 1/inf = 0, the right limit


@triton.jit
def tanh(x):
    return 2 * sigmoid(2 * x) - 1  # libdevice.tanh fails in the interpreter


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input_precision for ``dtype``: fp32 follows ``torch.backends.cudnn.allow_tf32``
    (what cuDNN's nn.LSTM / nn.GRU do), everything else is exact."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """What kernels accumulate and compute pointwise math in for inputs of ``dtype``: fp64 for
    fp64, fp32 for everything else (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def load_rows(a, a_rows, row_mask, K, BLOCK_K: tl.constexpr):
    """The [BB, BLOCK_K] tile a[r, k] at ``a + a_rows[r] + k`` ([BB, 1] int64 offsets), zero
    for k >= K and for masked rows."""
    ks = tl.arange(0, BLOCK_K).to(tl.int64)[None, :]  # [1, BK]
    return tl.load(a + a_rows + ks, mask=row_mask & (ks < K), other=0)


@triton.jit
def load_weights(w, w_cols, col_mask, k_stride, K, BLOCK_K: tl.constexpr):
    """The [BLOCK_K, BN] tile w[k, n] at ``w + k * k_stride + w_cols[n]`` ([1, BN] int64
    offsets), zero for k >= K and for masked columns."""
    ks = tl.arange(0, BLOCK_K).to(tl.int64)[:, None]  # [BK, 1]
    return tl.load(w + ks * k_stride + w_cols, mask=(ks < K) & col_mask, other=0)


@triton.jit
def dot_rows(acc, a, a_rows, row_mask, K, w_slice, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc`` plus the rows' first ``K`` elements (``load_rows``) times a [BLOCK_K, BN] weight
    slice held on chip, accumulated in ``acc``'s dtype."""
    rows = load_rows(a, a_rows, row_mask, K, BLOCK_K)  # [BB, BK]
    return tl.dot(rows, w_slice, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def step_barrier(arrivals_ptr, arrivals, SPLIT: tl.constexpr):
    """Ends a phase of a time step. Every thread of this program has made its writes
    (``debug_barrier``, a CTA barrier); with SPLIT > 1 programs sharing a batch tile, every one of
    them has too: each adds 1 to the tile's counter at ``arrivals_ptr`` with release semantics
    after its writes, then waits until the counter reaches ``arrivals`` (SPLIT times the number
    of phases so far) with acquire semantics. One thread of each program does the atomics; the
    CTA barriers around them order every thread's accesses (PTX memory model: the release/acquire
    pair at gpu scope makes the other programs' writes visible to this program's later reads,
    whatever caches the loads go through). The programs must all be resident at once: the launch
    is cooperative (``cooperative``), and ``split_programs`` asks for at most one per SM."""
    tl.debug_barrier()
    if SPLIT > 1:
        tl.atomic_add(arrivals_ptr, 1, sem="release", scope="gpu")
        while tl.atomic_add(arrivals_ptr, 0, sem="acquire", scope="gpu") < arrivals:
            pass
        tl.debug_barrier()


MAX_SPLIT = 1024  # upper bound on programs per batch tile (tests set 1 to compare)


def split_programs(device: torch.device, batch_programs: int, tiles: int, phases: int) -> int:
    """How many programs share each batch tile's ``tiles`` hidden tiles: enough to use every SM
    with at most one program each (all resident at once, as ``step_barrier`` needs), never more
    than there are tiles. 1 in the interpreter, which runs programs one after another (a barrier
    across programs would never open), and when the ``phases`` barriers of the launch would
    overflow the int32 arrival counter."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    split = max(1, min(tiles, sms // batch_programs, MAX_SPLIT))
    return split if phases * split <= TRITON_INDEX_LIMIT else 1


def cooperative(split: int) -> dict:
    """Launch options for ``split`` programs per batch tile: a cooperative launch, which fails
    rather than starts when the grid cannot be resident all at once."""
    return {"launch_cooperative_grid": True} if split > 1 else {}


# Weights on chip (ops/lstm/README.md, "Weights on chip"). With WEIGHTS_ON_CHIP, a launch whose
# hidden tiles of ON_CHIP_BLOCK_H units all get a program of their own (the split), and whose
# slices per program fit (on_chip_budget), loads each program's slices once, before the time
# loop (STATIONARY), into shared memory, instead of streaming them from L2 every step. Off unless
# RNNKERNELS_WEIGHTS_ON_CHIP=1 is set at import (or this is set), until it is measured faster on
# a GPU: it has run in the interpreter and been compiled for sm_90 (tools/triton_sm90.py), not
# timed. ON_CHIP_ELEMENTS: the most slice elements per program, by what runs the dots, from
# compiling for sm_90 at NUM_WARPS = 4 (README), so they hold on that GPU only; the interpreter
# has no such limit.
WEIGHTS_ON_CHIP = os.environ.get("RNNKERNELS_WEIGHTS_ON_CHIP", "0") == "1"
ON_CHIP_BLOCK_H = 128 if triton_interpreted() else 16
ON_CHIP_ELEMENTS = {  # tensor cores on fp16/bf16, on fp32 as tf32; FMA units on fp32, fp64
    "16-bit": 2**16,
    "tf32": 2**14,
    "fma": 2**12,  # an FMA dot holds a whole tile's operands in registers
}
if triton_interpreted():
    ON_CHIP_ELEMENTS = dict.fromkeys(ON_CHIP_ELEMENTS, 2**40)
ON_CHIP_CAPABILITY = (9, 0)  # the GPU ON_CHIP_ELEMENTS were measured for: H100, H200


def dot_units(dtype: torch.dtype) -> str:
    """What runs the kernels' dots for inputs of ``dtype``: a key of ON_CHIP_ELEMENTS."""
    if dtype in (torch.float16, torch.bfloat16):
        return "16-bit"
    return "tf32" if input_precision(dtype) == "tf32" else "fma"


def on_chip_budget(device: torch.device, dtype: torch.dtype) -> int:
    """The most weight-slice elements a program keeps on chip for inputs of ``dtype`` on
    ``device``: ON_CHIP_ELEMENTS by what runs the dots, and none on a GPU other than sm_90, whose
    shared memory and registers they were not measured for (a slice set that fits sm_90's 227 KB
    would not launch in the 99 KB of sm_86 or sm_89)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) != ON_CHIP_CAPABILITY:
        return 0
    return ON_CHIP_ELEMENTS[dot_units(dtype)]


def launch_split(
    kernel, tensors: list, sizes: tuple, batch_programs: int, phases: int, streaming: dict,
    on_chip: dict, slice_elements: int, **constexprs,
) -> None:  # fmt: skip
    """Launches ``kernel`` on a (batch_programs, split) grid with ``phases`` barriers per step:
    its arguments are ``tensors`` (the first sets dtype and device), the batch tiles' arrival
    counters (int32 zeros), then ``sizes`` (T first, H third); its constexprs ``constexprs``,
    PRECISION, SPLIT, STATIONARY and the blocks: ``on_chip`` (BLOCK_H = ON_CHIP_BLOCK_H or less,
    BLOCK_K... covering every dot's K) when the weights stay on chip (above; ``slice_elements``
    per program, within ``on_chip_budget``), else ``streaming``. ``split_programs`` sets the
    split for the hidden tiles of the chosen BLOCK_H."""
    x, H = tensors[0], sizes[2]

    def split_for(blocks: dict) -> tuple[int, int]:
        tiles = triton.cdiv(H, blocks["BLOCK_H"])
        return tiles, split_programs(x.device, batch_programs, tiles, sizes[0] * phases)

    tiles, split = split_for(on_chip)
    fits = slice_elements <= on_chip_budget(x.device, x.dtype)
    stationary = WEIGHTS_ON_CHIP and fits and split == tiles  # one hidden tile per program
    if not stationary:
        tiles, split = split_for(streaming)
    arrivals = torch.zeros(batch_programs, dtype=torch.int32, device=x.device)
    kernel[(batch_programs, split)](
        *tensors, arrivals, *sizes, PRECISION=input_precision(x.dtype), SPLIT=split,
        STATIONARY=stationary, **(on_chip if stationary else streaming), **constexprs,
        **cooperative(split),
    )  # fmt: skip
