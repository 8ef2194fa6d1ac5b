"""The one check of every call (rnnkernels.validation): malformed weights, states and packed
input raise a clear error on every backend before any kernel runs (the reproducers of the op
boundary issue), odd strides are accepted, the functional API is protected like the modules,
and under torch.compile the error a user reads is ours."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels
from rnnkernels import functional
from rnnkernels.backends import LayerCall
from rnnkernels.testing import TOLERANCES

ATOL, RTOL = TOLERANCES[torch.float32]


def _with(module: nn.Module, **weights: torch.Tensor) -> nn.Module:
    for name, value in weights.items():
        setattr(module, name, nn.Parameter(value))
    return module


SHAPE = "must have shape"
# (id, module factory, malformed weights, the message expected)
MALFORMED_MODULES = [
    ("lstm-w_hh-1-col", lambda b: rnnkernels.LSTM(4, 1024, backend=b),
     {"weight_hh_l0": torch.randn(4096, 1)}, rf"weight_hh_l0 {SHAPE} \[4096, 1024\], got \[4096,"),
    ("lstm-w_hh-20x3", lambda b: rnnkernels.LSTM(4, 5, backend=b),
     {"weight_hh_l0": torch.randn(20, 3)}, rf"weight_hh_l0 {SHAPE} \[20, 5\], got \[20, 3\]"),
    ("gru-b_hh-7", lambda b: rnnkernels.GRU(4, 4, backend=b),
     {"bias_hh_l0": torch.randn(7)}, rf"bias_hh_l0 {SHAPE} \[12\], got \[7\]"),
    ("indrnn-u-1", lambda b: rnnkernels.IndRNN(4, 5, backend=b),
     {"weight_hh_l0": torch.randn(1)}, rf"weight_hh_l0 {SHAPE} \[5\], got \[1\]"),
    ("rnn-w_hh-5x1", lambda b: rnnkernels.RNN(4, 5, backend=b),
     {"weight_hh_l0": torch.randn(5, 1)}, rf"weight_hh_l0 {SHAPE} \[5, 5\], got \[5, 1\]"),
    ("rnn-b_ih-dtype", lambda b: rnnkernels.RNN(4, 3, nonlinearity="relu", backend=b),
     {"bias_ih_l0": torch.randn(3).double()}, r"bias_ih_l0 has dtype torch.float64"),
    ("lstm-reverse-w_ih", lambda b: rnnkernels.LSTM(4, 3, 2, bidirectional=True, backend=b),
     {"weight_ih_l1_reverse": torch.randn(12, 5)}, rf"weight_ih_l1_reverse {SHAPE} \[12, 6\]"),
    ("lstm-w_hr", lambda b: rnnkernels.LSTM(4, 5, proj_size=2, backend=b),
     {"weight_hr_l0": torch.randn(2, 4)}, rf"weight_hr_l0 {SHAPE} \[2, 5\], got \[2, 4\]"),
    ("gru-w_hh-dtype", lambda b: rnnkernels.GRU(4, 3, num_layers=2, backend=b),
     {"weight_hh_l1": torch.randn(9, 3).double()}, r"weight_hh_l1 has dtype torch.float64"),
]  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED_MODULES, ids=lambda case: case[0])
def test_malformed_module_weights_raise(case, backend):
    _, make, weights, message = case
    module = _with(make(backend), **weights)
    with pytest.raises(ValueError, match=message):
        module(torch.randn(5, 3, 4))


def test_malformed_functional_weights_raise(backend):
    """The issue's reproducer: a GRU w_hh of [6144, 1] at H=2048 through the functional API."""
    weights = [(torch.randn(6144, 4), torch.randn(6144, 1), None, None)]
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \[6144, 2048\]"):
        functional.gru(torch.randn(5, 3, 4), None, weights, 2048, backend=backend)


FUNCTIONAL_CASES = {  # (weights for an LSTM of I=4, H=3, one layer, message)
    "too-few-entries": ([], r"weights must hold num_layers \* num_directions = 1 entries, got 0"),
    "short-tuple": ([(torch.randn(12, 4), torch.randn(12, 3))], r"weights\[0\] must be a tuple"),
    "w_hh-None": ([(torch.randn(12, 4), None, None, None, None)], r"weight_hh_l0 must be a Tensor"),
    "one-bias": (
        [(torch.randn(12, 4), torch.randn(12, 3), torch.randn(12), None, None)],
        r"bias_ih_l0 and bias_hh_l0 must both be given or both be None",
    ),
    "w_hr-without-proj": (
        [(torch.randn(12, 4), torch.randn(12, 3), None, None, torch.randn(3, 3))],
        r"weight_hr_l0 must be None without a projection",
    ),
    "w_ih-input-size": (
        [(torch.randn(12, 5), torch.randn(12, 3), None, None, None)],
        r"weight_ih_l0 must have shape \[12, 4\], got \[12, 5\]",
    ),
}


