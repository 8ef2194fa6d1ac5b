"""ONNX export of LSTM, GRU, RNN and IndRNN, with either of torch's exporters.

Our layer ops take ``gx = x W_ih^T + b``, so a translation of the op alone would hand ONNX an
identity input weight. Instead ``functional._stack`` hands the whole call here while
``torch.onnx.export`` traces it (``exporting``), and this emits, per exporter:

==========================  =============================================  ========================
case                        ``dynamo=False`` (TorchScript exporter)        ``dynamo=True``
==========================  =============================================  ========================
LSTM (no ``proj_size``),    torch's fused op ``_VF.lstm`` / ``_VF.gru`` /  ONNX ``LSTM`` / ``GRU``
GRU, RNN                    ``_VF.rnn_*``, whose symbolic emits ONNX       / ``RNN``, one node per
                            ``LSTM`` / ``GRU`` / ``RNN`` as for            layer
                            ``nn.LSTM``; packed input becomes their        (``torch.onnx.ops``)
                            ``sequence_lens``
LSTM with ``proj_size``,    a ``Loop`` (a scripted loop, which the         a ``Scan`` (torch's scan
IndRNN                      exporter converts)                             operator)
==========================  =============================================  ========================

Both exporters reorder the gates to ONNX's (LSTM ``iofc``, GRU ``zrh``), split the biases into
``Wb`` / ``Rb`` and run bidirectional layers as one ``direction="bidirectional"`` node; RNN's
nonlinearity is the node's ``activations`` (``Tanh`` or ``Relu`` per direction).
ONNX's LSTM has no projection and ONNX has no IndRNN, hence the loops; they compute ``gx`` with one
GEMM over all steps, as the layer ops do. No backend runs: the graph is the same whatever
``backend=`` says.

Packed input: with ``dynamo=False`` the exporter turns ``pack_padded_sequence`` into the
``sequence_lens`` of the ``LSTM`` / ``GRU`` node that follows it, and refuses any other consumer;
with ``dynamo=True``, torch.export cannot trace ``pack_padded_sequence`` at all (nor ``nn.LSTM`` on
packed input). The other combinations raise ``OnnxExporterError`` saying so.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkernels.weights import WEIGHTS

# Whether torch.export is tracing (ONNX's dynamo exporter or not). Older torch (this package
# accepts torch>=2.4) lacks the function: there an exported graph holds our Python ops, and the
# dynamo path needs torch.onnx.ops (torch>=2.8) anyway.
torch_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def exporting() -> bool:
    """Whether ``torch.onnx.export`` is tracing this call, with either exporter. The two cheap
    flags first (``torch.jit.is_tracing``: TorchScript, ``torch.compiler.is_exporting``:
    torch.export): an eager call pays 0.37 us, ``is_in_onnx_export`` alone 2.3 us (timeit, 2-vCPU
    machine at load 3.5). Constant under torch.compile (Dynamo folds all three): no graph break."""
    return (torch.jit.is_tracing() or torch_exporting()) and torch.onnx.is_in_onnx_export()


def refuse_packed_dynamo(cell: str) -> None:
    """Raises when the dynamo exporter traces packed input. Called by ``validation`` before its
    checks of the PackedSequence, which torch.export's fake ``pack_padded_sequence`` (batch sizes
    of the wrong dtype, data of the wrong shape) would fail with a misleading message."""
    if torch_exporting() and torch.onnx.is_in_onnx_export():
        raise torch.onnx.errors.OnnxExporterError(_packed_refusal(cell, torchscript=False))


def _packed_refusal(cell: str, torchscript: bool) -> str:
    """Why packed input of ``cell`` (an LSTM with a projection is ``"lstm_proj"``) has no ONNX
    form under the exporter in use."""
    from rnnkernels.validation import MODES  # deferred: validation imports this module

    what = f"rnnkernels.{MODES[cell.removesuffix('_proj')]}: packed input (a PackedSequence)"
    if not torchscript:
        return (
            f"{what} cannot be exported with torch.onnx.export(..., dynamo=True): torch.export "
            "cannot trace pack_padded_sequence (its batch sizes depend on the lengths' values; "
            "nn.LSTM fails the same way). Export with dynamo=False, where an LSTM or GRU takes "
            "the lengths as its sequence_lens, or export padded input."
        )
    loop = "IndRNN" if cell == "indrnn" else "an LSTM with proj_size > 0"
    return (
        f"{what} cannot be exported with torch.onnx.export(..., dynamo=False): that exporter "
        "removes pack_padded_sequence only in front of ONNX's LSTM / GRU / RNN operators, and "
        f"{loop} has no ONNX operator (it exports as a Loop). Export padded input."
    )


def stack(
    cell: str,
    layout,
    hx: tuple[Tensor, ...] | None,
    weights,
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    training: bool,
    nonlinearity: str = "tanh",
    recurrent_max_abs: float | None = None,
):
    """``functional._stack`` while an ONNX export traces it: the same results, as ONNX operators
    (the module docstring). ``layout`` is ``_stack``'s ``_Layout``; ``hx`` the initial states as
    given (None: absent, so the ONNX nodes get none); ``nonlinearity``: RNN's and IndRNN's,
    ``recurrent_max_abs``: IndRNN's. Returns ``_stack``'s ``(output, final states)``."""
    torchscript = torch.jit.is_tracing()
    proj = cell == "lstm" and weights[0][4] is not None
    fused = cell != "indrnn" and not proj  # ONNX has an operator for the whole layer
    if layout.packed is not None and not (fused and torchscript):
        refused = "lstm_proj" if proj else cell
        raise torch.onnx.errors.OnnxExporterError(_packed_refusal(refused, torchscript))
    D = 2 if bidirectional else 1
    if hx is not None and layout.unbatched:
        hx = tuple(h.unsqueeze(1) for h in hx)
    if fused and torchscript:  # torch's op, whose symbolic emits the ONNX LSTM / GRU
        from rnnkernels.functional import _native  # deferred: functional imports this module

        if hx is None:  # _VF's ops take the states; nn.LSTM passes zeros too
            H = weights[0][1].shape[1]
            count = 2 if cell == "lstm" else 1
            hx = tuple(layout.x.new_zeros(num_layers * D, layout.B, H) for _ in range(count))
        return _native(cell, layout, hx, weights, num_layers, bidirectional, dropout, training,
                       nonlinearity)  # fmt: skip
    x = layout.x  # [T, B, I]: padded (packed input was refused above)
    finals = []
    for layer in range(num_layers):
        entries = [WEIGHTS[cell](*weights[layer * D + d]) for d in range(D)]
        states = None if hx is None else [h[layer * D : (layer + 1) * D] for h in hx]
        if fused:
            x, final = _onnx_layer(cell, x, entries, states, nonlinearity)
        else:
            x, final = _loop_layer(cell, x, entries, states, torchscript, nonlinearity,
                                   recurrent_max_abs)  # fmt: skip
        finals.append(final)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    return layout.result(x, tuple(torch.cat(states) for states in zip(*finals)))


# --- LSTM and GRU: ONNX's own operators (dynamo=True) ---------------------------------------------


def _onnx_order(cell: str, w: Tensor) -> Tensor:
    """The rows of a [G*H, ...] weight or [G*H] bias from torch's gate order to ONNX's: LSTM
    (input, forget, cell, output) -> (input, output, forget, cell); GRU (reset, update, new) ->
    (update, reset, new); RNN's one gate as it is."""
    if cell == "rnn":
        return w
    if cell == "lstm":
        i, f, c, o = w.chunk(4)
        return torch.cat([i, o, f, c])
    r, z, n = w.chunk(3)
    return torch.cat([z, r, n])


