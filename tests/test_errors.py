"""Bad inputs get clear errors: torch's exception type and message where torch has one, else our
own message naming the argument and what was expected. Also NaN propagation and edge sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels.testing import EagerIndRNN, torch_twin

I, H, T, B = 3, 4, 5, 2  # noqa: E741 (docs/design.md §1 dimension letters)

# ours, torch's module with the same conventions (nn.RNN for IndRNN's argument conventions)
CELLS = {
    "LSTM": (rnnkernels.LSTM, nn.LSTM),
    "GRU": (rnnkernels.GRU, nn.GRU),
    "IndRNN": (rnnkernels.IndRNN, nn.RNN),
    "RNN": (rnnkernels.RNN, nn.RNN),
}
ALL_CELLS = pytest.mark.parametrize("cell", list(CELLS))
TORCH_CELLS = pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])


def _pair(cell: str, seed: int = 0, **kwargs):
    ours_cls, torch_cls = CELLS[cell]
    torch.manual_seed(seed)
    ours = ours_cls(I, H, **kwargs)
    torch.manual_seed(seed)
    theirs = torch_cls(I, H, **kwargs)
    return ours, theirs


def _raised(fn) -> BaseException:
    """The exception ``fn`` raises (it must raise)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def _raises_like(exc: BaseException):
    """pytest.raises for exactly torch's exception type and message."""
    return pytest.raises(type(exc), match="^" + re.escape(str(exc)) + "$")


def _hx(cell: str, shape, c_shape=None, **kw):
    """hx for ``cell``: a tuple (h0, c0) for LSTM, one tensor otherwise."""
    h = torch.zeros(shape, **kw)
    if cell == "LSTM":
        return h, torch.zeros(c_shape if c_shape is not None else shape, **kw)
    return h


# --- input rank, feature size, type --------------------------------------------------------------


@TORCH_CELLS
@pytest.mark.parametrize("shape", [(I,), (T, B, 1, I)], ids=["1d", "4d"])
def test_input_rank_matches_torch(cell, shape):
    ours, theirs = _pair(cell)
    x = torch.randn(shape)
    with _raises_like(_raised(lambda: theirs(x))):
        ours(x)


@pytest.mark.parametrize("shape", [(I,), (T, B, 1, I)], ids=["1d", "4d"])
def test_indrnn_input_rank(shape):
    x = torch.randn(shape)
    with pytest.raises(
        ValueError, match=rf"^IndRNN: Expected input to be 2D or 3D, got {len(shape)}D"
    ):
        rnnkernels.IndRNN(I, H)(x)


@TORCH_CELLS
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_input_feature_size_matches_torch(cell, layout):
    ours, theirs = _pair(cell, batch_first=layout == "batch_first")
    x = torch.randn((T, I + 2) if layout == "unbatched" else (T, B, I + 2))
    with _raises_like(_raised(lambda: theirs(x))):
        ours(x)


@ALL_CELLS
def test_input_feature_size_mentions_sizes(cell):
    """IndRNN (no torch twin) and packed input (torch fails inside a matmul): our message."""
    ours, _ = _pair(cell)
    msg = re.escape(f"input.size(-1) must be equal to input_size. Expected {I}, got {I + 2}")
    with pytest.raises(RuntimeError, match=msg):
        ours(torch.randn(T, B, I + 2))
    packed = pack_padded_sequence(torch.randn(T, 3, I + 2), [5, 3, 2])
    with pytest.raises(RuntimeError, match=msg):
        ours(packed)


@ALL_CELLS
@pytest.mark.parametrize("bad", [[[1.0, 2.0, 3.0]], (1.0, 2.0, 3.0), None, 3.0], ids=repr)
def test_input_not_tensor_or_packed(cell, bad):
    # torch fails with "AttributeError: 'list' object has no attribute 'dim'"; we say what we want
    ours, _ = _pair(cell)
    with pytest.raises(TypeError, match=r"input must be a Tensor or a PackedSequence, got \w+"):
        ours(bad)


