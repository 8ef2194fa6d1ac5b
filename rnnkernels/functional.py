"""The layer stack: layers x directions over padded, packed, unbatched or batch-first input.

Each layer and direction runs one input-projection GEMM over all time steps (F.linear; on the cpp
backend its own, ``ops/linear.py``), then one per-layer op (``torch.ops.rnnkernels.<cell>_fwd``)
for the recurrence. Dropout between layers and (un)packing stay in torch. Every call is checked
first (``validation.check_call``), before a backend is chosen, whether it comes from a module or
straight to these functions.

The backend is resolved once per call, before the layer stack (``_stack``). The ``torch`` backend
is not a per-layer op: torch's fused RNN ops take ``x`` and ``W_ih``, not our ``gx``. So ``_stack``
branches on it there, once, and ``_native`` runs the whole call as ``nn.LSTM`` / ``nn.GRU`` do,
after the same check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence

from rnnkernels import onnx
from rnnkernels.backends import SAVES_ACTIVATIONS, LayerCall, get_backend, resolve
from rnnkernels.ops.gru.op import gru_fwd
from rnnkernels.ops.indrnn.op import indrnn_fwd
from rnnkernels.ops.linear import linear as cpp_linear
from rnnkernels.ops.lstm.op import lstm_fwd
from rnnkernels.ops.rnn.op import rnn_fwd
from rnnkernels.ops.steps import FLOAT_SAVING_BACKENDS
from rnnkernels.validation import (
    autocast_dtype,
    check_call,
    check_indrnn_options,
    check_nonlinearity,
    reported,
)
from rnnkernels.weights import WEIGHTS, GRUWeights, IndRNNWeights, LSTMWeights

# From this many FLOPs (2 * rows * I * G*H) the cpp backend computes gx with its own GEMM
# (ops/linear.py); below, the Python autograd layer of that op (~55 us a training call, ~5 us in
# inference) costs more than its GEMM saves (one Zen 4 core, x [N,H] W^T, forward+backward: 3.3
# MFLOP 220 vs F.linear's 173 us, 26 MFLOP 966 vs 954, 105 MFLOP 3651 vs 3804).
_OWN_GEMM_FLOPS = 32_000_000

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


def rnn(
    input: Tensor | PackedSequence,
    hx: Tensor | None,
    weights: Sequence[Sequence[Tensor | None]],
    hidden_size: int,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str | None = None,
    *,
    input_size: int | None = None,
) -> tuple[Tensor | PackedSequence, Tensor]:
    """``nn.RNN``'s forward, the Elman RNN ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T +
    b_hh)``, ``act`` tanh or relu. ``weights[layer * D + direction]`` is an ``RNNWeights`` (or a
    plain tuple ``(weight_ih, weight_hh, bias_ih, bias_hh)``), None for absent biases (see
    ``lstm``). Returns ``output, h_n``."""
    reported(lambda: check_nonlinearity(nonlinearity))
    return _one_gate("rnn", input, hx, weights, hidden_size, num_layers, nonlinearity,
                     bidirectional, batch_first, dropout, training, backend, input_size,
                     recurrent=lambda w: w.weight_hh)  # fmt: skip


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

    def recurrent(w: IndRNNWeights) -> Tensor:  # u, clamped when recurrent_max_abs is set
        if recurrent_max_abs is None:
            return w.weight_hh
        return w.weight_hh.clamp(-recurrent_max_abs, recurrent_max_abs)

    return _one_gate("indrnn", input, hx, weights, hidden_size, num_layers, nonlinearity,
                     bidirectional, batch_first, dropout, training, backend, input_size,
                     recurrent=recurrent, recurrent_max_abs=recurrent_max_abs)  # fmt: skip


def _one_gate(
    cell: str,
    input: Tensor | PackedSequence,
    hx: Tensor | None,
    weights: Sequence[Sequence[Tensor | None]],
    hidden_size: int,
    num_layers: int,
    nonlinearity: str,
    bidirectional: bool,
    batch_first: bool,
    dropout: float,
    training: bool,
    backend: str | None,
    input_size: int | None,
    recurrent: Callable[[Any], Tensor],
    **cell_options: Any,
) -> tuple[Tensor | PackedSequence, Tensor]:
    """The forward of a one-gate cell (``rnn``, ``indrnn``): the call checked, then the layer
    stack with ``recurrent(weights)`` as each direction's recurrent weight (IndRNN's ``u``,
    clamped; RNN's ``W_hh``). ``cell_options``: what only the ONNX export reads beyond the
    nonlinearity (``_stack``)."""
    states = None if hx is None else (hx,)
    reported(lambda: check_call(cell, input, states, weights, hidden_size, num_layers,
                                bidirectional, batch_first, input_size, None))  # fmt: skip

    def direction(gx, states, w, lengths, reverse, backend, selection):
        y, hT = _forward(cell, gx, recurrent(w), states[0], lengths, reverse, nonlinearity,
                         backend=backend, selection=selection)  # fmt: skip
        return y, (hT,)

    output, states = _stack(
        cell, direction, input, states, (hidden_size,), weights,
        num_layers, bidirectional, batch_first, dropout, training, backend,
        nonlinearity=nonlinearity, **cell_options,
    )  # fmt: skip
    return output, states[0]


def _lstm_direction(gx, states, w: LSTMWeights, lengths, reverse, backend, selection):
    h0, c0 = states
    y, hT, cT, _, _ = _forward("lstm", gx, w.weight_hh, w.weight_hr, h0, c0, lengths, reverse,
                               backend=backend, selection=selection)  # fmt: skip
    return y, (hT, cT)


def _gru_direction(gx, states, w: GRUWeights, lengths, reverse, backend, selection):
    y, hT, _, _ = _forward("gru", gx, w.weight_hh, w.bias_hh, states[0], lengths, reverse,
                           backend=backend, selection=selection)  # fmt: skip
    return y, (hT,)


_FORWARD = {"lstm": lstm_fwd, "gru": gru_fwd, "indrnn": indrnn_fwd, "rnn": rnn_fwd}


def _forward(cell: str, *args: Any, backend: str, selection: str | None) -> tuple[Tensor, ...]:
    """One direction's forward op on the per-layer contract's arguments (docs/design.md, section
    3): ours, ``torch.ops.rnnkernels.<cell>_fwd``, given the backend and selection too. On the
    cpp backend, the C++ op that ours would run, ``torch.ops.rnnkernels_cpp.<cell>_fwd``, in two
    cases: under torch.export, since C++ registers it, so the exported program runs where there
    is no Python (AOTInductor from C++), on the backend it was exported with (section 7); and for
    an eager inference call (no gradient needed), with ``save=False`` where the cell saves
    activations: the kernel keeps none, and the call skips our op's Python layers."""
    if backend == "cpp":  # registered, since resolve found cpp available
        if onnx.torch_exporting():
            return getattr(torch.ops.rnnkernels_cpp, f"{cell}_fwd")(*args)
        if _inference(args):
            save = (False,) if cell in SAVES_ACTIVATIONS else ()
            return getattr(torch.ops.rnnkernels_cpp, f"{cell}_fwd")(*args, *save)
    return _FORWARD[cell](*args, backend, selection)


