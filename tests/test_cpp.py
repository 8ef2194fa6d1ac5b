"""What only the C++ backend has, beyond the (backend, cell) matrix of test_kernels.py: batch chunks
at more threads than cores, denormals flushed to zero on every chunk's thread with the caller's FP
mode restored, the caller's OpenMP thread count left alone, the checks of its public C++ API, and
the schemas and fakes (Meta kernels) of its torch.ops.rnnkernels_cpp ops."""

import os
import subprocess
import sys

import pytest
import torch

from rnnkernels.backends import kernels
from rnnkernels.testing import (
    N_OUT,
    assert_close,
    layer_args,
    needs,
    run_layer,
)


@pytest.fixture(autouse=True)
def cpp():
    needs("cpp", "lstm")
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)  # tests that are about threads set their own count


@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn"])
def test_batch_chunks_for_more_threads_match_oracle(cell, reverse, threads):
    """3 and 4 threads (oversubscribed on two cores) over B=17 unequal lengths: chunks of whole
    4-row blocks, one possibly empty (IndRNN: its items of rows x hidden units); forward and
    backward against naive.py."""
    args = layer_args(cell, 9, 17, 24, None, "mixed", reverse, torch.float32)
    torch.set_num_threads(threads)  # the fixture restores the caller's count
    ours = run_layer(kernels("cpp", cell), cell, args)
    for k, (a, b) in enumerate(zip(ours, run_layer(kernels("reference", cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


def test_denormal_gradients_flush_to_zero_in_batch_chunks():
    """LSTM: with gates at 0.5 dc halves every step back in time, through the denormal range
    within 150 steps: every thread of the batch chunks (B=8, two threads) flushes it to zero,
    and the caller's FP mode comes back unchanged."""
    lstm = kernels("cpp", "lstm")
    torch.set_num_threads(2)
    T, B, H = 300, 8, 16
    args = (torch.zeros(T, B, 4 * H), torch.zeros(4 * H, H), None, torch.zeros(B, H),
            torch.zeros(B, H), None, False)  # fmt: skip
    y, hT, cT, gates, cells = lstm.lstm_fwd(*args)
    grad_y = torch.zeros(T, B, H)
    grad_y[-1] = 1.0
    d_gx = lstm.lstm_bwd(grad_y, torch.zeros(B, H), torch.zeros(B, H), *args[1:], y, gates,
                         cells)[0]  # fmt: skip
    tiny = torch.finfo(torch.float32).tiny
    assert ((d_gx == 0) | (d_gx.abs() >= tiny)).all()  # no denormals written
    assert d_gx[-1].ne(0).any() and d_gx[:100].eq(0).all()
    assert (torch.tensor([1e-38]) / 100).item() != 0.0  # caller's FP mode restored (no FTZ)


def test_indrnn_denormal_gradients_flush_to_zero():
    """IndRNN: |u| << 1 makes dh decay into denormals within a few steps; the kernel flushes
    them, and the caller's FP mode comes back unchanged."""
    indrnn = kernels("cpp", "indrnn")
    T, B, H = 200, 2, 64
    gx = torch.ones(T, B, H)
    u, h0 = torch.full((H,), 1e-3), torch.zeros(B, H)
    y, _ = indrnn.indrnn_fwd(gx, u, h0, None, False, "relu")
    grad_y = torch.zeros(T, B, H)
    grad_y[-1] = 1.0
    d_gx, d_u, d_h0 = indrnn.indrnn_bwd(grad_y, torch.zeros(B, H), u, h0, None, False, "relu", y)
    tiny = torch.finfo(torch.float32).tiny
    assert ((d_gx == 0) | (d_gx.abs() >= tiny)).all()  # no denormals written
    assert d_gx[-1].eq(1).all() and d_gx[:-20].eq(0).all()
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


def test_indrnn_rejects_unknown_nonlinearity_and_dtype():
    """The C++ library checks its own arguments (a public C++ API, docs/design.md §4)."""
    gx, u, h0, *_ = layer_args("indrnn", 3, 2, 4, dtype=torch.float32)
    indrnn = kernels("cpp", "indrnn")
    with pytest.raises(RuntimeError, match="nonlinearity must be 'relu' or 'tanh'"):
        indrnn.indrnn_fwd(gx, u, h0, None, False, "sigmoid")
    with pytest.raises(RuntimeError, match="float32 and float64"):
        indrnn.indrnn_fwd(gx.half(), u.half(), h0.half(), None, False, "relu")


@pytest.mark.parametrize("lengths", [None, "mixed"], ids=["full", "mixed"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn"])
def test_ops_schema_and_fakes(cell, lengths):
    """torch.library.opcheck of torch.ops.rnnkernels_cpp.<cell>_fwd / _bwd themselves (schema,
    fake tensors: the Meta kernels beside the schemas in csrc/torch/ops.cpp)."""
    variant = {"lstm": 4, "gru": True, "indrnn": "relu"}[cell]
    args = layer_args(cell, 7, 3, 5, variant, lengths, True, torch.float32)
    utils = ("test_schema", "test_faketensor")
    ops = torch.ops.rnnkernels_cpp
    torch.library.opcheck(getattr(ops, f"{cell}_fwd"), args, test_utils=utils)
    outputs = getattr(ops, f"{cell}_fwd")(*args)
    saved = (outputs[0], *outputs[N_OUT[cell] :])
    grads = tuple(torch.randn_like(o) for o in outputs[: N_OUT[cell]])
    bwd_args = (*grads, *args[1:], *saved)
    torch.library.opcheck(getattr(ops, f"{cell}_bwd"), bwd_args, test_utils=utils)
