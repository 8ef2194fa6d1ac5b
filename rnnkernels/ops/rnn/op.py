"""torch.library ops for one Elman RNN layer (``nn.RNN``) in one direction: forward, backward,
fakes, autograd.

The op boundary (the backend and selection arguments, the call checked before): docs/design.md,
sections 3-5. Higher-order gradients and torch.func (why the forward is defined by
``define_layer_op``): docs/design.md, section 3. The op has IndRNN's form (ops/indrnn/op.py) with a
full ``w_hh [H, H]`` in place of ``u``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.backends import check_selection, kernels
from rnnkernels.ops.layer_op import define_layer_op
from rnnkernels.ops.rnn import naive
from rnnkernels.ops.steps import differentiable_backward


def _rnn_fwd(
    gx: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    backend: str,
    selection: str | None = None,
) -> tuple[Tensor, Tensor]:
    """-> y [T,B,H], hT [B,H] (see naive.rnn_fwd)."""
    check_selection(selection)
    return kernels(backend, "rnn").rnn_fwd(gx, w_hh, h0, lengths, reverse, nonlinearity)


@torch.library.custom_op("rnnkernels::rnn_bwd", mutates_args=())
def rnn_bwd(
    grad_y: Tensor,
    grad_hT: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    y: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> d_gx, d_w_hh, d_h0."""
    return kernels(backend, "rnn").rnn_bwd(
        grad_y, grad_hT, w_hh, h0, lengths, reverse, nonlinearity, y
    )


def _fwd_fake(gx, w_hh, h0, lengths, reverse, nonlinearity, backend, selection=None):
    """Output shapes of rnn_fwd."""
    return gx.new_empty(gx.shape), h0.new_empty(h0.shape)


@rnn_bwd.register_fake
def _bwd_fake(grad_y, grad_hT, w_hh, h0, lengths, reverse, nonlinearity, y, backend):
    """Output shapes of rnn_bwd."""
    return y.new_empty(y.shape), w_hh.new_empty(w_hh.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    gx, w_hh, h0, lengths, reverse, nonlinearity, backend, selection = inputs
    y, hT = output
    ctx.save_for_backward(w_hh, h0, lengths, y)
    ctx.reverse, ctx.nonlinearity, ctx.backend = reverse, nonlinearity, backend


def _backward(ctx, grad_y, grad_hT):
    w_hh, h0, lengths, y = ctx.saved_tensors
    args = (grad_y, grad_hT, w_hh, h0, lengths, ctx.reverse, ctx.nonlinearity, y)
    # y, the one saved activation, is a result: no gradient of a saved-only output to fold in.
    if differentiable_backward():
        d_gx, d_w_hh, d_h0 = naive.rnn_bwd(*args)
    else:
        d_gx, d_w_hh, d_h0 = rnn_bwd(*args, ctx.backend)
    return d_gx, d_w_hh, d_h0, None, None, None, None, None


rnn_fwd = define_layer_op(
    "rnn_fwd", _rnn_fwd, _fwd_fake, _setup_context, _backward,
    batch_dims={"gx": 1, "h0": 0, "lengths": 0},
)  # fmt: skip
