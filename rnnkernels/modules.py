"""Drop-in modules: ``LSTM`` and ``GRU`` for ``torch.nn.LSTM`` / ``torch.nn.GRU``, and ``IndRNN``.

Parameters have torch's names, shapes, order and initialisation, so state_dicts move both ways;
arguments are checked as torch checks them, with torch's messages where torch has one.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkernels import functional
from rnnkernels.backends import AUTO, backend_names

_GATES = {"LSTM": 4, "GRU": 3, "IndRNN": 1}


class _RecurrentBase(nn.Module):
    """What LSTM, GRU and IndRNN share: sizes, parameters, checks, repr."""

    mode: str  # "LSTM", "GRU" or "IndRNN"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        if backend is not None and backend != AUTO and backend not in backend_names():
            raise ValueError(
                f"unknown rnnkernels backend {backend!r} (from backend argument); "
                f"expected one of {[AUTO, *backend_names()]}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        gate_size = _GATES[self.mode] * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            for suffix in ("", "_reverse") if bidirectional else ("",):
                layer_input = input_size if layer == 0 else real_hidden_size * self.num_directions
                hh_shape = (gate_size,) if self.mode == "IndRNN" else (gate_size, real_hidden_size)
                shapes = {"weight_ih": (gate_size, layer_input), "weight_hh": hh_shape}
                if bias:
                    shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Kept for nn.LSTM compatibility; our kernels need no flat weight buffer."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        per_layer = len(self._flat_weights_names) // (self.num_layers * self.num_directions)
        w = self._flat_weights
        return [w[i : i + per_layer] for i in range(0, len(w), per_layer)]

    def _layer_weights(self) -> list[tuple[Tensor | None, ...]]:
        """Per layer and direction: (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent."""
        result = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
                result.append(tuple(getattr(self, f"{n}_l{layer}{suffix}", None) for n in names))
        return result

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s

    def _check_forward_args(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, ...] | None, sizes: tuple[int, ...]
    ) -> None:
        """Checks input and the initial states (one per entry of ``sizes``) as torch does."""
        if isinstance(input, PackedSequence):
            data, batch = input.data, int(input.batch_sizes[0])
            expected_dim, unbatched = 2, False
        elif isinstance(input, Tensor):
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            data, unbatched = input, input.dim() == 2
            expected_dim = input.dim()
            batch = 1 if unbatched else input.size(0 if self.batch_first else 1)
            if input.size(1 if self.batch_first and not unbatched else 0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        else:
            raise TypeError(
                f"{self.mode}: input must be a Tensor or a PackedSequence, "
                f"got {type(input).__name__}"
            )
        weight = self.weight_ih_l0
        if data.dtype != weight.dtype and not torch.is_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({data.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: "
                f"model.to({data.dtype})"
            )
        if data.device != weight.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{data.device} and parameter tensor at {weight.device}"
            )
        if data.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {data.dim()}")
        if data.size(-1) != self.input_size:
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {data.size(-1)}"
            )
        if hx is None:
            return
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
            raise RuntimeError(
                f"For {kind} input, {states} should also be {state_dim}-D but got {got}"
            )
        for k, (h, size) in enumerate(zip(hx, sizes)):
            name = _state_name(k, len(sizes))
            # unbatched states are checked (and reported, as torch does) with their batch of 1
            h_shape = (h.shape[0], 1, *h.shape[1:]) if unbatched else tuple(h.shape)
            expected = (self.num_layers * self.num_directions, batch, size)
            if h_shape != expected:
                raise RuntimeError(f"Expected {name} size {expected}, got {list(h_shape)}")
            if h.device != data.device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input tensor at "
                    f"{data.device} and hidden tensor at {h.device}"
                )
            if h.dtype != data.dtype:
                raise ValueError(
                    f"{name} dtype ({h.dtype}) does not match input dtype ({data.dtype})"
                )


def _state_name(k: int, count: int) -> str:
    return f"hidden[{k}]" if count > 1 else "hidden"


class LSTM(_RecurrentBase):
    """Drop-in ``torch.nn.LSTM``: same arguments, parameters, inputs and outputs, plus
    ``backend=`` (None: the global choice, see ``rnnkernels.set_backend``)."""

    mode = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype, backend,
        )  # fmt: skip

    def forward(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        if hx is not None and not isinstance(hx, (tuple, list)):
            raise TypeError(
                f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}"
            )
        if hx is not None and len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        self._check_forward_args(input, hx, (real_hidden, self.hidden_size))
        return functional.lstm(
            input, None if hx is None else tuple(hx), self._layer_weights(), self.hidden_size,
            self.num_layers, self.bidirectional, self.batch_first, self.dropout, self.training,
            self.backend,
        )  # fmt: skip


class GRU(_RecurrentBase):
    """Drop-in ``torch.nn.GRU``: same arguments, parameters, inputs and outputs, plus
    ``backend=`` (None: the global choice, see ``rnnkernels.set_backend``)."""

    mode = "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        backend: str | None = None,
        **kwargs,
    ) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU got unexpected keyword arguments {sorted(kwargs)}")
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            0, device, dtype, backend,
        )  # fmt: skip

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        self._check_forward_args(input, None if hx is None else (hx,), (self.hidden_size,))
        return functional.gru(
            input, hx, [w[:4] for w in self._layer_weights()], self.hidden_size,
            self.num_layers, self.bidirectional, self.batch_first, self.dropout, self.training,
            self.backend,
        )  # fmt: skip


class IndRNN(_RecurrentBase):
    """Independently recurrent network (Li et al. 2018),
    ``h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1})`` with ``u`` a vector per layer
    (``weight_hh_l{k}`` of shape [H]). Inputs and outputs follow ``torch.nn.RNN``.

    ``recurrent_max_abs``: when set, ``u`` is clamped to ``[-max, max]`` in the forward (the
    paper's constraint; it suggests ``2 ** (1 / T)`` for relu). ``u`` starts uniform in [0, 1].
    """

    mode = "IndRNN"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "relu",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        recurrent_max_abs: float | None = None,
        device=None,
        dtype=None,
        backend: str | None = None,
    ) -> None:
        if nonlinearity not in ("relu", "tanh"):
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        if recurrent_max_abs is not None and not recurrent_max_abs > 0:
            raise ValueError(f"recurrent_max_abs must be positive, got {recurrent_max_abs}")
        self.nonlinearity = nonlinearity
        self.recurrent_max_abs = recurrent_max_abs
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, backend=backend,
        )  # fmt: skip

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for name, weight in self.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.uniform_(weight, 0.0, 1.0)
            else:
                nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.nonlinearity != "relu":
            s += f", nonlinearity={self.nonlinearity!r}"
        if self.recurrent_max_abs is not None:
            s += f", recurrent_max_abs={self.recurrent_max_abs}"
        return s

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        self._check_forward_args(input, None if hx is None else (hx,), (self.hidden_size,))
        return functional.indrnn(
            input, hx, [w[:4] for w in self._layer_weights()], self.hidden_size,
            self.num_layers, self.nonlinearity, self.bidirectional, self.batch_first,
            self.dropout, self.training, self.recurrent_max_abs, self.backend,
        )  # fmt: skip


def rnn_config(module: nn.Module) -> dict:
    """The constructor arguments shared by nn.LSTM / nn.GRU and ours, read off a module."""
    names = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout")
    return {name: getattr(module, name) for name in (*names, "bidirectional")}


def _check_config(
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    batch_first: bool,
    dropout: float,
    proj_size: int,
) -> None:
    """The constructor checks of torch.nn.RNNBase, with its messages."""
    if (
        not isinstance(dropout, numbers.Number)
        or isinstance(dropout, bool)
        or not 0 <= dropout <= 1
    ):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=4,
        )
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (
        ("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)
    ):  # fmt: skip
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")
