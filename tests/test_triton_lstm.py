"""The Triton LSTM kernels beyond the shared suites: tiles crossed and partly filled, the weight
size limit, fp16/bf16 against an fp32 reference, the fp32 dot precision, frozen rows. On a CPU
they run in Triton's interpreter; on a GPU the same tests run on the device."""

import pytest
import torch

from rnnkernels.ops.lstm import naive
from rnnkernels.testing import assert_close, needs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("triton_weights")  # streamed, and on chip


@pytest.fixture(autouse=True)
def kernels():
    needs("triton", "lstm", device=DEVICE)  # on a GPU: CUDA tensors
    from rnnkernels.ops.lstm import triton

    return triton


def layer_args(T, B, H, P, lengths, reverse, dtype=torch.float64, seed=0):
    """gx, w_hh, w_hr, h0, c0, lengths, reverse on DEVICE; lengths is None, a list, or "mixed":
    unsorted, with empty and full rows."""
    g = torch.Generator().manual_seed(seed)
    R = P or H
    tensors = [
        torch.randn(T, B, 4 * H, generator=g),
        torch.randn(4 * H, R, generator=g) / R**0.5,
        torch.randn(P, H, generator=g) / H**0.5 if P else None,
        torch.randn(B, R, generator=g),
        torch.randn(B, H, generator=g),
    ]
    gx, w_hh, w_hr, h0, c0 = (None if x is None else x.to(DEVICE, dtype) for x in tensors)
    if lengths == "mixed":
        lengths = [(5 * b + 2) % (T + 1) for b in range(B)]
    if lengths is not None:
        lengths = torch.tensor(lengths, device=DEVICE)
    return gx, w_hh, w_hr, h0, c0, lengths, reverse


def run_layer(module, args, dtype=None, seed=1):
    """lstm_fwd then lstm_bwd of ``module`` (in ``dtype`` when given): every output and gradient."""
    if dtype is not None:
        args = [x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in args]
    gx, w_hh, w_hr, h0, c0, lengths, reverse = args
    y, hT, cT, gates, cells = module.lstm_fwd(*args)
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(x.shape, generator=g).to(x) for x in (y, hT, cT)]
    grads = module.lstm_bwd(*cotangents, *args[1:], y, gates, cells)
    return [y, hT, cT, gates, cells, *(d for d in grads if d is not None)]


def assert_all_close(ours, expected):
    assert len(ours) == len(expected)
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert_close(a, b, f"tensor {k}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "T,B,H,P,max_block",
    [(3, 1, 1, 0, 16), (3, 17, 33, 0, 16), (3, 5, 33, 17, 16), (2, 3, 130, 0, None)],
    ids=["H1", "B17-H33", "proj-H33-P17", "H130"],
)
def test_tiles_match_oracle(kernels, monkeypatch, T, B, H, P, max_block, reverse):
    """Blocks of 16 (as small as tl.dot allows) crossed by B, H, P and 4H and partly filled;
    H=130 also crosses the default block."""
    if max_block is not None:
        monkeypatch.setattr(kernels, "MAX_BLOCK_B", max_block)
        monkeypatch.setattr(kernels, "MAX_BLOCK_H", max_block)
        monkeypatch.setattr(kernels, "BLOCK_K_BYTES", max_block * torch.float64.itemsize)
    args = layer_args(T, B, H, P, "mixed", reverse)
    assert_all_close(run_layer(kernels, args), run_layer(naive, args))


def test_fp32_matches_oracle(kernels):
    args = layer_args(5, 20, 40, 12, "mixed", True, torch.float32)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ours = run_layer(kernels, args)
    assert_all_close(ours, run_layer(naive, args))


def test_fp32_dots_follow_cudnn_tf32_flag(kernels):
    """tf32 where cuDNN's nn.LSTM would use it: a GPU's tf32 dot rounds its inputs, the
    interpreter's dot is exact whatever the precision."""
    args = layer_args(3, 16, 48, 0, None, False, torch.float32)
    with torch.backends.cudnn.flags(allow_tf32=True):
        tf32 = run_layer(kernels, args)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ieee = run_layer(kernels, args)
    identical = all(torch.equal(a, b) for a, b in zip(tf32, ieee))
    assert identical == (DEVICE == "cpu")


@pytest.mark.parametrize(
    "dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
)  # bf16 is wrong in the interpreter
@pytest.mark.parametrize("P", [0, 6])
def test_low_precision_matches_fp32_reference(kernels, dtype, P):
    """Inputs rounded to ``dtype``; the reference computes in fp32 on the same rounded values.
    Outputs keep the input dtype."""
    args = layer_args(6, 5, 20, P, [6, 0, 3, 6, 1], True, dtype)
    ours = run_layer(kernels, args)
    reference = run_layer(naive, args, torch.float32)
    for k, (a, b) in enumerate(zip(ours, reference)):
        assert a.dtype == dtype, f"tensor {k} is {a.dtype}"
        assert_close(a, b.to(dtype), f"tensor {k}")


def test_bitwise_deterministic(kernels):
    args = layer_args(3, 20, 24, 8, "mixed", False, torch.float32)
    first = run_layer(kernels, args)
    assert all(torch.equal(a, b) for a, b in zip(run_layer(kernels, args), first))


def test_rows_past_their_end_stay_frozen(kernels):
    """A NaN in W_hh reaches only the sequences that run: rows past their end share the tiles'
    dots but keep their state and gradients exactly."""
    gx, w_hh, w_hr, h0, c0, _, reverse = layer_args(4, 3, 5, 0, None, False)
    w_hh[9, 1] = float("nan")
    lengths = torch.tensor([4, 0, 2], device=DEVICE)
    y, hT, cT, gates, cells, *grads = run_layer(kernels, (gx, w_hh, w_hr, h0, c0, lengths, reverse))
    d_gx, d_w_hh, _, d_h0, d_c0 = grads  # _: the absent W_hr's empty gradient
    assert torch.equal(hT[1], h0[1]) and torch.equal(cT[1], c0[1])
    assert (y[:, 1] == 0).all() and (gates[:, 1] == 0).all() and (d_gx[:, 1] == 0).all()
    assert d_h0[1].isfinite().all() and d_c0[1].isfinite().all()