@pytest.mark.parametrize("case", list(FUNCTIONAL_CASES))
def test_functional_api_is_checked(case):
    weights, message = FUNCTIONAL_CASES[case]
    with pytest.raises((ValueError, TypeError), match=message):
        functional.lstm(torch.randn(5, 2, 4), None, weights, 3)


def test_functional_sizes_without_allocation():
    """A huge declared hidden size is a shape error before anything is allocated."""
    weights = [(torch.randn(12, 4), torch.randn(12, 3), None, None)]
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \[3298534883328, 4\]"):
        functional.gru(torch.randn(5, 2, 4), None, weights, 2**40)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("batch_sizes", torch.tensor([1, 2]), "positive and non-increasing"),
        ("batch_sizes", torch.tensor([2, 0]), "positive and non-increasing"),
        ("batch_sizes", torch.tensor([2, 2]), "must sum to data's rows"),
        ("batch_sizes", torch.tensor([2.0, 1.0]), "1-D int64 tensor"),
        ("sorted_indices", torch.tensor([0, 0]), "permutation of the batch"),
        ("sorted_indices", torch.tensor([0, 1, 2]), "must have batch_sizes"),
        ("unsorted_indices", torch.tensor([0, 1]), "unsorted_indices its inverse"),
    ],
)
def test_malformed_packed_sequence(field, value, message, backend):
    good = pack_padded_sequence(torch.randn(2, 2, 4), [2, 1])
    parts = {
        "data": good.data,
        "batch_sizes": good.batch_sizes,
        "sorted_indices": torch.tensor([1, 0]),
        "unsorted_indices": torch.tensor([1, 0]),
    }
    parts[field] = value
    packed = PackedSequence(**parts)
    with pytest.raises(ValueError, match=message):
        rnnkernels.GRU(4, 3, backend=backend)(packed)


