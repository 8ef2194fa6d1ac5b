"""What every Triton kernel of the package shares: activations that also run in Triton's
interpreter, and the precision of fp32 dots."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
