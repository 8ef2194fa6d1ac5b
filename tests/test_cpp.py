"""What only the C++ backend has, beyond the (backend, cell) matrix of test_kernels.py: batch chunks
at more threads than cores, denormals flushed to zero on every chunk's thread with the caller's FP
mode restored, the caller's OpenMP thread count left alone, the checks of its public C++ API, and
the schemas and fakes (Meta kernels) of its torch.ops.rnnkernels_cpp ops."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rnnkernels.backends import kernels
from rnnkernels.testing import (
    N_OUT,
    assert_close,
    grid,
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
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn", "rnn"])
def test_batch_chunks_for_more_threads_match_oracle(cell, reverse, threads):
    """3 and 4 threads (oversubscribed on two cores) over B=17 unequal lengths: chunks of whole
    4-row blocks, one possibly empty (IndRNN: its items of rows x hidden units); forward and
    backward against naive.py."""
    args = layer_args(cell, 9, 17, 24, None, "mixed", reverse, torch.float32)
    torch.set_num_threads(threads)  # the fixture restores the caller's count
    ours = run_layer(kernels("cpp", cell), cell, args)
    for k, (a, b) in enumerate(zip(ours, run_layer(kernels("reference", cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


def test_denormal_gradients_flush_to_zero_in_batch_chunks(cpu_isa):
    """LSTM: with gates at 0.5 dc halves every step back in time, through the denormal range
    within 150 steps: every thread of the batch chunks (B=8, two threads) flushes it to zero,
    and the caller's FP mode comes back unchanged; on every GEMM path (cpu_isa, below)."""
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


@pytest.mark.parametrize("cell", ["indrnn", "rnn"])
def test_rejects_unknown_nonlinearity_and_dtype(cell):
    """The C++ library checks its own arguments (a public C++ API, docs/design.md §4)."""
    gx, w_hh, h0, *_ = layer_args(cell, 3, 2, 4, dtype=torch.float32)
    fwd = getattr(kernels("cpp", cell), f"{cell}_fwd")
    with pytest.raises(RuntimeError, match=f"{cell}: nonlinearity must be 'relu' or 'tanh'"):
        fwd(gx, w_hh, h0, None, False, "sigmoid")
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 and float16 are supported"):
        fwd(gx.int(), w_hh.int(), h0.int(), None, False, "relu")
    with pytest.raises(RuntimeError, match="all tensors must share one dtype"):
        fwd(gx.half(), w_hh, h0.half(), None, False, "relu")


@pytest.mark.parametrize("lengths", [None, "mixed"], ids=["full", "mixed"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn", "rnn"])
def test_ops_schema_and_fakes(cell, lengths):
    """torch.library.opcheck of torch.ops.rnnkernels_cpp.<cell>_fwd / _bwd themselves (schema,
    fake tensors: the Meta kernels beside the schemas in csrc/torch/ops.cpp)."""
    variant = {"lstm": 4, "gru": True, "indrnn": "relu", "rnn": "relu"}[cell]
    args = layer_args(cell, 7, 3, 5, variant, lengths, True, torch.float32)
    utils = ("test_schema", "test_faketensor")
    ops = torch.ops.rnnkernels_cpp
    torch.library.opcheck(getattr(ops, f"{cell}_fwd"), args, test_utils=utils)
    outputs = getattr(ops, f"{cell}_fwd")(*args)
    saved = (outputs[0], *outputs[N_OUT[cell] :])
    grads = tuple(torch.randn_like(o) for o in outputs[: N_OUT[cell]])
    bwd_args = (*grads, *args[1:], *saved)
    torch.library.opcheck(getattr(ops, f"{cell}_bwd"), bwd_args, test_utils=utils)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell,variant", [("lstm", 0), ("lstm", 3), ("gru", True)],
                         ids=["lstm", "lstm-proj", "gru"])  # fmt: skip
def test_inference_forward_keeps_no_activations(cell, variant, threads):
    """save=False (what functional._forward passes for a call needing no gradient): the same bits
    of y and the final states as save=True, mixed lengths both ways, and the activations come
    back with 0 steps, as the Meta kernel says (opcheck); on one thread and in two batch chunks."""
    torch.set_num_threads(threads)
    op = getattr(torch.ops.rnnkernels_cpp, f"{cell}_fwd")
    for reverse in (False, True):
        args = layer_args(cell, 6, 9, 5, variant, "mixed", reverse, torch.float32)
        saved, inference = op(*args), op(*args, False)
        n = N_OUT[cell]
        for k in range(n):
            assert torch.equal(saved[k], inference[k]), f"output {k}"
        for k in range(n, len(saved)):
            assert inference[k].shape == (0, *saved[k].shape[1:]), f"activation {k}"
        torch.library.opcheck(op, (*args, False), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "IndRNN", "RNN"])
