"""Deployment paths of a converted model (issue 18): ``unconvert``, TorchScript (``script`` and
``trace``), dynamic quantization, and the paths that work unchanged (DDP, activation
checkpointing, pickling, deepcopy), each against eager or torch's own model."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantize_dynamic
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.checkpoint import checkpoint

import rnnkernels
from rnnkernels.testing import assert_close

# torch 2.13 deprecates TorchScript and torch.ao.quantization; both are still what users deploy with
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:DeprecationWarning"),
]
CONFIG_ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size", "training")  # fmt: skip


class Model(nn.Module):
    """The issue's model: a 2-layer bidirectional batch-first LSTM (here with a projection), a
    second recurrent layer and a Linear head. ``cell`` picks the second layer."""

    def __init__(self, cell: str = "GRU", dropout: float = 0.0, proj_size: int = 4) -> None:
        super().__init__()
        self.encoder = nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True,
                               proj_size=proj_size, dropout=dropout)  # fmt: skip
        self.cell = cell
        make = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN, "IndRNN": rnnkernels.IndRNN}[cell]
        self.decoder = make(2 * (proj_size or 6), 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, 3]
        y, (h, c) = self.encoder(x)
        y, _ = self.decoder(y)
        return self.head(y) + h.mean() + c.mean()


def _loss(out: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return (out * weights).sum()


def _run(model: nn.Module, x: torch.Tensor):
    """Output, input gradient and parameter gradients (by name) of one forward and backward."""
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = model(x)
    _loss(out).backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_run(run, expected, exact: bool = False) -> None:
    (out, x_grad, grads), (e_out, e_x_grad, e_grads) = run, expected
    check = (lambda a, b, what: torch.testing.assert_close(a, b, rtol=0, atol=0, msg=what)) \
        if exact else assert_close  # fmt: skip
    check(out, e_out, "output")
    check(x_grad, e_x_grad, "input grad")
    assert grads.keys() == e_grads.keys()
    for name, g in grads.items():
        check(g, e_grads[name], name)


def _x(B: int = 3, T: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, 3, generator=torch.Generator().manual_seed(seed))


# --- unconvert -----------------------------------------------------------------------------------


def test_unconvert_gives_torch_modules_over_the_same_parameters():
    torch.manual_seed(0)
    model = Model()
    model.decoder.eval()
    x = _x()
    theirs = _run(model, x)
    params = dict(model.named_parameters())
    config = {n: {a: getattr(m, a, 0) for a in CONFIG_ATTRS} for n, m in model.named_children()}
    keys = list(model.state_dict())

    rnnkernels.convert(model)
    ours = _run(model, x)
    assert rnnkernels.unconvert(model) is model

    assert type(model.encoder) is nn.LSTM and type(model.decoder) is nn.GRU
    for name, module in model.named_children():
        assert {a: getattr(module, a, 0) for a in CONFIG_ATTRS} == config[name], name
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    # torch's module over the same parameters: torch's numbers, exactly
    _assert_same_run(_run(model, x), theirs, exact=True)

    # and back: the same parameters, our numbers again
    rnnkernels.convert(model)
    assert type(model.encoder) is rnnkernels.LSTM and type(model.decoder) is rnnkernels.GRU
    assert all(p is params[n] for n, p in model.named_parameters())
    _assert_same_run(_run(model, x), ours, exact=True)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_unconvert_top_level_module(cell):
    torch.manual_seed(0)
    kwargs = {"LSTM": {"proj_size": 2}, "GRU": {}, "RNN": {"nonlinearity": "relu"}}[cell]
    ours = getattr(rnnkernels, cell)(3, 4, bias=False, dropout=0.5, num_layers=2, **kwargs)
    ours.eval()
    params = list(ours.parameters())
    theirs = rnnkernels.unconvert(ours)
    assert type(theirs) is getattr(nn, cell) and theirs.training is False
    assert theirs.mode == ours.mode and getattr(theirs, "nonlinearity", 0) == kwargs.get(
        "nonlinearity", 0
    )
    assert all(p is q for p, q in zip(theirs.parameters(), params, strict=True))
    assert theirs._flat_weights_names == [n for n, _ in theirs.named_parameters()]
    assert all(w is p for w, p in zip(theirs._flat_weights, params, strict=True))
    x = torch.randn(5, 2, 3)
    assert_close(theirs(x)[0], ours(x)[0], "output")
    assert rnnkernels.unconvert(theirs) is theirs


def test_unconvert_indrnn_raises_before_changing_anything():
    model = Model("IndRNN")
    rnnkernels.convert(model)
    encoder = model.encoder
    message = (r"^rnnkernels\.unconvert: 'decoder' is an rnnkernels\.IndRNN, which torch\.nn "
               r"has no module for; pass keep_indrnn=True")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        rnnkernels.unconvert(model)
    assert model.encoder is encoder  # nothing replaced
    with pytest.raises(ValueError, match=r"'<model>' is an rnnkernels\.IndRNN"):
        rnnkernels.unconvert(rnnkernels.IndRNN(3, 4))

    assert rnnkernels.unconvert(model, keep_indrnn=True) is model
    assert type(model.encoder) is nn.LSTM and type(model.decoder) is rnnkernels.IndRNN


def test_unconvert_keeps_parametrizations_and_hooks():
    torch.manual_seed(0)
    model = Model()
    parametrizations.weight_norm(model.encoder, "weight_hh_l1_reverse")
    parametrize.register_parametrization(model.decoder, "bias_ih_l0", nn.Tanh())
    calls: list[str] = []
    handle = model.decoder.register_forward_hook(lambda *args: calls.append("forward"))
    model.decoder.register_full_backward_hook(lambda *args: calls.append("backward"))
    x = _x()
    theirs = _run(model, x)
    params, lists = dict(model.named_parameters()), model.encoder.parametrizations

    rnnkernels.unconvert(rnnkernels.convert(model))
    assert parametrize.type_before_parametrizations(model.encoder) is nn.LSTM
    assert parametrize.type_before_parametrizations(model.decoder) is nn.GRU
    assert model.encoder.parametrizations is lists
    assert all(p is params[n] for n, p in model.named_parameters())
    calls.clear()
    _assert_same_run(_run(model, x), theirs, exact=True)
    assert calls == ["forward", "backward"]
    handle.remove()
    calls.clear()
    model(x)
    assert calls == []


class TaggedGRU(rnnkernels.GRU):
    def __init__(self, *args, tag: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tag = tag


class ScaledGRU(rnnkernels.GRU):
    def forward(self, input, hx=None):
        return super().forward(2 * input, hx)


def test_unconvert_subclasses_as_convert_does():
    model = nn.ModuleDict({"a": TaggedGRU(3, 4, tag="x"), "b": ScaledGRU(3, 4)})
    with pytest.warns(UserWarning) as record:
        rnnkernels.unconvert(model)
    assert [str(w.message) for w in record] == [
        "rnnkernels.unconvert: left 'b' (ScaledGRU) as it is: its class defines forward, which "
        "nn.GRU would not have"
    ]
    assert type(model.a) is nn.GRU and model.a.tag == "x"
    assert type(model.b) is ScaledGRU


# --- TorchScript ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["GRU", "RNN", "IndRNN"])
def test_script_gives_eager_numbers(cell):
    torch.manual_seed(0)
    model = rnnkernels.convert(Model(cell))
    model.decoder.eval()
    x = _x()
    eager = _run(model, x)
    modules = dict(model.named_modules())

    scripted = torch.jit.script(model)

    # the eager model is left as it was (torch writes what __prepare_scriptable__ returns back
    # into the parent: ours returns the module itself)
    assert dict(model.named_modules()) == modules
    # the scripted model holds the very parameters: gradients reach them
    assert all(p is q for p, q in zip(scripted.parameters(), model.parameters(), strict=True))
    _assert_same_run(_run(scripted, x), eager)


def test_scripted_model_loads_without_rnnkernels(tmp_path):
    """Saved, a scripted model loads and runs in a process that never imports rnnkernels: the
    LSTM runs torch's op, the IndRNN its TorchScript loop."""
    torch.manual_seed(0)
    model = rnnkernels.convert(Model("IndRNN")).eval()
    x = _x()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), path)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "expected.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(path)!r})\n"
        f"x, expected = torch.load({str(tmp_path / 'x.pt')!r}), "
        f"torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "torch.testing.assert_close(m(x), expected, atol=5e-5, rtol=1e-6)\n"
        "assert 'rnnkernels' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


