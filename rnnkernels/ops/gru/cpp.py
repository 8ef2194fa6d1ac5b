"""GRU layer kernels of the compiled C++ extension (csrc/cpu/gru.cpp), CPU, fp32/fp64.

Same signatures and returns as naive.py. Importing this module loads rnnkernels._C, which
registers torch.ops.rnnkernels_cpp.gru_fwd / gru_bwd; op.py's fakes serve them too.
"""

from __future__ import annotations

import torch
from torch import Tensor

import rnnkernels._C  # noqa: F401  (loads the library: registers torch.ops.rnnkernels_cpp)
from rnnkernels.ops.gru.op import gru_bwd_fake, gru_fwd_fake

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
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Returns d_gx [T, B, 3H], d_w_hh [3H, H], d_b_hh [3H] (None without bias), d_h0 [B, H]."""
    d_gx, d_w_hh, d_b_hh, d_h0 = _ops.gru_bwd(
        grad_y, grad_hT, w_hh, b_hh, h0, lengths, reverse, y, gates, hn
    )
    return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0


torch.library.register_fake("rnnkernels_cpp::gru_fwd")(gru_fwd_fake)
torch.library.register_fake("rnnkernels_cpp::gru_bwd")(gru_bwd_fake)
