"""rnnkernels.convert: swaps nn.LSTM / nn.GRU / nn.RNN for ours in place, keeping the Parameter
objects, the configuration and the numbers; subclasses, parametrizations and hooks too."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import rnnkernels
from rnnkernels.testing import TOLERANCES

ATOL, RTOL = TOLERANCES[torch.float32]
CONFIG_ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size", "training", "nonlinearity", "mode")  # fmt: skip
OURS = {nn.LSTM: rnnkernels.LSTM, nn.GRU: rnnkernels.GRU, nn.RNN: rnnkernels.RNN}


class Block(nn.Module):
    """A custom module holding a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 5, batch_first=True, bidirectional=True, bias=False)
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, 6]
        y, h = self.gru(x)
        return self.head(y) + h.sum(0).mean()


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.seq = nn.Sequential(nn.LSTM(4, 6, proj_size=3, num_layers=2, dropout=0.3), nn.Tanh())
        self.blocks = nn.ModuleList([nn.GRU(3, 6, num_layers=2), nn.LSTM(6, 6, bidirectional=True)])
        self.block = Block()
        self.rnn = nn.RNN(4, 2, nonlinearity="relu", num_layers=2)
        self.seq[0].eval()  # dropout LSTM in eval mode: deterministic, and checks `training`

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, B, 3]
        y, (h, c) = self.seq[0](self.embed(x))  # [T, B, 3]
        y = self.seq[1](y) + h[-1] + c.mean()
        y, _ = self.blocks[0](y)  # [T, B, 6]
        y, (h, _) = self.blocks[1](y)  # [T, B, 12]
        y = y[..., :6] + y[..., 6:] + h.mean()
        out = self.block(y.transpose(0, 1))  # [B, T, 4]
        r, _ = self.rnn(out.transpose(0, 1))
        return out.sum() + (out**2).mean() + r.sum()


def _rnns(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (*OURS, *OURS.values()))}


