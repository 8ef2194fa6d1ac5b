"""The Numba kernels beyond the shared suites: no C++ extension, determinism, NaN/Inf, long runs,
the kernel cache from a read-only install. (Parity and gradients: the ``backend`` parameter of
test_ops.py, test_parity.py, test_indrnn.py and friends.)"""

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_ops import CELLS as OPS
from test_ops import differentiable

import rnnkernels
from rnnkernels.ops.indrnn import naive as indrnn_naive
from rnnkernels.testing import assert_close, needs, outputs_and_grads, torch_twin

pytestmark = pytest.mark.usefixtures("numba_available")

PACKAGE = Path(rnnkernels.__file__).parent


@pytest.fixture
def numba_available():
    needs("numba", "lstm")


def run_python(code: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_package_runs_on_numba_without_the_cpp_extension():
    """With rnnkernels._C unimportable, auto picks numba on CPU and gives the oracle's numbers."""
    out = run_python("""
        import sys
        class NoExtension:
            def find_spec(self, name, path=None, target=None):
                if name == "rnnkernels._C":
                    raise ImportError("blocked by the test")
        sys.meta_path.insert(0, NoExtension())

        import copy, torch, rnnkernels
        from rnnkernels import backends
        from rnnkernels.testing import assert_close, outputs_and_grads

        assert "cpp" not in rnnkernels.available_backends()
        assert "blocked by the test" in backends.why_unavailable("cpp")
        x = torch.randn(6, 3, 4)
        for cell in (rnnkernels.LSTM, rnnkernels.GRU, rnnkernels.IndRNN):
            auto = cell(4, 5, num_layers=2, bidirectional=True)
            reference = copy.deepcopy(auto)
            reference.backend = "reference"
            name = cell.__name__.lower()
            call = backends.LayerCall(name, x.device, x.dtype, B=3, H=5, R=5)
            assert backends.resolve(None, call) == "numba", name
            got, expected = outputs_and_grads(auto, x, None), outputs_and_grads(reference, x, None)
            for a, b in zip(got[0] + got[1], expected[0] + expected[1]):
                assert_close(a, b, name)
        assert "rnnkernels._C" not in sys.modules
    """)
    assert out.returncode == 0, out.stderr


CELLS = ["lstm", "lstm-proj", "gru", "indrnn"]


def make_module(cell: str, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    if cell.startswith("lstm"):
        return rnnkernels.LSTM(5, 7, proj_size=3 if cell == "lstm-proj" else 0, dtype=dtype, **kw)
    if cell == "gru":
        return rnnkernels.GRU(5, 7, dtype=dtype, **kw)
    return rnnkernels.IndRNN(5, 7, dtype=dtype, **kw)


def packed_input(T: int, lengths: list[int], dtype=torch.float32):
    x = torch.randn(T, len(lengths), 5, dtype=dtype)
    return torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)


@pytest.mark.parametrize("cell", CELLS)
def test_bitwise_deterministic(cell):
    module = make_module(cell, backend="numba", bidirectional=True)
    x = packed_input(9, [9, 4, 1, 7, 1])
    first, second = outputs_and_grads(module, x, None), outputs_and_grads(module, x, None)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn"])
def test_empty_and_overlong_sequences_match_the_oracle(cell, reverse):
    """lengths 0 (nothing runs: states pass through) and beyond T (clipped), via the ops."""
    fwd, _, oracle_fwd, _, make_args, n_out = OPS[cell]
    variant = {"lstm": True, "gru": True, "indrnn": "relu"}[cell]
    args = make_args(variant, torch.tensor([5, 0, 9, 2]), reverse)
    got, expected = fwd(*args, "numba"), oracle_fwd(*args)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"forward output {k}")
    cotangents = [torch.randn_like(o) for o in got[:n_out]]
    got = torch.autograd.grad(got[:n_out], differentiable(args), cotangents)
    expected = torch.autograd.grad(expected[:n_out], differentiable(args), cotangents)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"gradient {k}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_gemm_fallback_without_torch_blas(cell, monkeypatch):
    """Where torch exports no sgemm_/dgemm_, the kernels' step GEMMs are np.dot (scipy's BLAS)."""
    from rnnkernels.ops import numba_jit

    kernels = importlib.import_module(f"rnnkernels.ops.{cell}.numba")
    monkeypatch.setattr(numba_jit, "TORCH_BLAS", False)
    monkeypatch.setattr(kernels, "TORCH_BLAS", False)
    fwd, _, oracle_fwd, _, make_args, n_out = OPS[cell]
    for dtype in (torch.float32, torch.float64):
        args = make_args(True, torch.tensor([5, 0, 3, 2]), False, dtype=dtype)
        got, expected = fwd(*args, "numba"), oracle_fwd(*args)
        cotangents = [torch.randn_like(o) for o in got[:n_out]]
        got_grads = torch.autograd.grad(got[:n_out], differentiable(args), cotangents)
        expected_grads = torch.autograd.grad(expected[:n_out], differentiable(args), cotangents)
        for k, (a, b) in enumerate(zip([*got, *got_grads], [*expected, *expected_grads])):
            assert_close(a, b, f"{dtype} tensor {k}")


