"""torch.library ops for one GRU layer in one direction: forward, backward, fakes, autograd.

The op boundary (the backend and selection arguments, the call checked before, absent gradients
as an empty [0] tensor): docs/design.md, sections 3-5. Higher-order gradients and torch.func
(why the forward is defined by ``define_layer_op``): docs/design.md, section 3, and README.md here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.backends import check_selection, kernels
from rnnkernels.ops.gru import naive
from rnnkernels.ops.layer_op import define_layer_op
from rnnkernels.ops.steps import (
    absent_grad,
    differentiable_backward,
    formulas_in_saved_dtype,
    saved_dtype,
    zeros_for_none,
)


def _gru_fwd(
    gx: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    backend: str,
    selection: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> y [T,B,H], hT [B,H], gates [T,B,3H], hn [T,B,H] (see naive.gru_fwd)."""
    check_selection(selection)
    return kernels(backend, "gru").gru_fwd(gx, w_hh, b_hh, h0, lengths, reverse)


@torch.library.custom_op("rnnkernels::gru_bwd", mutates_args=())
def gru_bwd(
    grad_y: Tensor,
    grad_hT: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    hn: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> d_gx, d_w_hh, d_b_hh ([0] without bias), d_h0."""
    return kernels(backend, "gru").gru_bwd(
        grad_y, grad_hT, w_hh, b_hh, h0, lengths, reverse, y, gates, hn
    )


def _fwd_fake(gx, w_hh, b_hh, h0, lengths, reverse, backend, selection=None):
    """Output shapes of gru_fwd."""
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[1]
    saved = saved_dtype(gx.dtype, backend)
    return (
        gx.new_empty(T, B, H),
        gx.new_empty(B, H),
        gx.new_empty(T, B, 3 * H, dtype=saved),
        gx.new_empty(T, B, H, dtype=saved),
    )


@gru_bwd.register_fake
def _bwd_fake(grad_y, grad_hT, w_hh, b_hh, h0, lengths, reverse, y, gates, hn, backend):
    """Output shapes of gru_bwd."""
    return (
        gates.new_empty(gates.shape, dtype=y.dtype),
        w_hh.new_empty(w_hh.shape),
        b_hh.new_empty(b_hh.shape) if b_hh is not None else absent_grad(y),
        h0.new_empty(h0.shape),
    )


def _setup_context(ctx, inputs, output):
    gx, w_hh, b_hh, h0, lengths, reverse, backend, selection = inputs
    y, hT, gates, hn = output
    ctx.save_for_backward(w_hh, b_hh, h0, lengths, y, gates, hn)
    ctx.reverse, ctx.backend = reverse, backend
    # gates and hn are saved for the backward, and differentiable (as in lstm/op.py).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_hT, grad_gates, grad_hn):
    w_hh, b_hh, h0, lengths, y, gates, hn = ctx.saved_tensors
    grad_y, grad_hT = zeros_for_none((grad_y, y), (grad_hT, h0))
    args = (grad_y, grad_hT, w_hh, b_hh, h0, lengths, ctx.reverse, y, gates, hn)
    if differentiable_backward(grad_gates, grad_hn):
        # (a half-type layer's saved activations are float32: its formulas run in float32)
        d_gx, d_w_hh, d_b_hh, d_h0 = formulas_in_saved_dtype(
            naive.gru_bwd, y.dtype, hn.dtype, *args, grad_gates, grad_hn
        )
    else:
        d_gx, d_w_hh, d_b_hh, d_h0 = gru_bwd(*args, ctx.backend)
    return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0, None, None, None, None


gru_fwd = define_layer_op(
    "gru_fwd", _gru_fwd, _fwd_fake, _setup_context, _backward,
    batch_dims={"gx": 1, "h0": 0, "lengths": 0},
)  # fmt: skip
