"""The one check of every call, made at the entry of ``rnnkernels.functional`` before a backend is
chosen (docs/design.md, "The op boundary"): the input, the initial states and every weight, bias
and ``u`` against the sizes the call implies, their dtypes and devices, and a PackedSequence's
bookkeeping. Kernels index raw memory by those sizes, so a malformed call that reached one would
read or write out of bounds; after this check no backend sees one.

Where ``torch.nn.LSTM`` / ``nn.GRU`` raise for the same input, the error has torch's type and
message; elsewhere (weights, which torch does not check, IndRNN) a ``ValueError`` names the
tensor, the shape or dtype expected and the one given. Non-contiguous tensors are accepted: the
kernels make their own contiguous copies where they need them.

Under ``torch.compile`` an error raised in traced code reaches the user as Dynamo's
"Observed exception", with ours in its debug context only; ``reported`` re-raises ours through
``rnnkernels::invalid_call``, whose fake makes the error Dynamo raises read as ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from rnnkernels import onnx
from rnnkernels.backends import GATES, BackendError
from rnnkernels.weights import WEIGHTS

MODES = {
    "lstm": "LSTM",
    "gru": "GRU",
    "indrnn": "IndRNN",
    "rnn": "RNN",
}  # the modules' names, for messages


_ERRORS = {error.__name__: error for error in (ValueError, TypeError, RuntimeError, BackendError)}
Result = TypeVar("Result")


def reported(check: Callable[[], Result]) -> Result:
    """``check()``, whose errors (a malformed call, a backend that cannot run it) reach a user of
    torch.compile as themselves: with fullgraph=True, Dynamo's error reads as ours; without, the
    graph breaks there and ours is raised eagerly."""
    try:
        return check()
    except tuple(_ERRORS.values()) as error:
        if torch.compiler.is_compiling():
            invalid_call(type(error).__name__, str(error))
        raise


@torch.library.custom_op("rnnkernels::invalid_call", mutates_args=())
def invalid_call(kind: str, message: str) -> None:
    """Raises ``kind(message)``: what a call rejected while Dynamo traced it raises eagerly."""
    raise _ERRORS[kind](message)


@invalid_call.register_fake
def _(kind: str, message: str) -> None:
    from torch._dynamo.exc import Unsupported  # only ever run under torch.compile

    raise Unsupported(f"{kind}: {message}", "rnnkernels: invalid call")


def check_call(
    cell: str,
    input: Tensor | PackedSequence,
    hx: Sequence[Tensor] | None,
    weights: Sequence[Sequence[Tensor | None]],
    hidden_size: int,
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    input_size: int | None,
    proj_size: int | None,
) -> None:
    """Raises unless the call is well formed. ``input_size`` / ``proj_size`` are the sizes a module
    was built with; None (the functional API): the input's feature size / weight_hr_l0's rows."""
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    D = 2 if bidirectional else 1
    layer_weights = _layer_weights(cell, weights, num_layers, D)
    first = layer_weights[0]
    data, batch, unbatched = _check_input(cell, input, batch_first, input_size, first)
    if proj_size is None:
        w_hr = first.get("weight_hr_l0")
        proj_size = w_hr.shape[0] if w_hr is not None and w_hr.dim() > 0 else 0
    R = proj_size or hidden_size
    I = data.size(-1) if input_size is None else input_size
    _check_weights(cell, layer_weights, I, hidden_size, R, D, data)
    if hx is not None:
        sizes = (R, hidden_size) if cell == "lstm" else (hidden_size,)
        _check_states(hx, sizes, num_layers * D, batch, unbatched, data)


def check_nonlinearity(nonlinearity: str) -> None:
    """RNN's and IndRNN's ``nonlinearity``, with nn.RNN's message."""
    if nonlinearity not in ("relu", "tanh"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def check_indrnn_options(nonlinearity: str, recurrent_max_abs: float | None) -> None:
    """IndRNN's own arguments."""
    check_nonlinearity(nonlinearity)
    if recurrent_max_abs is not None and not recurrent_max_abs > 0:
        raise ValueError(f"recurrent_max_abs must be positive, got {recurrent_max_abs}")


def _layer_weights(
    cell: str, weights: Sequence[Sequence[Tensor | None]], num_layers: int, D: int
) -> list[dict[str, Tensor | None]]:
    """Per layer and direction, torch's name of each weight (``weight_hh_l1_reverse``) -> it."""
    names, count = WEIGHTS[cell]._fields, num_layers * D
    if not isinstance(weights, Sequence) or len(weights) != count:
        got = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
        raise ValueError(
            f"weights must hold num_layers * num_directions = {count} entries, got {got}"
        )
    result = []
    for index, entry in enumerate(weights):
        layer, direction = divmod(index, D)
        if not isinstance(entry, Sequence) or len(entry) != len(names):
            raise ValueError(
                f"weights[{index}] must be a tuple ({', '.join(names)}), got {entry!r:.80}"
            )
        tag = f"_l{layer}" + ("_reverse" if direction else "")
        named = {name + tag: tensor for name, tensor in zip(names, entry)}
        for name, tensor in named.items():
            required = name.startswith(("weight_ih", "weight_hh"))
            if not (isinstance(tensor, Tensor) or (tensor is None and not required)):
                what = "a Tensor" if required else "a Tensor or None"
                raise TypeError(f"{name} must be {what}, got {type(tensor).__name__}")
        result.append(named)
    return result


def _check_input(
    cell: str, input: object, batch_first: bool, input_size: int | None, first: dict
) -> tuple[Tensor, int, bool]:
    """The input, as nn.LSTM checks it (its feature size only against a given ``input_size``).
    Returns its data, its batch size and whether it is unbatched."""
    mode = MODES[cell]
    if isinstance(input, PackedSequence):
        onnx.refuse_packed_dynamo(cell)  # torch.export's PackedSequence would fail the checks
        if onnx.torch_exporting():  # the same, for torch.export itself
            raise ValueError(
                f"rnnkernels.{mode}: packed input (a PackedSequence) cannot be exported with "
                "torch.export: its batch sizes depend on the lengths' values (nn.LSTM fails the "
                "same way). Export a model that takes padded input."
            )
        data = input.data
        _check_packed(input)
        batch, unbatched, expected_dim = int(input.batch_sizes[0]), False, 2
    elif isinstance(input, Tensor):
        if input.dim() not in (2, 3):
            tensor = " tensor" if cell == "rnn" else ""  # nn.RNN's message says so
            raise ValueError(
                f"{mode}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead"
            )
        data, unbatched, expected_dim = input, input.dim() == 2, input.dim()
        batch = 1 if unbatched else input.size(0 if batch_first else 1)
        if input.size(1 if batch_first and not unbatched else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    else:
        raise TypeError(
            f"{mode}: input must be a Tensor or a PackedSequence, got {type(input).__name__}"
        )
    weight = first["weight_ih_l0"]
    if data.dtype != weight.dtype and not _autocast_mixes(data, weight):
        raise ValueError(
            f"RNN input dtype ({data.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({data.dtype})"
        )
    if not data.is_floating_point():
        raise ValueError(f"{mode}: input must be a floating-point tensor, got {data.dtype}")
    _check_device(data, weight, "parameter")
    if data.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {data.dim()}")
    if input_size is not None and data.size(-1) != input_size:
        raise RuntimeError(
            "input.size(-1) must be equal to input_size. "
            f"Expected {input_size}, got {data.size(-1)}"
        )
    return data, batch, unbatched


def _check_packed(packed: PackedSequence) -> None:
    """A PackedSequence built by hand (its constructor checks nothing): batch sizes that are
    positive, non-increasing and sum to the rows of data; sorted / unsorted indices that are
    inverse permutations of the batch."""
    sizes, data = packed.batch_sizes, packed.data
    if not isinstance(sizes, Tensor) or sizes.dtype != torch.int64 or sizes.dim() != 1:
        raise ValueError("PackedSequence.batch_sizes must be a 1-D int64 tensor")
    if sizes.device.type != "cpu":
        raise ValueError(f"PackedSequence.batch_sizes must be on the CPU, got {sizes.device}")
    if data.dim() != 2:
        raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
    if sizes.numel() == 0:
        raise ValueError("PackedSequence.batch_sizes is empty")
    _require(
        (sizes > 0).all() & (sizes[1:] <= sizes[:-1]).all(),
        "PackedSequence.batch_sizes must be positive and non-increasing",
    )
    _require(sizes.sum() == data.shape[0], "PackedSequence.batch_sizes must sum to data's rows")
    indices = {"sorted_indices": packed.sorted_indices, "unsorted_indices": packed.unsorted_indices}
    if (indices["sorted_indices"] is None) != (indices["unsorted_indices"] is None):
        raise ValueError("PackedSequence: sorted_indices and unsorted_indices go together")
    if indices["sorted_indices"] is None:
        return
    for name, index in indices.items():
        if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.dim() != 1:
            raise ValueError(f"PackedSequence.{name} must be a 1-D int64 tensor")
        if index.device != data.device:
            raise ValueError(
                f"PackedSequence.{name} must be on data's device {data.device}, got {index.device}"
            )
        _require(index.shape[0] == sizes[0], f"PackedSequence.{name} must have batch_sizes[0] rows")
    order, inverse = (index.cpu() for index in indices.values())
    if order.shape != inverse.shape:
        raise ValueError("PackedSequence: sorted_indices and unsorted_indices differ in size")
    identity = torch.arange(order.shape[0])
    permutations = (order.sort().values == identity).all() & (
        inverse.sort().values == identity
    ).all()
    inverse = inverse.clamp(0, order.shape[0] - 1)  # in range, so the check itself cannot fail
    _require(
        permutations & (order[inverse] == identity).all(),
        "PackedSequence.sorted_indices must be a permutation of the batch and unsorted_indices "
        "its inverse",
    )


def _require(ok: Tensor, message: str) -> None:
    """A check of tensor values: a ValueError in eager; under torch.compile, which cannot read
    values while it traces, an assertion in the graph (a RuntimeError with the same message)."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)


def _check_weights(
    cell: str,
    layer_weights: list[dict[str, Tensor | None]],
    input_size: int,
    H: int,
    R: int,
    D: int,
    data: Tensor,
) -> None:
    """Every weight against the shape the call implies, all of weight_ih_l0's dtype and device."""
    G = GATES[cell]
    reference = layer_weights[0]["weight_ih_l0"]
    for index, named in enumerate(layer_weights):
        expected = _expected_shapes(cell, index // D, input_size, G * H, H, R, D)
        biases = [name for name in named if name.startswith("bias")]
        if (named[biases[0]] is None) != (named[biases[1]] is None):
            raise ValueError(f"{biases[0]} and {biases[1]} must both be given or both be None")
        for (name, tensor), shape in zip(named.items(), expected):
            if tensor is None:  # an absent bias: checked above; weight_ih / weight_hh: TypeError
                if shape is not None and name.startswith("weight_hr"):
                    raise ValueError(f"{name} is None, but proj_size is {R}: expected [{R}, {H}]")
                continue
            if shape is None:
                raise ValueError(
                    f"{name} must be None without a projection (proj_size 0), got shape "
                    f"{list(tensor.shape)}"
                )
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
            _check_device(data, tensor, "parameter")
            if tensor.dtype != reference.dtype:
                raise ValueError(
                    f"{name} has dtype {tensor.dtype}, but weight_ih_l0 has {reference.dtype}: "
                    "every weight must have one dtype"
                )


def _expected_shapes(
    cell: str, layer: int, input_size: int, gate_rows: int, H: int, R: int, D: int
) -> tuple[tuple[int, ...] | None, ...]:
    """The shapes of one layer's weights, in ``WEIGHTS[cell]`` order (None: must be absent)."""
    layer_input = input_size if layer == 0 else R * D
    hh = (gate_rows,) if cell == "indrnn" else (gate_rows, R)
    shapes = ((gate_rows, layer_input), hh, (gate_rows,), (gate_rows,))
    if cell == "lstm":
        shapes += ((R, H) if R != H else None,)
    return shapes


def _check_states(
    hx: Sequence[Tensor],
    sizes: tuple[int, ...],
    layers: int,
    batch: int,
    unbatched: bool,
    data: Tensor,
) -> None:
    """The initial states (one per entry of ``sizes``), as nn.LSTM checks them."""
    for k, h in enumerate(hx):
        if not isinstance(h, Tensor):
            raise TypeError(
                f"{_state_name(k, len(sizes))} must be a Tensor, got {type(h).__name__}"
            )
    state_dim = 2 if unbatched else 3
    if any(h.dim() != state_dim for h in hx):
        kind = "unbatched 2-D" if unbatched else "batched 3-D"
        ranks = ", ".join(f"{h.dim()}-D" for h in hx)
        states, got = (
            ("hx and cx", f"({ranks}) tensors") if len(hx) == 2 else ("hx", f"{ranks} tensor")
        )
        raise RuntimeError(f"For {kind} input, {states} should also be {state_dim}-D but got {got}")
    for k, (h, size) in enumerate(zip(hx, sizes)):
        name = _state_name(k, len(sizes))
        # unbatched states are checked (and reported, as torch does) with their batch of 1
        h_shape = (h.shape[0], 1, *h.shape[1:]) if unbatched else tuple(h.shape)
        expected = (layers, batch, size)
        if h_shape != expected:
            raise RuntimeError(f"Expected {name} size {expected}, got {list(h_shape)}")
        _check_device(data, h, "hidden")
        if h.dtype != data.dtype and not _autocast_mixes(data, h):
            raise ValueError(f"{name} dtype ({h.dtype}) does not match input dtype ({data.dtype})")


# The floating-point dtypes torch.autocast casts (its is_eligible: not float64).
AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(data: Tensor) -> torch.dtype | None:
    """The dtype torch.autocast gives this call's GEMMs (docs/design.md, "Mixed precision"), or
    None where autocast leaves the call alone: autocast off for the input's device (its own flag;
    ``torch.is_autocast_enabled()`` without an argument reads CUDA's only), or an input autocast
    does not cast (float64)."""
    # first the flag nn.RNNBase reads (any device's autocast): 0.2 us a call where none is on,
    # against 0.9 us for the device's own flags (timeit, 2-vCPU Zen 4)
    if not torch._C._is_any_autocast_enabled() or data.dtype not in AUTOCAST_DTYPES:
        return None
    device = data.device.type
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _autocast_mixes(data: Tensor, tensor: Tensor) -> bool:
    """Whether ``tensor`` (a weight or a state) may differ in dtype from the input ``data``: under
    autocast for the input's device, among the dtypes autocast casts, as torch's modules accept
    (an fp32 model on bf16 input; a bf16 h_n of an earlier call fed back as hx)."""
    return autocast_dtype(data) is not None and tensor.dtype in AUTOCAST_DTYPES


def _check_device(data: Tensor, tensor: Tensor, kind: str) -> None:
    """``tensor`` (a ``kind``: "parameter" or "hidden") on the input's device; torch's message."""
    if tensor.device != data.device:
        raise RuntimeError(
            f"Input and {kind} tensors are not at the same device, found input tensor at "
            f"{data.device} and {kind} tensor at {tensor.device}"
        )


def _state_name(k: int, count: int) -> str:
    return f"hidden[{k}]" if count > 1 else "hidden"