def _inference(args: Sequence[Any]) -> bool:
    """Whether a forward call needs no backward: no tensor argument requires a gradient (or grad
    mode is off), outside torch.compile, torch.jit.trace and torch.func transforms (which trace
    or batch our op)."""
    if (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
    ):
        return False
    return not (
        torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
    )


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
    **cell_options: Any,
) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
    """Runs every layer and direction; returns the output in the input's form and the final
    states, each [num_layers * D, B, size] (or [num_layers * D, size] for unbatched input).
    ``cell_options``: what ``direction`` holds otherwise, for the paths that run the whole call:
    the ONNX export (RNN's and IndRNN's nonlinearity, IndRNN's clamp) and the ``torch`` backend
    (RNN's nonlinearity)."""
    layout = _Layout(input, batch_first)
    if onnx.exporting():  # torch.onnx.export: the whole call as ONNX operators (rnnkernels/onnx.py)
        return onnx.stack(cell, layout, hx, weights, num_layers, bidirectional, dropout, training,
                          **cell_options)  # fmt: skip
    x = layout.x
    D = 2 if bidirectional else 1
    R, H = state_sizes[0], state_sizes[-1]  # LSTM (R, H), the others (H,)
    call = _describe(cell, layout, H, R, num_layers, bidirectional, weights)
    name = reported(lambda: resolve(backend, call))
    if hx is None:
        hx = tuple(x.new_zeros(num_layers * D, layout.B, size) for size in state_sizes)
    elif layout.unbatched:
        hx = tuple(h.unsqueeze(1) for h in hx)
    if name == "torch":  # the whole call, by torch's fused op (the module docstring)
        # Under torch.compile it runs eagerly, a graph break as nn.LSTM's own (inductor cannot
        # lower its CPU kernel); auto never picks it there (rnnkernels.dispatch).
        native = _native_eager if torch.compiler.is_compiling() else _native
        return native(cell, layout, hx, weights, num_layers, bidirectional, dropout, training,
                      cell_options.get("nonlinearity", "tanh"))  # fmt: skip
    selection = get_backend() if backend is None else None  # checked again when the ops run
    lengths = layout.index()
    layer_weights = [WEIGHTS[cell](*entry) for entry in weights]
    autocast = _Autocast.of(cell, layout, hx, R != H)
    if autocast is not None:
        direction = autocast.recurrence(direction)
    # the input GEMMs: the cpp backend's own (ops/linear.py) from _OWN_GEMM_FLOPS; F.linear under
    # autocast (which casts it) and torch.export (aten's linear runs wherever the program runs)
    own_gemm = name == "cpp" and autocast is None and not onnx.torch_exporting()
    finals: list[tuple[Tensor, ...]] = []
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            index = layer * D + d
            states = tuple(h[index] for h in hx)
            w = layer_weights[index]
            # float16 always: torch's float16 GEMM on CPU is not vectorised (csrc/cpu/linear.cpp)
            ours = own_gemm and (
                x.dtype == torch.float16 or 2 * x.numel() * w.weight_ih.shape[0] >= _OWN_GEMM_FLOPS
            )
            project = cpp_linear if ours else F.linear
            gx = layout.padded(project(x, w.weight_ih, w.input_bias()))  # one GEMM, all steps
            y, final = direction(gx, states, w, lengths, d == 1, name, selection)
            outputs.append(layout.unpadded(y))
            finals.append(final)
        x = torch.cat(outputs, -1) if D == 2 else outputs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    h_n = tuple(torch.stack(states) for states in zip(*finals))
    if autocast is not None:
        x, h_n = autocast.outputs(x, h_n)
    return layout.result(x, h_n)


