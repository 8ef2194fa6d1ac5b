"""The layer stack: layers x directions over padded, packed, unbatched or batch-first input.

Each layer and direction runs one input-projection GEMM over all time steps in torch, then one
per-layer op (``torch.ops.rnnkernels.<cell>_fwd``) for the recurrence. Dropout between layers and
(un)packing stay in torch. Argument checking is the modules' job (modules.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkernels.backends import resolve
from rnnkernels.ops.gru.op import gru_fwd
from rnnkernels.ops.indrnn.op import indrnn_fwd
from rnnkernels.ops.lstm.op import lstm_fwd

# One direction of one layer: (x [T,B,I], initial states, weights, lengths, reverse, backend)
# -> (y [T,B,*], final states).
Direction = Callable[
    [Tensor, tuple[Tensor, ...], Sequence[Tensor | None], Tensor | None, bool, str],
    tuple[Tensor, tuple[Tensor, ...]],
]


def lstm(
    input: Tensor | PackedSequence,
    hx: tuple[Tensor, Tensor] | None,
    weights: Sequence[Sequence[Tensor | None]],
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str | None = None,
) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
    """``nn.LSTM``'s forward. ``weights[layer * D + direction]`` is
    ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` with None for absent biases / projection.
    Returns ``output, (h_n, c_n)``."""
    w_hr = weights[0][4]
    state_sizes = (w_hr.shape[0] if w_hr is not None else hidden_size, hidden_size)
    output, states = _stack(
        "lstm", _lstm_direction, input, hx, state_sizes, weights,
        num_layers, bidirectional, batch_first, dropout, training, backend,
    )  # fmt: skip
    return output, (states[0], states[1])


def gru(
    input: Tensor | PackedSequence,
    hx: Tensor | None,
    weights: Sequence[Sequence[Tensor | None]],
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str | None = None,
) -> tuple[Tensor | PackedSequence, Tensor]:
    """``nn.GRU``'s forward. ``weights[layer * D + direction]`` is ``(w_ih, w_hh, b_ih, b_hh)``
    with None for absent biases. Returns ``output, h_n``."""
    output, states = _stack(
        "gru", _gru_direction, input, None if hx is None else (hx,), (hidden_size,), weights,
        num_layers, bidirectional, batch_first, dropout, training, backend,
    )  # fmt: skip
    return output, states[0]


def indrnn(
    input: Tensor | PackedSequence,
    hx: Tensor | None,
    weights: Sequence[Sequence[Tensor | None]],
    hidden_size: int,
    num_layers: int = 1,
    nonlinearity: str = "relu",
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    recurrent_max_abs: float | None = None,
    backend: str | None = None,
) -> tuple[Tensor | PackedSequence, Tensor]:
    """IndRNN (Li et al. 2018): ``h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1})``.
    ``weights[layer * D + direction]`` is ``(w_ih, u, b_ih, b_hh)``; ``u`` is clamped to
    ``[-recurrent_max_abs, recurrent_max_abs]`` when that is set. Returns ``output, h_n``."""

    def direction(x, states, layer_weights, lengths, reverse, backend):
        w_ih, u, b_ih, b_hh = layer_weights
        if recurrent_max_abs is not None:
            u = u.clamp(-recurrent_max_abs, recurrent_max_abs)
        gx = F.linear(x, w_ih, _bias_sum(b_ih, b_hh))
        y, hT = indrnn_fwd(gx, u, states[0], lengths, reverse, nonlinearity, backend)
        return y, (hT,)

    output, states = _stack(
        "indrnn", direction, input, None if hx is None else (hx,), (hidden_size,), weights,
        num_layers, bidirectional, batch_first, dropout, training, backend,
    )  # fmt: skip
    return output, states[0]


def _lstm_direction(x, states, layer_weights, lengths, reverse, backend):
    w_ih, w_hh, b_ih, b_hh, w_hr = layer_weights
    gx = F.linear(x, w_ih, _bias_sum(b_ih, b_hh))
    y, hT, cT, _, _ = lstm_fwd(gx, w_hh, w_hr, states[0], states[1], lengths, reverse, backend)
    return y, (hT, cT)


def _gru_direction(x, states, layer_weights, lengths, reverse, backend):
    w_ih, w_hh, b_ih, b_hh = layer_weights
    gx = F.linear(x, w_ih, b_ih)
    y, hT, _, _ = gru_fwd(gx, w_hh, b_hh, states[0], lengths, reverse, backend)
    return y, (hT,)


def _bias_sum(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    return None if b_ih is None else b_ih + b_hh


def _stack(
    cell: str,
    direction: Direction,
    input: Tensor | PackedSequence,
    hx: tuple[Tensor, ...] | None,
    state_sizes: tuple[int, ...],
    weights: Sequence[Sequence[Tensor | None]],
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    dropout: float,
    training: bool,
    backend: str | None,
) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
    """Runs every layer and direction; returns the output in the input's form and the final
    states, each [num_layers * D, B, size] (or [num_layers * D, size] for unbatched input)."""
    x, lengths, unbatched = _to_time_major(input, batch_first)
    D = 2 if bidirectional else 1
    B = x.shape[1]
    if hx is None:
        hx = tuple(x.new_zeros(num_layers * D, B, size) for size in state_sizes)
    elif unbatched:
        hx = tuple(h.unsqueeze(1) for h in hx)
    name = resolve(backend, cell, x)
    finals: list[tuple[Tensor, ...]] = []
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            index = layer * D + d
            states = tuple(h[index] for h in hx)
            y, final = direction(x, states, weights[index], lengths, d == 1, name)
            outputs.append(y)
            finals.append(final)
        x = torch.cat(outputs, 2) if D == 2 else outputs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    h_n = tuple(torch.stack(states) for states in zip(*finals))
    if unbatched:
        return x.squeeze(1), tuple(h.squeeze(1) for h in h_n)
    return _from_time_major(x, input, lengths, batch_first), h_n


def _to_time_major(
    input: Tensor | PackedSequence, batch_first: bool
) -> tuple[Tensor, Tensor | None, bool]:
    """-> x [T, B, I], lengths [B] on x's device (packed input only), whether input was 2-D."""
    if isinstance(input, PackedSequence):
        x, lengths = pad_packed_sequence(input)  # batch in the caller's order, as hx is
        return x, lengths.to(x.device), False
    if input.dim() == 2:
        return input.unsqueeze(1), None, True
    return (input.transpose(0, 1) if batch_first else input), None, False


def _from_time_major(
    y: Tensor, input: Tensor | PackedSequence, lengths: Tensor | None, batch_first: bool
) -> Tensor | PackedSequence:
    if isinstance(input, PackedSequence):
        if input.sorted_indices is not None:
            y, lengths = y.index_select(1, input.sorted_indices), lengths[input.sorted_indices]
        data = pack_padded_sequence(y, lengths.cpu()).data
        return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    return y.transpose(0, 1) if batch_first else y
