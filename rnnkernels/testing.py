"""What tests and benchmarks share: the tolerance table and torch's own twin of a module."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkernels.modules import GRU, LSTM, IndRNN

# (atol, rtol) against torch / the oracle, per dtype. fp32 is the parity bar of DESIGN.md §7.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (5e-5, 0.0),
}


def torch_twin(module: LSTM | GRU | IndRNN) -> nn.Module:
    """torch's own implementation of ``module`` sharing its parameters: ``nn.LSTM`` / ``nn.GRU``
    (cuDNN on GPU, torch's CPU path on CPU), or for IndRNN an eager torch loop."""
    if isinstance(module, IndRNN):
        return EagerIndRNN(module)
    config = dict(
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        dropout=module.dropout,
        bidirectional=module.bidirectional,
        device=module.weight_ih_l0.device,
        dtype=module.weight_ih_l0.dtype,
    )
    twin = nn.LSTM(proj_size=module.proj_size, **config) if isinstance(module, LSTM) else (
        nn.GRU(**config)
    )
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
        T, B = x.shape[:2]
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
                for t in range(T - 1, -1, -1) if d else range(T):
                    h = act(pre[t] + u * h)
                    ys.append(h)
                outputs.append(torch.stack(ys[::-1] if d else ys))
                finals.append(h)
            x = torch.cat(outputs, 2)
            if m.dropout > 0 and m.training and layer < m.num_layers - 1:
                x = nn.functional.dropout(x, m.dropout, training=True)
        return (x.transpose(0, 1) if m.batch_first else x), torch.stack(finals)
