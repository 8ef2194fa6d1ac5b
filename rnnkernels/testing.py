"""What tests and benchmarks share: the tolerance table and torch's own twin of a module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkernels.modules import GRU, LSTM, IndRNN, rnn_config

# (atol, rtol) against torch / the oracle, per dtype. fp32 is the parity bar of docs/design.md §6:
# 5e-5 absolute; the 1e-6 relative term (8 ulps) only matters for values beyond ~50, where 5e-5
# is a few ulps and summation order alone exceeds it (exploding relu IndRNN states, large sums).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (5e-5, 1e-6),
    # fp16 / bf16 (GPU tests; fp16 also in the interpreter): a run in that dtype against an fp32
    # reference on the same rounded inputs, the reference rounded to the dtype for the comparison.
    # Kernels accumulate in fp32 but keep states, gates and outputs in the dtype, so each step adds
    # about one rounding (eps = 2**-11 fp16, 2**-8 bf16) of values of order 1. Measured in the
    # interpreter (fp16 LSTM and GRU modules, T = 6..40): errors up to 1e-3 of a tensor's largest
    # element, under 5% of the fp16 bar; bf16 has 8x fp16's eps.
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def torch_twin(module: LSTM | GRU | IndRNN) -> nn.Module:
    """torch's own implementation of ``module`` with a copy of its weights: ``nn.LSTM`` /
    ``nn.GRU`` (cuDNN on GPU, torch's CPU path on CPU), or for IndRNN an eager torch loop (which
    shares the module's parameters)."""
    if isinstance(module, IndRNN):
        return EagerIndRNN(module)
    weight = module.weight_ih_l0
    config = dict(rnn_config(module), device=weight.device, dtype=weight.dtype)
    if isinstance(module, LSTM):
        twin = nn.LSTM(proj_size=module.proj_size, **config)
    else:
        twin = nn.GRU(**config)
    twin.load_state_dict(module.state_dict())
    return twin.train(module.training)


class EagerIndRNN(nn.Module):
    """IndRNN as a plain eager torch loop with autograd (written independently of the ops), the
    baseline torch users would write. Shares the parameters of the module it wraps."""

    def __init__(self, module: IndRNN) -> None:
        super().__init__()
        self.module = module

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m = self.module
        if isinstance(input, PackedSequence):
            raise TypeError("EagerIndRNN takes padded input only")
        x = input.transpose(0, 1) if m.batch_first else input
        B = x.shape[1]
        D = m.num_directions
        if hx is None:
            hx = x.new_zeros(m.num_layers * D, B, m.hidden_size)
        act = torch.relu if m.nonlinearity == "relu" else torch.tanh
        finals = []
        for layer in range(m.num_layers):
            outputs = []
            for d, suffix in enumerate(("", "_reverse")[:D]):
                w_ih = getattr(m, f"weight_ih_l{layer}{suffix}")
                u = getattr(m, f"weight_hh_l{layer}{suffix}")
                if m.recurrent_max_abs is not None:
                    u = u.clamp(-m.recurrent_max_abs, m.recurrent_max_abs)
                pre = x @ w_ih.T
                if m.bias:
                    pre = pre + getattr(m, f"bias_ih_l{layer}{suffix}")
                    pre = pre + getattr(m, f"bias_hh_l{layer}{suffix}")
                h = hx[layer * D + d]
                ys = []
                steps = pre.unbind(0)  # pre[t] would cost a full [T,B,H] zero tensor in backward
                for pre_t in reversed(steps) if d else steps:
                    h = act(pre_t + u * h)
                    ys.append(h)
                outputs.append(torch.stack(ys[::-1] if d else ys))
                finals.append(h)
            x = torch.cat(outputs, 2)
            if m.dropout > 0 and m.training and layer < m.num_layers - 1:
                x = nn.functional.dropout(x, m.dropout, training=True)
        return (x.transpose(0, 1) if m.batch_first else x), torch.stack(finals)


def needs(backend: str, cell: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
    """Skips the calling test when ``backend`` cannot run ``cell`` on ``device`` here, saying
    why."""
    import pytest

    from rnnkernels.backends import LayerCall, why_not

    why = why_not(backend, LayerCall(cell, torch.device(device), dtype))
    if why is not None:
        pytest.skip(f"backend {backend!r}: {why}")


def assert_close(actual: Tensor, expected: Tensor, what: str = "") -> None:
    """Compares within the tolerance of ``expected``'s dtype (TOLERANCES)."""
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def outputs_and_grads(
    module: nn.Module,
    input: Tensor | PackedSequence,
    hx,
    seed: int = 0,
    used: Sequence[int] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Runs ``module(input, hx)`` and backpropagates fixed random cotangents from the output
    and every final state (only from ``outputs[k]`` for k in ``used`` when given). Returns
    (outputs, gradients): gradients of the input data, of each given initial state, and of every
    parameter (zeros where a parameter got none)."""
    output, states = module(input, hx)
    output = output.data if isinstance(output, PackedSequence) else output
    outputs = [output, *(states if isinstance(states, tuple) else (states,))]
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (o * torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device)).sum()
        for k, o in enumerate(outputs)
        if used is None or k in used
    )
    data = input.data if isinstance(input, PackedSequence) else input
    hx_list = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    leaves = [t for t in [data, *hx_list] if t.requires_grad] + list(module.parameters())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outputs, [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


class poison_allocations:
    """Within this context every fresh floating-point allocation (torch.empty and friends, in
    Python or C++) is NaN-filled, so an element a kernel forgets to write shows up as NaN.
    This is torch's deterministic mode, which fills uninitialised memory."""

    def __enter__(self) -> poison_allocations:
        self.saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory,
        )
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = True
        return self

    def __exit__(self, *exc: object) -> None:
        enabled, warn_only, fill = self.saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
