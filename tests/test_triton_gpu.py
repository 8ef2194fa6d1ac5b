"""The Triton backend on a CUDA GPU: LSTM, GRU and RNN modules against cuDNN's nn.LSTM / nn.GRU /
nn.RNN over the flag grid of test_parity.py (fp32 with TF32 off on both sides; fp16 / bf16
against cuDNN in fp32), IndRNN against the oracle, and an LSTM layer of sizes that cross many
tiles and batch programs; the module and layer tests also with the weights kept on chip. Every
test is marked gpu: skipped without CUDA."""

import itertools

import pytest
import torch
from test_parity import GRID, H, I, P, make_hx, make_input
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnnkernels
from rnnkernels.backends import kernels
from rnnkernels.ops.lstm import naive
from rnnkernels.ops.lstm.op import lstm_fwd
from rnnkernels.testing import (
    TOLERANCES,
    assert_close,
    layer_args,
    outputs_and_grads,
    run_layer,
    torch_twin,
)

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture(autouse=True)
def tf32_off():
    """fp32 parity holds with TF32 off for both sides (docs/design.md section 6)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_gpu(x, dtype=None):
    """A CUDA copy of a test input, padded or packed, or of hx, whose data is a leaf that
    requires grad; in ``dtype`` when given."""
    if isinstance(x, tuple) and not isinstance(x, PackedSequence):
        return tuple(on_gpu(s, dtype) for s in x)
    data = x.data if isinstance(x, PackedSequence) else x
    data = data.detach().to(DEVICE, dtype).requires_grad_()
    return x.to(DEVICE)._replace(data=data) if isinstance(x, PackedSequence) else data


def make_module(cell, num_layers=2, bidirectional=True, proj_size=0, **flags):
    if cell == "lstm":
        return rnnkernels.LSTM(I, H, num_layers, bidirectional=bidirectional, proj_size=proj_size,
                               device=DEVICE, backend="triton", **flags)  # fmt: skip
    module = rnnkernels.RNN if cell == "rnn" else rnnkernels.GRU
    return module(I, H, num_layers, bidirectional=bidirectional, device=DEVICE, backend="triton",
                  **flags)  # fmt: skip


VARIANT = {"gru": True, "rnn": "tanh"}  # layer_args' variant per cell (LSTM: its P)


class Upcast(nn.Module):
    """A module whose outputs are seen in fp32, so that outputs_and_grads draws the same
    cotangents for it as for an fp32 reference."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input, hx=None):
        output, states = self.module(input, hx)
        output = output.data if isinstance(output, PackedSequence) else output
        states = tuple(s.float() for s in states) if isinstance(states, tuple) else states.float()
        return output.float(), states


def check_against_cudnn(module, x, hx):
    """Outputs, final states and every gradient of ``module`` (fp32) against cuDNN's twin in fp32
    and in fp64 (the exact answer, to fp32's eyes). Ours must be within the fp32 bar of the
    exact answer, and within the bar of cuDNN's fp32 answer but for cuDNN's own error: cuDNN's
    fp32 GRU weight gradients were seen 7e-5 from the exact ones."""
    ours = outputs_and_grads(Upcast(module), x, hx)
    cudnn = outputs_and_grads(Upcast(torch_twin(module)), x, hx)
    exact = outputs_and_grads(Upcast(torch_twin(module).double()), on_gpu(x, torch.float64),
                              on_gpu(hx, torch.float64) if hx is not None else None)  # fmt: skip
    params = [f"gradient of {n}" for n, _ in module.named_parameters()]
    names = ["output"] + ["final state"] * (len(ours[0]) - 1) + ["gradient of input"]
    names += ["gradient of hx"] * (len(ours[1]) - 1 - len(params)) + params
    atol, rtol = TOLERANCES[torch.float32]
    for name, a, c, e in zip(names, sum(ours, []), sum(cudnn, []), sum(exact, [])):
        assert_close(a, e.float(), f"{name} against the exact answer")
        excess = (a - c).abs() - (atol + rtol * c.abs() + (c - e).abs())
        assert excess.max() <= 0, f"{name} is {excess.max():.3g} beyond cuDNN's own error + bar"


@pytest.mark.usefixtures("triton_weights")
@pytest.mark.parametrize("cell,proj_size", [("lstm", 0), ("lstm", P), ("gru", 0), ("rnn", 0)])
@pytest.mark.parametrize("bias,batch_first,bidirectional,num_layers,layout,with_hx", GRID)
def test_matches_cudnn(cell, proj_size, bias, batch_first, bidirectional, num_layers, layout,
                       with_hx):  # fmt: skip
    m = make_module(cell, num_layers, bidirectional, proj_size, bias=bias, batch_first=batch_first)
    x = on_gpu(make_input(layout, batch_first))
    sizes = (proj_size or H, H) if cell == "lstm" else (H,)
    hx = on_gpu(make_hx(m, layout, sizes)) if with_hx else None
    check_against_cudnn(m, x, hx)


