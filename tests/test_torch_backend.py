"""The torch backend: a whole call by torch's own fused op, so its numbers are nn.LSTM's /
nn.GRU's / nn.RNN's (tanh and relu) exactly (torch.equal on CPU, where torch's RNN is
deterministic), outputs, final states and every gradient, over a module grid (padded / packed /
unbatched, batch_first, bidirectional, 1-2 layers, projection, hx given, no bias, dropout in
training). It runs after the one check of the call, has no IndRNN, and under torch.compile runs
eagerly behind a graph break, as nn.LSTM does."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels
from rnnkernels.testing import torch_twin

T, B, I, H, P = 6, 3, 4, 5, 3


def _case(cell, form, bidirectional, batch_first, layers, proj, hx_given, bias, dropout=0.0):
    """cell: "lstm", "gru", "rnn" (tanh) or "rnn-relu"."""
    torch.manual_seed(0)
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    kw.update(dropout=dropout, backend="torch")
    if cell == "lstm":
        ours = rnnkernels.LSTM(I, H, proj_size=proj, **kw)
    elif cell == "gru":
        ours = rnnkernels.GRU(I, H, **kw)
    else:
        ours = rnnkernels.RNN(I, H, nonlinearity="relu" if cell == "rnn-relu" else "tanh", **kw)
    D, R = 2 if bidirectional else 1, proj or H
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    if form == "unbatched":
        x = x[0] if batch_first else x[:, 0]
    x.requires_grad_()
    input = x
    if form == "packed":
        input = pack_padded_sequence(x, torch.tensor([6, 2, 4]), batch_first, enforce_sorted=False)
    hx = None
    if hx_given:
        batch = () if form == "unbatched" else (B,)
        h = torch.randn(layers * D, *batch, R, requires_grad=True)
        hx = (h, torch.randn(layers * D, *batch, H, requires_grad=True)) if cell == "lstm" else h
    return ours, input, hx, x


def _tensors(result):
    output, state = result
    output = output.data if isinstance(output, PackedSequence) else output
    return [output, *(state if isinstance(state, tuple) else (state,))]


def _outputs_and_grads(module, input, hx, x, seed=1):
    torch.manual_seed(seed)  # the same dropout masks for both
    tensors = _tensors(module(input, hx))
    loss = sum((t * torch.arange(t.numel()).view_as(t).sin()).sum() for t in tensors)
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    # retain_graph: a packed input's graph back to x serves both modules
    return tensors, torch.autograd.grad(loss, [x, *module.parameters(), *states], retain_graph=True)


GRID = [
    (cell, form, bidirectional, batch_first, layers, proj, hx_given, bias)
    for cell, form, bidirectional, batch_first, layers, proj, hx_given, bias in itertools.product(
        ["lstm", "gru", "rnn"], ["padded", "packed", "unbatched"], [False, True], [False, True],
        [1, 2], [0, P], [False, True], [True, False],
    )
    if not (cell != "lstm" and proj)
    # every flag in every combination of two, without the full product
    and (bias or (layers == 2 and hx_given))
]  # fmt: skip


@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
def test_torch_backend_is_torch(case):
    ours, input, hx, x = _case(*case)
    twin = torch_twin(ours)
    got, got_grads = _outputs_and_grads(ours, input, hx, x)
    expected, expected_grads = _outputs_and_grads(twin, input, hx, x)
    for a, b in zip([*got, *got_grads], [*expected, *expected_grads], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("form", ["padded", "packed", "unbatched"])
def test_rnn_relu_is_torch_s(form):
    ours, input, hx, x = _case("rnn-relu", form, True, False, 2, 0, True, True)
    assert ours.mode == "RNN_RELU"
    twin = torch_twin(ours)
    got, got_grads = _outputs_and_grads(ours, input, hx, x)
    expected, expected_grads = _outputs_and_grads(twin, input, hx, x)
    for a, b in zip([*got, *got_grads], [*expected, *expected_grads], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_dropout_in_training_is_torch_s(cell):
    ours, input, hx, x = _case(cell, "padded", True, False, 3, 0, False, True, dropout=0.5)
    twin = torch_twin(ours.train())
    got, got_grads = _outputs_and_grads(ours, input, hx, x)
    expected, expected_grads = _outputs_and_grads(twin, input, hx, x)
    for a, b in zip([*got, *got_grads], [*expected, *expected_grads], strict=True):
        assert torch.equal(a, b)
    other, _ = _outputs_and_grads(ours, input, hx, x, seed=2)
    assert not torch.equal(other[0], got[0])  # dropout did drop


def test_the_functional_form_runs_it_too():
    ours, input, hx, x = _case("lstm", "padded", True, True, 2, P, True, True)
    weights = ours._layer_weights()
    got = rnnkernels.functional.lstm(input, hx, weights, H, 2, True, True, backend="torch")
    for a, b in zip(_tensors(got), _tensors(torch_twin(ours)(input, hx)), strict=True):
        assert torch.equal(a, b)


def test_it_runs_after_the_check():
    """A malformed weight (torch.nn itself reads out of bounds on some) raises our error."""
    ours = rnnkernels.LSTM(I, H, backend="torch")
    ours.weight_hh_l0.data = torch.randn(4 * H, H - 1)
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \[20, 5\], got \[20, 4\]"):
        ours(torch.randn(T, B, I))


def test_no_indrnn():
    with pytest.raises(rnnkernels.BackendError, match="torch has no IndRNN"):
        rnnkernels.IndRNN(I, H, backend="torch")(torch.randn(T, B, I))
    with pytest.raises(KeyError, match="backend 'torch' has no per-layer kernels"):
        rnnkernels.backends.kernels("torch", "lstm")


def test_under_torch_compile_it_breaks_the_graph_and_runs_eagerly():
    ours, input, hx, x = _case("lstm", "padded", False, False, 2, 0, False, True)
    twin = torch_twin(ours)
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager")
    out, (h, c) = compiled(x)
    expected, (expected_h, expected_c) = twin(x)
    assert torch.equal(out, expected) and torch.equal(h, expected_h) and torch.equal(c, expected_c)
    torch._dynamo.reset()
    # the graph break, an error under fullgraph=True that says why in our terms
    with pytest.raises(torch._dynamo.exc.Unsupported, match="rnnkernels: backend='torch' runs"):
        torch.compile(ours, fullgraph=True, backend="aot_eager")(x)
