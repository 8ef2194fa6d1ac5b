"""Drop-in modules: ``LSTM``, ``GRU`` and ``RNN`` for ``torch.nn.LSTM`` / ``GRU`` / ``RNN``, and
``IndRNN``.

Parameters have torch's names, shapes, order and initialisation, so state_dicts move both ways;
constructor arguments are checked as torch checks them, with torch's messages where torch has one;
each call is checked by the functional layer they call (rnnkernels.validation).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import get_type_hints, overload

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from rnnkernels import backends, functional, scripting
from rnnkernels.validation import check_indrnn_options, check_nonlinearity
from rnnkernels.weights import WEIGHTS, GRUWeights, IndRNNWeights, LSTMWeights, RNNWeights


def _evaluated_annotations(method):
    """``method`` with its annotations evaluated: TorchScript reads a TorchScript overload's
    annotations as objects, and this module's are strings (``from __future__ import
    annotations``). (Not a wrapper of ``_overload_method``: that finds its class from the
    caller's frame.)"""
    method.__annotations__ = get_type_hints(method)
    return method


class _RecurrentBase(nn.Module):
    """What LSTM, GRU, RNN and IndRNN share: sizes, parameters, checks, repr."""

    # mode: torch's, "LSTM", "GRU", "RNN_TANH" / "RNN_RELU" (RNN sets it per module) or "IndRNN";
    # not annotated here: TorchScript would read this module's string annotation for RNN's.
    cell: str  # the code name: "lstm", "gru", "rnn" or "indrnn" (backends, weights, dispatch)
    # TorchScript compiles a module's properties too; these read parameters by computed names,
    # which it cannot. Scripted code reads the weights from _script_config instead.
    __jit_unused_properties__ = ["_flat_weights", "all_weights"]

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
        if backend is not None:
            backends._check_name(backend, "backend argument")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        gate_size = backends.GATES[self.cell] * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            for suffix in ("", "_reverse") if bidirectional else ("",):
                layer_input = input_size if layer == 0 else real_hidden_size * self.num_directions
                hh_shape = (gate_size,) if self.cell == "indrnn" else (gate_size, real_hidden_size)
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

    def _layer_weights(self) -> list[LSTMWeights | GRUWeights | IndRNNWeights | RNNWeights]:
        """Per layer and direction, its weights (None where absent), read once per call."""
        weights = WEIGHTS[self.cell]
        return [
            weights(*(getattr(self, f"{name}_l{layer}{suffix}", None) for name in weights._fields))
            for layer in range(self.num_layers)
            for suffix in (("", "_reverse") if self.bidirectional else ("",))
        ]

    def __prepare_scriptable__(self) -> _RecurrentBase:
        """``torch.jit.script`` calls this on each module before compiling it. The scripted forward
        (``rnnkernels/scripting.py``) gets the configuration and the Parameters, in torch's flat
        order, as one ``scripting.Config`` attribute, refreshed here at every scripting. Returns
        the module itself: torch writes what this returns back into the parent module, so
        returning an ``nn.LSTM`` would swap it into the caller's eager model too."""
        if parametrize.is_parametrized(self):
            raise RuntimeError(
                f"rnnkernels.{parametrize.type_before_parametrizations(self).__name__}: "
                "torch.jit.script cannot script a parametrized module (parametrized: "
                f"{', '.join(self.parametrizations)}; nor a parametrized torch.nn.LSTM): remove "
                "the parametrizations first "
                "(torch.nn.utils.parametrize.remove_parametrizations)"
            )
        config = scripting.Config(
            self.cell, self._flat_weights, self.hidden_size, self.num_layers, self.bias,
            self.batch_first, self.dropout, self.bidirectional, self.proj_size,
            getattr(self, "nonlinearity", ""), getattr(self, "recurrent_max_abs", None),
        )  # fmt: skip
        # typed explicitly: TorchScript would infer a plain tuple (None for an unset float)
        self._script_config = torch.jit.Attribute(config, scripting.Config)
        return self

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


class LSTM(_RecurrentBase):
    """Drop-in ``torch.nn.LSTM``: same arguments, parameters, inputs and outputs, plus
    ``backend=`` (None: the selection in force, see ``rnnkernels.set_backend``)."""

    mode, cell = "LSTM", "lstm"

    # TorchScript compiles forward once per input type, as nn.LSTM's (scripting.py)
    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(
        self, input: PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...

    def forward(self, input, hx=None):
        if torch.jit.is_scripting():  # torch's fused op over our parameters (scripting.py)
            states = None if hx is None else [hx[0], hx[1]]
            if isinstance(input, PackedSequence):
                output, finals = scripting.packed(input, states, self._script_config, self.training)
            else:
                output, finals = scripting.padded(input, states, self._script_config, self.training)
            return output, (finals[0], finals[1])
        return functional.lstm(
            input, hx, self._layer_weights(), self.hidden_size, self.num_layers,
            self.bidirectional, self.batch_first, self.dropout, self.training, self.backend,
            input_size=self.input_size, proj_size=self.proj_size,
        )  # fmt: skip


class GRU(_RecurrentBase):
    """Drop-in ``torch.nn.GRU``: same arguments, parameters, inputs and outputs, plus
    ``backend=`` (None: the selection in force, see ``rnnkernels.set_backend``)."""

    mode, cell = "GRU", "gru"

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

    # TorchScript compiles forward once per input type, as nn.GRU's (scripting.py)
    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(
        self, input: PackedSequence, hx: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        if torch.jit.is_scripting():  # torch's fused op over our parameters (scripting.py)
            states = None if hx is None else [hx]
            if isinstance(input, PackedSequence):
                output, finals = scripting.packed(input, states, self._script_config, self.training)
            else:
                output, finals = scripting.padded(input, states, self._script_config, self.training)
            return output, finals[0]
        return functional.gru(
            input, hx, self._layer_weights(), self.hidden_size, self.num_layers,
            self.bidirectional, self.batch_first, self.dropout, self.training, self.backend,
            input_size=self.input_size,
        )  # fmt: skip


class RNN(_RecurrentBase):
    """Drop-in ``torch.nn.RNN`` (Elman, ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``,
    ``act`` tanh or relu): same arguments, parameters, inputs and outputs, plus ``backend=``
    (None: the selection in force, see ``rnnkernels.set_backend``)."""

    cell = "rnn"  # mode: torch's, per nonlinearity (in __init__)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
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
            raise TypeError(f"RNN got unexpected keyword arguments {sorted(kwargs)}")
        check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            0, device, dtype, backend,
        )  # fmt: skip

    # TorchScript compiles forward once per input type, as nn.RNN's (scripting.py)
    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(
        self, input: PackedSequence, hx: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        if torch.jit.is_scripting():  # torch's fused op over our parameters (scripting.py)
            states = None if hx is None else [hx]
            if isinstance(input, PackedSequence):
                output, finals = scripting.packed(input, states, self._script_config, self.training)
            else:
                output, finals = scripting.padded(input, states, self._script_config, self.training)
            return output, finals[0]
        return functional.rnn(
            input, hx, self._layer_weights(), self.hidden_size, self.num_layers, self.nonlinearity,
            self.bidirectional, self.batch_first, self.dropout, self.training, self.backend,
            input_size=self.input_size,
        )  # fmt: skip


class IndRNN(_RecurrentBase):
    """Independently recurrent network (Li et al. 2018),
    ``h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1})`` with ``u`` a vector per layer
    (``weight_hh_l{k}`` of shape [H]). Inputs and outputs follow ``torch.nn.RNN``.

    ``recurrent_max_abs``: when set, ``u`` is clamped to ``[-max, max]`` in the forward (the
    paper's constraint; it suggests ``2 ** (1 / T)`` for relu). ``u`` starts uniform in [0, 1].
    """

    mode, cell = "IndRNN", "indrnn"

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
        check_indrnn_options(nonlinearity, recurrent_max_abs)
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

    # TorchScript compiles forward once per input type, as nn.RNN's (scripting.py)
    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @overload
    @torch._jit_internal._overload_method
    @_evaluated_annotations
    def forward(
        self, input: PackedSequence, hx: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        if torch.jit.is_scripting():  # a TorchScript time loop (scripting.py)
            states = None if hx is None else [hx]
            if isinstance(input, PackedSequence):
                output, finals = scripting.packed(input, states, self._script_config, self.training)
            else:
                output, finals = scripting.padded(input, states, self._script_config, self.training)
            return output, finals[0]
        return functional.indrnn(
            input, hx, self._layer_weights(), self.hidden_size, self.num_layers, self.nonlinearity,
            self.bidirectional, self.batch_first, self.dropout, self.training,
            self.recurrent_max_abs, self.backend, input_size=self.input_size,
        )  # fmt: skip


def rnn_config(module: nn.Module) -> dict:
    """The constructor arguments shared by nn.LSTM / nn.GRU / nn.RNN and ours, read off a
    module."""
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