def _describe(
    cell: str,
    layout: _Layout,
    H: int,
    R: int,
    num_layers: int,
    bidirectional: bool,
    weights: Sequence[Sequence[Tensor | None]],
) -> LayerCall:
    """The call as backends and auto's dispatch table see it. Training: grad mode on and the input
    or weight_ih_l0 requiring grad (every weight is not read: this runs on every call)."""
    x = layout.x
    grad = torch.is_grad_enabled() and (x.requires_grad or weights[0][0].requires_grad)
    packed = layout.packed is not None
    B, T = layout.B, layout.T
    if torch.jit.is_tracing():  # sizes are traced tensors there; the backend choice is not traced
        B, T = int(B), int(T)
    # under autocast the recurrent kernels get fp32 (_Autocast), whatever the input's dtype
    dtype = x.dtype if autocast_dtype(x) is None else torch.float32
    return LayerCall(cell, x.device, dtype, B, H, R, T, num_layers, bidirectional, packed, grad)


def describe_call(module: Any, input: Tensor | PackedSequence, hx: Any = None) -> LayerCall:
    """The ``LayerCall`` a module's call ``module(input, hx)`` resolves its backend from, after
    the check the call makes (a malformed call raises). For ``rnnkernels.explain``."""
    cell, H = module.cell, module.hidden_size
    R = getattr(module, "proj_size", 0) or H
    weights = module._layer_weights()
    states = None if hx is None else tuple(hx) if cell == "lstm" else (hx,)
    proj = module.proj_size if cell == "lstm" else None
    reported(lambda: check_call(cell, input, states, weights, H, module.num_layers,
                                module.bidirectional, module.batch_first, module.input_size,
                                proj))  # fmt: skip
    layout = _Layout(input, module.batch_first)
    return _describe(cell, layout, H, R, module.num_layers, module.bidirectional, weights)


def _native(
    cell: str,
    layout: _Layout,
    hx: tuple[Tensor, ...],
    weights: Sequence[Sequence[Tensor | None]],
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    training: bool,
    nonlinearity: str = "tanh",
) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
    """The ``torch`` backend: the whole call by torch's fused op, ``_VF.lstm`` / ``_VF.gru`` /
    ``_VF.rnn_tanh`` / ``_VF.rnn_relu`` (RNN's ``nonlinearity``), called as ``nn.LSTM.forward`` /
    ``nn.GRU.forward`` / ``nn.RNN.forward`` call it (torch/nn/modules/rnn.py): the
    weights flat in torch's order (absent biases and projection left out), packed input as
    (data, batch_sizes) with the states in sorted order, padded input time-major (torch runs
    batch_first input transposed so). Its numbers are theirs, dropout included."""
    flat = [w for entry in weights for w in entry if w is not None]
    op = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn": _native_rnn_ops[nonlinearity]}[cell]
    p = layout.packed
    if p is not None and p.sorted_indices is not None:
        hx = tuple(h.index_select(1, p.sorted_indices) for h in hx)
    states = hx if cell == "lstm" else hx[0]
    args = (flat, weights[0][2] is not None, num_layers, float(dropout), training, bidirectional)
    if p is None:
        y, *h_n = op(layout.x, states, *args, False)
    else:
        y, *h_n = op(p.data, p.batch_sizes, states, *args)
        if p.unsorted_indices is not None:
            h_n = [h.index_select(1, p.unsorted_indices) for h in h_n]
    return layout.result(y, tuple(h_n))


