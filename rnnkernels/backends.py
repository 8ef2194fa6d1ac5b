"""Backend registry: which implementation of the per-layer ops runs a call.

A backend is a name, a check of whether it can run on this machine, and a check of whether it can
run one layer call (``LayerCall``: cell, device, dtype, sizes), made before the call so that
``"auto"`` can fall back. Its kernels, ``<cell>_fwd`` / ``<cell>_bwd`` keeping the per-layer op
contract, sit in ``ops/<cell>/<backend module>.py``; each cell's ``op.py`` names them per backend.
Every call is checked once (``rnnkernels.validation``) before a backend is chosen: backends see
well-formed calls only.

Choosing: ``backend=`` on a module or functional call, else the selection in force for the calling
thread or asyncio task: its ``set_backend(...)`` choice (a ContextVar; usually a ``with`` block),
else the process-wide default (``set_default_backend``; initially ``RNNKERNELS_BACKEND``, else
``"auto"``). A named backend that cannot run a call raises ``BackendError`` saying why; only
``"auto"`` falls back. ``"auto"`` chooses per call from the measured dispatch table
(``rnnkernels.dispatch``), else by ``_AUTO_ORDER``.

The ``torch`` backend is not a per-layer backend: it runs a whole call through torch's own fused
RNN op (``functional._native``), so ``functional`` branches on it once, before the layer stack.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

GATES = {"lstm": 4, "gru": 3, "indrnn": 1, "rnn": 1}  # gate rows of W_ih per hidden unit, per cell
# The cells whose forward keeps activations beyond y for the backward (LSTM gates and cells, GRU
# gates and hn): their C++ forward ops end with `save` (False: inference, functional._forward).
SAVES_ACTIVATIONS = frozenset({"lstm", "gru"})
AUTO = "auto"
_log = logging.getLogger("rnnkernels")


class BackendError(RuntimeError):
    """A backend was asked for by name and cannot run the call."""


class LayerCall(NamedTuple):
    """A call as a backend is asked about it before it runs: the cell, the device and dtype of its
    tensors, its sizes (B batch, H hidden, R the state fed back through W_hh: the projection size
    with one, else H; T time steps) and what ``auto``'s dispatch table keys on besides (layers,
    bidirectional, packed input, whether autograd records it). Sizes of 0: unknown (a probe by
    device and dtype). A NamedTuple: one is built per call, and a frozen dataclass costs 3x."""

    cell: str
    device: torch.device
    dtype: torch.dtype
    B: int = 0
    H: int = 0
    R: int = 0
    T: int = 0
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    grad: bool = False  # grad mode on and the input or weight_ih_l0 requires grad: training


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    unavailable: Callable[[], str | None]  # why it cannot run on this machine, or None
    cannot_run: Callable[[LayerCall], str | None]  # why it cannot run this call, or None


def _always_available() -> str | None:
    return None


def _runs_anything(call: LayerCall) -> str | None:
    return None


_extension_error: list[str | None] = []  # filled on first use: the import error, or None


def _extension_missing() -> str | None:
    if not _extension_error:
        try:
            importlib.import_module("rnnkernels.ops.cpp")  # loads rnnkernels._C
            _extension_error.append(None)
        except ImportError as e:
            _extension_error.append(
                f"the C++ extension rnnkernels._C is not importable ({e}); build it with "
                "pip install --no-build-isolation -e ."
            )
    return _extension_error[0]


def _cpu_float_cannot_run(call: LayerCall) -> str | None:
    """What the CPU backends (cpp, numba) run: every cell on CPU tensors, float32 or float64, and
    bfloat16 or float16 on their float32 kernels (docs/design.md, "Mixed precision")."""
    if call.device.type != "cpu":
        return f"it runs on CPU tensors, got a {call.device.type} tensor"
    if call.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return f"it supports float32, float64, bfloat16 and float16, got {call.dtype}"
    return None


def _module_missing(*modules: str, extra: str) -> Callable[[], str | None]:
    """Availability check of a backend that needs importable Python packages."""

    def missing() -> str | None:
        for module in modules:
            if importlib.util.find_spec(module) is None:
                return (
                    f"the package {module!r} is not installed (pip install 'rnnkernels[{extra}]')"
                )
        return None

    return missing


def triton_interpreted() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


TRITON_INDEX_LIMIT = 2**31 - 1  # Triton kernels index within one step and the weights in int32


def _triton_cannot_run(call: LayerCall) -> str | None:
    device, dtype = call.device.type, call.dtype
    if triton_interpreted():
        if device != "cpu":
            return f"TRITON_INTERPRET=1 runs kernels on CPU tensors, got a {device} tensor"
        if dtype == torch.bfloat16:
            return "Triton's interpreter computes bfloat16 wrongly; bfloat16 needs a GPU"
    elif device != "cuda":
        return f"it runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f"it supports float32, float64, float16 and bfloat16, got {dtype}"
    G, H, R = GATES[call.cell], call.H, call.R
    sizes = {"one time step of gx": call.B * G * H}  # time steps are offset in int64
    if call.cell != "indrnn":
        sizes["w_hh"] = G * H * R
    if call.R != call.H:
        sizes["w_hr"] = R * H
    for what, numel in sizes.items():
        if numel > TRITON_INDEX_LIMIT:
            return (
                f"{what} has {numel} elements, beyond the Triton kernels' int32 index limit of "
                f"{TRITON_INDEX_LIMIT}"
            )
    return None


def _torch_cannot_run(call: LayerCall) -> str | None:
    """torch's fused RNN ops run LSTM, GRU and RNN wherever torch runs them; IndRNN has none."""
    if call.cell == "indrnn":
        return "torch has no IndRNN (no fused op to run); use cpp, numba or triton"
    return None


