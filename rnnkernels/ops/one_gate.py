"""torch.library ops of the one-gate cells, IndRNN and the Elman RNN (``nn.RNN``): per cell, one
layer in one direction, forward and backward, fakes, autograd. The two share one form:
``(gx, weight, h0, lengths, reverse, nonlinearity)``, the recurrent weight being IndRNN's ``u``
[H] or RNN's ``w_hh`` [H, H], and y the one saved activation (tanh's and relu's derivatives come
from the output). So one definition serves both; each cell's ``op.py`` names what it made.

The op boundary (the backend and selection arguments, the call checked before): docs/design.md,
sections 3-5. Higher-order gradients and torch.func (why the forward is defined by
``define_layer_op``): docs/design.md, section 3.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import torch
from torch import Tensor

from rnnkernels.backends import check_selection, kernels
from rnnkernels.ops.layer_op import define_layer_op
from rnnkernels.ops.steps import differentiable_backward


def define_ops(cell: str, naive: ModuleType) -> SimpleNamespace:
    """``rnnkernels::<cell>_fwd`` and ``rnnkernels::<cell>_bwd`` for ``cell`` ("indrnn" or "rnn"),
    ``naive`` its oracle (the backward a differentiated backward runs). Returns the namespace
    ``fwd``, ``bwd``, ``setup_context``, ``backward`` (the last two: the forward's autograd
    formula, which ops/cpp.py gives the C++ forward op too)."""
    fwd_name, bwd_name = f"{cell}_fwd", f"{cell}_bwd"

    def forward_kernel(
        gx: Tensor,
        weight: Tensor,
        h0: Tensor,
        lengths: Tensor | None,
        reverse: bool,
        nonlinearity: str,
        backend: str,
        selection: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """-> y [T,B,H], hT [B,H] (see naive.<cell>_fwd)."""
        check_selection(selection)
        run = getattr(kernels(backend, cell), fwd_name)
        return run(gx, weight, h0, lengths, reverse, nonlinearity)

    def backward_kernel(
        grad_y: Tensor,
        grad_hT: Tensor,
        weight: Tensor,
        h0: Tensor,
        lengths: Tensor | None,
        reverse: bool,
        nonlinearity: str,
        y: Tensor,
        backend: str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> d_gx, d_weight, d_h0."""
        run = getattr(kernels(backend, cell), bwd_name)
        return run(grad_y, grad_hT, weight, h0, lengths, reverse, nonlinearity, y)

    bwd = torch.library.custom_op(f"rnnkernels::{bwd_name}", backward_kernel, mutates_args=())

    def forward_fake(gx, weight, h0, lengths, reverse, nonlinearity, backend, selection=None):
        return gx.new_empty(gx.shape), h0.new_empty(h0.shape)

    @bwd.register_fake
    def backward_fake(grad_y, grad_hT, weight, h0, lengths, reverse, nonlinearity, y, backend):
        return y.new_empty(y.shape), weight.new_empty(weight.shape), h0.new_empty(h0.shape)

    def setup_context(ctx, inputs, output):
        gx, weight, h0, lengths, reverse, nonlinearity, backend, selection = inputs
        y, hT = output
        ctx.save_for_backward(weight, h0, lengths, y)
        ctx.reverse, ctx.nonlinearity, ctx.backend = reverse, nonlinearity, backend

    def backward(ctx, grad_y, grad_hT):
        weight, h0, lengths, y = ctx.saved_tensors
        args = (grad_y, grad_hT, weight, h0, lengths, ctx.reverse, ctx.nonlinearity, y)
        # y, the one saved activation, is a result: no gradient of a saved-only output to fold in
        if differentiable_backward():
            d_gx, d_weight, d_h0 = getattr(naive, bwd_name)(*args)
        else:
            d_gx, d_weight, d_h0 = bwd(*args, ctx.backend)
        return d_gx, d_weight, d_h0, None, None, None, None, None

    fwd = define_layer_op(
        fwd_name, forward_kernel, forward_fake, setup_context, backward,
        batch_dims={"gx": 1, "h0": 0, "lengths": 0},
    )  # fmt: skip
    return SimpleNamespace(fwd=fwd, bwd=bwd, setup_context=setup_context, backward=backward)