def _run(model: nn.Module, x: torch.Tensor):
    for p in model.parameters():
        p.grad = None
    x = x.detach().requires_grad_()
    loss = model(x)
    loss.backward()
    return loss.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_convert_nested_model():
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(7, 2, 3)
    loss, x_grad, grads = _run(model, x)
    params = dict(model.named_parameters())
    before = {name: (type(m), {a: getattr(m, a, 0) for a in CONFIG_ATTRS},
                     [getattr(m, w) for w in m._flat_weights_names])
              for name, m in _rnns(model).items()}  # fmt: skip
    assert len(before) == 5
    keys = list(model.state_dict())

    assert rnnkernels.convert(model) is model

    after = _rnns(model)
    assert set(after) == set(before)
    for name, module in after.items():
        old_type, config, weights = before[name]
        assert type(module) is OURS[old_type], name
        assert {a: getattr(module, a, 0) for a in CONFIG_ATTRS} == config, name
        assert module._flat_weights_names == [n for n in dict(module.named_parameters())]
        for w, old in zip(module._flat_weights, weights, strict=True):
            assert w is old, name
    assert list(model.state_dict()) == keys
    for name, p in model.named_parameters():
        assert p is params[name], name
    assert model.seq[0].training is False and model.blocks[0].training is True

    new_loss, new_x_grad, new_grads = _run(model, x)
    torch.testing.assert_close(new_loss, loss, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(new_x_grad, x_grad, atol=ATOL, rtol=RTOL)
    assert set(new_grads) == set(grads)
    for name, g in new_grads.items():
        torch.testing.assert_close(g, grads[name], atol=ATOL, rtol=RTOL, msg=name)


def test_convert_keeps_optimizer_working():
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rnnkernels.convert(model)
    w = model.blocks[1].weight_hh_l0_reverse
    before = w.detach().clone()
    optimizer.zero_grad()
    model(torch.randn(5, 2, 3)).backward()
    optimizer.step()
    assert not torch.equal(w, before)  # the optimiser still holds the live parameter


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("training", [True, False])
def test_convert_top_level(cell, training):
    torch.manual_seed(0)
    kwargs = {"LSTM": {"proj_size": 2}, "GRU": {}, "RNN": {"nonlinearity": "relu"}}[cell]
    old = getattr(nn, cell)(3, 4, num_layers=2, batch_first=True, bidirectional=True, **kwargs)
    old.train(training)
    x = torch.randn(2, 5, 3)
    ref_y, ref_h = old(x)
    params = list(old.parameters())

    new = rnnkernels.convert(old, backend="reference")
    assert type(new) is getattr(rnnkernels, cell)
    assert new.backend == "reference"
    assert new.training is training
    for a in CONFIG_ATTRS:
        assert getattr(new, a, 0) == getattr(old, a, 0), a
    for p, q in zip(new.parameters(), params, strict=True):
        assert p is q
    y, h = new(x)
    torch.testing.assert_close(y, ref_y, atol=ATOL, rtol=RTOL)
    states, ref_states = (h, ref_h) if cell == "LSTM" else ((h,), (ref_h,))
    for a, b in zip(states, ref_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_convert_without_rnns_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ModuleList([nn.RNNCell(4, 4), nn.Conv1d(4, 4, 1)]))
    children = list(model.modules())
    state = copy.deepcopy(model.state_dict())
    assert rnnkernels.convert(model) is model
    assert list(model.modules()) == children
    assert all(a is b for a, b in zip(model.modules(), children, strict=True))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_convert_twice_is_a_no_op():
    torch.manual_seed(0)
    model = rnnkernels.convert(Model())
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    x = torch.randn(4, 2, 3)
    loss = model(x).detach()
    assert rnnkernels.convert(model) is model
    assert dict(model.named_modules()).keys() == modules.keys()
    for name, m in model.named_modules():
        assert m is modules[name], name
    for name, p in model.named_parameters():
        assert p is params[name], name
    assert torch.equal(model(x).detach(), loss)
    ours = rnnkernels.LSTM(3, 4)
    assert rnnkernels.convert(ours) is ours


class Loss(nn.Module):
    """A scalar of all an RNN returns."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, h = self.rnn(x)
        return (y**2).sum() + sum(s.sum() for s in (h if isinstance(h, tuple) else (h,)))


class TaggedLSTM(nn.LSTM):
    """Adds instance state in __init__ only: converts, with that state."""

    def __init__(self, *args, tag: object, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tag = tag
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


class ForwardLSTM(nn.LSTM):
    def forward(self, input, hx=None):
        return super().forward(2 * input, hx)


class MethodsGRU(nn.GRU):
    scale = 2.0

    def reset_parameters(self) -> None:
        for w in self.parameters():
            nn.init.normal_(w, std=0.1)

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0][-1]


class BackendGRU(nn.GRU):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = "theirs"


def _assert_same_run(model: nn.Module, x: torch.Tensor, before) -> None:
    loss, x_grad, grads = _run(model, x)
    torch.testing.assert_close(loss, before[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(x_grad, before[1], atol=ATOL, rtol=RTOL)
    assert grads.keys() == before[2].keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, before[2][name], atol=ATOL, rtol=RTOL, msg=name)


def test_convert_subclass_keeps_its_instance_state():
    torch.manual_seed(0)
    tag = ["encoder"]
    model = Loss(TaggedLSTM(3, 4, num_layers=2, proj_size=2, tag=tag))
    x = torch.randn(5, 2, 3)
    before = _run(model, x)
    steps, params, keys = model.rnn.steps, dict(model.named_parameters()), list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnnkernels.convert(model)
    assert type(model.rnn) is rnnkernels.LSTM
    assert model.rnn.tag is tag and model.rnn.steps is steps
    assert (model.rnn.proj_size, model.rnn.num_layers) == (2, 2)
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    _assert_same_run(model, x, before)


def test_convert_leaves_subclass_overriding_forward():
    rnn = ForwardLSTM(3, 4)
    model = nn.ModuleDict({"encoder": nn.ModuleDict({"rnn": rnn, "gru": nn.GRU(4, 4)})})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert rnnkernels.convert(model) is model
    assert [str(w.message) for w in record] == [
        "rnnkernels.convert: left 'encoder.rnn' (ForwardLSTM) as it is: its class defines "
        "forward, which rnnkernels.LSTM would not have"
    ]
    assert record[0].category is UserWarning and record[0].filename == __file__
    assert model.encoder.rnn is rnn and type(model.encoder.gru) is rnnkernels.GRU
    with pytest.warns(UserWarning, match=r"^rnnkernels\.convert: left '<model>' \(ForwardLSTM\)"):
        assert rnnkernels.convert(rnn) is rnn


@pytest.mark.parametrize(
    "cls, reason",
    [
        pytest.param(MethodsGRU, "its class defines last, reset_parameters, scale, which "
                     "rnnkernels.GRU would not have", id="methods"),
        pytest.param(BackendGRU, "it sets backend, which rnnkernels.GRU sets itself", id="clash"),
    ],
)  # fmt: skip
def test_convert_leaves_subclass_it_would_change(cls, reason):
    rnn = cls(3, 4)
    model = nn.Sequential(nn.Linear(3, 3), rnn)
    with pytest.warns(UserWarning) as record:
        rnnkernels.convert(model)
    assert [str(w.message) for w in record] == [
        f"rnnkernels.convert: left '1' ({cls.__name__}) as it is: {reason}"
    ]
    assert model[1] is rnn and type(rnn) is cls


def test_convert_parametrized():
    torch.manual_seed(0)

    class Scale(nn.Module):  # a parametrization with a parameter of its own
        def __init__(self) -> None:
            super().__init__()
            self.s = nn.Parameter(torch.tensor(1.5))

        def forward(self, b: torch.Tensor) -> torch.Tensor:
            return self.s * b

    rnn = nn.LSTM(3, 4, bidirectional=True, proj_size=2)
    parametrizations.weight_norm(rnn, "weight_hh_l0")  # two originals
    parametrizations.orthogonal(rnn, "weight_ih_l0_reverse")
    parametrize.register_parametrization(rnn, "bias_ih_l0", Scale())
    parametrize.register_parametrization(rnn, "bias_ih_l0", nn.Tanh())  # a chain of two
    model = Loss(rnn)
    x = torch.randn(5, 2, 3)
    before = _run(model, x)
    params, lists = dict(model.named_parameters()), rnn.parametrizations
    assert "rnn.parametrizations.weight_hh_l0.original1" in params

    rnnkernels.convert(model)
    new = model.rnn
    assert parametrize.type_before_parametrizations(new) is rnnkernels.LSTM
    assert new.parametrizations is lists
    assert list(model.named_parameters()) == list(params.items())
    assert all(p is params[n] for n, p in model.named_parameters())
    _assert_same_run(model, x, before)
    with parametrize.cached():
        torch.testing.assert_close(model(x), before[0], atol=ATOL, rtol=RTOL)
    weight = new.weight_ih_l0_reverse.detach().clone()
    parametrize.remove_parametrizations(new, "weight_ih_l0_reverse")
    assert torch.equal(new.weight_ih_l0_reverse, weight)
    assert rnnkernels.convert(model.rnn) is new


def test_convert_keeps_hooks_and_their_handles():
    torch.manual_seed(0)
    model = Loss(nn.GRU(3, 4))
    calls: list[tuple[str, nn.Module]] = []
    grads: list[tuple[torch.Tensor | None, ...]] = []

    def hook(kind: str):
        return lambda module, *args: calls.append((kind, module))

    def backward_hook(module, grad_input, grad_output):
        grads.append(grad_input + grad_output)

    rnn = model.rnn
    handles = [
        rnn.register_forward_pre_hook(hook("pre")),
        rnn.register_forward_pre_hook(hook("pre kwargs"), with_kwargs=True),
        rnn.register_forward_hook(hook("forward")),
        rnn.register_forward_hook(hook("forward always"), with_kwargs=True, always_call=True),
        rnn.register_full_backward_pre_hook(hook("backward pre")),
        rnn.register_full_backward_hook(hook("backward")),
        rnn.register_full_backward_hook(backward_hook),
        rnn.register_state_dict_pre_hook(hook("state_dict")),
        rnn.register_load_state_dict_post_hook(hook("load_state_dict")),
    ]

    def exercise() -> list[str]:
        calls.clear()
        _run(model, torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1)))
        model.load_state_dict(model.state_dict())
        assert all(module is model.rnn for _, module in calls)
        return [kind for kind, _ in calls]

    kinds = exercise()
    assert len(kinds) == 8 and len(grads) == 1
    rnnkernels.convert(model)
    assert type(model.rnn) is rnnkernels.GRU
    assert exercise() == kinds and len(grads) == 2
    for ours, theirs in zip(*grads, strict=True):  # grad of x, of the output and of h_n
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    for handle in handles:
        handle.remove()
    assert exercise() == [] and len(grads) == 2


def test_convert_shared_module_once():
    gru = nn.GRU(3, 3)
    model = nn.ModuleDict({"a": gru, "b": nn.Sequential(gru)})
    rnnkernels.convert(model)
    assert type(model.a) is rnnkernels.GRU and model.b[0] is model.a
