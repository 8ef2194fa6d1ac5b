"""Elman RNN layer (``nn.RNN``) in plain torch: the oracle every backend is tested against (see
README.md here)."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.ops.steps import keep, previous_states, step_mask, time_steps, weight_grad


def activation_grad(d_y: Tensor, y: Tensor, nonlinearity: str) -> Tensor:
    """The gradient of the pre-activation from that of ``y = act(pre)``, by ``y`` alone: relu
    ``y > 0``, tanh ``1 - y^2``."""
    return d_y * (y > 0) if nonlinearity == "relu" else d_y * (1 - y * y)


def rnn_fwd(
    gx: Tensor,  # [T, B, H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [H, H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H] (zero past a sequence's end) and hT [B, H]."""
    T = gx.shape[0]
    h = h0
    ys = [None] * T
    for t in time_steps(T, reverse):
        valid = step_mask(lengths, t)
        pre = torch.addmm(gx[t], h, w_hh.T)
        h_new = pre.relu() if nonlinearity == "relu" else pre.tanh()
        h = keep(valid, h_new, h)
        ys[t] = keep(valid, h_new, 0.0)
    return torch.stack(ys), h.clone()


def rnn_bwd(
    grad_y: Tensor,  # [T, B, H]
    grad_hT: Tensor,  # [B, H]
    w_hh: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    y: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, H], d_w_hh [H, H], d_h0 [B, H]. The activation's derivative comes from
    y. In torch ops, so autograd differentiates it (the op's backward under create_graph=True)."""
    T = y.shape[0]
    dh = grad_hT
    d_pres: list = [None] * T  # per step, stacked after (as in lstm's backward)
    for t in reversed(time_steps(T, reverse)):
        valid = step_mask(lengths, t)
        d_pre = keep(valid, activation_grad(dh + grad_y[t], y[t], nonlinearity), 0.0)
        dh = keep(valid, d_pre @ w_hh, dh)
        d_pres[t] = d_pre
    d_gx = torch.stack(d_pres)
    d_w_hh = weight_grad(d_gx, previous_states(y, h0, lengths, reverse))
    return d_gx, d_w_hh, dh
