"""torch.library ops for one IndRNN layer in one direction: forward, backward, fakes, autograd.

The op boundary (the backend and selection arguments, the call checked before, absent gradients
as an empty [0] tensor): docs/design.md, sections 3-5. Higher-order gradients and torch.func
(why the forward is defined by ``define_layer_op``): docs/design.md, section 3, and README.md here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.backends import check_selection, kernels
from rnnkernels.ops.indrnn import naive
from rnnkernels.ops.layer_op import define_layer_op
from rnnkernels.ops.steps import differentiable_backward


def _indrnn_fwd(
    gx: Tensor,
    u: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    backend: str,
    selection: str | None = None,
) -> tuple[Tensor, Tensor]:
    """-> y [T,B,H], hT [B,H] (see naive.indrnn_fwd)."""
    check_selection(selection)
    return kernels(backend, "indrnn").indrnn_fwd(gx, u, h0, lengths, reverse, nonlinearity)


@torch.library.custom_op("rnnkernels::indrnn_bwd", mutates_args=())
def indrnn_bwd(
    grad_y: Tensor,
    grad_hT: Tensor,
    u: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    y: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> d_gx, d_u, d_h0."""
    return kernels(backend, "indrnn").indrnn_bwd(
        grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y
    )


def _fwd_fake(gx, u, h0, lengths, reverse, nonlinearity, backend, selection=None):
    """Output shapes of indrnn_fwd."""
    return gx.new_empty(gx.shape), h0.new_empty(h0.shape)


@indrnn_bwd.register_fake
def _bwd_fake(grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y, backend):
    """Output shapes of indrnn_bwd."""
    return y.new_empty(y.shape), u.new_empty(u.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    gx, u, h0, lengths, reverse, nonlinearity, backend, selection = inputs
    y, hT = output
    ctx.save_for_backward(u, h0, lengths, y)
    ctx.reverse, ctx.nonlinearity, ctx.backend = reverse, nonlinearity, backend


def _backward(ctx, grad_y, grad_hT):
    u, h0, lengths, y = ctx.saved_tensors
    args = (grad_y, grad_hT, u, h0, lengths, ctx.reverse, ctx.nonlinearity, y)
    # y, the one saved activation, is a result: no gradient of a saved-only output to fold in.
    if differentiable_backward():
        d_gx, d_u, d_h0 = naive.indrnn_bwd(*args)
    else:
        d_gx, d_u, d_h0 = indrnn_bwd(*args, ctx.backend)
    return d_gx, d_u, d_h0, None, None, None, None, None


indrnn_fwd = define_layer_op(
    "indrnn_fwd", _indrnn_fwd, _fwd_fake, _setup_context, _backward,
    batch_dims={"gx": 1, "h0": 0, "lengths": 0},
)  # fmt: skip
