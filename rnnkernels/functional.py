"""The layer stack: layers x directions over padded, packed, unbatched or batch-first input.

Each layer and direction runs one input-projection GEMM over all time steps in torch, then one
per-layer op (``torch.ops.rnnkernels.<cell>_fwd``) for the recurrence. Dropout between layers and
(un)packing stay in torch. Every call is checked first (``validation.check_call``), before a
backend is chosen, whether it comes from a module or straight to these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from rnnkernels.backends import LayerCall, get_backend, resolve
from rnnkernels.ops.gru.op import gru_fwd
from rnnkernels.ops.indrnn.op import indrnn_fwd
from rnnkernels.ops.lstm.op import lstm_fwd
from rnnkernels.validation import check_call, check_indrnn_options, reported
from rnnkernels.weights import WEIGHTS, GRUWeights, IndRNNWeights, LSTMWeights

# The recurrence of one direction of one layer: (gx [T,B,G*H], initial states, its weights,
# lengths, reverse, backend, selection) -> (y [T,B,*], final states).
Direction = Callable[
    [Tensor, tuple[Tensor, ...], Any, Tensor | None, bool, str, str | None],
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
    *,
    input_size: int | None = None,
    proj_size: int | None = None,
) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
    """``nn.LSTM``'s forward. ``weights[layer * D + direction]`` is an ``LSTMWeights`` (or a
    plain tuple ``(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)``), None for absent biases
    / projection; errors name them as torch does (``weight_hh_l1_reverse``). ``input_size`` /
    ``proj_size``: the sizes the weights must have (default: the input's feature size,
    weight_hr_l0's rows).
    Returns ``output, (h_n, c_n)``."""
    if hx is not None and not isinstance(hx, (tuple, list)):
        raise TypeError(
            f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}"
        )
    if hx is not None and len(hx) != 2:
        raise RuntimeError("lstm expects two hidden states")
    reported(lambda: check_call("lstm", input, hx, weights, hidden_size, num_layers,
                                bidirectional, batch_first, input_size, proj_size))  # fmt: skip
    w_hr = LSTMWeights(*weights[0]).weight_hr
    state_sizes = (w_hr.shape[0] if w_hr is not None else hidden_size, hidden_size)
    output, states = _stack(
        "lstm", _lstm_direction, input, None if hx is None else tuple(hx), state_sizes, weights,
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
    *,
    input_size: int | None = None,
) -> tuple[Tensor | PackedSequence, Tensor]:
    """``nn.GRU``'s forward. ``weights[layer * D + direction]`` is a ``GRUWeights`` (or a plain
    tuple ``(weight_ih, weight_hh, bias_ih, bias_hh)``), None for absent biases (see ``lstm``).
    Returns ``output, h_n``."""
    states = None if hx is None else (hx,)
    reported(lambda: check_call("gru", input, states, weights, hidden_size, num_layers,
                                bidirectional, batch_first, input_size, None))  # fmt: skip
    output, states = _stack(
        "gru", _gru_direction, input, states, (hidden_size,), weights,
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
    *,
    input_size: int | None = None,
) -> tuple[Tensor | PackedSequence, Tensor]:
    """IndRNN (Li et al. 2018): ``h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1})``.
    ``weights[layer * D + direction]`` is an ``IndRNNWeights`` (or a plain tuple
    ``(weight_ih, weight_hh, bias_ih, bias_hh)``; ``weight_hh`` is ``u`` [H]); ``u`` is clamped to
    ``[-recurrent_max_abs, recurrent_max_abs]`` when that is set.
    Returns ``output, h_n``."""
    reported(lambda: check_indrnn_options(nonlinearity, recurrent_max_abs))
    states = None if hx is None else (hx,)
    reported(lambda: check_call("indrnn", input, states, weights, hidden_size, num_layers,
                                bidirectional, batch_first, input_size, None))  # fmt: skip

    def direction(gx, states, w: IndRNNWeights, lengths, reverse, backend, selection):
        u = w.weight_hh
        if recurrent_max_abs is not None:
            u = u.clamp(-recurrent_max_abs, recurrent_max_abs)
        y, hT = indrnn_fwd(gx, u, states[0], lengths, reverse, nonlinearity, backend, selection)
        return y, (hT,)

    output, states = _stack(
        "indrnn", direction, input, states, (hidden_size,), weights,
        num_layers, bidirectional, batch_first, dropout, training, backend,
    )  # fmt: skip
    return output, states[0]


def _lstm_direction(gx, states, w: LSTMWeights, lengths, reverse, backend, selection):
    h0, c0 = states
    y, hT, cT, _, _ = lstm_fwd(
        gx, w.weight_hh, w.weight_hr, h0, c0, lengths, reverse, backend, selection
    )
    return y, (hT, cT)


def _gru_direction(gx, states, w: GRUWeights, lengths, reverse, backend, selection):
    y, hT, _, _ = gru_fwd(gx, w.weight_hh, w.bias_hh, states[0], lengths, reverse, backend,
                          selection)  # fmt: skip
    return y, (hT,)


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
    layout = _Layout(input, batch_first)
    x, lengths = layout.x, layout.lengths
    D = 2 if bidirectional else 1
    if hx is None:
        hx = tuple(x.new_zeros(num_layers * D, layout.B, size) for size in state_sizes)
    elif layout.unbatched:
        hx = tuple(h.unsqueeze(1) for h in hx)
    R, H = state_sizes[0], state_sizes[-1]  # LSTM (R, H), the others (H,)
    name = reported(lambda: resolve(backend, LayerCall(cell, x.device, x.dtype, layout.B, H, R)))
    selection = get_backend() if backend is None else None  # checked again when the ops run
    layer_weights = [WEIGHTS[cell](*entry) for entry in weights]
    finals: list[tuple[Tensor, ...]] = []
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            index = layer * D + d
            states = tuple(h[index] for h in hx)
            w = layer_weights[index]
            gx = layout.padded(F.linear(x, w.weight_ih, w.input_bias()))  # one GEMM, all steps
            y, final = direction(gx, states, w, lengths, d == 1, name, selection)
            outputs.append(layout.unpadded(y))
            finals.append(final)
        x = torch.cat(outputs, -1) if D == 2 else outputs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    h_n = tuple(torch.stack(states) for states in zip(*finals))
    if layout.unbatched:
        return x.squeeze(1), tuple(h.squeeze(1) for h in h_n)
    return layout.output(x), h_n


class _Layout:
    """The input's layout. Padded input runs time-major [T, B, I] (batch_first and unbatched
    input are viewed so). Packed input stays as its rows [N, I] between layers: the input GEMMs
    then skip the padding, and only their results are padded for the per-layer ops, by one index
    op each way (_ToPadded / _ToRows). pad_packed_sequence copies per distinct length, and its
    backward copies the whole padded gradient per distinct length: 55 of 142 ms of a packed LSTM
    T=100 B=32 H=256 with 32 lengths."""

    def __init__(self, input: Tensor | PackedSequence, batch_first: bool) -> None:
        self.packed = input if isinstance(input, PackedSequence) else None
        self.batch_first = batch_first
        self.unbatched = self.packed is None and input.dim() == 2
        if self.packed is not None:
            self.x = input.data
            self.B = int(input.batch_sizes[0])
            self.T = len(input.batch_sizes)
            sorted_indices = None if input.sorted_indices is None else input.sorted_indices.cpu()
            lengths, positions, padding = _packed_index(input.batch_sizes, sorted_indices)
            self.lengths = lengths.to(self.x.device)
            self.positions = positions.to(self.x.device)
            self.padding = padding.to(self.x.device)
        else:
            x = input.unsqueeze(1) if self.unbatched else input
            self.x = x.transpose(0, 1) if batch_first and not self.unbatched else x
            self.B, self.lengths = self.x.shape[1], None

    def padded(self, rows: Tensor) -> Tensor:
        """[N, G] rows in the input's layout -> [T, B, G], zero past each sequence's end."""
        if self.packed is None:
            return rows
        padded = _ToPadded.apply(rows, self.positions, self.padding, self.T * self.B)
        return padded.view(self.T, self.B, -1)

    def unpadded(self, y: Tensor) -> Tensor:
        """[T, B, G] -> rows in the input's layout."""
        if self.packed is None:
            return y
        return _ToRows.apply(y.reshape(self.T * self.B, -1), self.positions, self.padding)

    def output(self, x: Tensor) -> Tensor | PackedSequence:
        if self.packed is not None:
            p = self.packed
            return PackedSequence(x, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        return x.transpose(0, 1) if self.batch_first else x


class _ToPadded(torch.autograd.Function):
    """rows [N, G] -> [size, G]: row i at positions[i], zeros at the padding positions. Each of
    _ToPadded / _ToRows is the other's backward. Written out because autograd's own backward
    of an index op accumulates through a zero-filled copy (the positions are unique: no need)."""

    @staticmethod
    def forward(ctx, rows: Tensor, positions: Tensor, padding: Tensor, size: int) -> Tensor:
        ctx.positions, ctx.padding = positions, padding
        padded = rows.new_empty(size, rows.shape[1]).index_fill_(0, padding, 0)
        return padded.index_copy_(0, positions, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ToRows.apply(grad, ctx.positions, ctx.padding), None, None, None


class _ToRows(torch.autograd.Function):
    """[size, G] -> rows [N, G]: the rows at positions (see _ToPadded)."""

    @staticmethod
    def forward(ctx, padded: Tensor, positions: Tensor, padding: Tensor) -> Tensor:
        ctx.positions, ctx.padding, ctx.size = positions, padding, padded.shape[0]
        return padded.index_select(0, positions)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ToPadded.apply(grad, ctx.positions, ctx.padding, ctx.size), None, None


def _packed_index(
    batch_sizes: Tensor, sorted_indices: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """From a PackedSequence's batch sizes (row j of step t is sequence sorted_indices[j]), on
    the CPU: the [B] sequence lengths in the caller's order (as hx is), the [N] positions of the
    packed rows in the time-major padded [T * B] form in the caller's batch order, and the
    positions of that form that are padding."""
    T, B = len(batch_sizes), int(batch_sizes[0])
    valid = torch.arange(B) < batch_sizes.unsqueeze(1)  # [T, B] in sorted order
    t, j = valid.nonzero(as_tuple=True)  # the packed rows, in their order
    lengths = valid.sum(0)
    if sorted_indices is not None:
        j = sorted_indices[j]
        lengths = torch.empty_like(lengths).index_copy_(0, sorted_indices, lengths)
    positions = t * B + j
    padding = torch.ones(T * B, dtype=torch.bool).index_fill_(0, positions, False)
    return lengths, positions, padding.nonzero().squeeze(1)
