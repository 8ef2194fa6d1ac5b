"""What only the Numba backend has: the package on Numba without the C++ extension, the step
GEMMs' fallback without torch's BLAS, the kernel cache from a read-only install. (Parity and
gradients: the ``backend`` parameter of test_ops.py, test_parity.py and friends; determinism,
NaN/Inf, long runs and threaded steps: the (backend, cell) matrix of test_kernels.py.)"""

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rnnkernels
from rnnkernels.backends import kernels
from rnnkernels.ops.gru.op import gru_fwd
from rnnkernels.ops.lstm.op import lstm_fwd
from rnnkernels.testing import N_OUT, assert_close, layer_args, needs

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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_gemm_fallback_without_torch_blas(cell, monkeypatch):
    """Where torch exports no sgemm_/dgemm_, the kernels' step GEMMs are np.dot (scipy's BLAS)."""
    from rnnkernels.ops import numba_jit

    module = importlib.import_module(f"rnnkernels.ops.{cell}.numba")
    monkeypatch.setattr(numba_jit, "TORCH_BLAS", False)
    monkeypatch.setattr(module, "TORCH_BLAS", False)
    fwd = {"lstm": lstm_fwd, "gru": gru_fwd}[cell]
    oracle_fwd = getattr(kernels("reference", cell), f"{cell}_fwd")
    n_out = N_OUT[cell]
    for dtype in (torch.float32, torch.float64):
        args = layer_args(cell, 5, 4, 3, 2 if cell == "lstm" else True, [5, 0, 3, 2], False,
                          dtype, requires_grad=True)  # fmt: skip
        got, expected = fwd(*args, "numba"), oracle_fwd(*args)
        cotangents = [torch.randn_like(o) for o in got[:n_out]]
        leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
        got_grads = torch.autograd.grad(got[:n_out], leaves, cotangents)
        expected_grads = torch.autograd.grad(expected[:n_out], leaves, cotangents)
        for k, (a, b) in enumerate(zip([*got, *got_grads], [*expected, *expected_grads])):
            assert_close(a, b, f"{dtype} tensor {k}")


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
