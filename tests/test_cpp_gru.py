"""The C++ GRU kernels beyond the shared suites: threads, determinism, NaN/Inf, long runs."""

import pytest
import torch

import rnnkernels
from rnnkernels.ops.gru import naive
from rnnkernels.testing import assert_close, needs, outputs_and_grads, torch_twin

pytestmark = pytest.mark.usefixtures("cpp")


@pytest.fixture
def cpp():
    needs("cpp", "gru")


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def layer_args(T, B, H, bias, lengths, reverse, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b_hh = torch.randn(3 * H, generator=g, dtype=dtype) if bias else None
    return (torch.randn(T, B, 3 * H, generator=g, dtype=dtype),
            torch.randn(3 * H, H, generator=g, dtype=dtype) / H**0.5, b_hh,
            torch.randn(B, H, generator=g, dtype=dtype), lengths, reverse)  # fmt: skip


def run_layer(module, args, seed=1):
    """Forward and backward of one layer through module's gru_fwd / gru_bwd."""
    gx, w_hh, b_hh, h0, lengths, reverse = args
    y, hT, gates, hn = module.gru_fwd(*args)
    g = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(y.shape, generator=g, dtype=y.dtype)
    grad_hT = torch.randn(hT.shape, generator=g, dtype=y.dtype)
    grads = module.gru_bwd(grad_y, grad_hT, w_hh, b_hh, h0, lengths, reverse, y, gates, hn)
    return [y, hT, gates, hn, *(d for d in grads if d is not None)]


def cpp_module():
    from rnnkernels.ops.gru import cpp

    return cpp


# Unsorted lengths with a 0 and gaps among the valid rows (the step GEMM then spans invalid rows).
LENGTHS_33 = torch.tensor([5, 3, 0, 6, 6, 1, 5] * 4 + [2, 6, 4, 6, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, LENGTHS_33], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B,H", [(33, 200), (5, 1200)], ids=["chunks", "split-steps"])
def test_threaded_shape_matches_oracle(two_threads, bias, lengths, reverse, dtype, B, H):
    """Two threads: B=33 runs as batch chunks of 16 and 17 rows; B=5, 3H=3600 splits each step
    (the GEMM's panels, the pointwise pass's rows)."""
    lengths = None if lengths is None else lengths[:B]
    args = layer_args(6, B, H, bias, lengths, reverse, dtype)
    for k, (a, b) in enumerate(zip(run_layer(cpp_module(), args), run_layer(naive, args))):
        assert_close(a, b, f"tensor {k}")


@pytest.mark.parametrize("B,H", [(33, 1000), (32, 256), (3, 5)])
def test_bitwise_deterministic(two_threads, B, H):
    args = layer_args(12, B, H, True, torch.arange(12, 12 - B, -1) % 13, True)
    first = run_layer(cpp_module(), args)
    for _ in range(2):
        for k, (a, b) in enumerate(zip(run_layer(cpp_module(), args), first)):
            assert torch.equal(a, b), f"tensor {k} differs between runs"


def test_nan_in_weights_does_not_reach_empty_sequences():
    """Rows past their end are frozen exactly, even when the step GEMM spans them."""
    args = list(layer_args(6, 5, 4, True, torch.tensor([6, 0, 6, 1, 6]), False, torch.float64))
    args[1][2, 3] = float("nan")
    ours, ref = run_layer(cpp_module(), args), run_layer(naive, args)
    assert ours[1][1].isfinite().all() and ours[-1][1].isfinite().all()  # hT, d_h0 of row 1
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ"
        assert_close(a[~b.isnan()], b[~b.isnan()], f"tensor {k}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_nan_and_inf_propagate_as_in_torch(bidirectional):
    torch.manual_seed(0)
    m = rnnkernels.GRU(4, 6, bidirectional=bidirectional, backend="cpp")
    x = torch.randn(8, 3, 4)
    x[2, 0, 1] = float("nan")
    x[5, 1, 0] = float("inf")
    x[3, 2, 2] = -float("inf")
    x.requires_grad_()
    ours, ours_grads = outputs_and_grads(m, x, None)
    ref, ref_grads = outputs_and_grads(torch_twin(m), x, None)
    for k, (a, b) in enumerate(zip(ours + ours_grads, ref + ref_grads)):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ"
        finite = b.isfinite()
        assert torch.equal(a.isfinite(), finite), f"tensor {k}: Inf positions differ"
        assert_close(a[finite], b[finite], f"tensor {k}")


def test_long_sequence():
    """T=10000: state and gradients stay finite and match the oracle; no denormal slowdown."""
    args = layer_args(10000, 2, 16, True, None, False)
    y, hT, _, _ = cpp_module().gru_fwd(*args)
    _, hT_ref, _, _ = naive.gru_fwd(*args)
    assert_close(hT, hT_ref, "final state")
    out = run_layer(cpp_module(), args)
    assert all(t.isfinite().all() for t in out)


@pytest.mark.parametrize("threads", [3, 4])
def test_batch_chunks_for_more_threads_match_oracle(two_threads, threads):
    """3 and 4 threads (oversubscribed here) over B=17 unequal lengths: whole 4-row chunks."""
    torch.set_num_threads(threads)  # two_threads restores the caller's count
    args = layer_args(9, 17, 24, True, LENGTHS_33[:17], False)
    for k, (a, b) in enumerate(zip(run_layer(cpp_module(), args), run_layer(naive, args))):
        assert_close(a, b, f"tensor {k}")
