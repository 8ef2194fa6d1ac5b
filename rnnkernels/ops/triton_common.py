"""What every Triton kernel of the package shares: activations that also run in Triton's
interpreter, and the precision of fp32 dots."""

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