@pytest.mark.usefixtures("triton_weights")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell,proj_size", [("lstm", 0), ("lstm", P), ("gru", 0), ("rnn", 0)])
@pytest.mark.parametrize("layout", ["padded", "packed", "unbatched"])
def test_low_precision_matches_cudnn_fp32(dtype, cell, proj_size, layout):
    """Our module in ``dtype`` against cuDNN in fp32 on the same rounded weights and inputs,
    within the dtype's bars in rnnkernels.testing.TOLERANCES."""
    ours = make_module(cell, proj_size=proj_size).to(dtype)
    reference = torch_twin(ours).float()
    x = make_input(layout, False)
    ours_out, ours_grads = outputs_and_grads(Upcast(ours), on_gpu(x, dtype), None)
    ref_out, ref_grads = outputs_and_grads(reference, on_gpu(on_gpu(x, dtype), torch.float32), None)
    for k, (a, b) in enumerate(zip(ours_out + ours_grads, ref_out + ref_grads)):
        assert_close(a.to(dtype), b.to(dtype), f"tensor {k}")


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize(
    "bidirectional,layout,with_hx",
    list(itertools.product([False, True], ["padded", "packed", "unbatched"], [False, True])),
)
def test_indrnn_matches_oracle(nonlinearity, bidirectional, layout, with_hx):
    m = rnnkernels.IndRNN(I, H, 2, nonlinearity, bidirectional=bidirectional, device=DEVICE,
                          backend="triton")  # fmt: skip
    x = on_gpu(make_input(layout, False))
    hx = on_gpu(make_hx(m, layout, (H,))) if with_hx else None
    ours_out, ours_grads = outputs_and_grads(m, x, hx)
    m.backend = "reference"
    ref_out, ref_grads = outputs_and_grads(m, x, hx)
    for k, (a, b) in enumerate(zip(ours_out + ours_grads, ref_out + ref_grads)):
        assert_close(a, b, f"tensor {k}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("P", [0, 100])
def test_lstm_layer_across_many_tiles_matches_oracle(P, reverse):
    """T=50, B=70 (three batch programs), H=300 (ten hidden tiles of 32) in fp64: many steps of
    the barrier-separated phases, against the oracle with autograd."""
    T, B, H = 50, 70, 300
    g = torch.Generator().manual_seed(0)
    R = P or H

    def rand(*shape, scale=1.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        return x.cuda().requires_grad_()

    w_hr = rand(P, H, scale=H**-0.5) if P else None
    lengths = torch.tensor([(7 * b + 3) % (T + 1) for b in range(B)], device=DEVICE)
    args = (rand(T, B, 4 * H), rand(4 * H, R, scale=R**-0.5), w_hr, rand(B, R), rand(B, H),
            lengths, reverse)  # fmt: skip
    ours, expected = lstm_fwd(*args, "triton"), naive.lstm_fwd(*args)
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert_close(a, b, f"forward output {k}")
    cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype).cuda() for o in ours[:3]]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    ours_grads = torch.autograd.grad(ours[:3], leaves, cotangents)
    expected_grads = torch.autograd.grad(expected[:3], leaves, cotangents)
    for k, (a, b) in enumerate(zip(ours_grads, expected_grads)):
        assert_close(a, b, f"gradient {k}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,P", [("lstm", 0), ("lstm", 100), ("gru", 0), ("rnn", 0)])
def test_split_programs_match_one_program_bitwise(cell, P, reverse, monkeypatch):
    """A batch tile's hidden tiles split across programs that meet at step_barrier give the bits
    that one program walking all of them gives (the same dots in the same order): forward and
    backward, T=40, B=70 (three batch tiles), H=300 (ten hidden tiles), mixed lengths."""
    from rnnkernels.ops import triton_common

    T, B, H = 40, 70, 300
    args = layer_args(cell, T, B, H, VARIANT.get(cell, P), "mixed", reverse, torch.float32,
                      device=DEVICE)  # fmt: skip
    module = kernels("triton", cell)
    assert triton_common.split_programs(torch.device(DEVICE), 5, 10, 2 * T) == 10
    split = run_layer(module, cell, args)
    monkeypatch.setattr(triton_common, "MAX_SPLIT", 1)
    one = run_layer(module, cell, args)
    for k, (a, b) in enumerate(zip(split, one)):
        assert torch.equal(a, b), f"tensor {k}: {(a - b).abs().max()}"


class Recorder:
    """Wraps a @triton.jit kernel: records each launch's STATIONARY, then launches it."""

    def __init__(self, kernel):
        self.kernel, self.stationary = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.stationary.append(kwargs["STATIONARY"])
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,P", [("lstm", 0), ("lstm", 48), ("gru", 0), ("rnn", 0)])
def test_weights_on_chip_match_streaming(cell, P, reverse, dtype, monkeypatch):
    """T=40, B=70 (five batch tiles), H=100 (seven hidden tiles of 16, a program each), mixed
    lengths: the kernels that keep each program's weight slices on chip (forward and backward
    both chosen, checked) against the streaming kernels, within the dtype's bar. The budget
    is lifted, on any GPU: fp32 here has TF32 off, whose slices of H=100 spill registers, which
    is slow but must still be right."""
    from rnnkernels.ops import triton_common

    T, B, H = 40, 70, 100
    args = layer_args(cell, T, B, H, VARIANT.get(cell, P), "mixed", reverse, dtype,
                      device=DEVICE)  # fmt: skip
    module = kernels("triton", cell)
    streaming = run_layer(module, cell, args)
    recorders = {}
    for name in [n for n in dir(module) if n.endswith("_kernel")]:
        recorders[name] = Recorder(getattr(module, name))
        monkeypatch.setattr(module, name, recorders[name])
    monkeypatch.setattr(triton_common, "WEIGHTS_ON_CHIP", True)
    monkeypatch.setattr(triton_common, "on_chip_budget", lambda device, dtype: 2**40)
    on_chip = run_layer(module, cell, args)
    assert all(r.stationary == [True] for r in recorders.values()), recorders
    for k, (a, b) in enumerate(zip(on_chip, streaming)):
        assert_close(a, b, f"tensor {k}")
