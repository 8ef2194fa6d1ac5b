"""Every backend's kernels, cell by cell, beyond the shared suites (test_ops.py, test_parity.py):
tile and thread boundaries, non-contiguous inputs, bitwise determinism, NaN and Inf, long
sequences. One matrix: each test runs per (backend, cell), its sizes chosen per backend where a
backend has boundaries of its own (C++ batch chunks and split steps at two threads, Numba's
threaded step GEMMs, Triton's tiles). Each grid's default run is a covering subset
(testing.grid); ``-m slow`` runs the rest. What only one backend has: test_cpp.py,
test_numba.py, test_triton.py (and test_triton_split.py, test_triton_sm90.py, test_triton_gpu.py).
On a CPU the Triton kernels run in Triton's interpreter; on a GPU, on the device."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rnnkernels
from rnnkernels.backends import kernels
from rnnkernels.testing import (
    N_FWD,
    N_OUT,
    VARIANTS,
    assert_close,
    grid,
    layer_args,
    lengths_arg,
    needs,
    outputs_and_grads,
    poison_allocations,
    run_layer,
    torch_twin,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton's; the CPU backends' is cpu
BACKENDS = ["reference", "cpp", "numba", "triton"]
F32, F64 = torch.float32, torch.float64


def device_of(backend: str) -> str:
    return DEVICE if backend == "triton" else "cpu"


def oracle(cell: str):
    return kernels("reference", cell)


def direction(reverse: bool) -> str:
    return "rev" if reverse else "fwd"


def matrix(table: dict, **grid_options) -> list:
    """pytest params (backend, cell, *axes) from ``table``: (backend, cell) -> axes (testing.grid),
    each grid covered in the default run. ``backend`` is the conftest fixture, parametrised
    indirectly (``indirect=["backend"]``): it skips a backend that is not available here."""
    params = []
    for (backend, cell), axes in table.items():
        marks = [pytest.mark.triton] if backend == "triton" else []
        for p in grid(axes, marks=marks, **grid_options):
            params.append(
                pytest.param(backend, cell, *p.values, marks=p.marks, id=f"{backend}-{cell}-{p.id}")
            )
    return params


@pytest.fixture(autouse=True)
def tf32_off():
    """fp32 against naive.py or torch holds with TF32 off on both sides (docs/design.md §6): on a
    GPU Triton's fp32 dots follow cuDNN's flag, torch's matmuls their own."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def restore_threads():
    """Tests that are about threads set their own count; the next test gets the count back."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One layer's sizes, and what a backend needs set to cross its boundaries there."""

    name: str
    T: int
    B: int
    H: int
    threads: int | None = None  # CPU backends: torch's thread count (conftest sets 1)
    block: int | None = None  # Triton: the largest tile side (16 is as small as tl.dot allows)
    variant: object = None  # the cell's variant at these sizes, where a case's variant is None


def configure(backend: str, cell: str, shape: Shape | None, weights: str | None, monkeypatch):
    """Sets what ``shape`` needs (threads, Triton's largest tile) and Triton's ``weights`` mode."""
    if shape is not None and shape.threads is not None:
        torch.set_num_threads(shape.threads)  # restore_threads gives it back
    if shape is not None and shape.block is not None:
        module = kernels(backend, cell)
        monkeypatch.setattr(module, "MAX_BLOCK_B", shape.block)
        monkeypatch.setattr(module, "MAX_BLOCK_H", shape.block)
        monkeypatch.setattr(module, "BLOCK_K_BYTES", shape.block * torch.float64.itemsize)
    if weights is not None:  # as the triton_weights fixture: streamed, or kept on chip
        from rnnkernels.ops import triton_common

        monkeypatch.setattr(triton_common, "WEIGHTS_ON_CHIP", weights == "on chip")


WEIGHTS = ["streaming", "on chip"]  # Triton's recurrent weights: streamed every step, on chip

