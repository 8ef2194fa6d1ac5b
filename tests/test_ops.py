"""The per-layer ops: oracle backward vs autograd, opcheck, fp64 gradcheck, unwritten elements."""

import itertools

import pytest
import torch

from rnnkernels.ops.gru import naive as gru_naive
from rnnkernels.ops.gru.op import gru_bwd, gru_fwd
from rnnkernels.ops.indrnn import naive as indrnn_naive
from rnnkernels.ops.indrnn.op import indrnn_bwd, indrnn_fwd
from rnnkernels.ops.lstm import naive as lstm_naive
from rnnkernels.ops.lstm.op import lstm_bwd, lstm_fwd
from rnnkernels.ops.rnn import naive as rnn_naive
from rnnkernels.ops.rnn.op import rnn_bwd, rnn_fwd
from rnnkernels.testing import (
    VARIANTS,
    assert_close,
    grid,
    layer_args,
    needs,
    poison_allocations,
)

T, B, H = 5, 5, 3
# Unsorted, with a full row, an empty one, one past T (clipped), one of a single step.
LENGTHS = [None, [5, 0, 9, 1, 3]]


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


def args_factory(cell):
    """(variant, lengths, reverse, dtype) -> the op's arguments (testing.layer_args) as leaves;
    seeds torch's generator for the cotangents drawn after."""

    def make(variant, lengths, reverse, dtype=torch.float64):
        torch.manual_seed(0)
        return layer_args(cell, T, B, H, variant, lengths, reverse, dtype, requires_grad=True)

    return make


# cell -> (fwd op, bwd op, oracle fwd, oracle bwd, args factory, n_out): n_out is how many leading
# outputs are results (differentiable); the rest are saved for the backward. Variants: VARIANTS.
CELLS = {
    "lstm": (lstm_fwd, lstm_bwd, lstm_naive.lstm_fwd, lstm_naive.lstm_bwd, args_factory("lstm"), 3),
    "gru": (gru_fwd, gru_bwd, gru_naive.gru_fwd, gru_naive.gru_bwd, args_factory("gru"), 2),
    "indrnn": (indrnn_fwd, indrnn_bwd, indrnn_naive.indrnn_fwd, indrnn_naive.indrnn_bwd,
               args_factory("indrnn"), 2),
    "rnn": (rnn_fwd, rnn_bwd, rnn_naive.rnn_fwd, rnn_naive.rnn_bwd, args_factory("rnn"), 2),
}  # fmt: skip
# The cells whose op takes the nonlinearity last and whose backward takes y alone.
ACTIVATION_CELLS = ("indrnn", "rnn")
CASES = [
    (cell, variant, lengths, reverse)
    for cell in CELLS
    for variant, lengths, reverse in itertools.product(VARIANTS[cell], LENGTHS, [False, True])
]


def case_id(case):
    cell, variant, lengths, reverse = case
    steps = "lengths" if lengths is not None else "full"
    return f"{cell}-{variant}-{steps}-{'rev' if reverse else 'fwd'}"


# The backends' cases: by default a covering subset (testing.grid), each cell with each of its
# variants, with lengths and without, forward and reverse; -m slow runs them all.
BACKEND_CASES = [
    pytest.param(case, id=case_id(case), marks=p.marks)
    for p in grid(
        {"cell": list(CELLS), "variant": [0, 1], "lengths": LENGTHS, "reverse": [False, True]},
        together=[("cell", "variant"), ("cell", "lengths"), ("cell", "reverse")],
        ids={"lengths": lambda lengths: "lengths" if lengths else "full"},
    )
    for case in [(p.values[0], VARIANTS[p.values[0]][p.values[1]], *p.values[2:])]
]


