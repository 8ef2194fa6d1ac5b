"""IndRNN: the module (oracle path) against an independent eager loop, packed input, gradcheck."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnkernels
from rnnkernels.testing import EagerIndRNN, assert_close, needs, outputs_and_grads

I, H, T, B = 3, 5, 7, 4


@pytest.mark.parametrize(
    "nonlinearity,num_layers,bidirectional,batch_first,bias,with_hx,max_abs",
    [
        (*flags, m)
        for flags in itertools.product(
            ["relu", "tanh"], [1, 2], [False, True], [False, True], [True, False], [False, True]
        )
        for m in ([None, 0.5] if flags[0] == "relu" else [None])
    ],  # fmt: skip
)
def test_indrnn_matches_eager_loop(
    backend, nonlinearity, num_layers, bidirectional, batch_first, bias, with_hx, max_abs
):
    needs(backend, "indrnn")
    torch.manual_seed(0)
    m = rnnkernels.IndRNN(I, H, num_layers, nonlinearity, bias, batch_first, 0.0, bidirectional,
                          recurrent_max_abs=max_abs, backend=backend)  # fmt: skip
    with torch.no_grad():  # spread u over [-1.5, 1.5] so the clamp bites when set
        for name, p in m.named_parameters():
            if name.startswith("weight_hh"):
                p.uniform_(-1.5, 1.5)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, requires_grad=True)
    hx = torch.randn(num_layers * m.num_directions, B, H, requires_grad=True) if with_hx else None
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