def _native_eager(*args: Any) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
    """``_native`` as a compiled graph calls it: eagerly, behind a graph break that says why in
    our terms (under fullgraph=True, the error). What ``torch.compiler.disable(fn, reason=...)``
    makes, without importing Dynamo with this module (1 s, 150 MB; tests/test_import.py): the
    attributes Dynamo reads while tracing (private, as backends._unavailable's marker), and at
    run time the real disabled function, made on first use (Dynamo is loaded by then)."""
    global _native_disabled
    if _native_disabled is None:
        _native_disabled = torch.compiler.disable(
            _native,
            reason=_native_eager._torchdynamo_disable_msg,  # type: ignore[attr-defined]
        )
    return _native_disabled(*args)


_native_rnn_ops = {"tanh": _VF.rnn_tanh, "relu": _VF.rnn_relu}  # nn.RNN's, per nonlinearity
_native_disabled: Callable[..., Any] | None = None
_native_eager._torchdynamo_disable = True  # type: ignore[attr-defined]
_native_eager._torchdynamo_disable_msg = (  # type: ignore[attr-defined]
    "rnnkernels: backend='torch' runs torch's own fused LSTM/GRU/RNN op, which torch.compile "
    "cannot trace (a graph break, as for nn.LSTM); with fullgraph=True use backend='auto' or a "
    "kernel backend ('cpp', 'numba', 'triton', 'reference')"
)