_REGISTRY: dict[str, Backend] = {
    "reference": Backend(
        name="reference",
        description="pure-torch time loop (ops/<cell>/naive.py); the oracle, any device",
        unavailable=_always_available,
        cannot_run=_runs_anything,
    ),
    "cpp": Backend(
        name="cpp",
        description="compiled C++ CPU kernels (csrc/), fp32/fp64, bf16/fp16 (fp32 accumulation "
        "and state; bf16 dot products where the CPU has AVX512_BF16)",
        unavailable=_extension_missing,
        cannot_run=_cpu_float_cannot_run,
    ),
    "numba": Backend(
        name="numba",
        description="Numba JIT CPU kernels (ops/<cell>/numba.py), fp32/fp64 (bf16/fp16 converted "
        "to fp32 at the call); no compiler needed",
        unavailable=_module_missing("numba", extra="numba"),
        cannot_run=_cpu_float_cannot_run,
    ),
    "triton": Backend(
        name="triton",
        description="Triton GPU kernels (ops/<cell>/triton.py), time loop inside the kernel",
        unavailable=_module_missing("triton", extra="triton"),
        cannot_run=_triton_cannot_run,
    ),
    "torch": Backend(
        name="torch",
        description="torch's own fused RNN (nn.LSTM / nn.GRU / nn.RNN's op: oneDNN or ATen on "
        "CPU, cuDNN on CUDA), whole calls; no IndRNN",
        unavailable=_always_available,
        cannot_run=_torch_cannot_run,
    ),
}

# What "auto" tries, in order, per device type, where the dispatch table has no entry for a call
# (rnnkernels.dispatch). The reference loop is never chosen silently for a CUDA tensor.
_AUTO_ORDER = {"cpu": ("cpp", "numba"), "cuda": ("triton",)}


def _check_name(name: str, source: str) -> str:
    """``name`` if it names a backend or ``"auto"``; else a ValueError naming ``source``."""
    if name != AUTO and name not in _REGISTRY:
        raise ValueError(
            f"unknown rnnkernels backend {name!r} (from {source}); "
            f"expected one of {[AUTO, *_REGISTRY]}"
        )
    return name


# The selection: the process-wide default, and the choice of a thread or asyncio task that made
# one (set_backend), which wins over the default for its calls. Read by get_backend.
_default: str = _check_name(os.environ.get("RNNKERNELS_BACKEND", AUTO), "RNNKERNELS_BACKEND")
_scoped: ContextVar[str | None] = ContextVar("rnnkernels_backend", default=None)


def backend_names() -> list[str]:
    """Every backend this package knows, available here or not."""
    return list(_REGISTRY)


