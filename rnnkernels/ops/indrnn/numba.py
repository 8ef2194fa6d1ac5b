"""IndRNN layer kernels in Numba (CPU, float32/float64): same signatures and returns as naive.py.

The recurrence is elementwise (``h = act(gx + u * h)``), so there is no GEMM: each step is one
pass over the valid rows, vectorised along H. ``d_u`` is summed in float64 in a fixed order.
Compile options and threads: ../numba_jit.py; design and speed: README.md here.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import types
from torch import Tensor

from rnnkernels.ops.numba_jit import as_array, kernel, tanh
from rnnkernels.ops.steps import full_lengths


@kernel(
    lambda f: types.void(
        f[:, :, ::1],  # gx [T, B, H]
        f[::1],  # u [H]
        f[:, ::1],  # h0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        types.boolean,  # relu (else tanh)
        f[:, :, ::1],  # y [T, B, H]
        f[:, ::1],  # h [B, H]  the running state, hT on return
    )
)
def indrnn_fwd_kernel(gx, u, h0, lengths, reverse, relu, y, h):
    T, B, H = gx.shape
    zero = gx.dtype.type(0)
    h[:] = h0
    for s in range(T):
        t = T - 1 - s if reverse else s
        for b in range(B):
            x_tb, y_tb, h_b = gx[t, b], y[t, b], h[b]
            if lengths[b] <= t:  # past the end: y is 0, state frozen
                y_tb[:] = zero
            else:  # each loop writes one array, so LLVM vectorises it
                if relu:
                    for j in range(H):
                        pre = x_tb[j] + u[j] * h_b[j]
                        y_tb[j] = zero if pre <= zero else pre  # NaN stays NaN, as in torch.relu
                else:
                    for j in range(H):
                        y_tb[j] = tanh(x_tb[j] + u[j] * h_b[j])
                for j in range(H):
                    h_b[j] = y_tb[j]


@kernel(
    lambda f: types.void(
        f[:, :, ::1],  # grad_y [T, B, H]
        f[::1],  # u [H]
        f[:, ::1],  # h0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        types.boolean,  # relu (else tanh)
        f[:, :, ::1],  # y [T, B, H]
        f[:, :, ::1],  # d_gx [T, B, H]
        f[::1],  # d_u [H]
        f[:, ::1],  # dh [B, H]  grad_hT on entry, d_h0 on return
    )
)
def indrnn_bwd_kernel(grad_y, u, h0, lengths, reverse, relu, y, d_gx, d_u, dh):
    T, B, H = y.shape
    zero, one = y.dtype.type(0), y.dtype.type(1)
    d_u_rows = np.zeros((B, H), dtype=np.float64)  # per-sequence sums of d_pre * h_prev
    for s in range(T - 1, -1, -1):  # the forward's visiting order, backwards
        t = T - 1 - s if reverse else s
        for b in range(B):
            d_tb = d_gx[t, b]
            if lengths[b] <= t:  # past the end: no gradient; dh passes through
                d_tb[:] = zero
                continue
            first = t == lengths[b] - 1 if reverse else t == 0  # the sequence's first step
            h_prev = h0[b] if first else (y[t + 1, b] if reverse else y[t - 1, b])
            y_tb, gy_tb, dh_b, acc_b = y[t, b], grad_y[t, b], dh[b], d_u_rows[b]
            # Each loop writes one array, so LLVM vectorises it (guarded by overlap checks).
            for j in range(H):
                dh_b[j] += gy_tb[j]
            if relu:
                for j in range(H):
                    d_tb[j] = dh_b[j] * (one if y_tb[j] > zero else zero)
            else:
                for j in range(H):
                    d_tb[j] = dh_b[j] * (one - y_tb[j] * y_tb[j])
            for j in range(H):
                acc_b[j] += d_tb[j] * h_prev[j]
            for j in range(H):
                dh_b[j] = d_tb[j] * u[j]
    for j in range(H):  # summed over b in a fixed order
        total = 0.0
        for b in range(B):
            total += d_u_rows[b, j]
        d_u[j] = total


def indrnn_fwd(
    gx: Tensor,  # [T, B, H]  x W_ih^T + b_ih + b_hh
    u: Tensor,  # [H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H] (zero past a sequence's end) and hT [B, H]."""
    T, B, H = gx.shape
    y, hT = torch.empty(T, B, H, dtype=gx.dtype), torch.empty(B, H, dtype=gx.dtype)
    indrnn_fwd_kernel(
        as_array(gx), as_array(u), as_array(h0), as_array(full_lengths(lengths, T, B)),
        reverse, nonlinearity == "relu", y.numpy(), hT.numpy(),
    )  # fmt: skip
    return y, hT


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
    """Returns d_gx [T, B, H], d_u [H], d_h0 [B, H]. The activation's derivative comes from y."""
    T, B, H = y.shape
    d_gx, d_u = torch.empty(T, B, H, dtype=y.dtype), torch.empty(H, dtype=y.dtype)
    d_h0 = torch.empty(B, H, dtype=y.dtype).copy_(grad_hT)
    indrnn_bwd_kernel(
        as_array(grad_y), as_array(u), as_array(h0), as_array(full_lengths(lengths, T, B)),
        reverse, nonlinearity == "relu", as_array(y), d_gx.numpy(), d_u.numpy(), d_h0.numpy(),
    )  # fmt: skip
    return d_gx, d_u, d_h0