def _onnx_layer(cell, x, entries, states, nonlinearity):
    """One layer, every direction, as one ONNX ``LSTM`` / ``GRU`` / ``RNN`` node: x [T, B, I] -> y
    [T, B, D*H] and the final states, each [D, B, H]; ``nonlinearity``: RNN's."""
    T, B = x.shape[0], x.shape[1]
    D, H = len(entries), entries[0].weight_hh.shape[1]
    W = torch.stack([_onnx_order(cell, e.weight_ih) for e in entries])
    R = torch.stack([_onnx_order(cell, e.weight_hh) for e in entries])
    bias = None
    if entries[0].bias_ih is not None:  # [D, 2*G*H]: Wb then Rb, each in ONNX's gate order
        order = functools.partial(_onnx_order, cell)
        bias = torch.stack([torch.cat([order(e.bias_ih), order(e.bias_hh)]) for e in entries])
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if cell == "gru":
        attrs["linear_before_reset"] = 1  # torch's n = tanh(x W_in + r * (h W_hn + b_hn))
    if cell == "rnn":
        attrs["activations"] = [nonlinearity.capitalize()] * D  # "Tanh" / "Relu"
    n_states = 2 if cell == "lstm" else 1
    states = [None] * n_states if states is None else states
    y, *final = torch.onnx.ops.symbolic_multi_out(
        cell.upper(),
        [x, W, R, bias, None, *states],  # None: sequence_lens (padded input), absent states
        attrs,
        dtypes=[x.dtype] * (1 + n_states),
        shapes=[[T, D, B, H], *([[D, B, H]] * n_states)],
    )
    return y.permute(0, 2, 1, 3).reshape(T, B, D * H), final  # [T, D, B, H] -> [T, B, D*H]