def available_backends() -> list[str]:
    """The backends that can run on this machine."""
    return [name for name in _REGISTRY if _unavailable(name) is None]


def get_backend() -> str:
    """The selection in force for a call from this thread or asyncio task that names no backend:
    its ``set_backend`` choice, else the process-wide default.

    In code traced by torch.compile, the process-wide default: Dynamo can neither read a
    ContextVar nor guard on one, while it guards on the default (a module global), so a compiled
    model recompiles when the default changes. A compiled call whose caller selects otherwise
    with ``set_backend`` raises ``BackendError`` when it runs (``check_selection``)."""
    if torch.compiler.is_dynamo_compiling():
        return _default
    scoped = _scoped.get()
    return _default if scoped is None else scoped


def set_default_backend(name: str) -> None:
    """Set the process-wide default selection: the one of every thread and asyncio task that has
    no ``set_backend`` choice of its own, and the one compiled code follows."""
    global _default
    _default = _check_name(name, "set_default_backend")


class set_backend:
    """Select the backend for the calls of the calling thread or asyncio task that name none: a
    choice that wins over the process default (``set_default_backend``) and loses to
    ``backend=``. Compiled code does not follow it (``get_backend``).

    ``with set_backend("reference"): ...`` selects it inside the block and, on exit, restores
    exactly the choice it replaced, whatever other threads and tasks select meanwhile. Like
    ``torch.set_grad_enabled`` it takes effect when called, so a bare ``set_backend(name)`` call
    sets the choice until changed, or until an enclosing ``with set_backend`` block exits. A new
    thread starts without a choice; an asyncio task starts with its creator's."""

    def __init__(self, name: str) -> None:
        self._token: Token[str | None] = _scoped.set(_check_name(name, "set_backend"))

    def __enter__(self) -> set_backend:
        return self

    def __exit__(self, *exc: object) -> None:
        _scoped.reset(self._token)


def check_selection(traced: str | None) -> None:
    """Raise ``BackendError`` unless the caller's selection is ``traced``, the one a call's backend
    was chosen from (None: ``backend=`` named it, nothing to check). The layer ops check it each
    time they run. Eager, it holds by construction; in a compiled model, whose traced code read
    the process default only (``get_backend``), it catches a ``set_backend`` choice that would
    otherwise be silently ignored."""
    if traced is None:
        return
    selected = get_backend()
    if selected != traced:
        raise BackendError(
            f"this call was traced (torch.compile / torch.export) where the rnnkernels backend "
            f"selection was {traced!r}, and runs where it is {selected!r}. Compiled code cannot "
            "follow a set_backend() choice, which is per thread and asyncio task (Dynamo neither "
            "reads nor guards a ContextVar): name the backend on the module (backend=...), or "
            "select it with rnnkernels.set_default_backend(), which compiled code follows (it "
            "recompiles)."
        )


def resolve(requested: str | None, call: LayerCall) -> str:
    """The concrete backend name that runs ``call``: ``requested`` (a name, or ``"auto"``), else
    the selection in force (``get_backend``). At DEBUG level, logger ``rnnkernels`` says which
    and why (outside torch.compile)."""
    if requested is None:
        requested = get_backend()  # checked when it was selected
    else:
        _check_name(requested, "backend argument")
    if requested != AUTO:
        why = why_not(requested, call)
        if why is not None:
            raise BackendError(f"backend '{requested}' cannot run this {call.cell} call: {why}")
        if not torch.compiler.is_compiling() and _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s: backend %r, named (auto not asked)", dispatch.describe(call), requested)
        return requested
    choice = dispatch.choose(call)
    if choice.backend == "reference" and call.device.type == "cuda":
        warnings.warn(
            "rnnkernels: no GPU backend can run this call; using the slow pure-torch "
            "'reference' backend",
            stacklevel=3,
        )
    if not torch.compiler.is_compiling() and _log.isEnabledFor(logging.DEBUG):
        _log.debug("%s", choice)
    return choice.backend


