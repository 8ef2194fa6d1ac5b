"""What only the Triton backend has, beyond the (backend, cell) matrix of test_kernels.py: fp16 and
bf16 (bf16 on a GPU: it is wrong in the interpreter) against an fp32 reference, and fp32 dots in
TF32 exactly where cuDNN would use it. On a CPU the kernels run in Triton's interpreter; on a GPU
the same tests run on the device. The split across programs: test_triton_split.py; sm_90
compilation: test_triton_sm90.py; against cuDNN on a GPU: test_triton_gpu.py."""

import pytest
import torch

from rnnkernels.backends import kernels
from rnnkernels.testing import TOLERANCES, assert_close, layer_args, needs, run_layer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.triton
LOW_PRECISION = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
# LSTM, GRU and RNN twice: their recurrent weights streamed every step, and kept on chip (the
# conftest's triton_weights fixture, parametrised here); IndRNN has no recurrent matrix.
WEIGHTS = ["streaming", "on chip"]


def with_weights(cases):
    return [
        pytest.param(*case, weights, id="-".join([*map(str, case), weights.replace(" ", "-")]))
        for case in cases
        for weights in (WEIGHTS if case[0] != "indrnn" else ["none"])
    ]


def oracle(cell):
    return kernels("reference", cell)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize(
    "cell,variant,triton_weights",
    with_weights(
        [
            ("lstm", 0),
            ("lstm", 6),
            ("gru", True),
            ("rnn", "tanh"),
            ("indrnn", "relu"),
            ("indrnn", "tanh"),
        ]  # fmt: skip
    ),
    indirect=["triton_weights"],
)
def test_low_precision_matches_fp32_reference(cell, variant, triton_weights, dtype):
    """Inputs rounded to ``dtype``; the reference computes in fp32 on the same rounded values.
    Outputs keep the input dtype and are within TOLERANCES[dtype] of the reference, in fp32 and
    rounded to the dtype."""
    needs("triton", cell, dtype, DEVICE)
    args = layer_args(cell, 6, 5, 20, variant, [6, 0, 3, 6, 1], True, dtype, device=DEVICE)
    ours = run_layer(kernels("triton", cell), cell, args)
    reference = run_layer(oracle(cell), cell, args, torch.float32)
    atol, rtol = TOLERANCES[dtype]
    assert len(ours) == len(reference)
    for k, (a, b) in enumerate(zip(ours, reference)):
        assert a.dtype == dtype, f"tensor {k} is {a.dtype}"
        assert_close(a, b.to(dtype), f"tensor {k}")
        torch.testing.assert_close(a.float(), b, atol=atol, rtol=rtol, msg=f"tensor {k}")


@pytest.mark.parametrize(
    "cell,T,B,H,variant,lengths,reverse,triton_weights",
    with_weights([("lstm", 5, 20, 40, 12, "mixed", True),
                  ("gru", 6, 20, 70, True, "mixed", False)]),
    indirect=["triton_weights"],
)  # fmt: skip
def test_fp32_with_ieee_dots_matches_oracle(
    cell, T, B, H, variant, lengths, reverse, triton_weights
):
    """fp32 with TF32 off (as cuDNN's flag says), tiles crossed: within the fp32 bar."""
    needs("triton", cell, torch.float32, DEVICE)
    args = layer_args(cell, T, B, H, variant, lengths, reverse, torch.float32, device=DEVICE)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ours = run_layer(kernels("triton", cell), cell, args)
    for k, (a, b) in enumerate(zip(ours, run_layer(oracle(cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


@pytest.mark.parametrize(
    "cell,T,B,H,triton_weights",
    with_weights([("lstm", 3, 16, 48), ("gru", 4, 16, 64)]),
    indirect=["triton_weights"],
)
def test_fp32_dots_follow_cudnn_tf32_flag(cell, T, B, H, triton_weights):
    """TF32 where cuDNN's nn.LSTM / nn.GRU would use it: a GPU's tf32 dot rounds its inputs, so
    its result differs from the ieee one; the interpreter's dot is exact whatever the
    precision."""
    needs("triton", cell, torch.float32, DEVICE)
    args = layer_args(cell, T, B, H, None, None, False, torch.float32, device=DEVICE)
    with torch.backends.cudnn.flags(allow_tf32=True):
        tf32 = run_layer(kernels("triton", cell), cell, args)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ieee = run_layer(kernels("triton", cell), cell, args)
    identical = all(torch.equal(a, b) for a, b in zip(tf32, ieee))
    assert identical == (DEVICE == "cpu")
