"""torch.library ops for one IndRNN layer in one direction: ``rnnkernels::indrnn_fwd`` (u: the
recurrent weight [H]) and ``rnnkernels::indrnn_bwd``, defined with the Elman RNN's by
``ops/one_gate.py`` (the form they share). README.md here: the equations and saved tensors."""

from rnnkernels.ops.indrnn import naive
from rnnkernels.ops.one_gate import define_ops

_ops = define_ops("indrnn", naive)
indrnn_fwd, indrnn_bwd = _ops.fwd, _ops.bwd
_setup_context, _backward = _ops.setup_context, _ops.backward