class _Autocast(NamedTuple):
    """How a call runs under ``torch.autocast`` (docs/design.md, "Mixed precision"): the input
    GEMMs as autocast casts them, the recurrence in fp32 with autocast off inside it, the outputs
    in the dtypes torch's module returns under the same autocast."""

    y: torch.dtype  # the output's dtype
    states: tuple[torch.dtype, ...]  # h_n's (LSTM: h_n's, c_n's)
    # what the recurrence runs in on cpp / numba: bf16 under CPU bf16 autocast (their bf16
    # kernels keep the state in fp32; the step GEMMs take bf16 operands with AVX512_BF16), else fp32
    half: torch.dtype = torch.float32

    @staticmethod
    def of(cell: str, layout: _Layout, hx: tuple[Tensor, ...], proj: bool) -> _Autocast | None:
        """The call's plan, or None where autocast leaves it alone (validation.autocast_dtype).
        The outputs' dtypes are torch's, found by running its modules (tests/test_autocast.py):
        on CPU an output torch computes from a low-precision GEMM is in the autocast dtype, one it
        computes as a sum with the previous state (GRU's h = (1-z)*n + z*h, LSTM's c) promotes
        the state's dtype with it, and LSTM runs oneDNN's fused kernel, all in the autocast dtype,
        except on packed input or with a projection; on CUDA cuDNN's autocast wrapper casts every
        cell to fp16, whatever the autocast dtype (torch's aten/src/ATen/cudnn/AutocastRNN.cpp).
        RNN's h = act(GEMMs) is in the autocast dtype; IndRNN follows nn.RNN (its
        h = act(gx + u * h) is nn.RNN's with a diagonal W_hh)."""
        dtype = autocast_dtype(layout.x)
        if dtype is None:
            return None
        given = functools.reduce(torch.promote_types, [h.dtype for h in hx])  # (zeros: x's)
        low, kept = dtype, torch.promote_types(given, dtype)
        half = dtype if layout.x.device.type == "cpu" and dtype == torch.bfloat16 else torch.float32
        if layout.x.device.type == "cuda":
            low = kept = torch.float16
        if cell in ("rnn", "indrnn"):
            return _Autocast(low, (low,), half)
        if cell == "gru":
            return _Autocast(kept, (kept,), half)
        if proj:  # h = (o * tanh(c)) W_hr^T is a GEMM; c is a sum
            return _Autocast(low, (low, kept), half)
        if layout.packed is not None:
            return _Autocast(kept, (kept, kept), half)
        return _Autocast(low, (low, low), half)

    def recurrence(self, direction: Direction) -> Direction:
        """``direction`` on ``gx``, states and recurrent weights cast to fp32 (on cpp / numba
        under bf16 autocast on CPU: to bf16, ``half``), with autocast off inside: the kernels run
        in fp32, or in their bf16 form, which keeps the state and the pointwise math in fp32 (the
        backend was resolved for fp32, _describe, and both backends run both), and no torch op
        within them (the reference loop's GEMMs, for one) is cast behind their back. The casts
        are differentiable: fp32 master weights get fp32 gradients."""

        def run(gx, states, w, lengths, reverse, backend, selection):
            dtype = self.half if backend in FLOAT_SAVING_BACKENDS else torch.float32
            recurrent = {
                name: tensor.to(dtype)
                for name, tensor in w._asdict().items()
                if name != "weight_ih" and tensor is not None
            }
            with torch.autocast(gx.device.type, enabled=False):
                return direction(gx.to(dtype), tuple(h.to(dtype) for h in states),
                                 w._replace(**recurrent), lengths, reverse, backend,
                                 selection)  # fmt: skip

        return run

    def outputs(self, y: Tensor, h_n: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The output and final states in the dtypes torch's module returns."""
        return y.to(self.y), tuple(h.to(dtype) for h, dtype in zip(h_n, self.states))


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
        else:
            x = input.unsqueeze(1) if self.unbatched else input
            self.x = x.transpose(0, 1) if batch_first and not self.unbatched else x
            self.T, self.B = self.x.shape[0], self.x.shape[1]

    def index(self) -> Tensor | None:
        """The [B] sequence lengths (None for padded input), after computing, for packed input,
        the positions that ``padded`` and ``unpadded`` use. Not in ``__init__``: the ``torch``
        backend needs none of it."""
        if self.packed is None:
            return None
        p, device = self.packed, self.x.device
        sorted_indices = None if p.sorted_indices is None else p.sorted_indices.cpu()
        lengths, positions, padding = _packed_index(p.batch_sizes, sorted_indices)
        self.positions, self.padding = positions.to(device), padding.to(device)
        return lengths.to(device)

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

    def result(
        self, x: Tensor, h_n: tuple[Tensor, ...]
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
        """The output (time-major, or packed rows) in the input's form, and the final states."""
        if self.unbatched:
            return x.squeeze(1), tuple(h.squeeze(1) for h in h_n)
        if self.packed is not None:
            p = self.packed
            return PackedSequence(x, p.batch_sizes, p.sorted_indices, p.unsorted_indices), h_n
        return (x.transpose(0, 1) if self.batch_first else x), h_n


class _ToPadded(torch.autograd.Function):
    """rows [N, G] -> [size, G]: row i at positions[i], zeros at the padding positions. Each of
    _ToPadded / _ToRows is the other's backward (so any order of derivative runs through them).
    Written out because autograd's own backward of an index op accumulates through a zero-filled
    copy (the positions are unique: no need). forward / setup_context / vmap apart, as torch.func
    requires; positions and padding come from the batch sizes, never batched by vmap."""

    @staticmethod
    def forward(rows: Tensor, positions: Tensor, padding: Tensor, size: int) -> Tensor:
        padded = rows.new_empty(size, rows.shape[1]).index_fill_(0, padding, 0)
        return padded.index_copy_(0, positions, rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.positions, ctx.padding, _ = inputs

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ToRows.apply(grad, ctx.positions, ctx.padding), None, None, None

    @staticmethod
    def vmap(info, in_dims, rows, positions, padding, size):
        return _by_rows(_ToPadded, in_dims[0], rows, positions, padding, size)


class _ToRows(torch.autograd.Function):
    """[size, G] -> rows [N, G]: the rows at positions (see _ToPadded)."""

    @staticmethod
    def forward(padded: Tensor, positions: Tensor, padding: Tensor) -> Tensor:
        return padded.index_select(0, positions)

    @staticmethod
    def setup_context(ctx, inputs, output):
        padded, ctx.positions, ctx.padding = inputs
        ctx.size = padded.shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ToPadded.apply(grad, ctx.positions, ctx.padding, ctx.size), None, None

    @staticmethod
    def vmap(info, in_dims, padded, positions, padding):
        return _by_rows(_ToRows, in_dims[0], padded, positions, padding)


def _by_rows(function: Any, dim: int | None, rows: Tensor, *index: Any) -> tuple[Tensor, Any]:
    """vmap of _ToPadded / _ToRows: both move whole rows (dim 0), so the vmapped dim ``dim`` of
    ``rows`` [N, G] rides along in the columns, one call for the whole batch."""
    if dim is None:
        return function.apply(rows, *index), None
    rows = rows.movedim(dim, 1)  # [N, V, G]
    return function.apply(rows.flatten(1), *index).unflatten(1, rows.shape[1:]), 1


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