# --- hidden state shape / rank / type ------------------------------------------------------------


def _bad_hidden_shapes(cell: str, proj_size: int = 0):
    """(id, hx) pairs with exactly one wrong shape, for batched input of batch B."""
    R = proj_size or H
    good_h, good_c = (1, B, R), (1, B, H)
    wrong = {"batch": (1, B + 1), "layers": (2, B), "size": (1, B)}
    cases = []
    for what, (first, second) in wrong.items():
        size_h = R + 1 if what == "size" else R
        size_c = H + 1 if what == "size" else H
        if cell == "LSTM":
            cases.append((f"h0-{what}", _hx(cell, (first, second, size_h), good_c)))
            cases.append((f"c0-{what}", _hx(cell, good_h, (first, second, size_c))))
        else:
            cases.append((what, _hx(cell, (first, second, size_h))))
    return cases


@TORCH_CELLS
@pytest.mark.parametrize("proj_size", [0, 2])
def test_hidden_shape_matches_torch(cell, proj_size):
    if cell != "LSTM" and proj_size:
        pytest.skip("proj_size is LSTM only")
    kwargs = {"proj_size": proj_size} if proj_size else {}
    ours, theirs = _pair(cell, **kwargs)
    x = torch.randn(T, B, I)
    for case, hx in _bad_hidden_shapes(cell, proj_size):
        exc = _raised(lambda hx=hx: theirs(x, hx))
        assert "Expected hidden" in str(exc), case
        with _raises_like(exc):
            ours(x, hx)


@TORCH_CELLS
def test_lstm_proj_h0_must_have_proj_size(cell):
    """With projections h0 is [L*D, B, P] and c0 [L*D, B, H]; passing H for h0 is an error."""
    if cell != "LSTM":
        pytest.skip("LSTM only")
    ours, theirs = _pair(cell, proj_size=2)
    x, hx = torch.randn(T, B, I), _hx(cell, (1, B, H))
    exc = _raised(lambda hx=hx: theirs(x, hx))
    assert "(1, 2, 2)" in str(exc)
    with _raises_like(exc):
        ours(x, hx)


@TORCH_CELLS
def test_hidden_shape_unbatched_matches_torch(cell):
    ours, theirs = _pair(cell)
    x = torch.randn(T, I)
    hxs = [_hx(cell, (1, H + 1), (1, H)), _hx(cell, (2, H))]
    if cell == "LSTM":
        hxs.append(_hx(cell, (1, H), (1, H + 1)))
    for hx in hxs:
        with _raises_like(_raised(lambda hx=hx: theirs(x, hx))):
            ours(x, hx)


@ALL_CELLS
def test_hidden_shape_indrnn_and_packed(cell):
    """IndRNN: torch.nn.RNN's message. Packed input: expected batch is batch_sizes[0] (torch
    itself fails there with an unrelated broadcasting error, so this is our message)."""
    ours, _ = _pair(cell)
    if cell == "IndRNN":
        theirs = nn.RNN(I, H)
        x, hx = torch.randn(T, B, I), torch.zeros(1, B + 1, H)
        with _raises_like(_raised(lambda hx=hx: theirs(x, hx))):
            ours(x, hx)
    packed = pack_padded_sequence(torch.randn(T, 3, I), [5, 3, 2])
    hx = _hx(cell, (1, 2, H), (1, 3, H))
    with pytest.raises(
        RuntimeError,
        match=re.escape("Expected hidden[0] size (1, 3, 4), got [1, 2, 4]")
        if cell == "LSTM"
        else re.escape("Expected hidden size (1, 3, 4), got [1, 2, 4]"),
    ):
        ours(packed, hx)


