"""Higher-order gradients through the layer ops (docs/design.md §3, "Higher-order gradients"):
fp64 gradgradcheck per op and per module (padded and packed), the gradients of the saved
activations against the oracle, and which backward runs when (the backend's op first order, the
reference formulas when differentiated)."""

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import rnnkernels
from rnnkernels.ops.gru import naive as gru_naive
from rnnkernels.ops.gru.op import gru_fwd
from rnnkernels.ops.indrnn import naive as indrnn_naive
from rnnkernels.ops.indrnn.op import indrnn_fwd
from rnnkernels.ops.lstm import naive as lstm_naive
from rnnkernels.ops.lstm.op import lstm_fwd
from rnnkernels.ops.rnn import naive as rnn_naive
from rnnkernels.ops.rnn.op import rnn_fwd
from rnnkernels.testing import N_OUT, VARIANTS, assert_close, grid, layer_args, needs

FORWARD = {"lstm": lstm_fwd, "gru": gru_fwd, "indrnn": indrnn_fwd, "rnn": rnn_fwd}
ORACLE = {"lstm": lstm_naive.lstm_fwd, "gru": gru_naive.gru_fwd, "indrnn": indrnn_naive.indrnn_fwd,
          "rnn": rnn_naive.rnn_fwd}  # fmt: skip
T, B, H = 4, 5, 2
# The backend fixture's backends, as a parameter here: gradgradcheck runs a forward dozens of
# times, minutes in Triton's interpreter, so Triton's cases go under -m slow.
BACKENDS = ["reference", "cpp", "numba",
            pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.slow])]  # fmt: skip

# Per cell, each variant, with lengths (unsorted: full, empty, clipped, one step) and without,
# forward and reverse; the default run a covering subset (testing.grid), -m slow all.
OP_CASES = grid(
    {
        "cell": list(FORWARD),
        "variant": [0, 1],
        "lengths": [None, "mixed"],
        "reverse": [False, True],
    },
    together=[("cell", "variant"), ("cell", "lengths"), ("cell", "reverse")],
    ids={"lengths": lambda lengths: lengths or "full"},
)


def op_args(cell, variant, lengths, reverse):
    return layer_args(cell, T, B, H, VARIANTS[cell][variant], lengths, reverse, requires_grad=True)


def floats(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def with_floats(args, tensors):
    """``args`` with its floating-point tensors replaced by ``tensors``, in order."""
    it = iter(tensors)
    return [next(it) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,variant,lengths,reverse", OP_CASES)
def test_gradgradcheck_through_op(backend, cell, variant, lengths, reverse):
    needs(backend, cell, torch.float64)
    args = op_args(cell, variant, lengths, reverse)

    def run(*tensors):
        return FORWARD[cell](*with_floats(args, tensors), backend)[: N_OUT[cell]]

    assert torch.autograd.gradgradcheck(run, floats(args), fast_mode=True)


@pytest.mark.parametrize("cell,variant,lengths,reverse", OP_CASES)
def test_gradients_of_saved_activations_match_the_oracle(backend, cell, variant, lengths, reverse):
    """A loss of every output, the saved activations (gates, cells / hn) too: their gradients
    are folded into the recurrence (naive.<cell>_bwd's grad_gates ...), here against autograd
    through the oracle's forward."""
    needs(backend, cell, torch.float64)
    args = op_args(cell, variant, lengths, reverse)
    got_outputs = FORWARD[cell](*args, backend)
    expected_outputs = ORACLE[cell](*args)
    g = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in got_outputs]
    got = torch.autograd.grad(got_outputs, floats(args), cotangents)
    expected = torch.autograd.grad(expected_outputs, floats(args), cotangents)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"gradient {k}")


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cell", list(FORWARD))
def test_first_order_backward_runs_the_backend_op(backend, cell):
    """First order, the backend's <cell>_bwd op (the fast path, unchanged); differentiated
    (create_graph=True), the reference formulas in torch ops instead."""
    needs(backend, cell, torch.float64)
    args = op_args(cell, 0, "mixed", False)
    bwd = f"rnnkernels.{cell}_bwd.default"
    for create_graph, runs_op in [(False, True), (True, False)]:
        outputs = FORWARD[cell](*args, backend)[: N_OUT[cell]]
        with _RecordOps() as record:
            torch.autograd.grad(sum(o.sum() for o in outputs), floats(args),
                                create_graph=create_graph)  # fmt: skip
        assert (bwd in record.names) == runs_op, (create_graph, sorted(record.names))


# --- modules: layers and directions stacked, padded and packed -----------------------------------

MODULES = {
    "lstm": lambda **kw: rnnkernels.LSTM(2, H, **kw),
    "lstm-proj": lambda **kw: rnnkernels.LSTM(2, H + 1, proj_size=H, **kw),
    "gru": lambda **kw: rnnkernels.GRU(2, H, **kw),
    "indrnn": lambda **kw: rnnkernels.IndRNN(2, H, nonlinearity="tanh", **kw),
    "rnn": lambda **kw: rnnkernels.RNN(2, H, **kw),
}
LENGTHS = [4, 1, 3]  # unsorted


def module_case(name, layout, backend):
    """(module in fp64, 2 layers, bidirectional; its input's data; the input from that data)"""
    torch.manual_seed(0)
    module = MODULES[name](num_layers=2, bidirectional=True, backend=backend).double()
    x = torch.randn(max(LENGTHS), len(LENGTHS), 2, dtype=torch.float64)
    if layout == "padded":
        return module, x, lambda data: data
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    return module, packed.data, lambda data: packed._replace(data=data)


MODULE_AXES = {"name": list(MODULES), "layout": ["padded", "packed"]}


# Every module in both layouts, and on every backend; by default a covering subset of the
# product (testing.grid), Triton's under -m slow.
@pytest.mark.parametrize(
    "backend,name,layout",
    grid({"backend": ["reference", "cpp", "numba"], **MODULE_AXES},
         together=[("name", "layout"), ("backend", "name")])
    + grid({"backend": ["triton"], **MODULE_AXES}, marks=[pytest.mark.triton, pytest.mark.slow]),
)  # fmt: skip
def test_gradgradcheck_through_module(backend, name, layout):
    needs(backend, name.split("-")[0], torch.float64)
    module, data, as_input = module_case(name, layout, backend)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().requires_grad_() for p in module.parameters()]

    def run(data, *params):
        output, states = functional_call(module, dict(zip(names, params)), (as_input(data),))
        output = output.data if layout == "packed" else output
        return output, *(states if isinstance(states, tuple) else (states,))

    assert torch.autograd.gradgradcheck(run, [data.requires_grad_(), *params], fast_mode=True)