# --- tile and thread boundaries ------------------------------------------------------------------

# Two threads: B=32/33 runs as two batch chunks of 16-17 rows; B=5 with 4H=4096 / 3H=3600 splits
# each step (the GEMM's panels, the pointwise pass's rows) in C++ and in Numba
# (numba_jit.MIN_SPLIT_STEP_FLOPS); RNN's W_hh of 1100^2 floats splits C++'s steps by its size
# (step_weight.h, split_step_gemm). C++ IndRNN (one thread): hidden chunks of 512 past
# H=1024, vector widths crossed by H=5 and 130, odd T and B. Triton: tiles of 16 (block=16)
# crossed by B, H, P and 4H and partly filled; H=130 also crosses the default block; IndRNN's
# tiles of up to 128 hidden units by 256 // that rows.
CPU_SIZES = {
    "lstm": [Shape("chunks", 5, 32, 128, threads=2), Shape("split-steps", 4, 5, 1024, threads=2)],
    "gru": [Shape("chunks", 6, 33, 200, threads=2), Shape("split-steps", 6, 5, 1200, threads=2)],
    "rnn": [Shape("chunks", 6, 33, 130, threads=2), Shape("split-steps", 4, 5, 1100, threads=2)],
}
INDRNN_SIZES = [
    Shape(f"T{T}-B{B}-H{H}", T, B, H)
    for T, B, H in [(1, 1, 1), (7, 3, 5), (63, 6, 130), (7, 1, 130), (63, 3, 1), (3, 2, 1030)]
]
LENGTHS = [None, "sorted", "mixed"]
CPU = {"reverse": [False, True], "dtype": [F32, F64], "weights": [None]}
TRITON_LSTM = [
    Shape("H1", 3, 1, 1, block=16, variant=0),
    Shape("B17-H33", 3, 17, 33, block=16, variant=0),
    Shape("proj-H33-P17", 3, 5, 33, block=16, variant=17),
    Shape("H130", 2, 3, 130, variant=0),
]
TRITON_GRU = [Shape("H1", 3, 1, 1), Shape("B17-H65", 3, 17, 65), Shape("B33-H130", 3, 33, 130)]
TRITON_INDRNN = [Shape("H1", 3, 1, 1), Shape("B300-H1", 4, 300, 1), Shape("B5-H130", 5, 5, 130)]
TRITON_RNN = [Shape("H1", 3, 1, 1), Shape("B17-H33", 3, 17, 33, block=16),
              Shape("B33-H130", 3, 33, 130)]  # fmt: skip
TRITON = {"lengths": ["mixed"], "reverse": [False, True], "dtype": [F64]}
BOUNDARIES = {
    ("cpp", "lstm"): {"shape": CPU_SIZES["lstm"], "variant": [0, 24], "lengths": [None, "mixed"],
                      **CPU},
    ("cpp", "gru"): {"shape": CPU_SIZES["gru"], "variant": [True, False],
                     "lengths": [None, "mixed"], **CPU},
    ("cpp", "indrnn"): {"shape": INDRNN_SIZES, "variant": ["relu", "tanh"], "lengths": LENGTHS,
                        **CPU},
    ("numba", "lstm"): {"shape": CPU_SIZES["lstm"][1:], "variant": [0, 24],
                        "lengths": [None, "mixed"], **CPU},
    ("numba", "gru"): {"shape": CPU_SIZES["gru"][1:], "variant": [True, False],
                       "lengths": [None, "mixed"], **CPU},
    ("numba", "indrnn"): {"shape": INDRNN_SIZES[1:2], "variant": ["relu", "tanh"],
                          "lengths": LENGTHS, **CPU},
    ("cpp", "rnn"): {"shape": CPU_SIZES["rnn"], "variant": ["relu", "tanh"],
                     "lengths": [None, "mixed"], **CPU},
    ("numba", "rnn"): {"shape": CPU_SIZES["rnn"], "variant": ["relu", "tanh"],
                       "lengths": [None, "mixed"], **CPU},
    ("triton", "lstm"): {"shape": TRITON_LSTM, "variant": [None], **TRITON, "weights": WEIGHTS},
    ("triton", "gru"): {"shape": TRITON_GRU, "variant": [True], **TRITON, "weights": WEIGHTS},
    ("triton", "indrnn"): {"shape": TRITON_INDRNN, "variant": ["relu", "tanh"], **TRITON,
                           "weights": [None]},
    ("triton", "rnn"): {"shape": TRITON_RNN, "variant": ["relu", "tanh"], **TRITON,
                        "weights": WEIGHTS},
}  # fmt: skip
IDS = {"reverse": direction, "lengths": lambda lengths: lengths or "full",
       "variant": lambda variant: "" if variant is None else str(variant),
       "weights": lambda weights: (weights or "").replace(" ", "-")}  # fmt: skip