@pytest.mark.parametrize("cell", ["lstm", "lstm-proj", "gru"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_nan_and_inf_propagate_as_in_torch(cell, poison):
    """A NaN/Inf in the input reaches the same outputs and gradients as in nn.LSTM / nn.GRU."""
    module = make_module(cell, dtype=torch.float64, backend="numba")
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    x[2, 1, 0] = poison
    got = outputs_and_grads(module, x.clone().requires_grad_(), None)
    expected = outputs_and_grads(torch_twin(module), x.clone().requires_grad_(), None)
    for k, (a, b) in enumerate(zip(got[0] + got[1], expected[0] + expected[1])):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ"
        assert_close(a[~b.isnan()], b[~b.isnan()], f"tensor {k}")


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_indrnn_nan_propagates_like_the_oracle(nonlinearity):
    from rnnkernels.ops.indrnn import numba as kernels

    gx, u, h0 = torch.randn(5, 3, 4), torch.rand(4), torch.randn(3, 4)
    gx[1, 0, 2] = float("nan")
    h0[2, 1] = float("nan")
    lengths = torch.tensor([5, 2, 3])
    y, hT = kernels.indrnn_fwd(gx, u, h0, lengths, False, nonlinearity)
    y_ref, hT_ref = indrnn_naive.indrnn_fwd(gx, u, h0, lengths, False, nonlinearity)
    assert y[1, 0, 2].isnan() and y[0, 2, 1].isnan()
    torch.testing.assert_close(y, y_ref, equal_nan=True)
    torch.testing.assert_close(hT, hT_ref, equal_nan=True)
    grads = torch.randn(5, 3, 4), torch.randn(3, 4)
    got = kernels.indrnn_bwd(*grads, u, h0, lengths, False, nonlinearity, y)
    expected = indrnn_naive.indrnn_bwd(*grads, u, h0, lengths, False, nonlinearity, y_ref)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_long_sequence_matches_torch(cell):
    module = make_module(cell, backend="numba")
    x = torch.randn(2000, 2, 5).requires_grad_()
    got = outputs_and_grads(module, x, None)
    expected = outputs_and_grads(torch_twin(module), x, None)
    for k, (a, b) in enumerate(zip(got[0] + got[1], expected[0] + expected[1])):
        assert_close(a, b, f"tensor {k}")


def test_long_indrnn_with_decaying_gradients_matches_the_eager_loop():
    """u close to 1 and T = 3000: gradients shrink through many steps (into denormals)."""
    module = make_module("indrnn", backend="numba", nonlinearity="tanh")
    with torch.no_grad():
        module.weight_hh_l0.fill_(0.99)
    x = torch.randn(3000, 2, 5).requires_grad_()
    got = outputs_and_grads(module, x, None)
    expected = outputs_and_grads(torch_twin(module), x, None)
    for k, (a, b) in enumerate(zip(got[0] + got[1], expected[0] + expected[1])):
        # weight gradients sum 6000 rows to values ~100: float32 summation order shows at 1e-6
        torch.testing.assert_close(
            a, b, atol=5e-5, rtol=1e-5, msg=lambda m, k=k: f"tensor {k}: {m}"
        )


@pytest.mark.slow  # two fresh processes, one compiling the IndRNN kernels: ~10-30 s
def test_kernel_cache_from_a_read_only_install(tmp_path):
    """From a package directory Numba cannot write to, compiled kernels go to NUMBA_CACHE_DIR
    and the next process loads them from there instead of compiling again."""
    install = tmp_path / "site"
    shutil.copytree(
        PACKAGE,
        install / "rnnkernels",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "lib", "include", "share"),
    )
    for path in install.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    cache = tmp_path / "cache"
    code = """
        import torch
        from rnnkernels.ops.indrnn import numba as kernels
        y, hT = kernels.indrnn_fwd(torch.randn(3, 2, 4), torch.rand(4), torch.zeros(2, 4),
                                   None, False, "tanh")
        print(kernels.__file__, sum(kernels.indrnn_fwd_kernel.stats.cache_hits.values()))
    """
    env = dict(PYTHONPATH=str(install), NUMBA_CACHE_DIR=str(cache))
    try:
        cold, warm = run_python(code, tmp_path, **env), run_python(code, tmp_path, **env)
    finally:
        for path in install.rglob("*"):
            path.chmod(0o755)
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    assert list(cache.rglob("*.nbi")), "no kernel cache was written"
    assert not list(install.rglob("*.nbi")), "the cache went into the read-only package"
    (cold_file, cold_hits), (warm_file, warm_hits) = cold.stdout.split(), warm.stdout.split()
    assert cold_file.startswith(str(install)) and warm_file.startswith(str(install))
    assert cold_hits == "0" and warm_hits == "2", "the second process compiled again"
