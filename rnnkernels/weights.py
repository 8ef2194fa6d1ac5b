"""The weights of one layer and direction, per cell: named as torch names the parameters (without
the ``_l{layer}[_reverse]`` suffix), and how each cell folds its biases into the input GEMM.

``rnnkernels.functional`` takes one per layer and direction (a plain tuple in this order works
too); the modules build them from their parameters.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LSTMWeights(NamedTuple):
    weight_ih: Tensor  # [4H, I]
    weight_hh: Tensor  # [4H, R]  R = P with a projection, else H
    bias_ih: Tensor | None = None  # [4H]
    bias_hh: Tensor | None = None  # [4H]
    weight_hr: Tensor | None = None  # [P, H]

    def input_bias(self) -> Tensor | None:
        """The bias of gx = x W_ih^T + bias: both biases add to the gates."""
        return None if self.bias_ih is None else self.bias_ih + self.bias_hh


class GRUWeights(NamedTuple):
    weight_ih: Tensor  # [3H, I]
    weight_hh: Tensor  # [3H, H]
    bias_ih: Tensor | None = None  # [3H]
    bias_hh: Tensor | None = None  # [3H]

    def input_bias(self) -> Tensor | None:
        """b_ih only: b_hh stays inside n's r * (h W_hn^T + b_hn), so the layer op takes it."""
        return self.bias_ih


class IndRNNWeights(NamedTuple):
    weight_ih: Tensor  # [H, I]
    weight_hh: Tensor  # [H]  u, the recurrent weight of each unit
    bias_ih: Tensor | None = None  # [H]
    bias_hh: Tensor | None = None  # [H]

    def input_bias(self) -> Tensor | None:
        """Both biases add before the activation."""
        return None if self.bias_ih is None else self.bias_ih + self.bias_hh


class RNNWeights(NamedTuple):
    weight_ih: Tensor  # [H, I]
    weight_hh: Tensor  # [H, H]
    bias_ih: Tensor | None = None  # [H]
    bias_hh: Tensor | None = None  # [H]

    def input_bias(self) -> Tensor | None:
        """Both biases add before the activation."""
        return None if self.bias_ih is None else self.bias_ih + self.bias_hh


WEIGHTS: dict[str, type[LSTMWeights | GRUWeights | IndRNNWeights | RNNWeights]] = {
    "lstm": LSTMWeights,
    "gru": GRUWeights,
    "indrnn": IndRNNWeights,
    "rnn": RNNWeights,
}