BOUNDARY_CASES = matrix(BOUNDARIES, together=[("shape", "variant")], ids=IDS)


@pytest.mark.parametrize(
    "backend,cell,shape,variant,lengths,reverse,dtype,weights", BOUNDARY_CASES, indirect=["backend"]
)
def test_boundaries_match_oracle(
    backend, cell, shape, variant, lengths, reverse, dtype, weights, monkeypatch
):
    """Forward and backward against naive.py, every output (saved tensors included) and every
    gradient; fresh allocations NaN-filled, so an element not written shows; y exactly zero past
    each sequence's end; IndRNN's and RNN's gradients also against autograd through naive.py's
    forward."""
    needs(backend, cell, dtype, device_of(backend))
    configure(backend, cell, shape, weights, monkeypatch)
    T, variant = shape.T, shape.variant if variant is None else variant
    args = layer_args(cell, T, shape.B, shape.H, variant, lengths, reverse, dtype,
                      device=device_of(backend))  # fmt: skip
    with poison_allocations():
        ours = run_layer(kernels(backend, cell), cell, args)
    expected = run_layer(oracle(cell), cell, args)
    assert len(ours) == len(expected)
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert_close(a, b, f"tensor {k}")
    lengths = lengths_arg(cell, args)
    if lengths is not None:  # exactly zero past each sequence's end
        past_end = torch.arange(T, device=lengths.device).unsqueeze(1) >= lengths.unsqueeze(0)
        assert (ours[0][past_end] == 0).all()
    if cell not in ("indrnn", "rnn"):  # LSTM, GRU: naive.py's backward against autograd, test_ops
        return
    leaves = [a.clone().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a
              for a in args]  # fmt: skip
    outputs = getattr(oracle(cell), f"{cell}_fwd")(*leaves)
    g = torch.Generator().manual_seed(1)  # run_layer's cotangents
    cotangents = [torch.randn(o.shape, generator=g).to(o) for o in outputs[: N_OUT[cell]]]
    differentiable = [a for a in leaves if torch.is_tensor(a) and a.requires_grad]
    autograd = torch.autograd.grad(outputs[: N_OUT[cell]], differentiable, cotangents)
    ours_grads = [g for g in ours[N_FWD[cell] :] if g.numel()]  # absent weights: empty [0]
    assert len(ours_grads) == len(autograd)
    for k, (a, b) in enumerate(zip(ours_grads, autograd)):
        assert_close(a, b, f"gradient {k} against autograd")


# Where <cell>_fwd takes h0 (testing.layer_args).
H0 = {"lstm": 3, "gru": 3, "indrnn": 2, "rnn": 2}


