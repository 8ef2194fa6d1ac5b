"""LSTM layer in plain torch: the oracle every backend is tested against (see README.md here)."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.ops.steps import (
    absent_grad,
    keep,
    previous_states,
    step_mask,
    time_steps,
    weight_grad,
)


def lstm_fwd(
    gx: Tensor,  # [T, B, 4H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [4H, R]  R = P with projection, else H
    w_hr: Tensor | None,  # [P, H]
    h0: Tensor,  # [B, R]
    c0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, R], hT [B, R], cT [B, H], gates [T, B, 4H] (i, f, g, o after their
    activations; zero past a sequence's end) and cells [T, B, H] (c after each step, frozen past
    the end)."""
    T = gx.shape[0]
    h, c = h0, c0
    ys, gates, cells = [None] * T, [None] * T, [None] * T
    for t in time_steps(T, reverse):
        valid = step_mask(lengths, t)
        i, f, g, o = (gx[t] + h @ w_hh.T).chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_new = f * c + i * g
        h_new = o * c_new.tanh()
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        c = keep(valid, c_new, c)
        h = keep(valid, h_new, h)
        ys[t] = keep(valid, h_new, 0.0)
        gates[t] = keep(valid, torch.cat([i, f, g, o], 1), 0.0)
        cells[t] = c
    return torch.stack(ys), h.clone(), c.clone(), torch.stack(gates), torch.stack(cells)


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
    grad_gates: Tensor | None = None,  # [T, B, 4H]
    grad_cells: Tensor | None = None,  # [T, B, H]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, 4H], d_w_hh [4H, R], d_w_hr [P, H] ([0] without projection),
    d_h0 [B, R], d_c0 [B, H]. In torch ops, so autograd differentiates it (the op's backward
    under create_graph=True). ``grad_gates`` / ``grad_cells``: gradients reaching the saved
    activations (a higher-order backward), folded into the recurrence; the oracle's own
    extension, the other backends' ``lstm_bwd`` take neither."""
    T = y.shape[0]
    dh, dc = grad_hT, grad_cT
    # Per step, stacked after: autograd and torch.func (vmap of the backward) take that form,
    # not writes into a preallocated tensor.
    d_pres: list = [None] * T
    dh_ts: list = [None] * T  # gradient reaching each step's output h (zero where invalid)
    for t in reversed(time_steps(T, reverse)):
        valid = step_mask(lengths, t)
        s = t + 1 if reverse else t - 1
        c_prev = c0 if s in (-1, T) else cells[s]
        i, f, g, o = gates[t].chunk(4, 1)
        tanh_c = cells[t].tanh()
        if grad_cells is not None:  # cells[t] is the c carried past step t, valid or not
            dc = dc + grad_cells[t]
        dh_t = keep(valid, dh + grad_y[t], 0.0)
        d_r = dh_t @ w_hr if w_hr is not None else dh_t  # through the projection
        dc_t = dc + d_r * o * (1 - tanh_c * tanh_c)
        d_act = torch.cat([dc_t * g, dc_t * c_prev, dc_t * i, d_r * tanh_c], 1)  # of i, f, g, o
        if grad_gates is not None:
            d_act = d_act + grad_gates[t]
        d_pre = d_act * torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], 1)
        d_pre = keep(valid, d_pre, 0.0)
        dh = keep(valid, d_pre @ w_hh, dh)
        dc = keep(valid, dc_t * f, dc)
        d_pres[t] = d_pre
        dh_ts[t] = dh_t
    d_gx, d_h = torch.stack(d_pres), torch.stack(dh_ts)
    h_prev = previous_states(y, h0, lengths, reverse)
    d_w_hh = weight_grad(d_gx, h_prev)
    d_w_hr = absent_grad(y)
    if w_hr is not None:
        hidden = gates[..., 3 * w_hr.shape[1] :] * cells.tanh()  # o * tanh(c), before projection
        d_w_hr = weight_grad(d_h, hidden)
    return d_gx, d_w_hh, d_w_hr, dh, dc