@ALL_CELLS
@pytest.mark.parametrize("which", ["h0", "c0"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_hidden_rank_matches_torch(cell, which, unbatched):
    if which == "c0" and cell != "LSTM":
        pytest.skip("c0 is LSTM only")
    ours, theirs = _pair(cell)
    x = torch.randn((T, I) if unbatched else (T, B, I))
    good, bad = ((1, H), (1, B, H)) if unbatched else ((1, B, H), (B, H))
    hx = _hx(cell, bad, good) if which == "h0" else _hx(cell, good, bad)
    exc = _raised(lambda hx=hx: theirs(x, hx))
    assert "should also be" in str(exc)
    with _raises_like(exc):
        ours(x, hx)


def test_lstm_hx_not_a_tuple():
    # torch: "IndexError: index 1 is out of bounds for dimension 0 with size 1"
    ours = rnnkernels.LSTM(I, H)
    with pytest.raises(
        TypeError, match=r"hx must be a tuple \(h_0, c_0\) of two tensors, got Tensor"
    ):
        ours(torch.randn(T, B, I), torch.zeros(1, B, H))
    # torch: "IndexError: tuple index out of range"; ours: torch's message for three states
    with pytest.raises(RuntimeError, match="lstm expects two hidden states"):
        ours(torch.randn(T, B, I), (torch.zeros(1, B, H),))
    with pytest.raises(TypeError, match=r"hidden\[1\] must be a Tensor, got NoneType"):
        ours(torch.randn(T, B, I), (torch.zeros(1, B, H), None))


def test_lstm_hx_three_states_matches_torch():
    ours, theirs = _pair("LSTM")
    x, hx = torch.randn(T, B, I), (torch.zeros(1, B, H),) * 3
    with _raises_like(
        _raised(lambda hx=hx: theirs(x, hx))
    ):  # RuntimeError: lstm expects two hidden states
        ours(x, hx)


def test_lstm_hx_list_accepted_like_torch():
    ours, theirs = _pair("LSTM")
    x = torch.randn(T, B, I)
    hx = [torch.randn(1, B, H), torch.randn(1, B, H)]
    (y, (h, c)), (ty, (th, tc)) = ours(x, hx), theirs(x, hx)
    atol, rtol = rnnkernels.testing.TOLERANCES[torch.float32]
    for a, b in ((y, ty), (h, th), (c, tc)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("cell", ["GRU", "IndRNN"])
def test_single_state_hx_given_as_tuple(cell):
    # torch: "AttributeError: 'tuple' object has no attribute 'dim'"
    ours, _ = _pair(cell)
    with pytest.raises(TypeError, match=r"hidden must be a Tensor, got tuple"):
        ours(torch.randn(T, B, I), (torch.zeros(1, B, H),))


# --- dtype and device ----------------------------------------------------------------------------


@TORCH_CELLS
@pytest.mark.parametrize(
    "module_dtype,input_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.int64)],
    ids=str,
)
def test_input_dtype_mismatch_matches_torch(cell, module_dtype, input_dtype):
    ours, theirs = _pair(cell, dtype=module_dtype)
    x = torch.ones(T, B, I, dtype=input_dtype)
    with _raises_like(_raised(lambda: theirs(x))):
        ours(x)


def test_indrnn_input_dtype_mismatch_like_rnn():
    ours, theirs = _pair("IndRNN")
    x = torch.ones(T, B, I, dtype=torch.float64)
    with _raises_like(_raised(lambda: theirs(x))):
        ours(x)


@ALL_CELLS
@pytest.mark.parametrize("which", ["h0", "c0"])
def test_hidden_dtype_mismatch_is_clear(cell, which):
    # torch crashes unhelpfully ("get_mkldnn_dtype: unsupported data type" for LSTM, "mat1 and
    # mat2 must have the same dtype" for GRU/RNN), so our message must name the state and dtypes.
    if which == "c0" and cell != "LSTM":
        pytest.skip("c0 is LSTM only")
    ours, _ = _pair(cell)
    good, bad = torch.zeros(1, B, H), torch.zeros(1, B, H, dtype=torch.float64)
    if cell == "LSTM":
        hx, name = ((bad, good), r"hidden\[0\]") if which == "h0" else ((good, bad), r"hidden\[1\]")
    else:
        hx, name = bad, "hidden"
    with pytest.raises((ValueError, RuntimeError)) as info:
        ours(torch.randn(T, B, I), hx)
    message = str(info.value)
    assert re.search(name, message), message
    assert "torch.float64" in message and "torch.float32" in message, message


@ALL_CELLS
@pytest.mark.parametrize("params_on", ["meta", "cpu"])
def test_input_device_mismatch_matches_torch(cell, params_on):
    ours, theirs = _pair(cell, device=params_on)
    x = torch.randn(T, B, I, device="cpu" if params_on == "meta" else "meta")
    with _raises_like(_raised(lambda: theirs(x))):
        ours(x)


@ALL_CELLS
@pytest.mark.parametrize("which", ["h0", "c0"])
def test_hidden_device_mismatch_matches_torch(cell, which):
    if which == "c0" and cell != "LSTM":
        pytest.skip("c0 is LSTM only")
    ours, theirs = _pair(cell)
    good, bad = torch.zeros(1, B, H), torch.zeros(1, B, H, device="meta")
    hx = ((bad, good) if which == "h0" else (good, bad)) if cell == "LSTM" else bad
    x = torch.randn(T, B, I)
    exc = _raised(lambda hx=hx: theirs(x, hx))
    assert "not at the same device" in str(exc)
    with _raises_like(exc):
        ours(x, hx)


# --- constructor arguments -----------------------------------------------------------------------

BAD_CONFIGS = {
    "input_size=0": dict(input_size=0),
    "input_size=-1": dict(input_size=-1),
    "hidden_size=0": dict(hidden_size=0),
    "hidden_size=-2": dict(hidden_size=-2),
    "input_size=3.0": dict(input_size=3.0),
    "hidden_size=4.0": dict(hidden_size=4.0),
    "num_layers=0": dict(num_layers=0),
    "num_layers=-1": dict(num_layers=-1),
    "dropout=-0.1": dict(dropout=-0.1),
    "dropout=1.5": dict(dropout=1.5),
    "dropout=True": dict(dropout=True),
    "dropout=False": dict(dropout=False),
    "dropout='0.1'": dict(dropout="0.1"),
    "bias=1": dict(bias=1),
    "bias=None": dict(bias=None),
    "batch_first=1": dict(batch_first=1),
    "batch_first='yes'": dict(batch_first="yes"),
}
LSTM_ONLY_CONFIGS = {
    "proj_size=hidden": dict(proj_size=4),
    "proj_size>hidden": dict(proj_size=7),
    "proj_size=-1": dict(proj_size=-1),
}


def _construct(cls, kwargs):
    full = {"input_size": I, "hidden_size": H, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout / num_layers warning
        return cls(**full)


@ALL_CELLS
@pytest.mark.parametrize("config", list(BAD_CONFIGS), ids=str)
def test_bad_constructor_args_match_torch(cell, config):
    ours_cls, torch_cls = CELLS[cell]
    kwargs = BAD_CONFIGS[config]
    with _raises_like(_raised(lambda: _construct(torch_cls, kwargs))):
        _construct(ours_cls, kwargs)


@pytest.mark.parametrize("config", list(LSTM_ONLY_CONFIGS), ids=str)
def test_bad_proj_size_matches_torch(config):
    kwargs = LSTM_ONLY_CONFIGS[config]
    with _raises_like(_raised(lambda: _construct(nn.LSTM, kwargs))):
        _construct(rnnkernels.LSTM, kwargs)


@pytest.mark.parametrize("cell", ["GRU", "RNN"])
@pytest.mark.parametrize("proj_size", [0, 2, 4, -1])
def test_gru_and_rnn_proj_size_matches_torch(cell, proj_size):
    kwargs = {"proj_size": proj_size}
    ours_cls, torch_cls = CELLS[cell]
    exc = _raised(lambda: _construct(torch_cls, kwargs))
    assert "only supported for LSTM" in str(exc)
    with _raises_like(exc):
        _construct(ours_cls, kwargs)


@ALL_CELLS
@pytest.mark.parametrize("num_layers", [1.5, 2.0])
def test_non_int_num_layers(cell, num_layers):
    # torch: TypeError from range() ("'float' object cannot be interpreted as an integer"). Ours
    # must be a TypeError too, and not claim that 1.5 is not "greater than zero".
    ours_cls, _ = CELLS[cell]
    with pytest.raises(TypeError, match=r"num_layers.*int"):
        ours_cls(I, H, num_layers=num_layers)


@pytest.mark.parametrize("cell", ["IndRNN", "RNN"])
def test_bad_nonlinearity_like_rnn(cell):
    exc = _raised(lambda: nn.RNN(I, H, nonlinearity="sigmoid"))
    with _raises_like(exc):
        CELLS[cell][0](I, H, nonlinearity="sigmoid")


def test_functional_rnn_bad_nonlinearity_like_rnn():
    exc = _raised(lambda: nn.RNN(I, H, nonlinearity="sigmoid"))
    m = rnnkernels.RNN(I, H)
    with _raises_like(exc):
        rnnkernels.functional.rnn(torch.randn(T, B, I), None, m._layer_weights(), H,
                                  nonlinearity="sigmoid")  # fmt: skip


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), float("-inf")], ids=repr)
def test_indrnn_non_positive_recurrent_max_abs(value):
    with pytest.raises(ValueError, match=r"recurrent_max_abs must be positive"):
        rnnkernels.IndRNN(I, H, recurrent_max_abs=value)


# --- sequence length 0, batch 0 ------------------------------------------------------------------


@TORCH_CELLS
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_zero_length_sequence_matches_torch(cell, layout):
    ours, theirs = _pair(cell, batch_first=layout == "batch_first")
    shape = {"time_major": (0, B, I), "batch_first": (B, 0, I), "unbatched": (0, I)}[layout]
    x = torch.randn(shape)
    exc = _raised(lambda: theirs(x))
    assert str(exc) == "Expected sequence length to be larger than 0 in RNN"
    with _raises_like(exc):
        ours(x)


def test_indrnn_zero_length_sequence():
    with pytest.raises(RuntimeError, match="^Expected sequence length to be larger than 0 in RNN$"):
        rnnkernels.IndRNN(I, H)(torch.randn(0, B, I))


def _shapes(out):
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape), out.dtype)
    return tuple(_shapes(o) for o in out)