def test_odd_strides_are_accepted(backend):
    """Non-contiguous weights and states run and give the numbers of contiguous ones."""
    torch.manual_seed(0)
    module = rnnkernels.LSTM(4, 5, num_layers=2, proj_size=3, backend=backend)
    x, h0, c0 = torch.randn(7, 4, 2), torch.randn(2, 2, 3), torch.randn(5, 2, 2)  # x: [T, I, B]
    expected = module(x.transpose(1, 2).contiguous(), (h0, c0.permute(2, 1, 0).contiguous()))
    for name in ("weight_hh_l1", "weight_ih_l0"):
        weight = getattr(module, name).detach()
        _with(module, **{name: weight.T.contiguous().T})  # same values, transposed strides
    got = module(x.transpose(1, 2), (h0, c0.permute(2, 1, 0)))
    torch.testing.assert_close(got[0], expected[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got[1], expected[1], atol=ATOL, rtol=RTOL)


def test_absent_gradient_is_one_empty_tensor(backend):
    """An absent weight's gradient is an empty [0] tensor from every backend's kernels to the
    op (steps.absent_grad); autograd then gives None for the None input."""
    from rnnkernels.ops.gru.op import gru_bwd
    from rnnkernels.ops.lstm.op import lstm_bwd

    T, B, H = 3, 2, 4
    r = torch.randn
    lstm = lstm_bwd(r(T, B, H), r(B, H), r(B, H), r(4 * H, H), None, r(B, H), r(B, H), None,
                    False, r(T, B, H), r(T, B, 4 * H), r(T, B, H), backend)  # fmt: skip
    gru = gru_bwd(r(T, B, H), r(B, H), r(3 * H, H), None, r(B, H), None, False, r(T, B, H),
                  r(T, B, 3 * H), r(T, B, H), backend)  # fmt: skip
    assert lstm[2].shape == (0,) and gru[2].shape == (0,)


def test_triton_size_limits_are_reported_before_the_call(monkeypatch):
    """Triton's int32 index limit is a cannot_run reason, so auto can fall back before a call."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # judged as on a GPU
    huge = LayerCall("lstm", torch.device("cuda"), torch.float16, B=16, H=32768, R=32768)
    why = rnnkernels.backends._triton_cannot_run(huge)
    assert why == (
        "w_hh has 4294967296 elements, beyond the Triton kernels' int32 index limit of 2147483647"
    )
    small = LayerCall("lstm", torch.device("cuda"), torch.float16, B=16, H=1024, R=1024)
    assert rnnkernels.backends._triton_cannot_run(small) is None


def test_compile_error_reads_as_ours():
    """Dynamo raises its own exception type for an error in traced code: with fullgraph=True its
    text starts with ours; without, the graph breaks and ours is raised."""
    module = _with(rnnkernels.LSTM(3, 5), weight_hh_l0=torch.randn(20, 3))
    x = torch.randn(4, 2, 3)
    with pytest.raises(RuntimeError) as info:
        torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    first_line = str(info.value).splitlines()[0]
    assert first_line == "ValueError: weight_hh_l0 must have shape [20, 5], got [20, 3]"
    with pytest.raises(ValueError, match=r"^weight_hh_l0 must have shape \[20, 5\]"):
        torch.compile(module, backend="aot_eager")(x)


def test_cpp_meta_kernels_give_the_output_shapes():
    """The C++ ops' fakes are Meta kernels beside their schemas (csrc/torch/ops.cpp)."""
    if "cpp" not in rnnkernels.available_backends():
        pytest.skip(rnnkernels.backends.why_unavailable("cpp"))
    importlib.import_module("rnnkernels._C")  # registers the ops
    ops, m = torch.ops.rnnkernels_cpp, {"device": "meta"}
    T, B, H, P = 3, 2, 5, 4
    y, hT, cT, gates, cells = ops.lstm_fwd(
        *(torch.empty(s, **m) for s in ((T, B, 4 * H), (4 * H, P), (P, H), (B, P), (B, H))),
        None, False,
    )  # fmt: skip
    assert [t.shape for t in (y, hT, cT, gates, cells)] == [
        (T, B, P), (B, P), (B, H), (T, B, 4 * H), (T, B, H)
    ]  # fmt: skip
    before, after = ((T, B, H), (B, H), (3 * H, H)), ((T, B, H), (T, B, 3 * H), (T, B, H))
    grads = ops.gru_bwd(*(torch.empty(s, **m) for s in before), None, torch.empty(B, H, **m),
                        None, False, *(torch.empty(s, **m) for s in after))  # fmt: skip
    assert [g.shape for g in grads] == [(T, B, 3 * H), (3 * H, H), (0,), (B, H)]


def _views(*shape: int) -> torch.Tensor:
    """A broadcast view of one element: any size, nothing allocated."""
    return torch.zeros((1,) * len(shape)).expand(*shape)


@pytest.mark.parametrize(
    "cell,B,H,what",
    [
        ("lstm", 1, 23171, "w_hh"),  # 4H * H > 2**31 - 1
        ("gru", 2**20, 1024, "one time step of gx"),
        ("gru", 1, 27000, "w_hh"),
        ("indrnn", 2**20, 2**11, "one time step of gx"),
        ("rnn", 1, 46341, "w_hh"),  # H * H > 2**31 - 1
    ],
)
def test_triton_size_limit_refused_before_anything_runs(cell, B, H, what):
    """A call beyond Triton's int32 indexing, asked of triton by name, raises BackendError saying
    so before anything is allocated or launched."""
    if "triton" not in rnnkernels.available_backends():
        pytest.skip(rnnkernels.backends.why_unavailable("triton"))
    G, I, T = {"lstm": 4, "gru": 3, "indrnn": 1, "rnn": 1}[cell], 2, 2
    w_hh = _views(G * H) if cell == "indrnn" else _views(G * H, H)
    weights = [(_views(G * H, I), w_hh, None, None) + ((None,) if cell == "lstm" else ())]
    hx = _views(1, B, H)
    hx = (hx, hx) if cell == "lstm" else hx
    call = getattr(functional, cell)
    with pytest.raises(rnnkernels.BackendError, match=f"{what} has .* int32 index limit"):
        call(_views(T, B, I), hx, weights, H, backend="triton")


def test_functional_rnn_nonlinearity_is_checked():
    weights = [(torch.randn(3, 2), torch.randn(3, 3), None, None)]
    with pytest.raises(ValueError, match="^Unknown nonlinearity 'sigmoid'. Select from 'tanh'"):
        functional.rnn(torch.randn(4, 1, 2), None, weights, 3, nonlinearity="sigmoid")


def test_functional_indrnn_nonlinearity_is_checked():
    weights = [(torch.randn(3, 2), torch.rand(3), None, None)]
    with pytest.raises(ValueError, match="^Unknown nonlinearity 'sigmoid'. Select from 'tanh'"):
        functional.indrnn(torch.randn(4, 1, 2), None, weights, 3, nonlinearity="sigmoid")
