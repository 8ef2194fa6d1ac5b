"""The cpp backend's ops, ``torch.ops.rnnkernels_cpp.<cell>_fwd`` / ``_bwd``, made differentiable.

C++ registers them: the library rnnkernels_ops (``csrc/torch/ops.cpp``), which loading
``rnnkernels._C`` loads. They take the per-layer contract's arguments (docs/design.md, section 3)
without the backend and selection of our Python ops. Importing this module loads them and gives
each forward op the autograd formula of our op of its cell (``ops/<cell>/op.py``, called with
backend ``"cpp"``). A model exported with torch.export on the cpp backend calls these forward ops
directly (``functional._forward``), so that C++ alone can run it (AOTInductor); the formula keeps
its ``ExportedProgram.module()`` differentiable, as the eager model is. Import this module before
``torch.export.load`` of such a program (docs/design.md, section 7).
"""

from __future__ import annotations

from types import ModuleType

import torch

import rnnkernels._C  # noqa: F401  (loading it registers the ops)
from rnnkernels.backends import SAVES_ACTIVATIONS
from rnnkernels.ops.gru import op as gru
from rnnkernels.ops.indrnn import op as indrnn
from rnnkernels.ops.lstm import op as lstm
from rnnkernels.ops.rnn import op as rnn

# Our ops take the C++ op's arguments, then these two: the backend, and the selection to check
# when the op runs (None: nothing to check, as for a backend named on the module).
_OUR_EXTRA_INPUTS = ("cpp", None)


def _register_autograd(cell: str, op: ModuleType, saves: bool) -> None:
    """The autograd formula of ``rnnkernels_cpp::<cell>_fwd``: that of ``op``'s forward.
    ``saves``: the C++ op ends with ``save`` (keep the activations), which is True wherever a
    gradient can be needed (functional._forward passes False for inference only)."""

    def setup_context(ctx, inputs, output):
        contract = inputs[:-1] if saves else inputs
        op._setup_context(ctx, (*contract, *_OUR_EXTRA_INPUTS), output)

    def backward(ctx, *grads):
        grads_in = op._backward(ctx, *grads)[: -len(_OUR_EXTRA_INPUTS)]
        return (*grads_in, None) if saves else grads_in

    torch.library.register_autograd(
        f"rnnkernels_cpp::{cell}_fwd", backward, setup_context=setup_context
    )


for _cell, _op in (("lstm", lstm), ("gru", gru), ("indrnn", indrnn), ("rnn", rnn)):
    _register_autograd(_cell, _op, _cell in SAVES_ACTIVATIONS)
