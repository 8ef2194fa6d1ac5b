"""LSTM layer kernels of the compiled C++ extension (csrc/cpu/lstm.cpp), CPU, fp32/fp64.

Same signatures and returns as naive.py. Importing this module loads rnnkernels._C, which
registers torch.ops.rnnkernels_cpp.lstm_fwd / lstm_bwd (their fakes: Meta kernels in
csrc/torch/ops.cpp).
"""

from __future__ import annotations

import torch
from torch import Tensor

import rnnkernels._C  # noqa: F401  (loads the library: registers torch.ops.rnnkernels_cpp)

_ops = torch.ops.rnnkernels_cpp


def lstm_fwd(
    gx: Tensor,  # [T, B, 4H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [4H, R]  R = P with projection, else H
    w_hr: Tensor | None,  # [P, H]
    h0: Tensor,  # [B, R]
    c0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, R], hT [B, R], cT [B, H], gates [T, B, 4H], cells [T, B, H]."""
    return _ops.lstm_fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse)


def lstm_bwd(
    grad_y: Tensor,  # [T, B, R]
    grad_hT: Tensor,  # [B, R]
    grad_cT: Tensor,  # [B, H]
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    cells: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, 4H], d_w_hh [4H, R], d_w_hr [P, H] ([0] without projection),
    d_h0 [B, R], d_c0 [B, H]."""
    return _ops.lstm_bwd(
        grad_y, grad_hT, grad_cT, w_hh, w_hr, h0, c0, lengths, reverse, y, gates, cells
    )
