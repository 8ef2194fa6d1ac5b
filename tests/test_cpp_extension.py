"""The C++ IndRNN kernels (rnnkernels._C) against the pure-torch oracle naive.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("rnnkernels._C", reason="C++ extension not built")

from rnnkernels.ops.indrnn import cpp, naive  # noqa: E402

TOLERANCES = [(torch.float32, 5e-5, 1e-5), (torch.float64, 1e-12, 1e-12)]  # (dtype, atol, rtol)
LENGTHS = [None, "sorted", "unsorted"]
SIZES = [(1, 1, 1), (7, 3, 5), (63, 6, 130), (7, 1, 130), (63, 3, 1), (3, 2, 1030)]  # (T, B, H)


def make_lengths(kind: str | None, T: int, B: int) -> torch.Tensor | None:
    if kind is None:
        return None
    base = torch.tensor([7, 5, 5, 2, 1, 1]) * T // 7  # scaled to T; zeros allowed
    lengths = base[torch.arange(B) % 6].clamp(max=T)
    return lengths.flip(0).contiguous() if kind == "unsorted" else lengths


def make_inputs(T, B, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, H, generator=g, dtype=dtype)
    u = torch.empty(H, dtype=dtype).uniform_(-1.0, 1.0, generator=g)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return gx, u, h0


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths_kind", LENGTHS)
@pytest.mark.parametrize("T, B, H", SIZES)
def test_matches_naive(T, B, H, lengths_kind, reverse, nonlinearity, dtype, atol, rtol):
    gx, u, h0 = make_inputs(T, B, H, dtype)
    lengths = make_lengths(lengths_kind, T, B)
    y, hT = cpp.indrnn_fwd(gx, u, h0, lengths, reverse, nonlinearity)
    y_ref, hT_ref = naive.indrnn_fwd(gx, u, h0, lengths, reverse, nonlinearity)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(hT, hT_ref, atol=atol, rtol=rtol)
    if lengths is not None:  # exactly zero past each sequence's end
        past_end = torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(0)  # [T,B]
        assert (y[past_end] == 0).all()

    # backward: against naive.indrnn_bwd and against autograd through the naive forward
    g = torch.Generator().manual_seed(1)
    grad_y = torch.randn(T, B, H, generator=g, dtype=dtype)
    grad_hT = torch.randn(B, H, generator=g, dtype=dtype)
    grads = cpp.indrnn_bwd(grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y)
    grads_ref = naive.indrnn_bwd(grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y_ref)
    leaves = [t.clone().requires_grad_() for t in (gx, u, h0)]
    y_ag, hT_ag = naive.indrnn_fwd(*leaves, lengths, reverse, nonlinearity)
    grads_ag = torch.autograd.grad((y_ag, hT_ag), leaves, (grad_y, grad_hT))
    for got, ref, ag in zip(grads, grads_ref, grads_ag, strict=True):
        scale = max(1.0, ref.abs().max().item())  # d_u sums T*B terms
        torch.testing.assert_close(got, ref, atol=atol * scale, rtol=rtol)
        torch.testing.assert_close(got, ag, atol=atol * scale, rtol=rtol)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_nan_propagates_like_naive(nonlinearity):
    gx, u, h0 = make_inputs(5, 3, 4, torch.float32)
    gx[1, 0, 2] = float("nan")
    h0[2, 1] = float("nan")
    y, hT = cpp.indrnn_fwd(gx, u, h0, None, False, nonlinearity)
    y_ref, hT_ref = naive.indrnn_fwd(gx, u, h0, None, False, nonlinearity)
    assert y[1, 0, 2].isnan() and y[0, 2, 1].isnan()
    torch.testing.assert_close(y, y_ref, equal_nan=True)
    torch.testing.assert_close(hT, hT_ref, equal_nan=True)
    d_gx, _, d_h0 = cpp.indrnn_bwd(
        y.new_ones(y.shape), hT.new_ones(hT.shape), u, h0, None, False, nonlinearity, y
    )
    d_gx_ref, _, d_h0_ref = naive.indrnn_bwd(
        y.new_ones(y.shape), hT.new_ones(hT.shape), u, h0, None, False, nonlinearity, y_ref
    )
    torch.testing.assert_close(d_gx, d_gx_ref, equal_nan=True)
    torch.testing.assert_close(d_h0, d_h0_ref, equal_nan=True)


def test_deterministic_across_runs_and_thread_counts():
    T, B, H = 63, 17, 130
    gx, u, h0 = make_inputs(T, B, H, torch.float32)
    lengths = make_lengths("unsorted", T, B)
    grad_y, grad_hT = torch.randn(T, B, H), torch.randn(B, H)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            y, hT = cpp.indrnn_fwd(gx, u, h0, lengths, True, "relu")
            runs.append((y, hT, *cpp.indrnn_bwd(grad_y, grad_hT, u, h0, lengths, True, "relu", y)))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert torch.equal(a, b)


def test_denormal_gradients_flush_to_zero():
    # |u| << 1 makes dh decay into denormals within a few steps; the kernel flushes them
    T, B, H = 200, 2, 64
    gx = torch.ones(T, B, H)
    u, h0 = torch.full((H,), 1e-3), torch.zeros(B, H)
    y, _ = cpp.indrnn_fwd(gx, u, h0, None, False, "relu")
    grad_y = torch.zeros(T, B, H)
    grad_y[-1] = 1.0
    d_gx, d_u, d_h0 = cpp.indrnn_bwd(grad_y, torch.zeros(B, H), u, h0, None, False, "relu", y)
    tiny = torch.finfo(torch.float32).tiny
    assert ((d_gx == 0) | (d_gx.abs() >= tiny)).all()  # no denormals written
    assert d_gx[-1].eq(1).all() and d_gx[:-20].eq(0).all()
    assert (torch.tensor([1e-38]) / 100).item() != 0.0  # caller's FP mode restored (no FTZ)


def test_rejects_unknown_nonlinearity_and_dtype():
    gx, u, h0 = make_inputs(3, 2, 4, torch.float32)
    with pytest.raises(RuntimeError, match="nonlinearity must be 'relu' or 'tanh'"):
        cpp.indrnn_fwd(gx, u, h0, None, False, "sigmoid")
    with pytest.raises(RuntimeError, match="float32 and float64"):
        cpp.indrnn_fwd(gx.half(), u.half(), h0.half(), None, False, "relu")


def test_non_contiguous_inputs():
    gx, u, h0 = make_inputs(7, 3, 5, torch.float64)
    gx_nc = gx.transpose(0, 1).contiguous().transpose(0, 1)
    y, hT = cpp.indrnn_fwd(gx_nc, u, h0, None, False, "tanh")
    y_ref, hT_ref = naive.indrnn_fwd(gx, u, h0, None, False, "tanh")
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(hT, hT_ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("lengths_kind", [None, "unsorted"])
def test_opcheck(lengths_kind):
    gx, u, h0 = make_inputs(7, 3, 5, torch.float32)
    lengths = make_lengths(lengths_kind, 7, 3)
    utils = ("test_schema", "test_faketensor")
    args = (gx, u, h0, lengths, True, "relu")
    torch.library.opcheck(torch.ops.rnnkernels_cpp.indrnn_fwd, args, test_utils=utils)
    y, _ = cpp.indrnn_fwd(*args)
    bwd_args = (torch.randn_like(y), torch.randn_like(h0), u, h0, lengths, True, "relu", y)
    torch.library.opcheck(torch.ops.rnnkernels_cpp.indrnn_bwd, bwd_args, test_utils=utils)
