"""The C++ LSTM kernels beyond the shared suites: threaded shapes, determinism, NaN/Inf, long T."""

import os
import subprocess
import sys

import pytest
import torch

import rnnkernels
from rnnkernels.ops.lstm import naive
from rnnkernels.testing import (
    assert_close,
    needs,
    outputs_and_grads,
    poison_allocations,
    torch_twin,
)

pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture
def two_threads():
    needs("cpp", "lstm")
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # B >= 8: batch chunks; smaller B, large steps: split steps
    yield
    torch.set_num_threads(saved)


def cpp():
    from rnnkernels.ops.lstm import cpp as module

    return module


def layer_args(T, B, H, P, lengths, reverse, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = P or H

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    w_hr = rand(P, H, scale=H**-0.5) if P else None
    return (rand(T, B, 4 * H), rand(4 * H, R, scale=R**-0.5), w_hr, rand(B, R), rand(B, H),
            lengths, reverse)  # fmt: skip


# Unsorted lengths with gaps (rows valid at a step are not one block), a zero and clipped ones.
UNSORTED = [4, 1, 5, 0, 3, 5, 1, 9, 2, 5, 2, 3, 5, 4, 1, 6] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("proj", [0, 24])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, UNSORTED], ids=["full", "unsorted"])
@pytest.mark.parametrize("T,B,H", [(5, 32, 128), (4, 5, 1024)], ids=["chunks", "split-steps"])
def test_threaded_layer_matches_oracle(dtype, proj, reverse, lengths, T, B, H):
    """Two threads, forward and backward vs naive.py: B=32 runs as two batch chunks of 16 rows;
    B=5, H=1024 splits each step (the GEMM's panels, the pointwise pass's rows)."""
    lengths = None if lengths is None else torch.tensor(lengths[:B])
    args = layer_args(T, B, H, proj, lengths, reverse, dtype)
    with poison_allocations():
        got = cpp().lstm_fwd(*args)
    expected = naive.lstm_fwd(*args)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"forward output {k}")
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=g, dtype=dtype) for o in expected[:3]]
    saved = (expected[0], expected[3], expected[4])
    with poison_allocations():
        got = cpp().lstm_bwd(*grads, *args[1:], *saved)
    expected = naive.lstm_bwd(*grads, *args[1:], *saved)
    for k, (a, b) in enumerate(zip(got, expected)):
        if b is None:
            assert a is None
        else:
            assert_close(a, b, f"backward output {k}")


