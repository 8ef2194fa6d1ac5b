"""IndRNN layer kernels of the compiled C++ extension (csrc/cpu/indrnn.cpp), CPU, fp32/fp64.

Same signatures and returns as naive.py. Importing this module loads rnnkernels._C, which
registers torch.ops.rnnkernels_cpp.indrnn_fwd / indrnn_bwd (their fakes: Meta kernels in
csrc/torch/ops.cpp).
"""

from __future__ import annotations

import torch
from torch import Tensor

import rnnkernels._C  # noqa: F401  (loads the library: registers torch.ops.rnnkernels_cpp)

_ops = torch.ops.rnnkernels_cpp


def indrnn_fwd(
    gx: Tensor,  # [T, B, H]
    u: Tensor,  # [H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H] (zero past a sequence's end) and hT [B, H]."""
    return _ops.indrnn_fwd(gx, u, h0, lengths, reverse, nonlinearity)


def indrnn_bwd(
    grad_y: Tensor,  # [T, B, H]
    grad_hT: Tensor,  # [B, H]
    u: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    y: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, H], d_u [H], d_h0 [B, H]."""
    return _ops.indrnn_bwd(grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y)