def differentiable(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_oracle_backward_matches_autograd(case):
    """naive.<cell>_bwd (the reference backward) against autograd through naive.<cell>_fwd."""
    cell, variant, lengths, reverse = case
    _, _, oracle_fwd, oracle_bwd, make_args, n_out = CELLS[cell]
    args = make_args(variant, lengths, reverse)
    outputs = oracle_fwd(*args)
    cotangents = [rand(*o.shape) for o in outputs[:n_out]]
    expected = torch.autograd.grad(outputs[:n_out], differentiable(args), cotangents)
    with torch.no_grad():
        if cell in ACTIVATION_CELLS:
            gx, w_hh, h0, lengths, reverse, nonlinearity = args
            got = oracle_bwd(*cotangents, w_hh, h0, lengths, reverse, nonlinearity, outputs[0])
        else:
            saved = [outputs[0], *outputs[n_out:]]
            got = oracle_bwd(*cotangents, *args[1:], *saved)
    got = [g for g in got if g.numel()]  # absent weights: empty [0] gradients (absent_grad)
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"gradient {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", BACKEND_CASES)
def test_backend_matches_oracle(case, backend, dtype):
    """Each backend's op, forward and backward, against naive.py with autograd through it."""
    cell, variant, lengths, reverse = case
    needs(backend, cell, dtype)
    fwd, _, oracle_fwd, _, make_args, n_out = CELLS[cell]
    args = make_args(variant, lengths, reverse, dtype=dtype)
    got = fwd(*args, backend)
    expected = oracle_fwd(*args)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"forward output {k}")
    cotangents = [rand(*o.shape, dtype=dtype) for o in got[:n_out]]
    got_grads = torch.autograd.grad(got[:n_out], differentiable(args), cotangents)
    expected_grads = torch.autograd.grad(expected[:n_out], differentiable(args), cotangents)
    for k, (a, b) in enumerate(zip(got_grads, expected_grads)):
        assert_close(a, b, f"gradient {k}")


@pytest.mark.parametrize("case", BACKEND_CASES)
def test_gradcheck_through_op(case, backend):
    cell, variant, lengths, reverse = case
    needs(backend, cell, torch.float64)
    fwd, _, _, _, make_args, n_out = CELLS[cell]
    args = make_args(variant, lengths, reverse)

    def run(*tensors):
        it = iter(tensors)
        full = [next(it) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]  # fmt: skip
        return fwd(*full, backend)[:n_out]

    assert torch.autograd.gradcheck(run, differentiable(args), fast_mode=True)


@pytest.mark.parametrize("case", BACKEND_CASES)
def test_opcheck(case, backend):
    cell, variant, lengths, reverse = case
    needs(backend, cell)
    fwd, bwd, _, _, make_args, n_out = CELLS[cell]
    args = make_args(variant, lengths, reverse, dtype=torch.float32)
    torch.library.opcheck(fwd, (*args, backend))
    outputs = fwd(*args, backend)
    grads = [torch.randn_like(o) for o in outputs[:n_out]]
    if cell in ACTIVATION_CELLS:
        gx, w_hh, h0, lengths, reverse, nonlinearity = args
        bwd_args = (*grads, w_hh, h0, lengths, reverse, nonlinearity, outputs[0])
    else:
        bwd_args = (*grads, *args[1:], outputs[0], *outputs[n_out:])
    torch.library.opcheck(bwd, tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                     for a in bwd_args) + (backend,))  # fmt: skip


@pytest.mark.parametrize("case", BACKEND_CASES)
def test_every_output_element_is_written(case, backend):
    """Fresh allocations are NaN-filled: a NaN in any output means an element was not written."""
    cell, variant, lengths, reverse = case
    needs(backend, cell)
    fwd, _, _, _, make_args, n_out = CELLS[cell]
    args = make_args(variant, lengths, reverse, dtype=torch.float32)
    with poison_allocations():
        outputs = fwd(*args, backend)
        grads = torch.autograd.grad(outputs[:n_out], differentiable(args),
                                    [torch.ones_like(o) for o in outputs[:n_out]])  # fmt: skip
    for k, t in enumerate([*outputs, *grads]):
        assert not t.isnan().any(), f"tensor {k} has unwritten elements"
