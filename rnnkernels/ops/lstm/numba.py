"""LSTM layer kernels in Numba (CPU, float32/float64): same signatures and returns as naive.py.

Per step: one GEMM (``step_gemm``, ours) over the rows still valid, into that step's slice of
``gates``, then one fused pointwise pass per row; with projection a second GEMM ``r W_hr^T`` into
``y``. The backward mirrors it; its weight gradients are single GEMMs over all T*B rows
afterwards, run by torch (on all of torch's threads) in the wrapper. Each kernel runs the rows
[b0, b1) and, of each step, its part's share (``numba_jit.run``: batch chunks or split steps).
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
    """The i, f, g, o of the hidden units [j0, j1) in a row [4H] of gates."""
    return (
        row[j0:j1],
        row[H + j0 : H + j1],
        row[2 * H + j0 : 2 * H + j1],
        row[3 * H + j0 : 3 * H + j1],
    )


def _fwd_signature(f: types.Float) -> types.Type:
    return types.void(
        f[:, :, ::1],  # gx [T, B, 4H]
        f[:, :, ::1],  # w_hh_t: W_hh^T [R, 4H] as pack_panels packs it
        f[:, :, ::1],  # w_hr_t: W_hr^T [H, P] as pack_panels packs it (no panels: no projection)
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
        *threading_args(f),
    )


@kernel(_fwd_signature)
def lstm_fwd_kernel(gx, w_hh_t, w_hr_t, h0, c0, lengths, reverse, y, h, c, gates, cells, hidden,
                    spill, sync, b0, b1, part, parts):  # fmt: skip
    T, G, R = gx.shape[0], gx.shape[2], h.shape[1]
    H = G // 4
    proj = w_hr_t.size > 0  # no panels: no projection
    zero = gx.dtype.type(0)
    # This part's hidden units (the pointwise pass), column pairs of the GEMMs and the columns of
    # h it copies from y with projection (all of them when parts == 1).
    j0, j1 = share(H, part, parts, lanes(gx))
    pairs, pairs_r = (
        share(gemm_pairs(w_hh_t), part, parts, 1),
        share(gemm_pairs(w_hr_t), part, parts, 1),
    )
    r0, r1 = gemm_columns(w_hr_t, pairs_r, R) if proj else (j0, j1)
    for b in range(b0, b1):
        h[b, r0:r1] = h0[b, r0:r1]
        c[b, j0:j1] = c0[b, j0:j1]
    generation = 1  # the barriers passed, this one included
    barrier(sync, parts, generation)
    for s in range(T):
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t, b0, b1)
        if hi > lo:  # gates_t = h W_hh^T; gx is added in the pointwise pass
            step_gemm(h[lo:hi], w_hh_t, gates[t, lo:hi], spill, pairs)
        generation += 1
        barrier(sync, parts, generation)
        for b in range(b0, b1):
            i, f, g, o = _gates(gates[t, b], H, j0, j1)
            c_b, cell_tb = c[b, j0:j1], cells[t, b, j0:j1]
            if lengths[b] <= t:  # past the end: gates 0, cell frozen, y 0
                i[:], f[:], g[:], o[:] = zero, zero, zero, zero
                cell_tb[:] = c_b
                if not proj:
                    y[t, b, j0:j1] = zero
                continue
            x_i, x_f, x_g, x_o = _gates(gx[t, b], H, j0, j1)
            out = hidden[b, j0:j1] if proj else y[t, b, j0:j1]  # o * tanh(c)
            # One loop per array written, each over a slice from index 0: LLVM vectorises those
            # (after an overlap check); loops over range(2H, 3H) did not vectorise, and one loop
            # over all gates ran 2x slower.
            for j in range(j1 - j0):
                i[j] = sigmoid(x_i[j] + i[j])
            for j in range(j1 - j0):
                f[j] = sigmoid(x_f[j] + f[j])
            for j in range(j1 - j0):
                g[j] = tanh(x_g[j] + g[j])
            for j in range(j1 - j0):
                o[j] = sigmoid(x_o[j] + o[j])
            for j in range(j1 - j0):
                c_b[j] = f[j] * c_b[j] + i[j] * g[j]
            for j in range(j1 - j0):
                cell_tb[j] = c_b[j]
            for j in range(j1 - j0):
                out[j] = o[j] * tanh(c_b[j])
            if not proj:
                h_b = h[b, j0:j1]
                for j in range(j1 - j0):
                    h_b[j] = out[j]
        generation += 1
        barrier(sync, parts, generation)
        if proj:
            if hi > lo:  # h_t = (o * tanh c_t) W_hr^T
                step_gemm(hidden[lo:hi], w_hr_t, y[t, lo:hi], spill, pairs_r)
            for b in range(b0, b1):
                if lengths[b] > t:
                    h[b, r0:r1] = y[t, b, r0:r1]
                else:
                    y[t, b, r0:r1] = zero
            generation += 1
            barrier(sync, parts, generation)


def _bwd_signature(f: types.Float) -> types.Type:
    return types.void(
        f[:, :, ::1],  # grad_y [T, B, R]
        f[:, :, ::1],  # w_hh_p: W_hh [4H, R] as pack_panels packs it
        f[:, :, ::1],  # w_hr_p: W_hr [P, H] as pack_panels packs it (no panels: no projection)
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
        *threading_args(f),
    )


@kernel(_bwd_signature)
def lstm_bwd_kernel(grad_y, w_hh_p, w_hr_p, c0, lengths, reverse, gates, cells, d_gx, dh, dc,
                    dh_t, hidden, dr, dh_next, spill, sync, b0, b1, part, parts):  # fmt: skip
    T, G, R = gates.shape[0], gates.shape[2], dh.shape[1]
    H = G // 4
    proj = w_hr_p.size > 0  # no panels: no projection
    zero, one = gates.dtype.type(0), gates.dtype.type(1)
    # This part's hidden units (the pointwise pass), column pairs of the GEMMs (dh_next, dr) and
    # the columns of dh it writes.
    j0, j1 = share(H, part, parts, lanes(gates))
    pairs, pairs_r = (
        share(gemm_pairs(w_hh_p), part, parts, 1),
        share(gemm_pairs(w_hr_p), part, parts, 1),
    )
    r0, r1 = gemm_columns(w_hh_p, pairs, R)
    generation = 0  # the barriers passed
    for s in range(T - 1, -1, -1):  # the forward's visiting order, backwards
        t = T - 1 - s if reverse else s
        t_prev = t + 1 if reverse else t - 1
        lo, hi = valid_span(lengths, t, b0, b1)
        if proj:
            for b in range(b0, b1):
                dh_tb, dh_b, gy_tb = dh_t[t, b, r0:r1], dh[b, r0:r1], grad_y[t, b, r0:r1]
                if lengths[b] > t:
                    for j in range(r1 - r0):
                        dh_tb[j] = dh_b[j] + gy_tb[j]
                else:
                    dh_tb[:] = zero
            generation += 1
            barrier(sync, parts, generation)
            if hi > lo:  # dr = dh_t W_hr
                step_gemm(dh_t[t, lo:hi], w_hr_p, dr[lo:hi], spill, pairs_r)
            generation += 1
            barrier(sync, parts, generation)
        for b in range(b0, b1):
            i, f, g, o = _gates(gates[t, b], H, j0, j1)
            d_i, d_f, d_g, d_o = _gates(d_gx[t, b], H, j0, j1)
            cell_tb = cells[t, b, j0:j1]
            if lengths[b] <= t:  # past the end: no gradient; dh, dc pass through
                d_i[:], d_f[:], d_g[:], d_o[:] = zero, zero, zero, zero
                if proj:  # o is 0 here: kept as a product so a NaN cell propagates as in naive
                    hidden_tb = hidden[t, b, j0:j1]
                    for j in range(j1 - j0):
                        hidden_tb[j] = o[j] * tanh(cell_tb[j])
                continue
            c_prev = c0[b, j0:j1] if t_prev < 0 or t_prev >= T else cells[t_prev, b, j0:j1]
            dc_b, dr_b = dc[b, j0:j1], dr[b, j0:j1]
            if not proj:
                dh_b, gy_tb = dh[b, j0:j1], grad_y[t, b, j0:j1]
                for j in range(j1 - j0):
                    dr_b[j] = dh_b[j] + gy_tb[j]
            # One loop per array written, each from index 0 (see lstm_fwd_kernel).
            for j in range(j1 - j0):
                d_o[j] = dr_b[j] * tanh(cell_tb[j]) * o[j] * (one - o[j])
            for j in range(j1 - j0):  # dc_t = dc + dr * o * (1 - tanh^2 c)
                tanh_c = tanh(cell_tb[j])
                dc_b[j] = dc_b[j] + dr_b[j] * o[j] * (one - tanh_c * tanh_c)
            for j in range(j1 - j0):
                d_i[j] = dc_b[j] * g[j] * i[j] * (one - i[j])
            for j in range(j1 - j0):
                d_f[j] = dc_b[j] * c_prev[j] * f[j] * (one - f[j])
            for j in range(j1 - j0):
                d_g[j] = dc_b[j] * i[j] * (one - g[j] * g[j])
            for j in range(j1 - j0):  # dc_{t-1}
                dc_b[j] = dc_b[j] * f[j]
            if proj:
                hidden_tb = hidden[t, b, j0:j1]
                for j in range(j1 - j0):
                    hidden_tb[j] = o[j] * tanh(cell_tb[j])
        generation += 1
        barrier(sync, parts, generation)
        if hi > lo:  # dh_{t-1} = d_pre W_hh for the valid rows; the others keep theirs
            step_gemm(d_gx[t, lo:hi], w_hh_p, dh_next[lo:hi], spill, pairs)
            for b in range(lo, hi):
                if lengths[b] > t:
                    dh[b, r0:r1] = dh_next[b, r0:r1]
        generation += 1
        barrier(sync, parts, generation)


# The kernels' entries on torch's OpenMP team (numba_jit.run), float32 and float64.
_FWD_JOB32, _FWD_JOB64 = job_types(_fwd_signature)
_BWD_JOB32, _BWD_JOB64 = job_types(_bwd_signature)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _fwd_entry32(address):
    own, spill, sync, calls = thread_share(load_job(address, _FWD_JOB32))
    for b0, b1, part, parts in calls:
        lstm_fwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _fwd_entry64(address):
    own, spill, sync, calls = thread_share(load_job(address, _FWD_JOB64))
    for b0, b1, part, parts in calls:
        lstm_fwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _bwd_entry32(address):
    own, spill, sync, calls = thread_share(load_job(address, _BWD_JOB32))
    for b0, b1, part, parts in calls:
        lstm_bwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _bwd_entry64(address):
    own, spill, sync, calls = thread_share(load_job(address, _BWD_JOB64))
    for b0, b1, part, parts in calls:
        lstm_bwd_kernel(*own, spill, sync, b0, b1, part, parts)


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
    new = dict(dtype=gx.dtype)
    y, hT, cT = torch.empty(T, B, R, **new), torch.empty(B, R, **new), torch.empty(B, H, **new)
    gates, cells = torch.empty(T, B, G, **new), torch.empty(T, B, H, **new)
    gx_array, w_hh_array = as_array(gx), as_array(w_hh)
    w_hr_array = as_array(w_hr) if w_hr is not None else np.empty((0, H), gx_array.dtype)
    lengths_array = full_lengths_array(lengths, T, B)
    args = (
        gx_array, pack_panels(w_hh_array, True), pack_panels(w_hr_array, True), as_array(h0),
        as_array(c0), lengths_array, reverse, y.numpy(), hT.numpy(), cT.numpy(), gates.numpy(),
        cells.numpy(), np.empty((B if w_hr is not None else 0, H), gx_array.dtype),
    )  # fmt: skip
    run(
        lstm_fwd_kernel,
        (_fwd_entry32, _fwd_entry64),
        args,
        lengths_array,
        2 * (w_hh_array.size + w_hr_array.size),
    )
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
    w_hh_array = as_array(w_hh)
    w_hr_array = as_array(w_hr) if proj else np.empty((0, H), w_hh_array.dtype)
    lengths_array = full_lengths_array(lengths, T, B)
    args = (
        as_array(grad_y), pack_panels(w_hh_array, False), pack_panels(w_hr_array, False),
        as_array(c0), lengths_array, reverse, as_array(gates), as_array(cells), d_gx.numpy(),
        d_h0.numpy(), d_c0.numpy(), dh_t.numpy(), hidden.numpy(),
        np.empty((B, H), w_hh_array.dtype), np.empty((B, R), w_hh_array.dtype),
    )  # fmt: skip
    run(
        lstm_bwd_kernel,
        (_bwd_entry32, _bwd_entry64),
        args,
        lengths_array,
        2 * (w_hh_array.size + w_hr_array.size),
    )
    # The weight gradients are single GEMMs over all T*B rows: torch's, on all its threads.
    h_prev = previous_states(y.detach(), h0.detach(), lengths, reverse)
    d_w_hh = weight_grad(d_gx, h_prev)
    d_w_hr = weight_grad(dh_t, hidden) if proj else absent_grad(y)
    return d_gx, d_w_hh, d_w_hr, d_h0, d_c0
