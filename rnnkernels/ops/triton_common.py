"""What every Triton kernel of the package shares: activations that also run in Triton's
interpreter, the precision of fp32 dots, and the split of a batch tile's hidden tiles across
programs with a barrier between the phases of a step."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnkernels.backends import BackendError


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
    return split if phases * split <= INDEX_LIMIT else 1


def cooperative(split: int) -> dict:
    """Launch options for ``split`` programs per batch tile: a cooperative launch, which fails
    rather than starts when the grid cannot be resident all at once."""
    return {"launch_cooperative_grid": True} if split > 1 else {}


def launch_split(kernel, tensors: list, sizes: tuple, batch_programs: int, tiles: int,
                 phases: int, **constexprs) -> None:  # fmt: skip
    """Launches ``kernel`` on a (batch_programs, split) grid, split from ``split_programs`` for
    ``tiles`` hidden tiles and ``phases`` barriers per step: its arguments are ``tensors`` (the
    first sets dtype and device), the batch tiles' arrival counters (int32 zeros), then ``sizes``
    (T first); its constexprs ``constexprs``, PRECISION and SPLIT."""
    x = tensors[0]
    split = split_programs(x.device, batch_programs, tiles, sizes[0] * phases)
    arrivals = torch.zeros(batch_programs, dtype=torch.int32, device=x.device)
    kernel[(batch_programs, split)](
        *tensors, arrivals, *sizes,
        PRECISION=input_precision(x.dtype), SPLIT=split, **constexprs, **cooperative(split),
    )  # fmt: skip


INDEX_LIMIT = 2**31 - 1  # kernels index within one time step, and within the weights, in int32


def check_index_range(cell: str, sizes: list[tuple[str, int]]) -> None:
    """Raises BackendError when one of ``sizes`` (what, number of elements) is beyond the int32
    indexing of the kernels; time steps are offset in int64, so T is unlimited."""
    for what, numel in sizes:
        if numel > INDEX_LIMIT:
            raise BackendError(
                f"backend 'triton' cannot run this {cell} call: {what} has {numel} elements, "
                f"beyond the Triton kernels' int32 index limit of {INDEX_LIMIT}"
            )
