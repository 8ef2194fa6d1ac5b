"""The Triton GRU kernels beyond the shared suites: tile boundaries, the size limit, fp16/bf16
against an fp32 reference, the fp32 dot precision, masked rows. On a CPU they run in Triton's
interpreter; the same tests run on a GPU."""

import pytest
import torch

from rnnkernels.ops.gru import naive
from rnnkernels.testing import TOLERANCES, assert_close, needs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("triton_weights")  # streamed, and on chip
# A low-precision run against fp32 on the same rounded inputs, within TOLERANCES[dtype];
# bf16 is wrong in the interpreter, so GPU only.
LOW_PRECISION = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def triton_gru():
    needs("triton", "gru", device=DEVICE)  # on a GPU: CUDA tensors


def kernels():
    from rnnkernels.ops.gru import triton

    return triton


def layer_args(T, B, H, lengths, reverse, dtype=torch.float64, bias=True, seed=0):
    """gx, w_hh, b_hh, h0, lengths, reverse on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, 3 * H, generator=g)
    w_hh = torch.randn(3 * H, H, generator=g) / H**0.5
    b_hh = torch.randn(3 * H, generator=g) if bias else None
    h0 = torch.randn(B, H, generator=g)
    to = dict(device=DEVICE, dtype=dtype)
    lengths = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    b_hh = None if b_hh is None else b_hh.to(**to)
    return gx.to(**to), w_hh.to(**to), b_hh, h0.to(**to), lengths, reverse


def run_layer(module, args, dtype=None, seed=1):
    """Forward and backward through module's gru_fwd / gru_bwd, optionally in another dtype;
    returns every output and gradient."""
    if dtype is not None:
        args = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    gx, w_hh, b_hh, h0, lengths, reverse = args
    y, hT, gates, hn = module.gru_fwd(*args)
    g = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(y.shape, generator=g).to(y)
    grad_hT = torch.randn(hT.shape, generator=g).to(y)
    grads = module.gru_bwd(grad_y, grad_hT, w_hh, b_hh, h0, lengths, reverse, y, gates, hn)
    return [y, hT, gates, hn, *(d for d in grads if d is not None)]


def lengths_of(T, B):
    """Unsorted lengths with zero-length rows and full rows."""
    return [(7 * b + 3) % (T + 1) for b in range(B)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,H", [(3, 1, 1), (3, 17, 65), (3, 33, 130)])
def test_tile_boundaries_match_oracle(T, B, H, reverse):
    """Batch tiles of 16 rows and hidden tiles of up to 64 columns, partly filled and crossed."""
    args = layer_args(T, B, H, lengths_of(T, B), reverse)
    for k, (a, b) in enumerate(zip(run_layer(kernels(), args), run_layer(naive, args))):
        assert_close(a, b, f"tensor {k}")


def test_fp32_with_ieee_dots_matches_oracle():
    args = layer_args(6, 20, 70, lengths_of(6, 20), False, torch.float32)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ours = run_layer(kernels(), args)
    for k, (a, b) in enumerate(zip(ours, run_layer(naive, args))):
        assert_close(a, b, f"tensor {k}")


def test_fp32_dots_use_tf32_when_cudnn_allows_it():
    """As cuDNN's nn.GRU does. The interpreter's dot is exact whatever the precision; a GPU's
    tf32 dot rounds its inputs, so its result differs from the ieee one."""
    args = layer_args(4, 16, 64, None, False, torch.float32)
    with torch.backends.cudnn.flags(allow_tf32=True):
        tf32 = run_layer(kernels(), args)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ieee = run_layer(kernels(), args)
    same = all(torch.equal(a, b) for a, b in zip(tf32, ieee))
    assert same == (DEVICE == "cpu")


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_matches_fp32_reference(dtype):
    """Inputs rounded to dtype; the reference runs in fp32 on the same rounded values."""
    args = layer_args(6, 5, 20, [6, 0, 3, 6, 1], True, dtype)
    ours = run_layer(kernels(), args)
    reference = run_layer(naive, args, torch.float32)
    atol, rtol = TOLERANCES[dtype]
    for k, (a, b) in enumerate(zip(ours, reference)):
        assert a.dtype == dtype, f"tensor {k} is {a.dtype}"
        torch.testing.assert_close(a.float(), b, atol=atol, rtol=rtol, msg=f"tensor {k}")


def test_bitwise_deterministic():
    args = layer_args(3, 33, 20, lengths_of(3, 33), True, torch.float32)
    first = run_layer(kernels(), args)
    for k, (a, b) in enumerate(zip(run_layer(kernels(), args), first)):
        assert torch.equal(a, b), f"tensor {k} differs between runs"


def test_nan_in_weights_does_not_reach_empty_sequences():
    """Rows past their end are frozen exactly, although the tile's dots span them."""
    gx, w_hh, b_hh, h0, lengths, reverse = layer_args(4, 3, 5, [4, 0, 2], False)
    w_hh[7, 2] = float("nan")
    y, hT, *_, d_h0 = run_layer(kernels(), (gx, w_hh, b_hh, h0, lengths, reverse))
    assert torch.equal(hT[1], h0[1]) and d_h0[1].isfinite().all() and (y[:, 1] == 0).all()
