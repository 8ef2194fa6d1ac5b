"""GRU layer in plain torch: the oracle every backend is tested against (see README.md here)."""

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


def gru_fwd(
    gx: Tensor,  # [T, B, 3H]  x W_ih^T + b_ih
    w_hh: Tensor,  # [3H, H]
    b_hh: Tensor | None,  # [3H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, H], hT [B, H], gates [T, B, 3H] (r, z, n after their activations) and
    hn [T, B, H] (h W_hn^T + b_hn, the part r multiplies); both zero past a sequence's end."""
    T = gx.shape[0]
    h = h0
    ys, gates, hns = [None] * T, [None] * T, [None] * T
    for t in time_steps(T, reverse):
        valid = step_mask(lengths, t)
        gh = torch.addmm(b_hh, h, w_hh.T) if b_hh is not None else h @ w_hh.T
        x_r, x_z, x_n = gx[t].chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = (x_r + h_r).sigmoid()
        z = (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        h_new = (1 - z) * n + z * h
        h = keep(valid, h_new, h)
        ys[t] = keep(valid, h_new, 0.0)
        gates[t] = keep(valid, torch.cat([r, z, n], 1), 0.0)
        hns[t] = keep(valid, h_n, 0.0)
    return torch.stack(ys), h.clone(), torch.stack(gates), torch.stack(hns)


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
    grad_gates: Tensor | None = None,  # [T, B, 3H]
    grad_hn: Tensor | None = None,  # [T, B, H]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, 3H], d_w_hh [3H, H], d_b_hh [3H] ([0] without bias),
    d_h0 [B, H]. In torch ops, so autograd differentiates it (the op's backward under
    create_graph=True). ``grad_gates`` / ``grad_hn``: gradients reaching the saved activations
    (a higher-order backward), folded into the recurrence; the oracle's own extension, the other
    backends' ``gru_bwd`` take neither."""
    T = y.shape[0]
    h_prev = previous_states(y, h0, lengths, reverse)
    dh = grad_hT
    # Per step, stacked after (autograd and torch.func take that form, as in lstm's backward).
    d_gx_ts: list = [None] * T
    d_gh_ts: list = [None] * T  # gradient of h W_hh^T + b_hh; d_gx's but in the n part
    for t in reversed(time_steps(T, reverse)):
        valid = step_mask(lengths, t)
        r, z, n = gates[t].chunk(3, 1)
        g_r, g_z, g_n = (0.0, 0.0, 0.0) if grad_gates is None else grad_gates[t].chunk(3, 1)
        g_hn = 0.0 if grad_hn is None else grad_hn[t]
        dh_t = dh + grad_y[t]
        d_n = (dh_t * (1 - z) + g_n) * (1 - n * n)
        d_r = (d_n * hn[t] + g_r) * r * (1 - r)
        d_z = (dh_t * (h_prev[t] - n) + g_z) * z * (1 - z)
        d_gx_t = keep(valid, torch.cat([d_r, d_z, d_n], 1), 0.0)
        d_gh_t = keep(valid, torch.cat([d_r, d_z, d_n * r + g_hn], 1), 0.0)
        dh = keep(valid, dh_t * z + d_gh_t @ w_hh, dh)
        d_gx_ts[t] = d_gx_t
        d_gh_ts[t] = d_gh_t
    d_gx, d_gh = torch.stack(d_gx_ts), torch.stack(d_gh_ts)
    d_w_hh = weight_grad(d_gh, h_prev)
    d_b_hh = d_gh.sum((0, 1)) if b_hh is not None else absent_grad(y)
    return d_gx, d_w_hh, d_b_hh, dh
