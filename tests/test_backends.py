"""Backends: names, availability, precedence of backend= over the selection, and errors that say
why. (The selection itself, per thread and task and under torch.compile: test_selection.py.)"""

import os

import pytest
import torch

import rnnkernels
from rnnkernels import backends

CPU_CALL = backends.LayerCall("lstm", torch.device("cpu"), torch.float32)


def test_reference_is_always_available():
    assert "reference" in rnnkernels.available_backends()
    assert set(rnnkernels.available_backends()) <= set(rnnkernels.backend_names())


def test_auto_on_cpu_picks_an_available_backend():
    assert backends.resolve("auto", CPU_CALL) in rnnkernels.available_backends()


def test_module_argument_overrides_global_choice(monkeypatch):
    calls = []
    real_resolve = backends.resolve
    monkeypatch.setattr(
        "rnnkernels.functional.resolve", lambda *a: calls.append(a[0]) or real_resolve(*a)
    )
    with rnnkernels.set_backend("auto"):
        rnnkernels.GRU(2, 3, backend="reference")(torch.randn(4, 1, 2))
        rnnkernels.GRU(2, 3)(torch.randn(4, 1, 2))
    assert calls == ["reference", None]


REJECTERS = {
    "backend argument": lambda: rnnkernels.LSTM(2, 3, backend="nope"),
    "set_backend": lambda: rnnkernels.set_backend("nope"),
    "set_default_backend": lambda: rnnkernels.set_default_backend("nope"),
    "resolve": lambda: backends.resolve("nope", CPU_CALL),
}


@pytest.mark.parametrize("where", REJECTERS)
def test_unknown_backend_name_is_rejected(where):
    """Each way of naming a backend. (RNNKERNELS_BACKEND, checked at import: test_errors.py.)"""
    source = "backend argument" if where == "resolve" else where
    with pytest.raises(ValueError, match=rf"unknown rnnkernels backend 'nope' \(from {source}\)"):
        REJECTERS[where]()


def test_named_backend_that_cannot_run_says_why(monkeypatch):
    picky = backends.Backend(
        name="picky",
        description="runs only IndRNN, only on CUDA",
        unavailable=lambda: None,
        cannot_run=lambda call: (
            None if call.cell == "indrnn" and call.device.type == "cuda" else "needs CUDA"
        ),
    )
    monkeypatch.setitem(backends._REGISTRY, "picky", picky)
    with pytest.raises(
        rnnkernels.BackendError, match="backend 'picky' cannot run this lstm call: needs CUDA"
    ):
        rnnkernels.LSTM(2, 3, backend="picky")(torch.randn(4, 1, 2))
    broken = backends.Backend("broken", "", lambda: "its library did not load", lambda call: None)
    monkeypatch.setitem(backends._REGISTRY, "broken", broken)
    assert "broken" not in rnnkernels.available_backends()
    with pytest.raises(rnnkernels.BackendError, match="its library did not load"):
        rnnkernels.GRU(2, 3, backend="broken")(torch.randn(4, 1, 2))


@pytest.mark.skipif(
    os.environ.get("RNNKERNELS_NO_EXTENSION") == "1", reason="installed without the extension"
)
def test_cpp_backend_is_built():
    """A normal install builds the extension: its tests must not be skipped silently."""
    assert "cpp" in rnnkernels.available_backends(), backends.why_unavailable("cpp")


@pytest.mark.parametrize("name", ["numba", "triton"])
def test_python_backends_are_installed(name):
    """The test install has numba and triton (Triton's interpreter on CPU): their share of the
    suite must not be skipped silently."""
    assert name in rnnkernels.available_backends(), backends.why_unavailable(name)


@pytest.mark.parametrize("name,extra", [("numba", "numba"), ("triton", "triton")])
def test_missing_package_names_the_extra(monkeypatch, name, extra):
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda module: None)
    assert name not in rnnkernels.available_backends()
    with pytest.raises(rnnkernels.BackendError, match=rf"pip install 'rnnkernels\[{extra}\]'"):
        rnnkernels.GRU(2, 3, backend=name)(torch.randn(4, 1, 2))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(rnnkernels.BackendError, match="CUDA tensors .*TRITON_INTERPRET=1"):
        rnnkernels.GRU(2, 3, backend="triton")(torch.randn(4, 1, 2))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(rnnkernels.BackendError, match="bfloat16 needs a GPU"):
        rnnkernels.GRU(2, 3, backend="triton", dtype=torch.bfloat16)(
            torch.randn(4, 1, 2, dtype=torch.bfloat16)
        )


@pytest.mark.parametrize("name", ["numba", "cpp"])
def test_cpu_backends_reject_other_dtypes(name):
    """The CPU backends run fp32, fp64, bf16 and fp16 (tests/test_half.py) and say so for any
    other dtype (none reaches them through a module: the check takes floating point only)."""
    call = backends.LayerCall("gru", torch.device("cpu"), torch.float8_e4m3fn)
    assert backends._REGISTRY[name].cannot_run(call) == (
        "it supports float32, float64, bfloat16 and float16, got torch.float8_e4m3fn"
    )