class Packed(nn.Module):
    """A recurrent layer called on packed, padded-with-hx and unbatched input."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        if isinstance(self.rnn, rnnkernels.LSTM):
            p, s = self.rnn(packed, (h, c))
            y, states = self.rnn(x)
            u, states_u = self.rnn(x[0], (h[:, 0], c[:, 0]))
            return p.data, s[0], s[1], y, states[0], states[1], u, states_u[0], states_u[1]
        p, s = self.rnn(packed, h)
        y, state = self.rnn(x)
        u, state_u = self.rnn(x[0], h[:, 0])
        return p.data, s, y, state, u, state_u


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN", "IndRNN"])
def test_script_packed_hx_unbatched(cell):
    torch.manual_seed(0)
    # LSTM: hidden 4 with projection to 2, so h and c have different sizes
    kwargs = {"proj_size": 2, "hidden_size": 4} if cell == "LSTM" else {"hidden_size": 2}
    if cell == "IndRNN":
        kwargs["recurrent_max_abs"] = 0.8
    if cell == "RNN":
        kwargs["nonlinearity"] = "relu"
    rnn = getattr(rnnkernels, cell)(3, num_layers=2, bidirectional=True, batch_first=True,
                                     **kwargs)  # fmt: skip
    model = Packed(rnn)
    x, lengths = _x(B=4, T=6), torch.tensor([6, 2, 4, 1])
    h, c = torch.randn(4, 4, 2), torch.randn(4, 4, 4)  # [layers * directions, B, size]
    scripted = torch.jit.script(model)
    for ours, theirs in zip(scripted(x, lengths, h, c), model(x, lengths, h, c), strict=True):
        assert_close(ours, theirs)


def test_script_rejects_parametrized_module():
    model = Model()
    parametrizations.weight_norm(model.encoder, "weight_hh_l0")
    rnnkernels.convert(model)
    with pytest.raises(RuntimeError, match=r"^rnnkernels\.LSTM: torch\.jit\.script cannot script "
                       r"a parametrized module \(parametrized: weight_hh_l0;"):  # fmt: skip
        torch.jit.script(model)


def test_trace_gives_eager_numbers():
    torch.manual_seed(0)
    model = rnnkernels.convert(Model("IndRNN"))
    x = _x()
    eager = _run(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes read as constants
        traced = torch.jit.trace(model, x)
    _assert_same_run(_run(traced, x), eager, exact=True)
    other = _x(seed=2)
    assert_close(traced(other), model(other))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)  # loads where rnnkernels is imported: the graph calls its ops
    assert_close(torch.jit.load(buffer)(other), model(other))


# --- dynamic quantization ------------------------------------------------------------------------

SPEC = {nn.LSTM, nn.GRU, nn.Linear}


def _quantized(model: nn.Module, spec: set, dtype: torch.dtype) -> nn.Module:
    with warnings.catch_warnings():
        # torch.ao.quantization and its int8 tensors are deprecated (in favour of torchao)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        return quantize_dynamic(model, spec, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_quantize_dynamic(dtype):
    torch.manual_seed(0)
    model = Model(proj_size=0)  # torch's quantized LSTM has no projection
    x = _x()
    expected = _quantized(model, SPEC, dtype)(x)
    rnnkernels.convert(model)
    float_out = model(x)

    # the documented path: unconvert, then quantize as for torch's model
    quantized = _quantized(rnnkernels.unconvert(copy.deepcopy(model)), SPEC, dtype)
    assert type(quantized.encoder) is nnqd.LSTM and type(quantized.decoder) is nnqd.GRU
    torch.testing.assert_close(quantized(x), expected, rtol=0, atol=0)

    # our classes in the spec quantize as torch's do
    spec = {rnnkernels.LSTM, rnnkernels.GRU, nn.Linear}
    quantized = _quantized(model, spec, dtype)
    assert type(quantized.encoder) is nnqd.LSTM and type(quantized.decoder) is nnqd.GRU
    torch.testing.assert_close(quantized(x), expected, rtol=0, atol=0)
    assert type(model.encoder) is rnnkernels.LSTM  # the float model is left as it was
    torch.testing.assert_close(model(x), float_out, rtol=0, atol=0)


def test_quantize_dynamic_leaves_rnn_as_torch_leaves_nn_rnn():
    """torch has no dynamic quantized nn.RNN: quantize_dynamic leaves it in fp32, even named in
    the spec. Ours the same: the Linear quantized, the RNN ours and fp32, torch's numbers."""
    torch.manual_seed(0)
    model = Model("RNN", proj_size=0)
    x = _x()
    expected = _quantized(copy.deepcopy(model), {nn.RNN, nn.Linear}, torch.qint8)
    assert type(expected.decoder) is nn.RNN
    rnnkernels.convert(model)
    quantized = _quantized(model, {rnnkernels.RNN, nn.Linear}, torch.qint8)
    assert type(quantized.decoder) is rnnkernels.RNN
    assert type(quantized.head) is type(expected.head)
    assert_close(quantized(x), expected(x), "output")


