"""torch.library ops for one LSTM layer in one direction: forward, backward, fakes, autograd.

The op boundary (the backend and selection arguments, the call checked before, absent gradients
as an empty [0] tensor): docs/design.md, sections 3-5. Higher-order gradients and torch.func
(why the forward is defined by ``define_layer_op``): docs/design.md, section 3, and README.md here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.backends import check_selection, kernels
from rnnkernels.ops.layer_op import define_layer_op
from rnnkernels.ops.lstm import naive
from rnnkernels.ops.steps import (
    absent_grad,
    differentiable_backward,
    formulas_in_saved_dtype,
    saved_dtype,
    zeros_for_none,
)


def _lstm_fwd(
    gx: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    backend: str,
    selection: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> y [T,B,R], hT [B,R], cT [B,H], gates [T,B,4H], cells [T,B,H] (see naive.lstm_fwd)."""
    check_selection(selection)
    return kernels(backend, "lstm").lstm_fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse)


@torch.library.custom_op("rnnkernels::lstm_bwd", mutates_args=())
def lstm_bwd(
    grad_y: Tensor,
    grad_hT: Tensor,
    grad_cT: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    cells: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> d_gx, d_w_hh, d_w_hr ([0] without projection), d_h0, d_c0."""
    return kernels(backend, "lstm").lstm_bwd(
        grad_y, grad_hT, grad_cT, w_hh, w_hr, h0, c0, lengths, reverse, y, gates, cells
    )


def _fwd_fake(gx, w_hh, w_hr, h0, c0, lengths, reverse, backend, selection=None):
    """Output shapes of lstm_fwd."""
    T, B, H = gx.shape[0], gx.shape[1], c0.shape[1]
    R = h0.shape[1]
    saved = saved_dtype(gx.dtype, backend)
    return (
        gx.new_empty(T, B, R),
        gx.new_empty(B, R),
        gx.new_empty(B, H),
        gx.new_empty(T, B, 4 * H, dtype=saved),
        gx.new_empty(T, B, H, dtype=saved),
    )


@lstm_bwd.register_fake
def _bwd_fake(
    grad_y, grad_hT, grad_cT, w_hh, w_hr, h0, c0, lengths, reverse, y, gates, cells, backend
):
    """Output shapes of lstm_bwd."""
    return (
        gates.new_empty(gates.shape, dtype=y.dtype),
        w_hh.new_empty(w_hh.shape),
        w_hr.new_empty(w_hr.shape) if w_hr is not None else absent_grad(y),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
    )


def _setup_context(ctx, inputs, output):
    gx, w_hh, w_hr, h0, c0, lengths, reverse, backend, selection = inputs
    y, hT, cT, gates, cells = output
    ctx.save_for_backward(w_hh, w_hr, h0, c0, lengths, y, gates, cells)
    ctx.reverse, ctx.backend = reverse, backend
    # gates and cells are saved for the backward, and differentiable: a higher-order gradient
    # reaches them through it. A first-order backward leaves them unused: unmaterialised, their
    # gradients arrive as None, no [T,B,4H] zeros; so does an unused y or final state.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_hT, grad_cT, grad_gates, grad_cells):
    w_hh, w_hr, h0, c0, lengths, y, gates, cells = ctx.saved_tensors
    grad_y, grad_hT, grad_cT = zeros_for_none((grad_y, y), (grad_hT, h0), (grad_cT, c0))
    args = (grad_y, grad_hT, grad_cT, w_hh, w_hr, h0, c0, lengths, ctx.reverse, y, gates, cells)
    if differentiable_backward(grad_gates, grad_cells):
        # (a half-type layer's saved activations are float32: its formulas run in float32)
        d_gx, d_w_hh, d_w_hr, d_h0, d_c0 = formulas_in_saved_dtype(
            naive.lstm_bwd, y.dtype, cells.dtype, *args, grad_gates, grad_cells
        )
    else:
        d_gx, d_w_hh, d_w_hr, d_h0, d_c0 = lstm_bwd(*args, ctx.backend)
    return d_gx, d_w_hh, d_w_hr if w_hr is not None else None, d_h0, d_c0, None, None, None, None


lstm_fwd = define_layer_op(
    "lstm_fwd", _lstm_fwd, _fwd_fake, _setup_context, _backward,
    batch_dims={"gx": 1, "h0": 0, "c0": 0, "lengths": 0},
)  # fmt: skip
