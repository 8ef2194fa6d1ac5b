"""Modules against torch per (backend, cell) over the flag grid: LSTM, GRU and RNN against
nn.LSTM / nn.GRU / nn.RNN, IndRNN against an independent eager loop (testing.EagerIndRNN);
outputs, final states and every gradient. Each grid's default run is a pairwise covering subset
(testing.grid: every two flags in every combination of their values at least once); ``-m slow``
runs the whole grid."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import rnnkernels
from rnnkernels.testing import EagerIndRNN, assert_close, grid, needs, outputs_and_grads, torch_twin

I, H, P = 3, 5, 2
T, B = 6, 6
PACKED_LENGTHS = [6, 4, 1, 6, 2, 4]  # unsorted; sorted batch sizes [6,5,5,2,1,1]

FLAGS = {
    "bias": [True, False],
    "batch_first": [False, True],
    "bidirectional": [False, True],
    "num_layers": [1, 2],
    "layout": ["padded", "packed", "unbatched"],
    "with_hx": [False, True],
}
GRID = list(itertools.product(*FLAGS.values()))  # the whole grid (test_triton_gpu.py runs it)


def flag_ids(name):
    return lambda value: f"{name}={value}" if isinstance(value, bool) else str(value)


IDS = {name: flag_ids(name) for name in ("bias", "batch_first", "bidirectional", "with_hx")}
IDS["num_layers"] = lambda n: f"L{n}"


def make_input(layout, batch_first, dtype=torch.float32, T=T, B=B, I=I, seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout == "unbatched":
        return torch.randn(T, I, generator=g, dtype=dtype).requires_grad_()
    if layout == "packed":
        lengths = torch.tensor(PACKED_LENGTHS[:B])
        x = torch.randn(int(lengths.max()), B, I, generator=g, dtype=dtype).requires_grad_()
        return pack_padded_sequence(x, lengths, enforce_sorted=False)
    shape = (B, T, I) if batch_first else (T, B, I)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def make_hx(module, layout, sizes, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    L = module.num_layers * module.num_directions
    batch = () if layout == "unbatched" else (B,)
    hx = tuple(torch.randn(L, *batch, s, generator=g, dtype=dtype).requires_grad_() for s in sizes)
    return hx if len(hx) > 1 else hx[0]


def check_against_torch(module, x, hx, used=None):
    ours_out, ours_grads = outputs_and_grads(module, x, hx, used=used)
    twin = torch_twin(module)
    ref_out, ref_grads = outputs_and_grads(twin, x, hx, used=used)
    for k, (a, b) in enumerate(zip(ours_out, ref_out)):
        assert_close(a, b, f"output {k}")
    names = ["input"] + ["hx"] * (len(ours_grads) - len(list(module.parameters())) - 1)
    names += [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, ours_grads, ref_grads):
        assert_close(a, b, f"gradient of {name}")


@pytest.mark.parametrize(
    "bias,batch_first,bidirectional,num_layers,layout,with_hx,proj_size",
    grid({**FLAGS, "proj_size": [0, P]}, pairwise=True, ids={**IDS, "proj_size": "P{}".format}),
)
def test_lstm_matches_torch(backend, bias, batch_first, bidirectional, num_layers, layout,
                            with_hx, proj_size):  # fmt: skip
    needs(backend, "lstm")
    m = rnnkernels.LSTM(I, H, num_layers, bias, batch_first, 0.0, bidirectional, proj_size,
                        backend=backend)  # fmt: skip
    x = make_input(layout, batch_first)
    hx = make_hx(m, layout, (proj_size or H, H)) if with_hx else None
    check_against_torch(m, x, hx)


@pytest.mark.parametrize(
    "bias,batch_first,bidirectional,num_layers,layout,with_hx",
    grid(FLAGS, pairwise=True, ids=IDS),
)
def test_gru_matches_torch(backend, bias, batch_first, bidirectional, num_layers, layout, with_hx):
    needs(backend, "gru")
    m = rnnkernels.GRU(I, H, num_layers, bias, batch_first, 0.0, bidirectional, backend=backend)
    x = make_input(layout, batch_first)
    hx = make_hx(m, layout, (H,)) if with_hx else None
    check_against_torch(m, x, hx)


@pytest.mark.parametrize(
    "bias,batch_first,bidirectional,num_layers,layout,with_hx,nonlinearity",
    grid({**FLAGS, "nonlinearity": ["tanh", "relu"]}, pairwise=True, ids=IDS),
)
def test_rnn_matches_torch(backend, bias, batch_first, bidirectional, num_layers, layout, with_hx,
                           nonlinearity):  # fmt: skip
    needs(backend, "rnn")
    m = rnnkernels.RNN(I, H, num_layers, nonlinearity, bias, batch_first, 0.0, bidirectional,
                       backend=backend)  # fmt: skip
    x = make_input(layout, batch_first)
    hx = make_hx(m, layout, (H,)) if with_hx else None
    check_against_torch(m, x, hx)


# The cells with a torch module: how to build ours (2 layers where asked) and its state sizes.
def make_module(cell, backend, I=I, H=H, P=0, num_layers=1):
    torch.manual_seed(0)  # the same weights whatever ran before (an unbounded relu RNN's gradients
    # grow with T: drawn at random per run, a draw could reach the fp32 bar's limit)
    options = dict(bidirectional=True, backend=backend)
    if cell == "lstm":
        return rnnkernels.LSTM(I, H, num_layers, proj_size=P, **options)
    if cell == "gru":
        return rnnkernels.GRU(I, H, num_layers, **options)
    return rnnkernels.RNN(I, H, num_layers, "relu", **options)  # relu: tanh is in the grid


INDRNN_FLAGS = {
    # (nonlinearity, recurrent_max_abs): the clamp is for relu, whose states it bounds
    "activation": [("relu", None), ("relu", 0.5), ("tanh", None)],
    **{name: FLAGS[name] for name in ("num_layers", "bidirectional", "batch_first", "bias")},
    "with_hx": FLAGS["with_hx"],
}


@pytest.mark.parametrize(
    "activation,num_layers,bidirectional,batch_first,bias,with_hx",
    grid(INDRNN_FLAGS, pairwise=True,
         ids={**IDS, "activation": lambda a: a[0] + (f"-max{a[1]}" if a[1] else "")}),
)  # fmt: skip
def test_indrnn_matches_eager_loop(
    backend, activation, num_layers, bidirectional, batch_first, bias, with_hx
):
    """Padded input (the eager loop's); packed input: test_packed_indrnn_matches_each_sequence_
    alone."""
    needs(backend, "indrnn")
    nonlinearity, max_abs = activation
    torch.manual_seed(0)
    Ti, Bi, Hi = 7, 4, 5
    m = rnnkernels.IndRNN(I, Hi, num_layers, nonlinearity, bias, batch_first, 0.0, bidirectional,
                          recurrent_max_abs=max_abs, backend=backend)  # fmt: skip
    with torch.no_grad():  # spread u over [-1.5, 1.5] so the clamp bites when set
        for name, p in m.named_parameters():
            if name.startswith("weight_hh"):
                p.uniform_(-1.5, 1.5)
    shape = (Bi, Ti, I) if batch_first else (Ti, Bi, I)
    x = torch.randn(*shape, requires_grad=True)
    hx = torch.randn(num_layers * m.num_directions, Bi, Hi, requires_grad=True) if with_hx else None
    ours, ours_grads = outputs_and_grads(m, x, hx)
    ref, ref_grads = outputs_and_grads(EagerIndRNN(m), x, hx)
    for a, b in zip(ours + ours_grads, ref + ref_grads):
        assert_close(a, b)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_packed_indrnn_matches_each_sequence_alone(backend, bidirectional, nonlinearity):
    needs(backend, "indrnn")
    torch.manual_seed(0)
    m = rnnkernels.IndRNN(I, H, 2, nonlinearity, bidirectional=bidirectional, backend=backend)
    seqs = [torch.randn(n, I, requires_grad=True) for n in [3, 7, 1, 5, 7, 2]]
    out, h_n = m(pack_sequence(seqs, enforce_sorted=False))
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(out)
    eager = EagerIndRNN(m)
    for b, seq in enumerate(seqs):
        y, h = eager(seq.unsqueeze(1))
        assert_close(padded[: lengths[b], b], y[:, 0])
        assert (padded[lengths[b] :, b] == 0).all()
        assert_close(h_n[:, b], h[:, 0])
        ours_grad = torch.autograd.grad(padded[: lengths[b], b].sum() + h_n[:, b].sum(), seq,
                                        retain_graph=True)  # fmt: skip
        ref_grad = torch.autograd.grad(y.sum() + h.sum(), seq)
        assert_close(ours_grad[0], ref_grad[0])


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_indrnn_module_gradcheck(backend, nonlinearity):
    needs(backend, "indrnn", torch.float64)
    torch.manual_seed(0)
    m = rnnkernels.IndRNN(2, 3, 2, nonlinearity, bidirectional=True, recurrent_max_abs=0.9,
                          dtype=torch.float64, backend=backend)  # fmt: skip
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())

    def run(x, h0, *weights):
        out, h_n = torch.func.functional_call(
            m, dict(zip([n for n, _ in m.named_parameters()], weights)), (x, h0)
        )
        return out, h_n

    assert torch.autograd.gradcheck(run, (x, h0, *params), fast_mode=True)


def test_recurrent_max_abs_clamps_u():
    m = rnnkernels.IndRNN(2, 3, recurrent_max_abs=0.25)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.tensor([2.0, -2.0, 0.1]))
    clamped = rnnkernels.IndRNN(2, 3)
    clamped.load_state_dict(m.state_dict())
    with torch.no_grad():
        clamped.weight_hh_l0.copy_(torch.tensor([0.25, -0.25, 0.1]))
    x = torch.randn(5, 2, 2)
    assert torch.equal(m(x)[0], clamped(x)[0])
    u_grad = torch.autograd.grad(m(x)[0].sum(), m.weight_hh_l0)[0]
    assert u_grad[0] == 0 and u_grad[1] == 0  # clamped entries get no gradient


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T,B,I,H,P", [(1, 3, 2, 4, 0), (7, 2, 3, 1, 0), (63, 3, 4, 5, 3),
                                       (5, 1, 1, 130, 0), (6, 6, 3, 5, 1)])  # fmt: skip
def test_odd_sizes_match_torch(backend, cell, T, B, I, H, P):
    needs(backend, cell)
    m = make_module(cell, backend, I, H, P if cell == "lstm" else 0)
    check_against_torch(m, make_input("padded", False, T=T, B=B, I=I), None)
    check_against_torch(m, make_input("packed", False, T=T, B=B, I=I), None)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_sorted_packed_input_matches_torch(backend, cell):
    needs(backend, cell)
    m = make_module(cell, backend, num_layers=2)
    x = torch.randn(5, 4, I, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([5, 3, 3, 1]))  # enforce_sorted=True
    check_against_torch(m, packed, None)


@pytest.mark.parametrize("cell,used", [("lstm", [0]), ("lstm", [1]), ("lstm", [2]),
                                       ("lstm", [1, 2]), ("gru", [0]), ("gru", [1]),
                                       ("rnn", [0]), ("rnn", [1])])  # fmt: skip
def test_loss_on_some_outputs_matches_torch(backend, cell, used):
    """Outputs the loss leaves out reach the backward as no gradient (not zeros): same answer."""
    needs(backend, cell)
    m = make_module(cell, backend, num_layers=2)
    sizes = (H, H) if cell == "lstm" else (H,)
    for layout in ("padded", "packed"):
        check_against_torch(m, make_input(layout, False), make_hx(m, layout, sizes), used)
