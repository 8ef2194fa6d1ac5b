"""torch.library ops for one Elman RNN layer (``nn.RNN``) in one direction:
``rnnkernels::rnn_fwd`` (w_hh: the recurrent weight [H, H]) and ``rnnkernels::rnn_bwd``, defined
with IndRNN's by ``ops/one_gate.py`` (the form they share). README.md here: the equations."""

from rnnkernels.ops.one_gate import define_ops
from rnnkernels.ops.rnn import naive

_ops = define_ops("rnn", naive)
rnn_fwd, rnn_bwd = _ops.fwd, _ops.bwd
_setup_context, _backward = _ops.setup_context, _ops.backward
