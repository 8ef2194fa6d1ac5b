"""What every Triton kernel of the package shares: activations that also run in Triton's
interpreter, the precision of fp32 dots, tile loads and dots, the prologue of a kernel whose
batch tile's hidden tiles are split across programs with a barrier between the phases of a step,
and the choice between streaming the recurrent weights every step and keeping each program's
slice of them on chip.

Names in the kernels (flash-linear-attention's scheme): a tensor argument is a base pointer
named as the tensor (``gx``, ``w_hh``); ``p_`` is a pointer into one (``p_gx``: step t of
``gx``), ``b_`` a block of values in registers (``b_c``), ``m_`` a mask (``m_b``: the rows in the
batch, ``m_t``: the rows whose sequence runs at step t), ``o_`` a block of offsets or indices
(``o_b``: the batch rows, ``o_h``: a tile's hidden units, ``o_g`` / ``o_y``: a tile in [B, G*H] /
[B, R]), ``i_`` a scalar index (``i_t``: the time step, ``i_h``: a tile's first hidden unit);
``_prev`` / ``_next`` mark what a step reads / writes for the next; sizes, strides and counts are
plain (``H``, ``n_arrivals``); constexprs, dtypes included, are in capitals (``BLOCK_H``, ``ACC``:
the accumulator dtype). An absent tensor is passed as None and a constexpr flag (``HAS_PROJ``,
``HAS_BIAS``) guards every use of it. Shapes in comments: [BLOCK_B, BLOCK_H]."""

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


@triton.jit
def activate(pre, RELU: tl.constexpr):
    """relu (NaN stays NaN, as in torch.relu) or tanh: the RNN and IndRNN kernels' activation."""
    if RELU:
        return tl.maximum(pre, 0, propagate_nan=tl.PropagateNan.ALL)
    return tanh(pre)


@triton.jit
def activation_grad(d_y, y, RELU: tl.constexpr):
    """The pre-activation's gradient from d_y and y = activate(pre): relu y > 0, tanh 1 - y^2."""
    if RELU:
        return d_y * (y > 0).to(d_y.dtype)
    return d_y * (1 - y * y)


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
def load_rows(x, o_bx, m_b, K, BLOCK_K: tl.constexpr):
    """The [BLOCK_B, BLOCK_K] block x[r, k] at ``x + o_bx[r] + k`` (o_bx: [BLOCK_B, 1]), zero for
    k >= K and for masked rows."""
    o_k = tl.arange(0, BLOCK_K).to(tl.int64)[None, :]  # [1, BLOCK_K]
    return tl.load(x + o_bx + o_k, mask=m_b & (o_k < K), other=0)


@triton.jit
def load_weights(w, o_w, m_w, k_stride, K, BLOCK_K: tl.constexpr):
    """The [BLOCK_K, BLOCK_H] block w[k, n] at ``w + k * k_stride + o_w[n]`` (o_w: [1, BLOCK_H]),
    zero for k >= K and for masked columns."""
    o_k = tl.arange(0, BLOCK_K).to(tl.int64)[:, None]  # [BLOCK_K, 1]
    return tl.load(w + o_k * k_stride + o_w, mask=(o_k < K) & m_w, other=0)


@triton.jit
def dot_on_chip(b_acc, x, o_bx, m_b, K, b_w, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """``b_acc`` plus the rows' first ``K`` elements (``load_rows``) times a [BLOCK_K, BLOCK_H]
    weight slice ``b_w`` held on chip, accumulated in ``b_acc``'s dtype."""
    b_x = load_rows(x, o_bx, m_b, K, BLOCK_K)  # [BLOCK_B, BLOCK_K]
    return tl.dot(b_x, b_w, b_acc, input_precision=PRECISION, out_dtype=b_acc.dtype)


@triton.jit
def split_prologue(
    lengths,
    arrivals,
    B,
    INDEX: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The prologue of a kernel launched by ``launch_split``: its batch tile's rows ``o_b``
    [BLOCK_B] in the dtype ``INDEX``, the first hidden unit ``i_first`` of its first tile (its
    next tiles every SPLIT * BLOCK_H units), its batch tile's counter ``p_arrivals`` for
    ``step_barrier``, the rows' lengths ``b_length`` [BLOCK_B] (0 past the batch) and which rows
    are in the batch ``m_b`` [BLOCK_B, 1]."""
    tl.static_assert(BLOCK_B >= 16 and BLOCK_H >= 16 and BLOCK_K >= 16, "tl.dot needs 16 at least")
    o_b = tl.program_id(0).to(INDEX) * BLOCK_B + tl.arange(0, BLOCK_B)
    i_first = tl.program_id(1) * BLOCK_H
    p_arrivals = arrivals + tl.program_id(0)
    b_length = tl.load(lengths + o_b, mask=o_b < B, other=0)
    return o_b, i_first, p_arrivals, b_length, (o_b < B)[:, None]


@triton.jit
def step_barrier(p_arrivals, n_arrivals, SPLIT: tl.constexpr):
    """Ends a phase of a time step. Every thread of this program has made its writes
    (``debug_barrier``, a CTA barrier); with SPLIT > 1 programs sharing a batch tile, every one of
    them has too: each adds 1 to the tile's counter at ``p_arrivals`` with release semantics
    after its writes, then waits until the counter reaches ``n_arrivals`` (SPLIT times the number
    of phases so far) with acquire semantics. One thread of each program does the atomics; the
    CTA barriers around them order every thread's accesses (PTX memory model: the release/acquire
    pair at gpu scope makes the other programs' writes visible to this program's later reads,
    whatever caches the loads go through). The programs must all be resident at once: the launch
    is cooperative (``cooperative``), and ``split_programs`` asks for at most one per SM."""
    tl.debug_barrier()
    if SPLIT > 1:
        tl.atomic_add(p_arrivals, 1, sem="release", scope="gpu")
        while tl.atomic_add(p_arrivals, 0, sem="acquire", scope="gpu") < n_arrivals:
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


def block_size(n: int, limit: int = 2**31) -> int:
    """A power of two from 16 (tl.dot's minimum) covering ``n``, up to ``limit``."""
    return max(16, min(limit, triton.next_power_of_2(n)))


def double_buffer(first: torch.Tensor) -> torch.Tensor:
    """Scratch [2, *first.shape] in the accumulator dtype for a state indexed by step parity;
    slot 0 holds ``first``."""
    state = first.new_empty(2, *first.shape, dtype=accumulator_dtype(first.dtype))
    state[0] = first
    return state


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
