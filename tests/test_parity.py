"""Module-level parity with torch.nn.LSTM / torch.nn.GRU over the flag grid, per backend."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels.testing import assert_close, needs, outputs_and_grads, torch_twin

I, H, P = 3, 5, 2
T, B = 6, 6
PACKED_LENGTHS = [6, 4, 1, 6, 2, 4]  # unsorted; sorted batch sizes [6,5,5,2,1,1]

GRID = list(
    itertools.product(
        [True, False],  # bias
        [False, True],  # batch_first
        [False, True],  # bidirectional
        [1, 2],  # num_layers
        ["padded", "packed", "unbatched"],
        [False, True],  # hx given
    )
)


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


@pytest.mark.parametrize("proj_size", [0, P])
@pytest.mark.parametrize("bias,batch_first,bidirectional,num_layers,layout,with_hx", GRID)
def test_lstm_matches_torch(backend, bias, batch_first, bidirectional, num_layers, layout,
                            with_hx, proj_size):  # fmt: skip
    needs(backend, "lstm")
    m = rnnkernels.LSTM(I, H, num_layers, bias, batch_first, 0.0, bidirectional, proj_size,
                        backend=backend)  # fmt: skip
    x = make_input(layout, batch_first)
    hx = make_hx(m, layout, (proj_size or H, H)) if with_hx else None
    check_against_torch(m, x, hx)


@pytest.mark.parametrize("bias,batch_first,bidirectional,num_layers,layout,with_hx", GRID)
def test_gru_matches_torch(backend, bias, batch_first, bidirectional, num_layers, layout, with_hx):
    needs(backend, "gru")
    m = rnnkernels.GRU(I, H, num_layers, bias, batch_first, 0.0, bidirectional, backend=backend)
    x = make_input(layout, batch_first)
    hx = make_hx(m, layout, (H,)) if with_hx else None
    check_against_torch(m, x, hx)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("T,B,I,H,P", [(1, 3, 2, 4, 0), (7, 2, 3, 1, 0), (63, 3, 4, 5, 3),
                                       (5, 1, 1, 130, 0), (6, 6, 3, 5, 1)])  # fmt: skip
def test_odd_sizes_match_torch(backend, cell, T, B, I, H, P):
    needs(backend, cell)
    if cell == "lstm":
        m = rnnkernels.LSTM(I, H, bidirectional=True, proj_size=P, backend=backend)
    else:
        m = rnnkernels.GRU(I, H, bidirectional=True, backend=backend)
    check_against_torch(m, make_input("padded", False, T=T, B=B, I=I), None)
    check_against_torch(m, make_input("packed", False, T=T, B=B, I=I), None)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sorted_packed_input_matches_torch(backend, cell):
    needs(backend, cell)
    module = rnnkernels.LSTM if cell == "lstm" else rnnkernels.GRU
    m = module(I, H, 2, bidirectional=True, backend=backend)
    x = torch.randn(5, 4, I, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([5, 3, 3, 1]))  # enforce_sorted=True
    check_against_torch(m, packed, None)


@pytest.mark.parametrize("cell,used", [("lstm", [0]), ("lstm", [1]), ("lstm", [2]),
                                       ("lstm", [1, 2]), ("gru", [0]), ("gru", [1])])  # fmt: skip
def test_loss_on_some_outputs_matches_torch(backend, cell, used):
    """Outputs the loss leaves out reach the backward as no gradient (not zeros): same answer."""
    needs(backend, cell)
    module = rnnkernels.LSTM if cell == "lstm" else rnnkernels.GRU
    m = module(I, H, 2, bidirectional=True, backend=backend)
    sizes = (H, H) if cell == "lstm" else (H,)
    for layout in ("padded", "packed"):
        check_against_torch(m, make_input(layout, False), make_hx(m, layout, sizes), used)
