"""The Triton IndRNN kernels beyond the shared suites: tile boundaries, the size limit, fp16/bf16
against an fp32 reference, NaN propagation, determinism of d_u. On a CPU they run in Triton's
interpreter; the same tests run on a GPU."""

import pytest
import torch

from rnnkernels.ops.indrnn import naive
from rnnkernels.testing import TOLERANCES, assert_close, needs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# A low-precision run against fp32 on the same rounded inputs, within TOLERANCES[dtype];
# bf16 is wrong in the interpreter, so GPU only.
LOW_PRECISION = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def triton_indrnn():
    needs("triton", "indrnn", device=DEVICE)  # on a GPU: CUDA tensors


def kernels():
    from rnnkernels.ops.indrnn import triton

    return triton


def layer_args(T, B, H, lengths, reverse, nonlinearity, dtype=torch.float64, seed=0):
    """gx, u, h0, lengths, reverse, nonlinearity on DEVICE; u spread over [-1.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, H, generator=g)
    u = torch.rand(H, generator=g) * 3 - 1.5
    h0 = torch.randn(B, H, generator=g)
    to = dict(device=DEVICE, dtype=dtype)
    lengths = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    return gx.to(**to), u.to(**to), h0.to(**to), lengths, reverse, nonlinearity


def run_layer(module, args, dtype=None, seed=1):
    """Forward and backward through module's indrnn_fwd / indrnn_bwd, optionally in another
    dtype; returns every output and gradient."""
    if dtype is not None:
        args = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    gx, u, h0, lengths, reverse, nonlinearity = args
    y, hT = module.indrnn_fwd(*args)
    g = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(y.shape, generator=g).to(y)
    grad_hT = torch.randn(hT.shape, generator=g).to(y)
    return [y, hT, *module.indrnn_bwd(grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y)]


def lengths_of(T, B):
    """Unsorted lengths with zero-length rows and full rows."""
    return [(7 * b + 3) % (T + 1) for b in range(B)]


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,H", [(3, 1, 1), (4, 300, 1), (5, 5, 130)])
def test_tile_boundaries_match_oracle(T, B, H, reverse, nonlinearity):
    """Tiles of up to 128 hidden units by up to 256 // that rows, partly filled and crossed."""
    args = layer_args(T, B, H, lengths_of(T, B), reverse, nonlinearity)
    for k, (a, b) in enumerate(zip(run_layer(kernels(), args), run_layer(naive, args))):
        assert_close(a, b, f"tensor {k}")


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_matches_fp32_reference(dtype, nonlinearity):
    """Inputs rounded to dtype; the reference runs in fp32 on the same rounded values."""
    args = layer_args(6, 5, 20, [6, 0, 3, 6, 1], True, nonlinearity, dtype)
    ours = run_layer(kernels(), args)
    reference = run_layer(naive, args, torch.float32)
    atol, rtol = TOLERANCES[dtype]
    for k, (a, b) in enumerate(zip(ours, reference)):
        assert a.dtype == dtype, f"tensor {k} is {a.dtype}"
        torch.testing.assert_close(a.float(), b, atol=atol, rtol=rtol, msg=f"tensor {k}")


def test_d_u_is_bitwise_deterministic():
    """d_u sums per-program partial sums in a fixed order: no atomics."""
    args = layer_args(5, 300, 3, lengths_of(5, 300), False, "relu", torch.float32)
    first = run_layer(kernels(), args)
    for k, (a, b) in enumerate(zip(run_layer(kernels(), args), first)):
        assert torch.equal(a, b), f"tensor {k} differs between runs"


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_nan_propagates_as_in_torch(nonlinearity):
    gx, u, h0, lengths, reverse, _ = layer_args(4, 3, 5, [4, 0, 2], False, nonlinearity)
    gx[1, 0, 2] = float("nan")
    gx[0, 1, 3] = float("nan")  # past the end of row 1: never read
    args = (gx, u, h0, lengths, reverse, nonlinearity)
    for k, (a, b) in enumerate(zip(run_layer(kernels(), args), run_layer(naive, args))):
        torch.testing.assert_close(a, b, equal_nan=True, msg=f"tensor {k}")