# --- LSTM with a projection and IndRNN: loops (Scan with dynamo=True, Loop without) ---------------
# One step per cell, shared by both: scripted for the TorchScript exporter, scanned for dynamo's.


def _indrnn_step(h: Tensor, g: Tensor, u: Tensor, relu: bool) -> tuple[Tensor]:
    pre = g + u * h
    return (torch.relu(pre) if relu else torch.tanh(pre),)


def _lstm_proj_step(
    h: Tensor, c: Tensor, g: Tensor, w_hh: Tensor, w_hr: Tensor
) -> tuple[Tensor, Tensor]:
    i, f, z, o = (g + torch.mm(h, w_hh.t())).chunk(4, 1)  # torch's gate order
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
    return torch.mm(torch.sigmoid(o) * torch.tanh(c), w_hr.t()), c


def _indrnn_loop(gx: Tensor, h: Tensor, u: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    ys: list[Tensor] = []
    for t in range(gx.shape[0]):
        (h,) = _indrnn_step(h, gx[t], u, relu)
        ys.append(h)
    return torch.stack(ys), h


def _lstm_proj_loop(
    gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    ys: list[Tensor] = []
    for t in range(gx.shape[0]):
        h, c = _lstm_proj_step(h, c, gx[t], w_hh, w_hr)
        ys.append(h)
    return torch.stack(ys), h, c


@functools.cache
def _scripted(cell: str):
    """The cell's loop as TorchScript, which the TorchScript exporter turns into an ONNX Loop
    (a traced Python loop would be unrolled to the example's T). Scripted on first export."""
    return torch.jit.script(_indrnn_loop if cell == "indrnn" else _lstm_proj_loop)


def _loop_layer(cell, x, entries, states, torchscript, nonlinearity, recurrent_max_abs):
    """One layer, every direction, as a loop over the steps: x [T, B, I] -> y [T, B, D*R] and
    the final states, each [D, B, size]."""
    B = x.shape[1]
    outputs, finals = [], []
    for d, w in enumerate(entries):
        if cell == "indrnn":
            u = w.weight_hh
            if recurrent_max_abs is not None:
                u = u.clamp(-recurrent_max_abs, recurrent_max_abs)
            step, params, sizes = _indrnn_step, (u, nonlinearity == "relu"), (u.shape[0],)
        else:
            step, params = _lstm_proj_step, (w.weight_hh, w.weight_hr)
            sizes = (w.weight_hr.shape[0], w.weight_hr.shape[1])  # (R, H)
        if states is None:
            initial = tuple(x.new_zeros(B, size) for size in sizes)
        else:
            initial = tuple(h[d] for h in states)
        gx = F.linear(x, w.weight_ih, w.input_bias())  # one GEMM over all steps
        if d == 1:  # the reverse direction: the loop runs forward over the reversed steps
            gx = gx.flip(0)
        if torchscript:
            y, *final = _scripted(cell)(gx, *initial, *params)
        else:
            final, y = _scan(step, initial, gx, params)
        outputs.append(y.flip(0) if d == 1 else y)
        finals.append(final)
    y = torch.cat(outputs, -1) if len(outputs) == 2 else outputs[0]
    return y, [torch.stack(states) for states in zip(*finals)]


def _scan(step, initial: tuple[Tensor, ...], gx: Tensor, params: tuple):
    """``step`` over gx's steps by torch's scan operator, which the dynamo exporter emits as an
    ONNX Scan. Returns (the final states, y [T, B, R]).

    The operator itself (``torch.ops.higher_order.scan``), not its wrapper
    ``torch._higher_order_ops.scan.scan``: the wrapper first compiles the step with Dynamo to lift
    its closed-over tensors, 0.4 s per layer and direction; here they are passed explicitly. The
    operator's convention: ``combine(*carry, *slices of xs, *additional_inputs)`` returns the next
    carry then the step's outputs, which may not alias the carry."""
    # The tensors among params come first (the weights, then IndRNN's relu flag)
    tensors = tuple(p for p in params if isinstance(p, Tensor))
    constants = params[len(tensors) :]

    def combine(*args):  # (*carry, g, *tensors)
        carry = step(*args, *constants)
        return [*carry, carry[0].clone()]

    *final, y = torch.ops.higher_order.scan(combine, list(initial), [gx], tensors)
    return tuple(final), y
