"""GRU layer kernels in Numba (CPU, float32/float64): same signatures and returns as naive.py.

Per step: one GEMM (``step_gemm``, ours) ``h W_hh^T`` over the rows still valid into a [B, 3H]
buffer, then one fused pointwise pass per row (b_hh added there). The backward mirrors it;
``dW_hh`` and ``db_hh`` are a GEMM and a sum over all T*B rows afterwards, run by torch (on all
its threads). Each kernel runs the rows [b0, b1) and, of each step, its part's share
(``numba_jit.run``: batch chunks or split steps).
Compile options, step GEMM and threads: ../numba_jit.py; design and speed: README.md here.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import cfunc, njit, types
from torch import Tensor

from rnnkernels.ops.numba_jit import (
    ENTRY,
    ENTRY_OPTIONS,
    OPTIONS,
    as_array,
    barrier,
    full_lengths_array,
    gemm_columns,
    gemm_pairs,
    job_types,
    kernel,
    lanes,
    load_job,
    pack_panels,
    run,
    share,
    sigmoid,
    step_gemm,
    tanh,
    thread_share,
    threading_args,
    valid_span,
)
from rnnkernels.ops.steps import absent_grad, previous_states, weight_grad


@njit(**OPTIONS)
def _gates(row, H, j0, j1):
    """The r, z, n of the hidden units [j0, j1) in a row [3H] of gates."""
    return row[j0:j1], row[H + j0 : H + j1], row[2 * H + j0 : 2 * H + j1]


def _fwd_signature(f: types.Float) -> types.Type:
    return types.void(
        f[:, :, ::1],  # gx [T, B, 3H]
        f[:, :, ::1],  # w_hh_t: W_hh^T [H, 3H] as pack_panels packs it
        f[::1],  # b_hh [3H] (zeros when absent)
        f[:, ::1],  # h0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        f[:, :, ::1],  # y [T, B, H]
        f[:, ::1],  # h [B, H]  the running state, hT on return
        f[:, :, ::1],  # gates [T, B, 3H]
        f[:, :, ::1],  # hn [T, B, H]
        f[:, ::1],  # gh [B, 3H]  h W_hh^T (scratch)
        *threading_args(f),
    )


@kernel(_fwd_signature)
def gru_fwd_kernel(gx, w_hh_t, b_hh, h0, lengths, reverse, y, h, gates, hn, gh, spill, sync, b0,
                   b1, part, parts):  # fmt: skip
    T, G = gx.shape[0], gx.shape[2]
    H = G // 3
    zero, one = gx.dtype.type(0), gx.dtype.type(1)
    # This part's hidden units (the pointwise pass) and column pairs of the GEMM.
    j0, j1 = share(H, part, parts, lanes(gx))
    pairs = share(gemm_pairs(w_hh_t), part, parts, 1)
    b_r, b_z, b_n = _gates(b_hh, H, j0, j1)
    for b in range(b0, b1):
        h[b, j0:j1] = h0[b, j0:j1]
    generation = 1  # the barriers passed, this one included
    barrier(sync, parts, generation)
    for s in range(T):
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t, b0, b1)
        if hi > lo:
            step_gemm(h[lo:hi], w_hh_t, gh[lo:hi], spill, pairs)
        generation += 1
        barrier(sync, parts, generation)
        for b in range(b0, b1):
            r, z, n = _gates(gates[t, b], H, j0, j1)
            hn_tb, y_tb = hn[t, b, j0:j1], y[t, b, j0:j1]
            if lengths[b] <= t:  # past the end: outputs 0, state frozen
                r[:], z[:], n[:], hn_tb[:], y_tb[:] = zero, zero, zero, zero, zero
                continue
            x_r, x_z, x_n = _gates(gx[t, b], H, j0, j1)
            gh_r, gh_z, gh_n = _gates(gh[b], H, j0, j1)
            h_b = h[b, j0:j1]
            # One loop per array written, each over a slice from index 0: LLVM vectorises those
            # (see lstm/numba.py).
            for j in range(j1 - j0):
                r[j] = sigmoid(x_r[j] + (gh_r[j] + b_r[j]))
            for j in range(j1 - j0):
                z[j] = sigmoid(x_z[j] + (gh_z[j] + b_z[j]))
            for j in range(j1 - j0):
                hn_tb[j] = gh_n[j] + b_n[j]
            for j in range(j1 - j0):
                n[j] = tanh(x_n[j] + r[j] * hn_tb[j])
            for j in range(j1 - j0):
                y_tb[j] = (one - z[j]) * n[j] + z[j] * h_b[j]
            for j in range(j1 - j0):
                h_b[j] = y_tb[j]
        generation += 1
        barrier(sync, parts, generation)


def _bwd_signature(f: types.Float) -> types.Type:
    return types.void(
        f[:, :, ::1],  # grad_y [T, B, H]
        f[:, :, ::1],  # w_hh_p: W_hh [3H, H] as pack_panels packs it
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        f[:, :, ::1],  # gates [T, B, 3H]
        f[:, :, ::1],  # hn [T, B, H]
        f[:, :, ::1],  # h_prev [T, B, H]  each step's previous state
        f[:, :, ::1],  # d_gx [T, B, 3H]
        f[:, ::1],  # dh [B, H]  grad_hT on entry, d_h0 on return
        f[:, :, ::1],  # d_gh [T, B, 3H]  gradient of h W_hh^T + b_hh
        f[:, ::1],  # dh_next [B, H]  d_gh W_hh (scratch)
        *threading_args(f),
    )


@kernel(_bwd_signature)
def gru_bwd_kernel(grad_y, w_hh_p, lengths, reverse, gates, hn, h_prev, d_gx, dh, d_gh, dh_next,
                   spill, sync, b0, b1, part, parts):  # fmt: skip
    T, G = gates.shape[0], gates.shape[2]
    H = G // 3
    zero, one = gates.dtype.type(0), gates.dtype.type(1)
    # This part's hidden units (the pointwise pass), column pairs of the GEMM and the columns of
    # dh it adds the GEMM to.
    j0, j1 = share(H, part, parts, lanes(gates))
    pairs = share(gemm_pairs(w_hh_p), part, parts, 1)
    c0, c1 = gemm_columns(w_hh_p, pairs, H)
    generation = 0  # the barriers passed
    for s in range(T - 1, -1, -1):  # the forward's visiting order, backwards
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t, b0, b1)
        for b in range(b0, b1):
            d_r, d_z, d_n = _gates(d_gx[t, b], H, j0, j1)
            dgh_r, dgh_z, dgh_n = _gates(d_gh[t, b], H, j0, j1)
            if lengths[b] <= t:  # past the end: no gradient; dh passes through
                d_r[:], d_z[:], d_n[:] = zero, zero, zero
                dgh_r[:], dgh_z[:], dgh_n[:] = zero, zero, zero
                continue
            r, z, n = _gates(gates[t, b], H, j0, j1)
            hn_tb, gy_tb, hp_tb = hn[t, b, j0:j1], grad_y[t, b, j0:j1], h_prev[t, b, j0:j1]
            dh_b = dh[b, j0:j1]
            # One loop per array written, each from index 0 (see gru_fwd_kernel).
            for j in range(j1 - j0):
                dh_b[j] += gy_tb[j]  # dh_t
            for j in range(j1 - j0):
                d_n[j] = dh_b[j] * (one - z[j]) * (one - n[j] * n[j])
            for j in range(j1 - j0):
                d_r[j] = d_n[j] * hn_tb[j] * r[j] * (one - r[j])
            for j in range(j1 - j0):
                d_z[j] = dh_b[j] * (hp_tb[j] - n[j]) * z[j] * (one - z[j])
            for j in range(j1 - j0):
                dgh_r[j] = d_r[j]
            for j in range(j1 - j0):
                dgh_z[j] = d_z[j]
            for j in range(j1 - j0):
                dgh_n[j] = d_n[j] * r[j]
            for j in range(j1 - j0):
                dh_b[j] = dh_b[j] * z[j]
        generation += 1
        barrier(sync, parts, generation)
        if hi > lo:  # dh_{t-1} = dh_t * z + d_gh W_hh for the valid rows; the others keep theirs
            step_gemm(d_gh[t, lo:hi], w_hh_p, dh_next[lo:hi], spill, pairs)
            for b in range(lo, hi):
                if lengths[b] > t:
                    dh[b, c0:c1] += dh_next[b, c0:c1]
        generation += 1
        barrier(sync, parts, generation)


# The kernels' entries on torch's OpenMP team (numba_jit.run), float32 and float64.
_FWD_JOB32, _FWD_JOB64 = job_types(_fwd_signature)
_BWD_JOB32, _BWD_JOB64 = job_types(_bwd_signature)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _fwd_entry32(address):
    own, spill, sync, calls = thread_share(load_job(address, _FWD_JOB32))
    for b0, b1, part, parts in calls:
        gru_fwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _fwd_entry64(address):
    own, spill, sync, calls = thread_share(load_job(address, _FWD_JOB64))
    for b0, b1, part, parts in calls:
        gru_fwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _bwd_entry32(address):
    own, spill, sync, calls = thread_share(load_job(address, _BWD_JOB32))
    for b0, b1, part, parts in calls:
        gru_bwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _bwd_entry64(address):
    own, spill, sync, calls = thread_share(load_job(address, _BWD_JOB64))
    for b0, b1, part, parts in calls:
        gru_bwd_kernel(*own, spill, sync, b0, b1, part, parts)


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
    gx_array, w_hh_array = as_array(gx), as_array(w_hh)
    bias = as_array(b_hh) if b_hh is not None else np.zeros(G, gx_array.dtype)
    lengths_array = full_lengths_array(lengths, T, B)
    args = (
        gx_array, pack_panels(w_hh_array, True), bias, as_array(h0), lengths_array, reverse,
        y.numpy(), hT.numpy(), gates.numpy(), hn.numpy(), np.empty((B, G), gx_array.dtype),
    )  # fmt: skip
    run(gru_fwd_kernel, (_fwd_entry32, _fwd_entry64), args, lengths_array, 2 * w_hh_array.size)
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
    w_hh_array = as_array(w_hh)
    lengths_array = full_lengths_array(lengths, T, B)
    args = (
        as_array(grad_y), pack_panels(w_hh_array, False), lengths_array, reverse, as_array(gates),
        as_array(hn), h_prev.numpy(), d_gx.numpy(), d_h0.numpy(), d_gh.numpy(),
        np.empty((B, H), w_hh_array.dtype),
    )  # fmt: skip
    run(gru_bwd_kernel, (_bwd_entry32, _bwd_entry64), args, lengths_array, 2 * w_hh_array.size)
    # The weight gradients are a GEMM and a sum over all T*B rows: torch's, on all its threads.
    d_w_hh = weight_grad(d_gh, h_prev)
    d_b_hh = d_gh.sum((0, 1)) if b_hh is not None else absent_grad(y)
    return d_gx, d_w_hh, d_b_hh, d_h0