def test_module_inference_calls_the_cpp_op_directly(cell, monkeypatch):
    """Under no_grad a cpp module calls torch.ops.rnnkernels_cpp.<cell>_fwd itself (LSTM and GRU
    with save=False), not our op, and gives the bits of the call with gradients (2 layers,
    bidirectional, packed); with gradients it runs our op."""
    import rnnkernels
    from rnnkernels import functional

    torch.manual_seed(0)
    model = getattr(rnnkernels, cell)(4, 6, num_layers=2, bidirectional=True, backend="cpp")
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(7, 3, 4), [7, 4, 2])
    expected = model(x)
    calls = []
    ours = functional._FORWARD.copy()
    monkeypatch.setattr(functional, "_FORWARD", {
        name: (lambda *a, _f=f, _n=name: calls.append(_n) or _f(*a)) for name, f in ours.items()
    })  # fmt: skip
    with torch.no_grad():
        got = model(x)
    assert calls == []
    assert torch.equal(got[0].data, expected[0].data)
    for a, b in zip(
        torch.utils._pytree.tree_leaves(got[1]), torch.utils._pytree.tree_leaves(expected[1])
    ):
        assert torch.equal(a, b)
    model(x)
    assert len(calls) == 4  # 2 layers x 2 directions through our op when a gradient is needed


# --- ISA dispatch (csrc/cpu/panel_gemm.h) --------------------------------------------------------

# float32 GEMM paths; avx512bf16 runs float32 GEMMs as avx512 does (its bfloat16 path: test_half.py)
ISAS = ["avx512", "avx2", "blas"]


@pytest.fixture(params=ISAS)
def cpu_isa(request, monkeypatch):
    """Each GEMM path forced through RNNKERNELS_CPU_ISA (read at every call): our AVX-512 and AVX2
    kernels and the BLAS path (MKL's packed GEMM); skipped where this CPU lacks the ISA, which the
    C++ library says by raising."""
    monkeypatch.setenv("RNNKERNELS_CPU_ISA", request.param)
    try:
        torch.ops.rnnkernels_cpp.linear(torch.ones(1, 1), torch.ones(1, 1), None)
    except ValueError as e:
        pytest.skip(str(e))
    return request.param


def test_isa_variable_is_checked(monkeypatch):
    """An unknown RNNKERNELS_CPU_ISA is an error naming the values, from every op that runs a GEMM;
    unset, empty and auto choose by themselves; forcing a path this CPU lacks is an error saying
    so (seen only on such a CPU: here each path either runs or raises that)."""
    x, w = torch.ones(2, 3), torch.ones(4, 3)
    for value in ("", "auto"):
        monkeypatch.setenv("RNNKERNELS_CPU_ISA", value)
        assert torch.equal(torch.ops.rnnkernels_cpp.linear(x, w, None), torch.full((2, 4), 3.0))
    monkeypatch.setenv("RNNKERNELS_CPU_ISA", "avx")
    with pytest.raises(
        ValueError, match="RNNKERNELS_CPU_ISA must be one of auto, avx512bf16, avx512, avx2, blas"
    ):
        torch.ops.rnnkernels_cpp.linear(x, w, None)
    for cell in ("lstm", "gru"):
        args = layer_args(cell, 2, 2, 3, dtype=torch.float32)
        with pytest.raises(ValueError, match="RNNKERNELS_CPU_ISA must be one of"):
            getattr(kernels("cpp", cell), f"{cell}_fwd")(*args)
    for isa in ("avx512bf16", "avx512", "avx2"):
        monkeypatch.setenv("RNNKERNELS_CPU_ISA", isa)
        try:
            assert torch.equal(torch.ops.rnnkernels_cpp.linear(x, w, None), torch.full((2, 4), 3.0))
        except ValueError as e:
            assert f"RNNKERNELS_CPU_ISA={isa}, but this CPU has no" in str(e)


