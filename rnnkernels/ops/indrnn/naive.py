"""IndRNN layer in plain torch: the oracle every backend is tested against (see README.md here)."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.ops.steps import keep, previous_states, step_mask, time_steps


def indrnn_fwd(
    gx: Tensor,  # [T, B, H]  x W_ih^T + b_ih + b_hh
    u: Tensor,  # [H]  recurrent weights (already clamped when recurrent_max_abs is set)
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
        pre = gx[t] + u * h
        h_new = pre.relu() if nonlinearity == "relu" else pre.tanh()
        h = keep(valid, h_new, h)
        ys[t] = keep(valid, h_new, 0.0)
    return torch.stack(ys), h.clone()


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
    """Returns d_gx [T, B, H], d_u [H], d_h0 [B, H]. The activation's derivative comes from y.
    In torch ops, so autograd differentiates it (the op's backward under create_graph=True)."""
    T = y.shape[0]
    dh = grad_hT
    d_pres: list = [None] * T  # per step, stacked after (as in lstm's backward)
    for t in reversed(time_steps(T, reverse)):
        valid = step_mask(lengths, t)
        dh_t = dh + grad_y[t]
        d_pre = dh_t * (y[t] > 0) if nonlinearity == "relu" else dh_t * (1 - y[t] * y[t])
        d_pre = keep(valid, d_pre, 0.0)
        dh = keep(valid, d_pre * u, dh)
        d_pres[t] = d_pre
    d_gx = torch.stack(d_pres)
    d_u = (d_gx * previous_states(y, h0, lengths, reverse)).sum((0, 1))
    return d_gx, d_u, dh