@ALL_CELLS
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"batch_first": True}, {"num_layers": 2, "bidirectional": True}, {"proj_size": 2}],
    ids=["plain", "batch_first", "2layer-bidir", "proj"],
)
@pytest.mark.parametrize("with_hx", [False, True])
def test_empty_batch_shapes_match_torch(cell, kwargs, with_hx):
    if "proj_size" in kwargs and cell != "LSTM":
        pytest.skip("proj_size is LSTM only")
    ours, theirs = _pair(cell, **kwargs)
    x = torch.randn((0, T, I) if kwargs.get("batch_first") else (T, 0, I))
    hx = None
    if with_hx:
        D = 2 if kwargs.get("bidirectional") else 1
        L = kwargs.get("num_layers", 1)
        hx = _hx(cell, (L * D, 0, kwargs.get("proj_size") or H), (L * D, 0, H))
    assert _shapes(ours(x, hx)) == _shapes(theirs(x, hx))


# --- backend names -------------------------------------------------------------------------------


@ALL_CELLS
def test_unknown_backend_module_kwarg(cell):
    ours_cls, _ = CELLS[cell]
    with pytest.raises(ValueError, match=r"unknown rnnkernels backend 'bogus'") as info:
        ours_cls(I, H, backend="bogus")
    assert "backend argument" in str(info.value)
    assert "'reference'" in str(info.value) and "'auto'" in str(info.value)


