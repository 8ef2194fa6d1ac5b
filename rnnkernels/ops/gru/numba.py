"""GRU layer kernels in Numba (CPU, float32/float64): same signatures and returns as naive.py.

Per step: one BLAS GEMM (step_gemm) ``h W_hh^T`` over the rows still valid into a [B, 3H] buffer,
then one fused pointwise pass per row (b_hh added there). The backward mirrors it; ``dW_hh`` and
``db_hh`` are a GEMM and a sum over all T*B rows afterwards, run by torch (on all its threads).
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
        f[:, :, ::1],  # gx [T, B, 3H]
        f[:, ::1],  # w_hh [3H, H]
        f[::1],  # b_hh [3H] (zeros when absent)
        f[:, ::1],  # h0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        f[:, :, ::1],  # y [T, B, H]
        f[:, ::1],  # h [B, H]  the running state, hT on return
        f[:, :, ::1],  # gates [T, B, 3H]
        f[:, :, ::1],  # hn [T, B, H]
        f[:, ::1],  # gh [B, 3H]  h W_hh^T (scratch)
        types.boolean,  # torch_blas: step GEMMs by torch's BLAS (else np.dot)
    )
)
def gru_fwd_kernel(gx, w_hh, b_hh, h0, lengths, reverse, y, h, gates, hn, gh, torch_blas):
    T, B, G = gx.shape
    H = G // 3
    zero, one = gx.dtype.type(0), gx.dtype.type(1)
    h[:] = h0
    for s in range(T):
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t)
        if hi > lo:
            step_gemm(h[lo:hi], w_hh, True, gh[lo:hi], torch_blas)
        for b in range(B):
            g_tb, hn_tb, y_tb = gates[t, b], hn[t, b], y[t, b]
            if lengths[b] <= t:  # past the end: outputs 0, state frozen
                g_tb[:] = zero
                hn_tb[:] = zero
                y_tb[:] = zero
                continue
            x_tb, gh_b, h_b = gx[t, b], gh[b], h[b]  # [3H], [3H], [H]
            # Each loop writes one array over one contiguous range, so LLVM vectorises it
            # (see lstm/numba.py).
            for j in range(2 * H):  # r, z
                g_tb[j] = sigmoid(x_tb[j] + (gh_b[j] + b_hh[j]))
            for j in range(H):
                hn_tb[j] = gh_b[2 * H + j] + b_hh[2 * H + j]
            for j in range(H):  # n, kept in y meanwhile
                y_tb[j] = tanh(x_tb[2 * H + j] + g_tb[j] * hn_tb[j])
            for j in range(H):
                g_tb[2 * H + j] = y_tb[j]
            for j in range(H):
                z = g_tb[H + j]
                y_tb[j] = (one - z) * y_tb[j] + z * h_b[j]
            h[b] = y_tb


@kernel(
    lambda f: types.void(
        f[:, :, ::1],  # grad_y [T, B, H]
        f[:, ::1],  # w_hh [3H, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        f[:, :, ::1],  # gates [T, B, 3H]
        f[:, :, ::1],  # hn [T, B, H]
        f[:, :, ::1],  # h_prev [T, B, H]  each step's previous state
        f[:, :, ::1],  # d_gx [T, B, 3H]
        f[:, ::1],  # dh [B, H]  grad_hT on entry, d_h0 on return
        f[:, :, ::1],  # d_gh [T, B, 3H]  gradient of h W_hh^T + b_hh
        f[:, ::1],  # dh_next [B, H]  d_gh W_hh (scratch)
        types.boolean,  # torch_blas: step GEMMs by torch's BLAS (else np.dot)
    )
)
def gru_bwd_kernel(grad_y, w_hh, lengths, reverse, gates, hn, h_prev, d_gx, dh, d_gh, dh_next,
                   torch_blas):  # fmt: skip
    T, B, G = gates.shape
    H = G // 3
    zero, one = gates.dtype.type(0), gates.dtype.type(1)
    for s in range(T - 1, -1, -1):  # the forward's visiting order, backwards
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t)
        for b in range(B):
            d_tb, d_gh_tb = d_gx[t, b], d_gh[t, b]
            if lengths[b] <= t:  # past the end: no gradient; dh passes through
                d_tb[:] = zero
                d_gh_tb[:] = zero
                continue
            g_tb, hn_tb, gy_tb = gates[t, b], hn[t, b], grad_y[t, b]  # [3H], [H], [H]
            hp_tb, dh_b = h_prev[t, b], dh[b]  # [H], [H]
            # Each loop writes one array over one contiguous range (see gru_fwd_kernel).
            for j in range(H):
                dh_b[j] += gy_tb[j]  # dh_t
            for j in range(H):  # d r = d_n * hn * r (1 - r)
                r, z, n = g_tb[j], g_tb[H + j], g_tb[2 * H + j]
                d_tb[j] = dh_b[j] * (one - z) * (one - n * n) * hn_tb[j] * r * (one - r)
            for j in range(H):  # d z
                z = g_tb[H + j]
                d_tb[H + j] = dh_b[j] * (hp_tb[j] - g_tb[2 * H + j]) * z * (one - z)
            for j in range(H):  # d n
                z, n = g_tb[H + j], g_tb[2 * H + j]
                d_tb[2 * H + j] = dh_b[j] * (one - z) * (one - n * n)
            for j in range(2 * H):
                d_gh_tb[j] = d_tb[j]
            for j in range(H):
                d_gh_tb[2 * H + j] = d_tb[2 * H + j] * g_tb[j]
            for j in range(H):
                dh_b[j] = dh_b[j] * g_tb[H + j]
        if hi > lo:  # dh_{t-1} = dh_t * z + d_gh W_hh for the valid rows; the others keep theirs
            step_gemm(d_gh[t, lo:hi], w_hh, False, dh_next[lo:hi], torch_blas)
            for b in range(lo, hi):
                if lengths[b] > t:
                    dh[b] += dh_next[b]


def gru_fwd(
    gx: Tensor,  # [T, B, 3H]  x W_ih^T + b_ih
    w_hh: Tensor,  # [3H, H]
    b_hh: Tensor | None,  # [3H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, H], hT [B, H], gates [T, B, 3H] (r, z, n) and hn [T, B, H] (see
    naive.gru_fwd)."""
    T, B, G = gx.shape
    H = G // 3
    new = dict(dtype=gx.dtype)
    y, hT = torch.empty(T, B, H, **new), torch.empty(B, H, **new)
    gates, hn = torch.empty(T, B, G, **new), torch.empty(T, B, H, **new)
    bias = as_array(b_hh) if b_hh is not None else np.zeros(G, dtype=as_array(gx).dtype)
    with step_threads(2 * B * H * G):
        gru_fwd_kernel(
            as_array(gx), as_array(w_hh), bias, as_array(h0),
            as_array(full_lengths(lengths, T, B)), reverse,
            y.numpy(), hT.numpy(), gates.numpy(), hn.numpy(), np.empty((B, G), bias.dtype),
            TORCH_BLAS,
        )  # fmt: skip
    return y, hT, gates, hn


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
    T, B, G = gates.shape
    H = G // 3
    new = dict(dtype=gates.dtype)
    d_gx, d_gh = torch.empty(T, B, G, **new), torch.empty(T, B, G, **new)
    d_h0 = torch.empty(B, H, **new).copy_(grad_hT)
    h_prev = previous_states(y.detach(), h0.detach(), lengths, reverse).contiguous()
    with step_threads(2 * B * H * G):
        gru_bwd_kernel(
            as_array(grad_y), as_array(w_hh), as_array(full_lengths(lengths, T, B)), reverse,
            as_array(gates), as_array(hn), h_prev.numpy(), d_gx.numpy(), d_h0.numpy(),
            d_gh.numpy(), np.empty((B, H), dtype=as_array(y).dtype), TORCH_BLAS,
        )  # fmt: skip
    # The weight gradients are a GEMM and a sum over all T*B rows: torch's, on all its threads.
    d_w_hh = weight_grad(d_gh, h_prev)
    d_b_hh = d_gh.sum((0, 1)) if b_hh is not None else absent_grad(y)
    return d_gx, d_w_hh, d_b_hh, d_h0
