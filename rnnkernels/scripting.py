"""The modules' forward under ``torch.jit.script``.

TorchScript cannot compile the eager path (``functional``: Python checks, backend selection,
custom ops called with a backend name), so each module's ``forward`` branches on
``torch.jit.is_scripting()`` to ``padded`` / ``packed`` below, which TorchScript compiles instead
(the module's ``forward`` is compiled once per input type, as ``nn.LSTM.forward`` is, so each
overload reaches one of them):

- LSTM, GRU and RNN run torch's own fused ops (``_VF.lstm`` / ``_VF.gru`` / ``_VF.rnn_tanh`` /
  ``_VF.rnn_relu``, as ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` do in TorchScript) over the module's
  own Parameters: a scripted model gives ``nn.LSTM``'s numbers and runs torch's kernels, whatever
  ``backend=`` says.
- IndRNN, which torch has no op for, runs a time loop here: per layer and direction one input
  GEMM over all steps, then ``act(gx_t + u * h)`` per step, each sequence's state frozen past its
  length (the semantics of ``ops/steps.py``).

The module's configuration and weights reach the compiled code as one ``Config``, built in Python
when ``torch.jit.script`` prepares the module (``_RecurrentBase.__prepare_scriptable__``).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence


class Config(NamedTuple):
    cell: str  # "lstm", "gru", "rnn" or "indrnn"
    weights: list[Tensor]  # flat, torch's order: per layer, direction w_ih, w_hh, b_ih, b_hh, w_hr
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int  # LSTM; 0 for the others
    nonlinearity: str  # RNN and IndRNN; "" for the others
    recurrent_max_abs: float | None  # IndRNN


def padded(
    input: Tensor, hx: list[Tensor] | None, config: Config, training: bool
) -> tuple[Tensor, list[Tensor]]:
    """``module(input, hx)`` for a padded (or unbatched) ``input``, with ``hx`` a list of the
    states (LSTM ``[h, c]``); returns the output and the final states as a list."""
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0 if config.batch_first else 1)
    B = x.size(0) if config.batch_first else x.size(1)
    if hx is not None and not batched:
        hx = [h.unsqueeze(1) for h in hx]
    y, finals = _run(x, None, _initial_states(x, B, hx, config), config, training)
    if not batched:
        return y.squeeze(0 if config.batch_first else 1), [h.squeeze(1) for h in finals]
    return y, finals


def packed(
    input: PackedSequence, hx: list[Tensor] | None, config: Config, training: bool
) -> tuple[PackedSequence, list[Tensor]]:
    """``padded`` for a PackedSequence, whose batch runs in sorted order inside."""
    sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
    if hx is not None and sorted_indices is not None:
        hx = [h.index_select(1, sorted_indices) for h in hx]
    B = int(input.batch_sizes[0])
    states = _initial_states(input.data, B, hx, config)
    y, finals = _run(input.data, input.batch_sizes, states, config, training)
    if unsorted_indices is not None:
        finals = [h.index_select(1, unsorted_indices) for h in finals]
    return PackedSequence(y, input.batch_sizes, sorted_indices, unsorted_indices), finals


def _initial_states(x: Tensor, B: int, hx: list[Tensor] | None, config: Config) -> list[Tensor]:
    """``hx``, or zeros: [num_layers * D, B, size] per state."""
    if hx is not None:
        return hx
    D = 2 if config.bidirectional else 1
    R = config.proj_size if config.proj_size > 0 else config.hidden_size
    sizes = [R, config.hidden_size] if config.cell == "lstm" else [config.hidden_size]
    return [x.new_zeros(config.num_layers * D, B, size) for size in sizes]


def _run(
    x: Tensor, batch_sizes: Tensor | None, states: list[Tensor], config: Config, training: bool
) -> tuple[Tensor, list[Tensor]]:
    """Padded input ``x`` in the module's layout, or packed rows with their ``batch_sizes``."""
    w, bias, L, p = config.weights, config.bias, config.num_layers, config.dropout
    bidirectional = config.bidirectional
    if config.cell == "lstm":
        if batch_sizes is None:
            y, h, c = _VF.lstm(x, states, w, bias, L, p, training, bidirectional,
                               config.batch_first)  # fmt: skip
        else:
            y, h, c = _VF.lstm(x, batch_sizes, states, w, bias, L, p, training, bidirectional)
        return y, [h, c]
    if config.cell == "gru":
        if batch_sizes is None:
            y, h = _VF.gru(x, states[0], w, bias, L, p, training, bidirectional,
                           config.batch_first)  # fmt: skip
        else:
            y, h = _VF.gru(x, batch_sizes, states[0], w, bias, L, p, training, bidirectional)
        return y, [h]
    if config.cell == "rnn":
        y, h = _rnn(x, batch_sizes, states[0], config, training)
        return y, [h]
    if batch_sizes is None:
        xt = x.transpose(0, 1) if config.batch_first else x
        y, h = _indrnn(xt, None, states[0], config, training)
        return (y.transpose(0, 1) if config.batch_first else y), [h]
    padded, lengths = torch._pad_packed_sequence(x, batch_sizes, False, 0.0, batch_sizes.size(0))
    y, h = _indrnn(padded, lengths.to(x.device), states[0], config, training)
    return torch._pack_padded_sequence(y, lengths, False)[0], [h]