def test_unknown_backend_set_backend_leaves_choice_unchanged():
    before = rnnkernels.get_backend()
    with pytest.raises(
        ValueError, match=r"unknown rnnkernels backend 'bogus' \(from set_backend\)"
    ):
        rnnkernels.set_backend("bogus")
    assert rnnkernels.get_backend() == before
    with pytest.raises(ValueError, match=r"unknown rnnkernels backend 'bogus'"):
        with rnnkernels.set_backend("bogus"):
            pass  # never reached: the constructor raises
    assert rnnkernels.get_backend() == before


def test_backend_environment_variable_unknown_name():
    """RNNKERNELS_BACKEND is read and checked once, when rnnkernels is imported: an unknown name
    fails the import, naming the variable and the known backends. Tested in a fresh interpreter.
    (A valid name selecting a backend is the backend-selection tests' job.)"""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, RNNKERNELS_BACKEND="bogus")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", "import rnnkernels"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    expected = "unknown rnnkernels backend 'bogus' (from RNNKERNELS_BACKEND); expected one of"
    assert f"ValueError: {expected} ['auto', 'reference'" in done.stderr, done.stderr


# --- NaN propagation -----------------------------------------------------------------------------

NAN_CONFIGS = [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"batch_first": True},
    {"proj_size": 2, "num_layers": 2},
    {"nonlinearity": "tanh"},
]


