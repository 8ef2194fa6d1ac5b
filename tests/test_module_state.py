"""Module state matches torch: init, state_dict both ways, repr, dtype moves, pickling, copies,
train/eval, all_weights, dropout; IndRNN's parameters and state."""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

import rnnkernels
from rnnkernels.testing import TOLERANCES, torch_twin

I, H, T, B = 3, 5, 4, 2  # noqa: E741 (docs/design.md §1 dimension letters)

CONFIGS = [
    {},
    {"bias": False},
    {"bidirectional": True},
    {"num_layers": 2},
    {"num_layers": 2, "bidirectional": True, "batch_first": True},
    {"proj_size": 2},
    {"proj_size": 3, "num_layers": 2, "bidirectional": True, "bias": False},
]
CELLS = {
    "LSTM": (rnnkernels.LSTM, nn.LSTM),
    "GRU": (rnnkernels.GRU, nn.GRU),
    "RNN": (rnnkernels.RNN, nn.RNN),
}
RNN_CONFIGS = [{"nonlinearity": "relu"}, {"nonlinearity": "relu", "num_layers": 2, "bias": False}]


def _cases():
    for cell in CELLS:
        for config in CONFIGS + (RNN_CONFIGS if cell == "RNN" else []):
            if cell != "LSTM" and "proj_size" in config:
                continue
            yield pytest.param(
                cell, config, id=f"{cell}-" + "-".join(f"{k}={v}" for k, v in config.items())
            )


CASES = pytest.mark.parametrize("cell,config", list(_cases()))


def _make(cell, config, seed=0, ours=True, **extra):
    torch.manual_seed(seed)
    return CELLS[cell][0 if ours else 1](I, H, **config, **extra)