def test_quantize_dynamic_indrnn_raises():
    model = rnnkernels.convert(Model("IndRNN"))
    with pytest.raises(TypeError, match=r"^rnnkernels\.IndRNN has no dynamic quantized form"):
        _quantized(model, {rnnkernels.IndRNN}, torch.qint8)


# --- paths that work unchanged -------------------------------------------------------------------


def test_ddp(tmp_path):
    torch.manual_seed(0)
    model = rnnkernels.convert(Model())
    x = _x()
    eager = _run(model, x)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        ddp = DistributedDataParallel(copy.deepcopy(model))
        out, x_grad, grads = _run(ddp, x)
    finally:
        dist.destroy_process_group()
    grads = {name.removeprefix("module."): g for name, g in grads.items()}
    _assert_same_run((out, x_grad, grads), eager, exact=True)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing(use_reentrant):
    torch.manual_seed(0)
    model = rnnkernels.convert(Model(dropout=0.3))  # dropout: the recompute replays the RNG
    x = _x()

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.model, x, use_reentrant=use_reentrant)

    torch.manual_seed(1)
    eager = _run(model, x)
    torch.manual_seed(1)
    out, x_grad, grads = _run(Checkpointed(), x)
    grads = {name.removeprefix("model."): g for name, g in grads.items()}
    _assert_same_run((out, x_grad, grads), eager, exact=True)


def test_pickle_and_deepcopy():
    torch.manual_seed(0)
    model = rnnkernels.convert(Model("IndRNN"), backend="reference")
    x = _x()
    eager = _run(model, x)

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(model)
    for twin in (loaded, copied):
        assert type(twin.encoder) is rnnkernels.LSTM and twin.encoder.backend == "reference"
        assert not any(p is q for p, q in zip(twin.parameters(), model.parameters()))
        _assert_same_run(_run(twin, x), eager, exact=True)