@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn", "rnn"])
def test_non_contiguous_inputs(backend, cell):
    """gx, the weight matrices and the initial states as strided views (IndRNN's u is 1-d): the
    kernels make the contiguous copies they need."""
    needs(backend, cell, F64, device_of(backend))
    args = layer_args(cell, 7, 3, 5, VARIANTS[cell][-1], "mixed", True, device=device_of(backend))

    def strided(t):  # the same values in another layout: transposed storage, a view back
        return t if t is None or t.dim() < 2 else t.transpose(0, 1).contiguous().transpose(0, 1)

    views = [strided(a) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    h0 = views[H0[cell]]
    assert not views[0].is_contiguous() and not h0.is_contiguous()
    ours = run_layer(kernels(backend, cell), cell, views)
    for k, (a, b) in enumerate(zip(ours, run_layer(oracle(cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


# --- bitwise determinism -------------------------------------------------------------------------

# Three runs, each at its thread count: the C++ kernels at two threads (chunks, split steps); the
# C++ IndRNN also at one (its work split changes with the count, its bits must not). Triton:
# IndRNN's d_u sums per-program partial sums in a fixed order (no atomics).
SMALL = Shape("T9-B5-H7", 9, 5, 7)
DETERMINISM = {
    **{("reference", cell): {"shape": [SMALL], "variant": VARIANTS[cell], "runs": [(1, 1)]}
       for cell in ("lstm", "gru", "indrnn", "rnn")},
    ("cpp", "lstm"): {"shape": [Shape("chunks", 6, 32, 128), Shape("split-steps", 6, 32, 512)],
                      "variant": [0, 32], "runs": [(2, 2, 2)]},
    ("cpp", "gru"): {"shape": [Shape("B33-H1000", 12, 33, 1000), Shape("B32-H256", 12, 32, 256),
                               Shape("B3-H5", 12, 3, 5)], "variant": [True], "runs": [(2, 2, 2)]},
    ("cpp", "indrnn"): {"shape": [Shape("T63-B17-H130", 63, 17, 130)], "variant": ["relu"],
                        "runs": [(2, 2, 1)]},
    ("numba", "lstm"): {"shape": [SMALL, CPU_SIZES["lstm"][1]], "variant": [0, 2],
                        "runs": [(2, 2, 2)]},
    ("numba", "gru"): {"shape": [SMALL, CPU_SIZES["gru"][1]], "variant": [True, False],
                       "runs": [(2, 2, 2)]},
    ("numba", "indrnn"): {"shape": [SMALL], "variant": ["relu", "tanh"], "runs": [(1, 1, 1)]},
    ("cpp", "rnn"): {"shape": CPU_SIZES["rnn"], "variant": ["tanh"], "runs": [(2, 2, 2)]},
    ("numba", "rnn"): {"shape": CPU_SIZES["rnn"], "variant": ["relu"], "runs": [(2, 2, 2)]},
    ("triton", "lstm"): {"shape": [Shape("B20-H24", 3, 20, 24)], "variant": [8],
                         "runs": [(1, 1)], "weights": WEIGHTS},
    ("triton", "gru"): {"shape": [Shape("B33-H20", 3, 33, 20)], "variant": [True],
                        "runs": [(1, 1)], "weights": WEIGHTS},
    ("triton", "indrnn"): {"shape": [Shape("B300-H3", 5, 300, 3)], "variant": ["relu"],
                           "runs": [(1, 1)]},
    ("triton", "rnn"): {"shape": [Shape("B33-H20", 3, 33, 20)], "variant": ["tanh"],
                        "runs": [(1, 1)], "weights": WEIGHTS},
}  # fmt: skip
for axes in DETERMINISM.values():
    axes.setdefault("weights", [None])
    axes.update(lengths=[None, "mixed"], reverse=[False, True])
DETERMINISM_CASES = matrix(
    DETERMINISM,
    together=[("shape", "variant")],
    ids={**IDS, "runs": lambda runs: "threads" + "".join(map(str, runs))},
)


@pytest.mark.parametrize(
    "backend,cell,shape,variant,runs,weights,lengths,reverse",
    DETERMINISM_CASES,
    indirect=["backend"],
)
def test_bitwise_deterministic(
    backend, cell, shape, variant, runs, weights, lengths, reverse, monkeypatch
):
    """The same bits from every run (thread counts ``runs``): every output, saved tensor and
    gradient."""
    needs(backend, cell, F32, device_of(backend))
    configure(backend, cell, shape, weights, monkeypatch)
    args = layer_args(cell, shape.T, shape.B, shape.H, variant, lengths, reverse, F32,
                      device=device_of(backend))  # fmt: skip
    results = []
    for threads in runs:
        torch.set_num_threads(threads)
        results.append(run_layer(kernels(backend, cell), cell, args))
    for n, other in enumerate(results[1:], 1):
        for k, (a, b) in enumerate(zip(other, results[0])):
            assert torch.equal(a, b), f"tensor {k} differs in run {n}"


MODULES = {"lstm": (rnnkernels.LSTM, {}), "lstm-proj": (rnnkernels.LSTM, {"proj_size": 3}),
           "gru": (rnnkernels.GRU, {}), "indrnn": (rnnkernels.IndRNN, {}),
           "rnn": (rnnkernels.RNN, {})}  # fmt: skip


def make_module(name: str, backend: str, dtype=F32, **kwargs):
    """Module ``name`` (MODULES) of input size 5 and hidden size 7, seeded."""
    torch.manual_seed(0)
    cls, options = MODULES[name]
    return cls(5, 7, dtype=dtype, backend=backend, **options, **kwargs).to(device_of(backend))


@pytest.mark.parametrize("name", list(MODULES))
def test_module_bitwise_deterministic(backend, name):
    """A bidirectional module on a packed batch: the same outputs and gradients every run."""
    needs(backend, name.split("-")[0], F32, device_of(backend))
    module = make_module(name, backend, bidirectional=True)
    x = torch.randn(9, 5, 5, device=device_of(backend))
    x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([9, 4, 1, 7, 1]),
                                                enforce_sorted=False)  # fmt: skip
    first, second = outputs_and_grads(module, x, None), outputs_and_grads(module, x, None)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


# --- NaN and Inf ---------------------------------------------------------------------------------

POISONS = {"nan": [float("nan")], "inf": [float("inf")], "-inf": [-float("inf")],
           "all": [float("nan"), float("inf"), -float("inf")]}  # fmt: skip
POISONED = [(2, 1, 0), (5, 0, 1), (3, 2, 2)]  # where each poison goes in x [T=8, B=3, I=5]
CONFIGS = {"1-layer": {}, "2-layers": {"num_layers": 2}, "bidirectional": {"bidirectional": True}}
NAN_CASES = grid({"name": list(MODULES), "poison": list(POISONS), "config": list(CONFIGS),
                  "dtype": [F32, F64]})  # fmt: skip


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's
@pytest.mark.parametrize("name,poison,config,dtype", NAN_CASES)
def test_nan_and_inf_propagate_as_in_torch(backend, name, poison, config, dtype):
    """NaN / Inf in the input reach the same outputs and gradients as in nn.LSTM / nn.GRU, whose
    values the finite elements match. IndRNN: the outputs as in the eager loop (not the
    gradients: where a relu sees a NaN, torch's relu backward passes the gradient on, NaN <= 0
    being false, while the ops' backward, like naive.py's, zeroes it)."""
    needs(backend, name.split("-")[0], dtype, device_of(backend))
    module = make_module(name, backend, dtype, **CONFIGS[config])
    x = torch.randn(8, 3, 5, dtype=dtype, device=device_of(backend))
    for where, value in zip(POISONED, POISONS[poison]):
        x[where] = value
    ours = outputs_and_grads(module, x.clone().requires_grad_(), None)
    expected = outputs_and_grads(torch_twin(module), x.clone().requires_grad_(), None)
    if name == "indrnn":
        ours, expected = (ours[0], []), (expected[0], [])
    for k, (a, b) in enumerate(zip(ours[0] + ours[1], expected[0] + expected[1])):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ"
        assert torch.equal(a.isfinite(), b.isfinite()), f"tensor {k}: Inf positions differ"
        assert_close(a[~b.isnan()], b[~b.isnan()], f"tensor {k}")  # Inf values equal too


FROZEN_CASES = [
    pytest.param(backend, cell, weights, id="-".join([backend, cell, *weights.split()]),
                 marks=[pytest.mark.triton] if backend == "triton" else [])
    for backend in BACKENDS
    for cell in ("lstm", "gru", "indrnn", "rnn")
    for weights in (WEIGHTS if backend == "triton" and cell != "indrnn" else ["default"])
]  # fmt: skip


@pytest.mark.parametrize("backend,cell,weights", FROZEN_CASES, indirect=["backend"])
def test_nan_in_weights_does_not_reach_rows_past_their_end(backend, cell, weights, monkeypatch):
    """A NaN in W_hh (IndRNN: u) reaches only the sequences that run: an empty row between
    running ones shares their tiles, their step GEMM and their dots, yet keeps its state exactly
    and gets zero outputs and finite gradients; elsewhere NaN lands where it does in naive.py.
    Triton: its recurrent weights streamed, and on chip."""
    needs(backend, cell, F64, device_of(backend))
    configure(backend, cell, None, None if weights == "default" else weights, monkeypatch)
    args = list(layer_args(cell, 6, 5, 5, lengths=[6, 0, 6, 1, 6], device=device_of(backend)))
    if cell == "indrnn":
        args[1][3] = float("nan")
    else:
        args[1][min(9, len(args[1]) - 1), 3] = float("nan")
    ours = run_layer(kernels(backend, cell), cell, args)
    expected = run_layer(oracle(cell), cell, args)
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ"
        assert_close(a[~b.isnan()], b[~b.isnan()], f"tensor {k}")
    y, hT, h0 = ours[0], ours[1], args[H0[cell]]
    d_gx, d_h0 = ours[N_FWD[cell]], ours[-2 if cell == "lstm" else -1]
    assert torch.equal(hT[1], h0[1]) and (y[:, 1] == 0).all() and (d_gx[:, 1] == 0).all()
    assert d_h0[1].isfinite().all()
    if cell == "lstm":
        cT, gates, c0, d_c0 = ours[2], ours[3], args[4], ours[-1]
        assert torch.equal(cT[1], c0[1]) and (gates[:, 1] == 0).all() and d_c0[1].isfinite().all()
    if cell == "gru":
        gates, hn = ours[2], ours[3]
        assert (gates[:, 1] == 0).all() and (hn[:, 1] == 0).all()


NAN_GX_CASES = grid(
    {
        "cell,variant": [("lstm", 0), ("lstm", 3), ("gru", True), ("gru", False),
                         ("indrnn", "relu"), ("indrnn", "tanh"), ("rnn", "relu"), ("rnn", "tanh")],
        "lengths": [None, [5, 0, 3]],
        "dtype": [F32, F64],
    },
    together=[("cell,variant", "lengths")],
    ids={"cell,variant": lambda case: "-".join(map(str, case)),
         "lengths": lambda lengths: "lengths" if lengths else "full"},
)  # fmt: skip


@pytest.mark.parametrize("case,lengths,dtype", NAN_GX_CASES)
def test_nan_in_gx_and_h0_propagates_like_the_oracle(backend, case, lengths, dtype):
    """NaN in gx and in h0 reach the outputs and gradients naive.py's reach; a NaN in gx past a
    sequence's end is never read."""
    cell, variant = case
    needs(backend, cell, dtype, device_of(backend))
    args = list(layer_args(cell, 5, 3, 4, variant, lengths, dtype=dtype, device=device_of(backend)))
    gx, h0 = args[0], args[H0[cell]]
    gx[1, 0, 2] = float("nan")
    h0[2, 1] = float("nan")
    if lengths is not None:
        gx[0, 1, 3] = float("nan")  # row 1 is empty
    ours = run_layer(kernels(backend, cell), cell, args)
    assert ours[0][1, 0, 2].isnan() and ours[0][0, 2, 1].isnan()
    for k, (a, b) in enumerate(zip(ours, run_layer(oracle(cell), cell, args))):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ"
        assert_close(a[~b.isnan()], b[~b.isnan()], f"tensor {k}")


# --- long sequences ------------------------------------------------------------------------------

# T per backend: the interpreter runs Triton's step loop in Python, ~60 ms a step here.
LONG = [("cpp", 10000), ("numba", 3000), pytest.param("triton", 48, marks=pytest.mark.triton),
        pytest.param("triton", 400, marks=[pytest.mark.triton, pytest.mark.slow])]  # fmt: skip


@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn", "rnn"])
@pytest.mark.parametrize("backend,T", LONG, indirect=["backend"])
def test_long_sequence_matches_oracle(backend, T, cell):
    """Long T, B=2, H=16, fp32: every output and gradient against naive.py over all steps, and
    finite (no denormal slowdown as gradients decay: IndRNN's u is 0.99, tanh)."""
    needs(backend, cell, F32, device_of(backend))
    T = min(T, RNN_T) if cell == "rnn" else T
    args = layer_args(cell, T, 2, 16, dtype=F32, device=device_of(backend))
    if cell == "indrnn":
        args[1].fill_(0.99)
    ours = run_layer(kernels(backend, cell), cell, args)
    assert all(t.isfinite().all() for t in ours)
    for k, (a, b) in enumerate(zip(ours, run_layer(oracle(cell), cell, args))):
        assert_close(a, b, f"tensor {k}")


# Module steps per backend: the interpreter runs Triton's step loop in Python. IndRNN 1000: its
# weight gradients sum 2T rows of decaying gradients, where the order of a float32 sum shows at
# the fp32 bar by T = 3000 (torch's autograd and the kernels sum differently). RNN: its tanh
# keeps every step's gradient of order 1, so dW_hh grows with T (to ~100 at T = 10000, where
# 5e-5 is a few ulps): the order of the sum showed at T = 2000 (module; 10000 the op: 8e-5).
RNN_T = 3000
MODULE_T = {"lstm": 2000, "gru": 2000, "indrnn": 1000, "rnn": 500}
MODULE_BACKENDS = [pytest.param("reference", marks=pytest.mark.slow), "cpp", "numba",
                   pytest.param("triton", marks=pytest.mark.triton)]  # fmt: skip


@pytest.mark.parametrize("name", ["lstm", "gru", "indrnn", "rnn"])
@pytest.mark.parametrize("backend", MODULE_BACKENDS, indirect=True)
def test_long_sequence_module_matches_torch(backend, name):
    """A module over a long sequence (B=2, fp32; Triton 48 steps) against torch's (IndRNN: the
    eager loop, its u at 0.99 and tanh, so gradients shrink through many steps, into
    denormals): outputs, final states and every gradient."""
    needs(backend, name, F32, device_of(backend))
    options = {"nonlinearity": "tanh"} if name == "indrnn" else {}
    module = make_module(name, backend, **options)
    if name == "indrnn":
        with torch.no_grad():
            module.weight_hh_l0.fill_(0.99)
    T = 48 if backend == "triton" else MODULE_T[name]
    x = torch.randn(T, 2, 5, device=device_of(backend)).requires_grad_()
    ours = outputs_and_grads(module, x, None)
    expected = outputs_and_grads(torch_twin(module), x, None)
    for k, (a, b) in enumerate(zip(ours[0] + ours[1], expected[0] + expected[1])):
        assert_close(a, b, f"tensor {k}")
