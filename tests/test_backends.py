"""Backend selection: names, precedence, context manager, env var, and errors that say why."""

import os
import subprocess
import sys

import pytest
import torch

import rnnkernels
from rnnkernels import backends


def test_reference_is_always_available():
    assert "reference" in rnnkernels.available_backends()
    assert set(rnnkernels.available_backends()) <= set(rnnkernels.backend_names())


def test_auto_on_cpu_picks_an_available_backend():
    name = backends.resolve("auto", "lstm", torch.empty(1))
    assert name in rnnkernels.available_backends()


def test_set_backend_as_call_and_context_manager():
    before = rnnkernels.get_backend()
    with rnnkernels.set_backend("reference"):
        assert rnnkernels.get_backend() == "reference"
        assert backends.resolve(None, "gru", torch.empty(1)) == "reference"
    assert rnnkernels.get_backend() == before
    rnnkernels.set_backend("reference")
    try:
        assert rnnkernels.get_backend() == "reference"
    finally:
        rnnkernels.set_backend(before)


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


@pytest.mark.parametrize("where", ["module", "set_backend", "functional"])
def test_unknown_backend_name_is_rejected(where):
    with pytest.raises(ValueError, match="unknown rnnkernels backend 'nope'.*'reference'"):
        if where == "module":
            rnnkernels.LSTM(2, 3, backend="nope")
        elif where == "set_backend":
            rnnkernels.set_backend("nope")
        else:
            backends.resolve("nope", "lstm", torch.empty(1))


def test_environment_variable_sets_the_default():
    code = "import rnnkernels; print(rnnkernels.get_backend())"
    env = {**os.environ, "RNNKERNELS_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "reference", out.stderr


def test_unknown_environment_variable_fails_at_first_call():
    code = "import torch, rnnkernels; rnnkernels.GRU(2, 3)(torch.randn(4, 1, 2))"
    env = {**os.environ, "RNNKERNELS_BACKEND": "nope"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown rnnkernels backend 'nope' (from set_backend / RNNKERNELS_BACKEND)" in out.stderr


def test_named_backend_that_cannot_run_says_why(monkeypatch):
    picky = backends.Backend(
        name="picky",
        description="runs only IndRNN, only on CUDA",
        module="naive",
        unavailable=lambda: None,
        cannot_run=lambda cell, x: None if cell == "indrnn" and x.is_cuda else "needs CUDA",
    )
    monkeypatch.setitem(backends._REGISTRY, "picky", picky)
    with pytest.raises(
        rnnkernels.BackendError, match="backend 'picky' cannot run this lstm call: needs CUDA"
    ):
        rnnkernels.LSTM(2, 3, backend="picky")(torch.randn(4, 1, 2))
    broken = backends.Backend(
        "broken", "", "naive", lambda: "its library did not load", lambda c, x: None
    )
    monkeypatch.setitem(backends._REGISTRY, "broken", broken)
    assert "broken" not in rnnkernels.available_backends()
    with pytest.raises(rnnkernels.BackendError, match="its library did not load"):
        rnnkernels.GRU(2, 3, backend="broken")(torch.randn(4, 1, 2))


@pytest.mark.skipif(
    os.environ.get("RNNKERNELS_NO_EXTENSION") == "1", reason="installed without the extension"
)
def test_cpp_backend_is_built():
    """A normal install builds the extension: its tests must not be skipped silently."""
    assert "cpp" in rnnkernels.available_backends(), backends.why_not(
        "cpp", "indrnn", torch.empty(0)
    )


@pytest.mark.parametrize("name", ["numba", "triton"])
def test_python_backends_are_installed(name):
    """The test install has numba and triton (Triton's interpreter on CPU): their share of the
    suite must not be skipped silently."""
    assert name in rnnkernels.available_backends(), backends.why_not(name, "gru", torch.empty(0))


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
    if name not in rnnkernels.available_backends():
        pytest.skip(backends.why_not(name, "gru", torch.empty(0)))
    with pytest.raises(rnnkernels.BackendError, match="float32 and float64, got torch.float16"):
        rnnkernels.GRU(2, 3, backend=name, dtype=torch.float16)(
            torch.randn(4, 1, 2, dtype=torch.float16)
        )
