"""LSTM layer kernels in Numba (CPU, float32/float64): same signatures and returns as naive.py.

Per step: one BLAS GEMM (step_gemm) over the rows still valid, into that step's slice of ``gates``,
then one fused pointwise pass per row; with projection a second GEMM ``r W_hr^T`` into ``y``. The
backward mirrors it; its weight gradients are single GEMMs over all T*B rows afterwards, run by
torch (on all of torch's threads) in the wrapper.
Compile options and threads: ../numba_jit.py; design and speed: README.md here.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import types
from torch import Tensor

from rnnkernels.ops.numba_jit import (
    TORCH_BLAS,
    as_array,
    kernel,
    sigmoid,
    step_gemm,
    step_threads,
    tanh,
    valid_span,
)
from rnnkernels.ops.steps import absent_grad, full_lengths, previous_states, weight_grad


@kernel(
    lambda f: types.void(
        f[:, :, ::1],  # gx [T, B, 4H]
        f[:, ::1],  # w_hh [4H, R]
        f[:, ::1],  # w_hr [P, H] ([0, H] without projection)
        types.boolean,  # proj
        f[:, ::1],  # h0 [B, R]
        f[:, ::1],  # c0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        f[:, :, ::1],  # y [T, B, R]
        f[:, ::1],  # h [B, R]  the running state, hT on return
        f[:, ::1],  # c [B, H]  the running cell, cT on return
        f[:, :, ::1],  # gates [T, B, 4H]
        f[:, :, ::1],  # cells [T, B, H]
        f[:, ::1],  # hidden [B, H]  o * tanh(c) before the projection (scratch)
        types.boolean,  # torch_blas: step GEMMs by torch's BLAS (else np.dot)
    )
)
def lstm_fwd_kernel(gx, w_hh, w_hr, proj, h0, c0, lengths, reverse, y, h, c, gates, cells, hidden,
                    torch_blas):  # fmt: skip
    T, B, G = gx.shape
    H = G // 4
    zero = gx.dtype.type(0)
    h[:] = h0
    c[:] = c0
    for s in range(T):
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t)
        if hi > lo:  # gates_t = h W_hh^T; gx is added in the pointwise pass
            step_gemm(h[lo:hi], w_hh, True, gates[t, lo:hi], torch_blas)
        for b in range(B):
            g_tb = gates[t, b]  # [4H]
            if lengths[b] <= t:  # past the end: gates 0, cell frozen, y 0
                g_tb[:] = zero
                cells[t, b] = c[b]
                if not proj:
                    y[t, b] = zero
                continue
            x_tb, c_b, cell_tb = gx[t, b], c[b], cells[t, b]  # [4H], [H], [H]
            out = hidden[b] if proj else y[t, b]  # [H] o * tanh(c)
            # Each loop writes one array over one contiguous range: LLVM vectorises such loops
            # (guarding them with overlap checks); one loop over all gates ran 2x slower.
            for j in range(2 * H):  # i, f, in place
                g_tb[j] = sigmoid(x_tb[j] + g_tb[j])
            for j in range(2 * H, 3 * H):  # g
                g_tb[j] = tanh(x_tb[j] + g_tb[j])
            for j in range(3 * H, G):  # o
                g_tb[j] = sigmoid(x_tb[j] + g_tb[j])
            for j in range(H):
                c_b[j] = g_tb[H + j] * c_b[j] + g_tb[j] * g_tb[2 * H + j]
            for j in range(H):
                out[j] = g_tb[3 * H + j] * tanh(c_b[j])
            cell_tb[:] = c_b
            if not proj:
                h[b] = out
        if proj:
            if hi > lo:  # h_t = (o * tanh c_t) W_hr^T
                step_gemm(hidden[lo:hi], w_hr, True, y[t, lo:hi], torch_blas)
            for b in range(B):
                if lengths[b] > t:
                    h[b] = y[t, b]
                else:
                    y[t, b] = zero


@kernel(
    lambda f: types.void(
        f[:, :, ::1],  # grad_y [T, B, R]
        f[:, ::1],  # w_hh [4H, R]
        f[:, ::1],  # w_hr [P, H] ([0, H] without projection)
        types.boolean,  # proj
        f[:, ::1],  # c0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        f[:, :, ::1],  # gates [T, B, 4H]
        f[:, :, ::1],  # cells [T, B, H]
        f[:, :, ::1],  # d_gx [T, B, 4H]
        f[:, ::1],  # dh [B, R]  grad_hT on entry, d_h0 on return
        f[:, ::1],  # dc [B, H]  grad_cT on entry, d_c0 on return
        f[:, :, ::1],  # dh_t [T, B, R]  dL/dh_t (projection; else [0, B, R])
        f[:, :, ::1],  # hidden [T, B, H]  o * tanh(c_t) (projection; else [0, B, H])
        f[:, ::1],  # dr [B, H]  dL/d(o * tanh c) (scratch)
        f[:, ::1],  # dh_next [B, R]  d_pre W_hh (scratch)
        types.boolean,  # torch_blas: step GEMMs by torch's BLAS (else np.dot)
    )
)
def lstm_bwd_kernel(grad_y, w_hh, w_hr, proj, c0, lengths, reverse, gates, cells, d_gx, dh, dc,
                    dh_t, hidden, dr, dh_next, torch_blas):  # fmt: skip
    T, B, G = gates.shape
    H = G // 4
    zero, one = gates.dtype.type(0), gates.dtype.type(1)
    for s in range(T - 1, -1, -1):  # the forward's visiting order, backwards
        t = T - 1 - s if reverse else s
        t_prev = t + 1 if reverse else t - 1
        lo, hi = valid_span(lengths, t)
        if proj:
            for b in range(B):
                dh_tb, dh_b, gy_tb = dh_t[t, b], dh[b], grad_y[t, b]  # [P] each
                if lengths[b] > t:
                    for j in range(dh_tb.shape[0]):
                        dh_tb[j] = dh_b[j] + gy_tb[j]
                else:
                    dh_tb[:] = zero
            if hi > lo:  # dr = dh_t W_hr
                step_gemm(dh_t[t, lo:hi], w_hr, False, dr[lo:hi], torch_blas)
        for b in range(B):
            g_tb, d_tb, cell_tb = gates[t, b], d_gx[t, b], cells[t, b]
            if lengths[b] <= t:  # past the end: no gradient; dh, dc pass through
                d_tb[:] = zero
                if proj:  # o is 0 here: kept as a product so a NaN cell propagates as in naive
                    hidden_tb = hidden[t, b]
                    for j in range(H):
                        hidden_tb[j] = g_tb[3 * H + j] * tanh(cell_tb[j])
                continue
            c_prev = c0[b] if t_prev < 0 or t_prev >= T else cells[t_prev, b]  # [H]
            dc_b, dr_b = dc[b], dr[b]  # [H], [H]
            if not proj:
                dh_b, gy_tb = dh[b], grad_y[t, b]
                for j in range(H):
                    dr_b[j] = dh_b[j] + gy_tb[j]
            # Each loop writes one array over one contiguous range (see lstm_fwd_kernel).
            for j in range(H):  # d o
                o = g_tb[3 * H + j]
                d_tb[3 * H + j] = dr_b[j] * tanh(cell_tb[j]) * o * (one - o)
            for j in range(H):  # dc_t = dc + dr * o * (1 - tanh^2 c)
                tanh_c = tanh(cell_tb[j])
                dc_b[j] = dc_b[j] + dr_b[j] * g_tb[3 * H + j] * (one - tanh_c * tanh_c)
            for j in range(H):  # d i
                i = g_tb[j]
                d_tb[j] = dc_b[j] * g_tb[2 * H + j] * i * (one - i)
            for j in range(H):  # d f
                f_ = g_tb[H + j]
                d_tb[H + j] = dc_b[j] * c_prev[j] * f_ * (one - f_)
            for j in range(H):  # d g
                g = g_tb[2 * H + j]
                d_tb[2 * H + j] = dc_b[j] * g_tb[j] * (one - g * g)
            for j in range(H):  # dc_{t-1}
                dc_b[j] = dc_b[j] * g_tb[H + j]
            if proj:
                hidden_tb = hidden[t, b]
                for j in range(H):
                    hidden_tb[j] = g_tb[3 * H + j] * tanh(cell_tb[j])
        if hi > lo:  # dh_{t-1} = d_pre W_hh for the valid rows; the others keep theirs
            step_gemm(d_gx[t, lo:hi], w_hh, False, dh_next[lo:hi], torch_blas)
            for b in range(lo, hi):
                if lengths[b] > t:
                    dh[b] = dh_next[b]


def lstm_fwd(
    gx: Tensor,  # [T, B, 4H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [4H, R]  R = P with projection, else H
    w_hr: Tensor | None,  # [P, H]
    h0: Tensor,  # [B, R]
    c0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, R], hT [B, R], cT [B, H], gates [T, B, 4H], cells [T, B, H] (see
    naive.lstm_fwd)."""
    T, B, G = gx.shape
    H, R = G // 4, h0.shape[1]
    proj = w_hr is not None
    new = dict(dtype=gx.dtype)
    y, hT, cT = torch.empty(T, B, R, **new), torch.empty(B, R, **new), torch.empty(B, H, **new)
    gates, cells = torch.empty(T, B, G, **new), torch.empty(T, B, H, **new)
    dtype = as_array(gx).dtype
    w_hr_array = as_array(w_hr) if proj else np.empty((0, H), dtype)
    hidden = np.empty((B if proj else 0, H), dtype)
    with step_threads(2 * B * R * G):
        lstm_fwd_kernel(
            as_array(gx), as_array(w_hh), w_hr_array, proj, as_array(h0), as_array(c0),
            as_array(full_lengths(lengths, T, B)), reverse,
            y.numpy(), hT.numpy(), cT.numpy(), gates.numpy(), cells.numpy(), hidden, TORCH_BLAS,
        )  # fmt: skip
    return y, hT, cT, gates, cells


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
    T, B, G = gates.shape
    H, R = G // 4, h0.shape[1]
    proj = w_hr is not None
    new = dict(dtype=gates.dtype)
    d_gx = torch.empty(T, B, G, **new)
    d_h0, d_c0 = torch.empty(B, R, **new).copy_(grad_hT), torch.empty(B, H, **new).copy_(grad_cT)
    steps = T if proj else 0  # dh_t and hidden are kept for d_w_hr only
    dh_t, hidden = torch.empty(steps, B, R, **new), torch.empty(steps, B, H, **new)
    dtype = as_array(y).dtype
    w_hr_array = as_array(w_hr) if proj else np.empty((0, H), dtype)
    with step_threads(2 * B * R * G):
        lstm_bwd_kernel(
            as_array(grad_y), as_array(w_hh), w_hr_array, proj, as_array(c0),
            as_array(full_lengths(lengths, T, B)), reverse, as_array(gates), as_array(cells),
            d_gx.numpy(), d_h0.numpy(), d_c0.numpy(), dh_t.numpy(), hidden.numpy(),
            np.empty((B, H), dtype), np.empty((B, R), dtype), TORCH_BLAS,
        )  # fmt: skip
    # The weight gradients are single GEMMs over all T*B rows: torch's, on all its threads.
    h_prev = previous_states(y.detach(), h0.detach(), lengths, reverse)
    d_w_hh = weight_grad(d_gx, h_prev)
    d_w_hr = weight_grad(dh_t, hidden) if proj else absent_grad(y)
    return d_gx, d_w_hh, d_w_hr, d_h0, d_c0