def _input(config, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if config.get("batch_first") else (T, B, I)
    return torch.randn(shape, generator=g, dtype=dtype)


def _flat(out):
    """Every tensor in a module's output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _assert_outputs_close(a, b, dtype=torch.float32):
    atol, rtol = TOLERANCES[dtype]
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb, strict=True):
        assert x.dtype == y.dtype == dtype
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def _assert_outputs_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb, strict=True):
        assert torch.equal(x, y)


# --- init, state_dict, repr ----------------------------------------------------------------------


@CASES
def test_init_matches_torch(cell, config):
    ours, theirs = _make(cell, config), _make(cell, config, ours=False)
    ours_params, their_params = list(ours.named_parameters()), list(theirs.named_parameters())
    assert [n for n, _ in ours_params] == [n for n, _ in their_params]
    for (name, p), (_, q) in zip(ours_params, their_params, strict=True):
        assert p.shape == q.shape, name
        assert p.dtype == q.dtype and p.requires_grad and q.requires_grad
        assert torch.equal(p, q), name
    assert list(ours.buffers()) == list(theirs.buffers()) == []
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours._flat_weights_names == theirs._flat_weights_names


@CASES
def test_attributes_match_torch(cell, config):
    ours, theirs = _make(cell, config), _make(cell, config, ours=False)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode", "training"):  # fmt: skip
        assert getattr(ours, attr) == getattr(theirs, attr), attr
        assert type(getattr(ours, attr)) is type(getattr(theirs, attr)), attr


@CASES
def test_state_dict_round_trip_and_outputs(cell, config):
    theirs = _make(cell, config, seed=3, ours=False)
    ours = _make(cell, config, seed=4)
    saved = {k: v.clone() for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, saved[k]), k
    back = _make(cell, config, seed=5, ours=False)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert list(back.state_dict()) == list(saved)
    for k, v in back.state_dict().items():
        assert torch.equal(v, saved[k]), k
    x = _input(config)
    _assert_outputs_close(ours(x), theirs(x))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(
    "config",
    CONFIGS + [{"dropout": 0.5, "num_layers": 2}, {"dropout": 1, "num_layers": 3}],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain",
)
def test_repr_matches_torch(cell, config):
    if cell != "LSTM" and "proj_size" in config:
        pytest.skip("proj_size is LSTM only")
    assert repr(_make(cell, config)) == repr(_make(cell, config, ours=False))
    assert _make(cell, config).extra_repr() == _make(cell, config, ours=False).extra_repr()


def test_repr_shows_explicit_backend():
    assert repr(rnnkernels.LSTM(I, H, backend="reference")) == "LSTM(3, 5, backend='reference')"


# --- dtype moves, flatten_parameters, copies, pickling -------------------------------------------


@CASES
def test_flatten_parameters_is_harmless(cell, config):
    ours = _make(cell, config)
    before = [p.clone() for p in ours.parameters()]
    x = _input(config)
    out = ours(x)
    assert ours.flatten_parameters() is None
    for p, q in zip(ours.parameters(), before, strict=True):
        assert torch.equal(p, q)
    _assert_outputs_equal(ours(x), out)


@pytest.mark.parametrize("move", ["to", "double", "to-kwarg"])
@CASES
def test_to_float64(cell, config, move):
    ours = _make(cell, config)
    names = [n for n, _ in ours.named_parameters()]
    moved = {"to": lambda m: m.to(torch.float64), "double": lambda m: m.double(),
             "to-kwarg": lambda m: m.to(dtype=torch.float64)}[move](ours)  # fmt: skip
    assert moved is ours
    assert [n for n, _ in ours.named_parameters()] == names
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert all(w.dtype == torch.float64 for layer in ours.all_weights for w in layer)
    theirs = torch_twin(ours)
    x = _input(config, torch.float64)
    _assert_outputs_close(ours(x), theirs(x), torch.float64)
    ours.float()
    _assert_outputs_close(ours(x.float()), theirs.float()(x.float()), torch.float32)


def _round_trips():
    def with_pickle(m):
        return pickle.loads(pickle.dumps(m))

    def with_torch_save(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    return {"pickle": with_pickle, "torch.save": with_torch_save, "deepcopy": copy.deepcopy}


@pytest.mark.parametrize("how", list(_round_trips()))
@CASES
def test_round_trip_copies(cell, config, how):
    ours = _make(cell, config, backend="reference")
    ours.eval()
    copied = _round_trips()[how](ours)
    assert type(copied) is type(ours)
    assert repr(copied) == repr(ours)
    assert copied.training is False and copied.backend == "reference"
    assert list(copied.state_dict()) == list(ours.state_dict())
    for (name, p), (_, q) in zip(copied.named_parameters(), ours.named_parameters(), strict=True):
        assert isinstance(p, nn.Parameter) and p is not q, name
        assert torch.equal(p, q), name
    x = _input(config)
    _assert_outputs_equal(copied(x), ours(x))
    # the copy is independent of the original
    with torch.no_grad():
        copied.weight_ih_l0.add_(1.0)
    assert not torch.equal(copied.weight_ih_l0, ours.weight_ih_l0)
    # and it still trains
    sum(t.sum() for t in _flat(copied(x))).backward()
    assert all(p.grad is not None for p in copied.parameters())


@CASES
def test_all_weights_like_torch(cell, config):
    ours, theirs = _make(cell, config), _make(cell, config, ours=False)
    ours_all, their_all = ours.all_weights, theirs.all_weights
    assert type(ours_all) is list and all(type(layer) is list for layer in ours_all)
    assert len(ours_all) == len(their_all)
    params = dict(ours.named_parameters())
    for a, b in zip(ours_all, their_all, strict=True):
        assert len(a) == len(b)
        for p, q in zip(a, b, strict=True):
            assert isinstance(p, nn.Parameter)
            assert p.shape == q.shape and torch.equal(p, q)
            assert any(p is v for v in params.values())
    # the same order as torch: all_weights flattens to the parameter registration order
    assert [p for layer in ours_all for p in layer] == [params[n] for n in ours._flat_weights_names]


@pytest.mark.parametrize("cell", list(CELLS) + ["IndRNN"])
def test_train_eval(cell):
    cls = rnnkernels.IndRNN if cell == "IndRNN" else CELLS[cell][0]
    ours = cls(I, H, num_layers=2, dropout=0.5)
    assert ours.training
    assert ours.eval() is ours and not ours.training
    assert ours.train() is ours and ours.training
    assert ours.train(False) is ours and not ours.training


# --- dropout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_one_matches_torch(cell, bidirectional):
    """dropout=1.0 between two layers zeros the first layer's output: deterministic."""
    config = {"num_layers": 2, "dropout": 1.0, "bidirectional": bidirectional}
    ours = _make(cell, config)
    theirs = torch_twin(ours)
    assert ours.training and theirs.training
    x = _input(config)
    _assert_outputs_close(ours(x), theirs(x))


def _transparent_second_layer(module: nn.Module, cell: str) -> None:
    """Layer 1 becomes an elementwise map y = f(x) with f(x) = 0 iff x = 0 (no recurrence, no
    mixing of features), so zeros in the output are exactly the dropped layer-0 outputs."""
    n = module.hidden_size
    eye = torch.eye(n)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("_l1"):
                continue
            p.zero_()
            if name == "weight_ih_l1":
                p.copy_(torch.cat([eye] * (p.shape[0] // n)))  # every gate sees x_k
            if cell == "LSTM" and name == "bias_ih_l1":
                p[n : 2 * n] = -1e4  # forget gate 0: c_t = i * g only
            if cell == "GRU" and name == "bias_ih_l1":
                p[n : 2 * n] = -1e4  # update gate 0: h_t = n_t = tanh(x)
            if cell == "IndRNN" and name == "weight_hh_l1":
                p.zero_()  # h_t = tanh(x)


def _single_layer_twin(module: nn.Module, cell: str, layer: int) -> nn.Module:
    """A one-layer torch module (nn.LSTM / nn.GRU / eager IndRNN) with ``layer``'s weights."""
    if cell == "IndRNN":
        single = rnnkernels.IndRNN(
            module.weight_ih_l0.shape[1] if layer == 0 else module.hidden_size,
            module.hidden_size,
            nonlinearity=module.nonlinearity,
        )
    else:
        single = CELLS[cell][1](
            module.weight_ih_l0.shape[1] if layer == 0 else module.hidden_size, module.hidden_size
        )
    single.load_state_dict(
        {
            k.replace(f"_l{layer}", "_l0"): v
            for k, v in module.state_dict().items()
            if k.endswith(f"_l{layer}")
        }
    )
    return torch_twin(single) if cell == "IndRNN" else single


@pytest.mark.parametrize("cell", list(CELLS) + ["IndRNN"])
def test_dropout_half_mask_and_scale(cell):
    """With dropout=0.5 in train mode: about half of layer 0's outputs are zeroed, the kept ones
    are scaled by 2, eval mode ignores dropout, and a fixed seed reproduces the mask."""
    n = 16
    kwargs = {"nonlinearity": "tanh"} if cell == "IndRNN" else {}
    cls = rnnkernels.IndRNN if cell == "IndRNN" else CELLS[cell][0]
    torch.manual_seed(0)
    ours = cls(I, n, num_layers=2, dropout=0.5, **kwargs)
    _transparent_second_layer(ours, cell)
    x = torch.randn(8, 4, I, generator=torch.Generator().manual_seed(1))

    ours.eval()
    eval_out = ours(x)[0]
    assert torch.equal(ours(x)[0], eval_out)  # eval: deterministic, no dropout
    twin = torch_twin(ours).eval()
    _assert_outputs_close(eval_out, twin(x)[0])
    assert (eval_out != 0).all()

    ours.train()
    torch.manual_seed(123)
    train_out = ours(x)[0]
    torch.manual_seed(123)
    assert torch.equal(ours(x)[0], train_out)  # same seed, same mask
    assert not torch.equal(train_out, eval_out)
    assert not torch.equal(ours(x)[0], train_out)  # fresh mask each call

    dropped = train_out == 0
    fraction = dropped.float().mean().item()
    # 512 Bernoulli(0.5) draws: std 0.022, so [0.4, 0.6] is a 4.5 sigma band
    assert 0.4 < fraction < 0.6, fraction

    layer0 = _single_layer_twin(ours, cell, 0)
    layer1 = _single_layer_twin(ours, cell, 1)
    with torch.no_grad():
        y0 = layer0(x)[0]
        expected = layer1(torch.where(dropped, 0.0, y0 * 2.0))[0]
    _assert_outputs_close(train_out.detach(), expected)


@pytest.mark.parametrize("cell", list(CELLS) + ["IndRNN"])
def test_dropout_ignored_in_eval_mode(cell):
    cls = rnnkernels.IndRNN if cell == "IndRNN" else CELLS[cell][0]
    torch.manual_seed(0)
    with_dropout = cls(I, H, num_layers=2, dropout=0.7).eval()
    torch.manual_seed(0)
    without = cls(I, H, num_layers=2).eval()
    x = _input({})
    _assert_outputs_equal(with_dropout(x), without(x))


@pytest.mark.parametrize("cell", list(CELLS) + ["IndRNN"])
def test_dropout_single_layer_warns_like_torch(cell):
    torch_cls = nn.RNN if cell == "IndRNN" else CELLS[cell][1]
    cls = rnnkernels.IndRNN if cell == "IndRNN" else CELLS[cell][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch_cls(I, H, dropout=0.25)
    (expected,) = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    with pytest.warns(UserWarning, match="^" + re.escape(expected) + "$"):
        cls(I, H, dropout=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(I, H, num_layers=2, dropout=0.25)
        cls(I, H, dropout=0.0)


# --- IndRNN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_indrnn_parameters(bias, bidirectional):
    hidden = 64
    torch.manual_seed(0)
    m = rnnkernels.IndRNN(I, hidden, num_layers=2, bias=bias, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    expected = []
    for layer in range(2):
        for suffix in ("", "_reverse")[:D]:
            expected.append(
                (f"weight_ih_l{layer}{suffix}", (hidden, I if layer == 0 else D * hidden))
            )
            expected.append((f"weight_hh_l{layer}{suffix}", (hidden,)))
            if bias:
                expected.append((f"bias_ih_l{layer}{suffix}", (hidden,)))
                expected.append((f"bias_hh_l{layer}{suffix}", (hidden,)))
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == expected
    bound = 1 / math.sqrt(hidden)
    for name, p in m.named_parameters():
        if name.startswith("weight_hh"):
            assert p.min() >= 0 and p.max() <= 1, name
            assert p.min() < 0.1 and p.max() > 0.9, name  # spread over [0, 1], not a constant
        else:
            assert p.abs().max() <= bound, name
            assert p.min() < -0.8 * bound and p.max() > 0.8 * bound, name
    assert len(m.all_weights) == 2 * D


def test_indrnn_reset_parameters_reinitialises():
    m = rnnkernels.IndRNN(I, 8)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(7.0)
    m.reset_parameters()
    assert (m.weight_hh_l0 >= 0).all() and (m.weight_hh_l0 <= 1).all()
    assert (m.weight_ih_l0.abs() <= 1 / math.sqrt(8)).all()


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"num_layers": 2, "bidirectional": True},
        {"nonlinearity": "tanh", "recurrent_max_abs": 0.5},
    ],
    ids=["plain", "2layer-bidir", "tanh-clamped"],
)
def test_indrnn_state_dict_and_copies(config):
    torch.manual_seed(0)
    a = rnnkernels.IndRNN(I, H, **config)
    torch.manual_seed(1)
    b = rnnkernels.IndRNN(I, H, **config)
    b.load_state_dict(a.state_dict(), strict=True)
    x = _input({})
    _assert_outputs_equal(a(x), b(x))
    _assert_outputs_close(a(x), torch_twin(a)(x))
    for how, round_trip in _round_trips().items():
        c = round_trip(a)
        assert repr(c) == repr(a), how
        assert c.nonlinearity == a.nonlinearity and c.recurrent_max_abs == a.recurrent_max_abs
        _assert_outputs_equal(c(x), a(x))
    a.double()
    _assert_outputs_close(a(x.double()), torch_twin(a)(x.double()), torch.float64)


def test_indrnn_repr():
    assert repr(rnnkernels.IndRNN(I, H)) == "IndRNN(3, 5)"
    text = repr(rnnkernels.IndRNN(I, H, num_layers=2, nonlinearity="tanh", recurrent_max_abs=2.0))
    assert text.startswith("IndRNN(3, 5, num_layers=2")
    assert "nonlinearity='tanh'" in text and "recurrent_max_abs=2.0" in text
    assert "recurrent_max_abs=1.5" in repr(rnnkernels.IndRNN(I, H, recurrent_max_abs=1.5))
