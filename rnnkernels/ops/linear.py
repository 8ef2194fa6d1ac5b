"""The cpp backend's input projection: the op ``rnnkernels::linear(x, weight, bias)``, F.linear's
contract, computed by the C++ op ``torch.ops.rnnkernels_cpp.linear`` (csrc/cpu/linear.cpp: the
packed AVX-512 / AVX2 GEMM of the step kernels with the bias fused, csrc/cpu/panel_gemm.h).

It is not a layer op (docs/design.md, section 3): ``functional._stack`` computes gx with it instead
of ``F.linear`` when the cpp backend runs a call, and every layer op still takes gx. It is defined
as the layer ops are (``layer_op.define_layer_op``), so torch.compile, torch.func's reverse-mode
transforms and higher-order gradients run through it. Backward: d_x = grad W by the same C++ GEMM
(W read transposed in place), d_W = grad^T x and d_bias by torch (MKL's sgemm and a sum: our
kernel for d_W measured no faster, csrc/cpu/linear.cpp; for bfloat16 / float16, d_W by the C++
op too, which picks the GEMM for the dtype: torch's float16 GEMM on CPU is not vectorised); all
three differentiable, so the backward is differentiated as it stands. vmap folds a vmapped x into
its rows (the op takes any leading dims) and runs a vmapped weight or bias one sample at a time.
Forward mode raises, as the layer ops after it do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkernels.ops.layer_op import define_layer_op
from rnnkernels.ops.steps import HALF_TYPES


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """-> x W^T + bias [*, n] for x [*, k], weight [n, k], bias [n] or None. The C++ op is
    registered: the cpp backend's ``unavailable`` check loaded the extension."""
    return torch.ops.rnnkernels_cpp.linear(x, weight, bias)


def _fake(x, weight, bias):
    """Output shape of linear."""
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad
    rows = grad_y.reshape(-1, grad_y.shape[-1])  # [N, n]
    # the C++ op itself unless this backward is differentiated (it then needs linear's formula)
    d_x_gemm = linear if torch.is_grad_enabled() else torch.ops.rnnkernels_cpp.linear
    d_x = d_x_gemm(grad_y, weight.t(), None) if need_x else None
    d_weight = None
    if need_weight and x.dtype in HALF_TYPES:  # the C++ op's GEMM for the dtype (linear.cpp)
        d_weight = d_x_gemm(rows.t(), x.reshape(-1, x.shape[-1]).t(), None)
    elif need_weight:
        d_weight = rows.t() @ x.reshape(-1, x.shape[-1])
    d_bias = rows.sum(0) if ctx.has_bias and need_bias else None
    return d_x, d_weight, d_bias


def _vmap(info, in_dims, x, weight, bias):
    """x vmapped alone: its vmapped dim joins its leading dims, one call. A vmapped weight or bias:
    one call per sample."""
    x_dim, weight_dim, bias_dim = in_dims
    if weight_dim is None and bias_dim is None:
        return linear(x.movedim(x_dim, 0), weight, bias), 0
    samples = [
        linear(
            x if x_dim is None else x.select(x_dim, v),
            weight if weight_dim is None else weight.select(weight_dim, v),
            bias if bias_dim is None else bias.select(bias_dim, v),
        )
        for v in range(info.batch_size)
    ]
    return torch.stack(samples), 0


linear = define_layer_op("linear", _linear, _fake, _setup_context, _backward, _vmap)