def auto_rule(call: LayerCall) -> str:
    """What ``auto`` runs where no table entry decides: the first of ``_AUTO_ORDER`` for the
    device that can run the call, else ``reference``."""
    order = _AUTO_ORDER.get(call.device.type, ())
    for name in order:
        if name in _REGISTRY and why_not(name, call) is None:
            return name
    if call.device.type == "cpu" and call.dtype in (torch.bfloat16, torch.float16):
        # the reference loop runs a half type on CPU at a fraction of torch's speed (0.3x for a
        # bf16 LSTM forward at T=100 B=32 H=256): never taken silently
        why = "; ".join(f"{name}: {why_not(name, call)}" for name in order)
        raise BackendError(
            f"backend 'auto': no compiled CPU backend can run this {call.dtype} {call.cell} call "
            f"({why}); name backend='reference' (the slow pure-torch loop) or, for LSTM and GRU, "
            "backend='torch' to run it anyway"
        )
    return "reference"


def kernels(backend: str, cell: str) -> Any:
    """What holds ``<cell>_fwd`` / ``<cell>_bwd`` of ``backend`` (a module; for cpp the
    ``torch.ops.rnnkernels_cpp`` namespace), loaded on first use (numba compiles its kernels, cpp
    loads the extension, triton imports Triton)."""
    match backend, cell:
        case "reference", "lstm":
            from rnnkernels.ops.lstm import naive as module
        case "reference", "gru":
            from rnnkernels.ops.gru import naive as module
        case "reference", "indrnn":
            from rnnkernels.ops.indrnn import naive as module
        case "reference", "rnn":
            from rnnkernels.ops.rnn import naive as module
        case "cpp", _:
            # the C++ extension's dispatcher ops (csrc/torch/ops.cpp), every cell's, are the
            # kernels as they are: naive.py's arguments and returns
            importlib.import_module("rnnkernels.ops.cpp")  # loads and registers them
            return torch.ops.rnnkernels_cpp
        case "numba", "lstm":
            from rnnkernels.ops.lstm import numba as module
        case "numba", "gru":
            from rnnkernels.ops.gru import numba as module
        case "numba", "indrnn":
            from rnnkernels.ops.indrnn import numba as module
        case "numba", "rnn":
            from rnnkernels.ops.rnn import numba as module
        case "triton", "lstm":
            from rnnkernels.ops.lstm import triton as module
        case "triton", "gru":
            from rnnkernels.ops.gru import triton as module
        case "triton", "indrnn":
            from rnnkernels.ops.indrnn import triton as module
        case "triton", "rnn":
            from rnnkernels.ops.rnn import triton as module
        case "torch", _:
            raise KeyError(
                "backend 'torch' has no per-layer kernels: it runs whole calls (rnnkernels."
                "functional branches to torch's fused op before the layer stack)"
            )
        case _:
            raise KeyError(f"no {cell} kernels for backend {backend!r}")
    if backend == "numba":  # its float32 kernels run half types too (ops/steps.py)
        if cell not in _numba_kernels:
            from rnnkernels.ops.steps import FloatKernels

            _numba_kernels[cell] = FloatKernels(module, cell)
        return _numba_kernels[cell]
    return module


_numba_kernels: dict[str, Any] = {}


def why_not(name: str, call: LayerCall) -> str | None:
    """Why backend ``name`` cannot run ``call``; None when it can."""
    return _unavailable(name) or _REGISTRY[name].cannot_run(call)


def why_unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine at all; None when it is available."""
    return _unavailable(name)


def _unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, or None."""
    return _REGISTRY[name].unavailable()


# A constant to torch.compile: Dynamo calls _unavailable while tracing and keeps the result, with
# no guard (what runs on this machine does not change). Traced, the first check would import
# modules, which Dynamo cannot trace: a model compiled with fullgraph=True before any eager call
# failed on it. The attribute is what torch.compiler.assume_constant_result sets (a private one,
# read in torch/_dynamo/variables/functions.py); set directly because that public decorator
# imports torch._dynamo, which made `import rnnkernels` take 1 s and 150 MB more.
# tests/test_compile.py compiles as the first call of a process.
_unavailable._dynamo_marked_constant = True  # type: ignore[attr-defined]

# Last: dispatch (auto's table) imports this module's names.
from rnnkernels import dispatch  # noqa: E402