def _rnn(
    x: Tensor, batch_sizes: Tensor | None, h0: Tensor, config: Config, training: bool
) -> tuple[Tensor, Tensor]:
    """nn.RNN's forward: torch's op for the nonlinearity, called as nn.RNN calls it."""
    w, bias, L, p = config.weights, config.bias, config.num_layers, config.dropout
    bidirectional, relu = config.bidirectional, config.nonlinearity == "relu"
    if batch_sizes is None:
        if relu:
            return _VF.rnn_relu(x, h0, w, bias, L, p, training, bidirectional, config.batch_first)
        return _VF.rnn_tanh(x, h0, w, bias, L, p, training, bidirectional, config.batch_first)
    if relu:
        return _VF.rnn_relu(x, batch_sizes, h0, w, bias, L, p, training, bidirectional)
    return _VF.rnn_tanh(x, batch_sizes, h0, w, bias, L, p, training, bidirectional)


def _indrnn(
    x: Tensor, lengths: Tensor | None, h0: Tensor, config: Config, training: bool
) -> tuple[Tensor, Tensor]:
    """IndRNN over time-major padded ``x`` [T, B, I]; sequence b valid for t < lengths[b]."""
    D = 2 if config.bidirectional else 1
    per = 4 if config.bias else 2  # weights per layer and direction
    T = x.size(0)
    finals: list[Tensor] = []
    for layer in range(config.num_layers):
        outputs: list[Tensor] = []
        for d in range(D):
            i = layer * D + d
            w = config.weights[per * i : per * (i + 1)]
            gx = F.linear(x, w[0], w[2] + w[3] if config.bias else None)
            u = w[1]
            limit = config.recurrent_max_abs
            if limit is not None:
                u = u.clamp(-limit, limit)
            h = h0[i]
            ys: list[Tensor] = []
            for s in range(T):
                t = T - 1 - s if d == 1 else s
                pre = gx[t] + u * h
                new = torch.relu(pre) if config.nonlinearity == "relu" else torch.tanh(pre)
                if lengths is not None:  # past its end a sequence's state stays, its output is 0
                    valid = (lengths > t).unsqueeze(1)
                    h = torch.where(valid, new, h)
                    new = torch.where(valid, new, torch.zeros_like(new))
                else:
                    h = new
                ys.append(new)
            y = torch.stack(ys)
            outputs.append(y.flip(0) if d == 1 else y)
            finals.append(h)
        x = torch.cat(outputs, -1) if D == 2 else outputs[0]
        if config.dropout > 0 and training and layer < config.num_layers - 1:
            x = F.dropout(x, config.dropout, training=True)
    return x, torch.stack(finals)
