"""What only the Numba backend has: the package on Numba without the C++ extension, our step
GEMM, the batch chunks over threads, the kernel cache from a read-only install. (Parity and
gradients: the ``backend`` parameter of test_ops.py, test_parity.py and friends; determinism,
NaN/Inf, long runs and threaded shapes: the (backend, cell) matrix of test_kernels.py.)"""

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkernels
from rnnkernels.backends import kernels
from rnnkernels.testing import N_FWD, layer_args, needs, run_layer

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
        for cell in (rnnkernels.LSTM, rnnkernels.GRU, rnnkernels.RNN, rnnkernels.IndRNN):
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans", [True, False])
def test_step_gemm_matches_the_product_and_rows_are_independent(trans, dtype):
    """step_gemm (our panels and register blocks) against a float64 product: row counts around
    the 4-row block, columns around the panel pairs (tails, an odd last panel), any K. Each row
    is the same bits computed alone, which the batch chunks' determinism rests on."""
    from rnnkernels.ops.numba_jit import gemm_pairs, pack_panels, step_gemm

    rng = np.random.default_rng(0)
    eps = np.finfo(dtype).eps
    for M, K, N in itertools.product([1, 3, 4, 9], [1, 7, 64], [1, 5, 32, 33, 64, 100, 129]):
        a = rng.standard_normal((M, K)).astype(dtype)
        w = rng.standard_normal((N, K) if trans else (K, N)).astype(dtype)
        panels = pack_panels(w, trans)
        pairs, spill = (0, gemm_pairs(panels)), np.empty((1, 2 * panels.shape[2]), dtype)
        out = np.full((M, N), np.nan, dtype)
        step_gemm(a, panels, out, spill, pairs)
        expected = a.astype(np.float64) @ (w.T if trans else w).astype(np.float64)
        bound = K * eps * (np.abs(a) @ np.abs(w.T if trans else w))  # the sum's rounding error
        assert (np.abs(out - expected) <= bound).all(), (M, K, N)
        for b in range(M):
            row = np.empty((1, N), dtype)
            step_gemm(a[b : b + 1], panels, row, spill, pairs)
            assert np.array_equal(row[0], out[b]), (M, K, N, b)


@pytest.mark.parametrize(
    "lengths,threads,chunks",
    [
        ([5] * 8, 2, [(0, 4), (4, 8)]),
        ([5] * 7, 2, [(0, 7)]),  # fewer than 4 rows for the second thread
        ([5] * 33, 2, [(0, 16), (16, 33)]),
        ([5] * 32, 1, [(0, 32)]),
        ([5] * 32, 3, [(0, 12), (12, 20), (20, 32)]),
        (list(range(1, 33)), 2, [(0, 24), (24, 32)]),  # equal shares of the valid steps
        ([1] * 8 + [100] * 4, 3, [(0, 8), (8, 12)]),  # the shares leave no block for a third
        ([0] * 16, 2, [(0, 8), (8, 16)]),  # empty rows count as one step each
    ],
)
def test_batch_chunks(lengths, threads, chunks):
    from rnnkernels.ops.numba_jit import batch_chunks

    assert batch_chunks(np.array(lengths), threads) == chunks


# B=13: two batch chunks at two threads; B=3: split steps (its parts: the GEMMs' column pairs,
# the pointwise pass's hidden units; H=40 gives a part 16 or 24 units, 4H=160 2 or 3 pairs), at
# three threads on this 2-core machine too (a part waits for one that has no core).
@pytest.mark.parametrize("B,threads", [(13, 2), (3, 2), (3, 3)], ids=["chunks", "split", "split3"])
@pytest.mark.parametrize("cell,variant", [("lstm", 0), ("lstm", 24), ("gru", True), ("gru", False)])
def test_threads_give_the_bits_of_one(cell, variant, B, threads, monkeypatch):
    """Batch chunks and split steps (thresholds lifted) give the bits of one thread, forward and
    backward, with mixed lengths both ways: every tensor but the weight gradients, which torch's
    GEMMs compute after the kernel (their bits depend on torch's thread count)."""
    from rnnkernels.ops import numba_jit

    monkeypatch.setattr(numba_jit, "MIN_THREADED_FLOPS", 0)
    monkeypatch.setattr(numba_jit, "MIN_SPLIT_STEP_FLOPS", 0)
    saved = torch.get_num_threads()
    try:
        for reverse in (False, True):
            args = layer_args(cell, 7, B, 40, variant, "mixed", reverse, torch.float32)
            runs = []
            for n in (1, threads):
                torch.set_num_threads(n)
                runs.append(run_layer(kernels("numba", cell), cell, args))
            n_fwd = N_FWD[cell]  # then d_gx, the weight gradients, the state gradients
            kept = [*range(n_fwd), n_fwd, *range(n_fwd + 3, len(runs[0]))]
            for k in kept:
                assert torch.equal(runs[0][k], runs[1][k]), f"reverse={reverse}: tensor {k} differs"
    finally:
        torch.set_num_threads(saved)


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