# Two threads: B=32 as two batch chunks (each its own register blocks, balanced), B=5 at 4H=4096
# / 3H=3072 with each step's panels split over the threads; B=7 on one thread: blocks of 4 + 3
# rows, H=20 (4H=80, 3H=60): panels partly filled (24 and 64 columns).
ISA_SHAPES = {"chunks": (5, 32, 128, 2), "split": (4, 5, 1024, 2), "blocks": (6, 7, 20, 1)}
ISA_CELLS = {"lstm": ("lstm", 0), "lstm-proj": ("lstm", 7), "gru": ("gru", True)}
ISA_CASES = grid({"cpu_isa": ISAS, "cell": list(ISA_CELLS), "shape": list(ISA_SHAPES),
                  "reverse": [False, True]},
                 together=[("cpu_isa", "cell"), ("cpu_isa", "shape")],
                 ids={"reverse": lambda r: "rev" if r else "fwd"})  # fmt: skip


@pytest.mark.parametrize("cpu_isa,cell,shape,reverse", ISA_CASES, indirect=["cpu_isa"])
def test_isa_layers_match_oracle(cpu_isa, cell, shape, reverse):
    """fp32 forward and backward of the LSTM (with and without projection) and GRU layer ops on
    every GEMM path, mixed lengths, against naive.py."""
    (cell, variant), (T, B, H, threads) = ISA_CELLS[cell], ISA_SHAPES[shape]
    torch.set_num_threads(threads)
    args = layer_args(cell, T, B, H, variant, "mixed", reverse, torch.float32)
    ours = run_layer(kernels("cpp", cell), cell, args)
    for k, (a, b) in enumerate(zip(ours, run_layer(kernels("reference", cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_isa_bitwise_deterministic_and_long(cpu_isa, cell):
    """On every GEMM path: the same bits from two runs at two threads (batch chunks of B=9), and a
    500-step sequence against naive.py, finite throughout."""
    torch.set_num_threads(2)
    args = layer_args(cell, 7, 9, 24, None, "mixed", False, torch.float32)
    first, second = (run_layer(kernels("cpp", cell), cell, args) for _ in range(2))
    for k, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"tensor {k} differs"
    args = layer_args(cell, 500, 2, 16, dtype=torch.float32)
    ours = run_layer(kernels("cpp", cell), cell, args)
    assert all(t.isfinite().all() for t in ours)
    for k, (a, b) in enumerate(zip(ours, run_layer(kernels("reference", cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


# --- the input projection: torch.ops.rnnkernels_cpp.linear and rnnkernels/ops/linear.py ----------

# (leading dims of x, k, n): a step's worth, partial panels and register blocks, empty sizes.
LINEAR_SHAPES = [((7,), 5, 3), ((3, 11), 64, 200), ((2, 3), 3, 130), ((1,), 1, 1), ((0,), 4, 5),
                 ((5,), 0, 3), ((300,), 33, 70)]  # fmt: skip


@pytest.mark.parametrize("transposed", [False, True], ids=["w", "wt"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_linear_matches_f_linear(cpu_isa, shape, bias, transposed):
    """linear(x, W, b) = F.linear within fp32's bar on every GEMM path (fp64 too), for any
    leading dims, with W given as is or as the transpose of a contiguous [k, n] (read in place)."""
    lead, k, n = shape
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*lead, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n)
    if transposed:
        w = w.t().contiguous().t()
    for dtype in (torch.float32, torch.float64):
        args = (x.to(dtype), w.to(dtype), b.to(dtype) if bias else None)
        y = torch.ops.rnnkernels_cpp.linear(*args)
        assert y.shape == (*lead, n) and y.dtype == dtype and y.is_contiguous()
        expected = F.linear(*(a if a is None else a.double() for a in args))
        assert_close(y, expected.to(dtype), f"{dtype}")


def test_linear_same_bits_for_any_thread_count(cpu_isa):
    """Each element summed by one thread in a fixed order: the same bits on one and two threads
    (the rows split over threads, and few rows: the panels split)."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(1024, 96, generator=g), torch.randn(1024, generator=g)
    for rows in (400, 9):
        x = torch.randn(rows, 96, generator=g)
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.rnnkernels_cpp.linear(x, w, b))
        assert torch.equal(*results) or cpu_isa == "blas", rows


def test_linear_gradients():
    """The autograd of ops/linear.py: gradcheck and gradgradcheck (fp64, with and without the
    bias), torch.func.grad and vmap over x (folded into its rows) and over the weight (per sample)
    against F.linear's; forward mode raises in our words."""
    from rnnkernels.ops.linear import linear

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in ((2, 3, 4), (5, 4), (5,)))  # fmt: skip
    assert torch.autograd.gradcheck(linear, (x, w, b))
    assert torch.autograd.gradgradcheck(linear, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: linear(x, w, None), (x, w))
    x, w, b = x.detach(), w.detach(), b.detach()
    ours, expected = (torch.func.grad(lambda *a, f=f: f(*a).sin().sum(), argnums=(0, 1, 2))(x, w, b)
                      for f in (linear, F.linear))  # fmt: skip
    for a, e in zip(ours, expected):
        assert_close(a, e)
    xs, ws = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    assert_close(torch.vmap(linear, (0, None, None))(xs, w, b), F.linear(xs, w, b))
    per_weight = torch.stack([x @ v.T for v in ws])
    assert_close(torch.vmap(linear, (None, 0, None))(x, ws, None), per_weight)
    with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        torch.func.jvp(linear, (x, w, b), (x, w, b))


def test_linear_schema_and_fake():
    """torch.library.opcheck of torch.ops.rnnkernels_cpp.linear (schema, its Meta kernel)."""
    x, w, b = torch.randn(3, 2, 4), torch.randn(5, 4), torch.randn(5)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.rnnkernels_cpp.linear, (x, w, b), test_utils=utils)
    torch.library.opcheck(torch.ops.rnnkernels_cpp.linear, (x, w.t().contiguous().t(), None),
                          test_utils=utils)  # fmt: skip


def test_modules_project_with_our_gemm():
    """The cpp backend computes gx with rnnkernels_cpp::linear, forward and backward (d_x), for
    every layer and direction from functional._OWN_GEMM_FLOPS; below, and on other backends,
    F.linear."""
    import rnnkernels

    def linear_calls(model, x):
        with torch.profiler.profile() as prof:
            model(x)[0].sum().backward()
        return [e.name for e in prof.events()].count("rnnkernels_cpp::linear")

    model = rnnkernels.LSTM(64, 64, num_layers=2, bidirectional=True, backend="cpp")
    x = torch.randn(40, 32, 64, requires_grad=True)  # layer 0: 2 * 1280 * 64 * 256 = 42 MFLOP
    assert linear_calls(model, x) == 4 + 4  # forward: 2 layers x 2 directions; backward: d_x
    assert linear_calls(model, x[:5]) == 0  # 5 MFLOP
    model.backend = "reference"
    assert linear_calls(model, x) == 0