def _as_tuple(states):
    return states if isinstance(states, tuple) else (states,)


@ALL_CELLS
@pytest.mark.parametrize(
    "config", NAN_CONFIGS, ids=lambda c: ",".join(map(str, c.items())) or "plain"
)
@pytest.mark.parametrize("where", ["input", "h0"])
def test_nan_propagates_like_torch(cell, config, where):
    if "proj_size" in config and cell != "LSTM":
        pytest.skip("proj_size is LSTM only")
    if "nonlinearity" in config and cell not in ("IndRNN", "RNN"):
        pytest.skip("nonlinearity is RNN and IndRNN only")
    ours_cls, _ = CELLS[cell]
    torch.manual_seed(0)
    ours = ours_cls(I, H, **config)
    reference = torch_twin(ours)
    if cell == "IndRNN":
        assert isinstance(reference, EagerIndRNN)
    Bn, Tn = 3, 6
    x = torch.randn((Bn, Tn, I) if config.get("batch_first") else (Tn, Bn, I))
    hx = None
    if where == "input":
        x[(1, 2, 0) if config.get("batch_first") else (2, 1, 0)] = float("nan")
    else:
        D = 2 if config.get("bidirectional") else 1
        L = config.get("num_layers", 1)
        h0 = torch.randn(L * D, Bn, config.get("proj_size") or H)
        h0[0, 1, 0] = float("nan")
        hx = (h0, torch.randn(L * D, Bn, H)) if cell == "LSTM" else h0
    y, states = ours(x, hx)
    ty, tstates = reference(x, hx)
    assert ty.isnan().any()  # the test means something
    assert torch.equal(y.isnan(), ty.isnan())
    for a, b in zip(_as_tuple(states), _as_tuple(tstates), strict=True):
        assert torch.equal(a.isnan(), b.isnan())
    # where both are finite they agree
    atol, rtol = rnnkernels.testing.TOLERANCES[torch.float32]
    torch.testing.assert_close(y.nan_to_num(0.0), ty.nan_to_num(0.0), atol=atol, rtol=rtol)


@TORCH_CELLS
def test_nan_propagates_like_torch_packed(cell):
    ours, theirs = _pair(cell, bidirectional=True)
    x = torch.randn(6, 3, I)
    x[1, 2, 1] = float("nan")  # inside sequence 2 (length 3)
    packed = pack_padded_sequence(x, [6, 4, 3], enforce_sorted=True)
    (y, states), (ty, tstates) = ours(packed), theirs(packed)
    assert ty.data.isnan().any()
    assert torch.equal(y.data.isnan(), ty.data.isnan())
    for a, b in zip(_as_tuple(states), _as_tuple(tstates), strict=True):
        assert torch.equal(a.isnan(), b.isnan())
