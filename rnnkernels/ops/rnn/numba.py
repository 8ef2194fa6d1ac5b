"""Elman RNN (``nn.RNN``) layer kernels in Numba (CPU, float32/float64): same signatures and
returns as naive.py.

As the GRU kernels with one gate: per step one GEMM (``step_gemm``, ours) ``h W_hh^T`` over the
rows still valid into a [B, H] buffer, then one pointwise pass ``y = act(gx + gh)`` per row (the
activations as IndRNN's kernels write them). The backward: ``d_pre = (dh + grad_y) act'(y)``,
then ``dh = d_pre W_hh`` by the step GEMM; ``dW_hh`` is one GEMM over all T*B rows afterwards,
run by torch (on all its threads). Each kernel runs the rows [b0, b1) and, of each step, its
part's share (``numba_jit.run``: batch chunks or split steps).
Compile options, step GEMM and threads: ../numba_jit.py.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import cfunc, types
from torch import Tensor

from rnnkernels.ops.numba_jit import (
    ENTRY,
    ENTRY_OPTIONS,
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
    step_gemm,
    tanh,
    thread_share,
    threading_args,
    valid_span,
)
from rnnkernels.ops.steps import previous_states, weight_grad


def _fwd_signature(f: types.Float) -> types.Type:
    return types.void(
        f[:, :, ::1],  # gx [T, B, H]
        f[:, :, ::1],  # w_hh_t: W_hh^T [H, H] as pack_panels packs it
        f[:, ::1],  # h0 [B, H]
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        types.boolean,  # relu (else tanh)
        f[:, :, ::1],  # y [T, B, H]
        f[:, ::1],  # h [B, H]  the running state, hT on return
        f[:, ::1],  # gh [B, H]  h W_hh^T (scratch)
        *threading_args(f),
    )


@kernel(_fwd_signature)
def rnn_fwd_kernel(gx, w_hh_t, h0, lengths, reverse, relu, y, h, gh, spill, sync, b0, b1, part,
                   parts):  # fmt: skip
    T, H = gx.shape[0], gx.shape[2]
    zero = gx.dtype.type(0)
    # This part's hidden units (the pointwise pass) and column pairs of the GEMM.
    j0, j1 = share(H, part, parts, lanes(gx))
    pairs = share(gemm_pairs(w_hh_t), part, parts, 1)
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
            y_tb = y[t, b, j0:j1]
            if lengths[b] <= t:  # past the end: y is 0, state frozen
                y_tb[:] = zero
                continue
            x_tb, gh_b, h_b = gx[t, b, j0:j1], gh[b, j0:j1], h[b, j0:j1]
            # One loop per array written, each over a slice from index 0: LLVM vectorises those.
            if relu:
                for j in range(j1 - j0):
                    pre = x_tb[j] + gh_b[j]
                    y_tb[j] = zero if pre <= zero else pre  # NaN stays NaN, as in torch.relu
            else:
                for j in range(j1 - j0):
                    y_tb[j] = tanh(x_tb[j] + gh_b[j])
            for j in range(j1 - j0):
                h_b[j] = y_tb[j]
        generation += 1
        barrier(sync, parts, generation)


def _bwd_signature(f: types.Float) -> types.Type:
    return types.void(
        f[:, :, ::1],  # grad_y [T, B, H]
        f[:, :, ::1],  # w_hh_p: W_hh [H, H] as pack_panels packs it
        types.int64[::1],  # lengths [B], clipped to [0, T]
        types.boolean,  # reverse
        types.boolean,  # relu (else tanh)
        f[:, :, ::1],  # y [T, B, H]
        f[:, :, ::1],  # d_gx [T, B, H]
        f[:, ::1],  # dh [B, H]  grad_hT on entry, d_h0 on return
        f[:, ::1],  # dh_next [B, H]  d_gx[t] W_hh (scratch)
        *threading_args(f),
    )


@kernel(_bwd_signature)
def rnn_bwd_kernel(grad_y, w_hh_p, lengths, reverse, relu, y, d_gx, dh, dh_next, spill, sync, b0,
                   b1, part, parts):  # fmt: skip
    T, H = y.shape[0], y.shape[2]
    zero, one = y.dtype.type(0), y.dtype.type(1)
    # This part's hidden units (the pointwise pass), column pairs of the GEMM and the columns of
    # dh it writes.
    j0, j1 = share(H, part, parts, lanes(y))
    pairs = share(gemm_pairs(w_hh_p), part, parts, 1)
    c0, c1 = gemm_columns(w_hh_p, pairs, H)
    generation = 0  # the barriers passed
    for s in range(T - 1, -1, -1):  # the forward's visiting order, backwards
        t = T - 1 - s if reverse else s
        lo, hi = valid_span(lengths, t, b0, b1)
        for b in range(b0, b1):
            d_tb = d_gx[t, b, j0:j1]
            if lengths[b] <= t:  # past the end: no gradient; dh passes through
                d_tb[:] = zero
                continue
            y_tb, gy_tb, dh_b = y[t, b, j0:j1], grad_y[t, b, j0:j1], dh[b, j0:j1]
            if relu:
                for j in range(j1 - j0):
                    d_tb[j] = (dh_b[j] + gy_tb[j]) * (one if y_tb[j] > zero else zero)
            else:
                for j in range(j1 - j0):
                    d_tb[j] = (dh_b[j] + gy_tb[j]) * (one - y_tb[j] * y_tb[j])
        generation += 1
        barrier(sync, parts, generation)
        if hi > lo:  # dh_{t-1} = d_pre W_hh for the valid rows; the others keep theirs
            step_gemm(d_gx[t, lo:hi], w_hh_p, dh_next[lo:hi], spill, pairs)
            for b in range(lo, hi):
                if lengths[b] > t:
                    dh[b, c0:c1] = dh_next[b, c0:c1]
        generation += 1
        barrier(sync, parts, generation)


# The kernels' entries on torch's OpenMP team (numba_jit.run), float32 and float64.
_FWD_JOB32, _FWD_JOB64 = job_types(_fwd_signature)
_BWD_JOB32, _BWD_JOB64 = job_types(_bwd_signature)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _fwd_entry32(address):
    own, spill, sync, calls = thread_share(load_job(address, _FWD_JOB32))
    for b0, b1, part, parts in calls:
        rnn_fwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _fwd_entry64(address):
    own, spill, sync, calls = thread_share(load_job(address, _FWD_JOB64))
    for b0, b1, part, parts in calls:
        rnn_fwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _bwd_entry32(address):
    own, spill, sync, calls = thread_share(load_job(address, _BWD_JOB32))
    for b0, b1, part, parts in calls:
        rnn_bwd_kernel(*own, spill, sync, b0, b1, part, parts)


@cfunc(ENTRY, **ENTRY_OPTIONS)
def _bwd_entry64(address):
    own, spill, sync, calls = thread_share(load_job(address, _BWD_JOB64))
    for b0, b1, part, parts in calls:
        rnn_bwd_kernel(*own, spill, sync, b0, b1, part, parts)


def rnn_fwd(
    gx: Tensor,  # [T, B, H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [H, H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H] (zero past a sequence's end) and hT [B, H]."""
    T, B, H = gx.shape
    y, hT = torch.empty(T, B, H, dtype=gx.dtype), torch.empty(B, H, dtype=gx.dtype)
    gx_array, w_hh_array = as_array(gx), as_array(w_hh)
    lengths_array = full_lengths_array(lengths, T, B)
    args = (
        gx_array, pack_panels(w_hh_array, True), as_array(h0), lengths_array, reverse,
        nonlinearity == "relu", y.numpy(), hT.numpy(), np.empty((B, H), gx_array.dtype),
    )  # fmt: skip
    run(rnn_fwd_kernel, (_fwd_entry32, _fwd_entry64), args, lengths_array, 2 * w_hh_array.size)
    return y, hT


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
    """Returns d_gx [T, B, H], d_w_hh [H, H], d_h0 [B, H]. The activation's derivative comes
    from y."""
    T, B, H = y.shape
    d_gx = torch.empty(T, B, H, dtype=y.dtype)
    d_h0 = torch.empty(B, H, dtype=y.dtype).copy_(grad_hT)
    w_hh_array = as_array(w_hh)
    lengths_array = full_lengths_array(lengths, T, B)
    args = (
        as_array(grad_y), pack_panels(w_hh_array, False), lengths_array, reverse,
        nonlinearity == "relu", as_array(y), d_gx.numpy(), d_h0.numpy(),
        np.empty((B, H), w_hh_array.dtype),
    )  # fmt: skip
    run(rnn_bwd_kernel, (_bwd_entry32, _bwd_entry64), args, lengths_array, 2 * w_hh_array.size)
    # The weight gradient is one GEMM over all T*B rows: torch's, on all its threads.
    h_prev = previous_states(y.detach(), h0.detach(), lengths, reverse)
    return d_gx, weight_grad(d_gx, h_prev), d_h0