@pytest.mark.parametrize("proj", [0, 32])
@pytest.mark.parametrize("lengths", [None, UNSORTED], ids=["full", "unsorted"])
@pytest.mark.parametrize("H", [128, 512], ids=["chunks", "split-steps"])
def test_bitwise_deterministic(proj, lengths, H):
    T, B = 6, 32
    lengths = None if lengths is None else torch.tensor(lengths)
    args = layer_args(T, B, H, proj, lengths, True, torch.float32)
    runs = []
    for _ in range(2):
        y, hT, cT, gates, cells = cpp().lstm_fwd(*args)
        grads = [torch.ones_like(o) for o in (y, hT, cT)]
        back = cpp().lstm_bwd(*grads, *args[1:], y, gates, cells)
        runs.append([y, hT, cT, gates, cells, *(b for b in back if b is not None)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_propagate_as_in_torch(proj_size, poison):
    """A NaN/Inf in the input reaches the same outputs and gradients as in torch.nn.LSTM."""
    torch.manual_seed(0)
    m = rnnkernels.LSTM(4, 6, num_layers=2, proj_size=proj_size, backend="cpp")
    x = torch.randn(7, 3, 4)
    x[2, 1, 0] = poison
    x.requires_grad_()
    ours, ours_grads = outputs_and_grads(m, x, None)
    ref, ref_grads = outputs_and_grads(torch_twin(m), x, None)
    for a, b in zip(ours, ref):
        assert torch.equal(a.isnan(), b.isnan())
        finite = ~b.isnan()
        assert_close(a[finite], b[finite], "finite outputs")
    for a, b in zip(ours_grads, ref_grads):
        assert torch.equal(a.isnan(), b.isnan())


def test_long_sequence():
    """T=10000: runs (no denormal cliff in the decaying gradients) and matches naive.py over the
    last steps, started from the kernel's own state there."""
    T, B, H, K = 10000, 2, 16, 50
    args = layer_args(T, B, H, 0, None, False, torch.float32)
    gx, w_hh, _, h0, c0, _, _ = args
    y, hT, cT, gates, cells = cpp().lstm_fwd(*args)
    window = (gx[-K:], w_hh, None, y[-K - 1], cells[-K - 1], None, False)
    expected = naive.lstm_fwd(*window)
    for k, (a, b) in enumerate(zip((y[-K:], hT, cT, gates[-K:], cells[-K:]), expected)):
        assert_close(a, b, f"forward output {k}")
    grad_y = torch.zeros_like(y)
    grad_y[-K:] = torch.randn(K, B, H)
    grad_hT, grad_cT = torch.randn(B, H), torch.randn(B, H)
    d_gx, d_w_hh, _, d_h0, d_c0 = cpp().lstm_bwd(
        grad_y, grad_hT, grad_cT, w_hh, None, h0, c0, None, False, y, gates, cells
    )
    saved = (y[-K:], gates[-K:], cells[-K:])
    expected = naive.lstm_bwd(grad_y[-K:], grad_hT, grad_cT, *window[1:], *saved)
    assert_close(d_gx[-K:], expected[0], "d_gx over the last steps")
    for t in (d_gx, d_w_hh, d_h0, d_c0):
        assert t.isfinite().all()


@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_batch_chunks_for_more_threads_match_oracle(threads, reverse):
    """3 and 4 threads (oversubscribed here) over B=17 unequal lengths: chunks of whole 4-row
    blocks, one possibly empty; forward and backward vs naive.py."""
    T, B, H = 9, 17, 24
    lengths = torch.tensor(UNSORTED[:B])
    args = layer_args(T, B, H, 0, lengths, reverse, torch.float32)
    torch.set_num_threads(threads)  # the fixture restores the caller's count
    got = cpp().lstm_fwd(*args)
    expected = naive.lstm_fwd(*args)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, f"forward output {k}")
    grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1)) for o in got[:3]]
    saved = (expected[0], expected[3], expected[4])
    got = cpp().lstm_bwd(*grads, *args[1:], *saved)
    expected = naive.lstm_bwd(*grads, *args[1:], *saved)
    for k, (a, b) in enumerate(zip(got, expected)):
        if b is not None:
            assert_close(a, b, f"backward output {k}")


def test_denormal_gradients_flush_to_zero_in_batch_chunks():
    """With gates at 0.5 dc halves every step back in time, through the denormal range within
    150 steps: every thread of the batch chunks (B=8, two threads) flushes it to zero, and the
    caller's FP mode comes back unchanged."""
    T, B, H = 300, 8, 16
    args = (torch.zeros(T, B, 4 * H), torch.zeros(4 * H, H), None, torch.zeros(B, H),
            torch.zeros(B, H), None, False)  # fmt: skip
    y, hT, cT, gates, cells = cpp().lstm_fwd(*args)
    grad_y = torch.zeros(T, B, H)
    grad_y[-1] = 1.0
    d_gx = cpp().lstm_bwd(grad_y, torch.zeros(B, H), torch.zeros(B, H), *args[1:], y, gates,
                          cells)[0]  # fmt: skip
    tiny = torch.finfo(torch.float32).tiny
    assert ((d_gx == 0) | (d_gx.abs() >= tiny)).all()  # no denormals written
    assert d_gx[-1].ne(0).any() and d_gx[:100].eq(0).all()
    assert (torch.tensor([1e-38]) / 100).item() != 0.0  # caller's FP mode restored (no FTZ)


THREADS_SCRIPT = """
import os, torch, rnnkernels
before = torch.get_num_threads()  # never set: MKL's count follows OpenMP's
for cell in (rnnkernels.LSTM, rnnkernels.GRU):
    out, _ = cell(3, 4, backend="cpp")(torch.randn(5, 2, 3))
    out.sum().backward()
    assert torch.get_num_threads() == before, (cell.__name__, before, torch.get_num_threads())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to see a count drop to 1")
def test_caller_thread_count_unchanged():
    """MKL's sgemm_ under a thread-local count of 1 (small steps run on one BLAS thread) set the
    calling thread's OpenMP count to 1 and left it, when the process had never set a count: every
    later torch op on the thread ran on one thread. A fresh interpreter, so nothing set one."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    run = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
