"""GRU layer kernels of the compiled C++ extension (csrc/cpu/gru.cpp), CPU, fp32/fp64.

Same signatures and returns as naive.py. Importing this module loads rnnkernels._C, which
registers torch.ops.rnnkernels_cpp.gru_fwd / gru_bwd (their fakes: Meta kernels in
csrc/torch/ops.cpp).
"""

from __future__ import annotations

import torch
from torch import Tensor

import rnnkernels._C  # noqa: F401  (loads the library: registers torch.ops.rnnkernels_cpp)

_ops = torch.ops.rnnkernels_cpp


def gru_fwd(
    gx: Tensor,  # [T, B, 3H]  x W_ih^T + b_ih
    w_hh: Tensor,  # [3H, H]
    b_hh: Tensor | None,  # [3H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, H], hT [B, H], gates [T, B, 3H] (r, z, n after their activations) and
    hn [T, B, H] (h W_hn^T + b_hn); both zero past a sequence's end."""
    return _ops.gru_fwd(gx, w_hh, b_hh, h0, lengths, reverse)


def gru_bwd(
    grad_y: Tensor,  # [T, B, H]
    grad_hT: Tensor,  # [B, H]
    w_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    hn: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, 3H], d_w_hh [3H, H], d_b_hh [3H] ([0] without bias),
    d_h0 [B, H]."""
    return _ops.gru_bwd(grad_y, grad_hT, w_hh, b_hh, h0, lengths, reverse, y, gates, hn)
