"""rnnkernels.convert: swaps nn.LSTM / nn.GRU for ours in place, keeping the Parameter objects,
the configuration and the numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rnnkernels
from rnnkernels.testing import TOLERANCES

ATOL, RTOL = TOLERANCES[torch.float32]
CONFIG_ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size", "training")  # fmt: skip


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
        self.rnn = nn.RNN(4, 2)  # not ours to convert: stays nn.RNN
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
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.LSTM, nn.GRU, rnnkernels.LSTM, rnnkernels.GRU))
    }


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
    assert len(before) == 4
    rnn = model.rnn
    keys = list(model.state_dict())

    assert rnnkernels.convert(model) is model

    after = _rnns(model)
    assert set(after) == set(before)
    for name, module in after.items():
        old_type, config, weights = before[name]
        assert type(module) is (rnnkernels.LSTM if old_type is nn.LSTM else rnnkernels.GRU), name
        assert {a: getattr(module, a) for a in CONFIG_ATTRS} == config, name
        assert module._flat_weights_names == [n for n in dict(module.named_parameters())]
        for w, old in zip(module._flat_weights, weights, strict=True):
            assert w is old, name
    assert model.rnn is rnn and type(model.rnn) is nn.RNN
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


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("training", [True, False])
def test_convert_top_level(cell, training):
    torch.manual_seed(0)
    kwargs = {"proj_size": 2} if cell == "LSTM" else {}
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
        assert getattr(new, a) == getattr(old, a), a
    for p, q in zip(new.parameters(), params, strict=True):
        assert p is q
    y, h = new(x)
    torch.testing.assert_close(y, ref_y, atol=ATOL, rtol=RTOL)
    states, ref_states = (h, ref_h) if cell == "LSTM" else ((h,), (ref_h,))
    for a, b in zip(states, ref_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_convert_without_rnns_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ModuleList([nn.RNN(4, 4), nn.Conv1d(4, 4, 1)]))
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
