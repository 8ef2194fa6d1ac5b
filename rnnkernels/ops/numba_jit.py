"""What every Numba kernel shares: compile options, the float32 activations, the thread policy.

Compile options (``kernel``): explicit float32 and float64 signatures (compiled when the cell's
module is imported, or loaded from Numba's cache), ``cache=True`` (from a read-only install Numba
falls back to a per-user cache dir; ``NUMBA_CACHE_DIR`` moves it), ``nogil``, no ``parallel``.
``fastmath`` is limited to ``contract`` (FMA): the full set assumes no NaN/Inf and breaks NaN
propagation. ``error_model="numpy"`` lets a division by zero give Inf/NaN instead of a check that
raises, which keeps the step loops vectorisable. Numba keys each cached kernel on its own source
file only: after editing this module, delete ``ops/*/__pycache__/numba.*`` (an install replaces
every file, so users never meet a stale cache).

Threads: the kernels' own loops run serially on the calling thread (no ``parallel``, no Numba
thread pool). The step GEMMs (``step_gemm``) call the BLAS torch itself uses (MKL inside torch's
CPU library on x86-64), which threads on torch's OpenMP pool, and ``step_threads`` keeps small
steps on one thread: the C++ kernels' policy too, each with its own threshold
(``MIN_THREADED_STEP_FLOPS`` says how they differ). The fallback, ``np.dot`` (which Numba routes
to scipy's BLAS, OpenBLAS with a thread pool of its own), stays on one thread: two pools on the
same cores fight (2 cores, T=100 steps of a [32,256]x[256,1024] GEMM between two torch GEMMs:
53 ms with OpenBLAS on one thread, 64-88 ms on two, although two threads alone ran the steps in
18-21 ms instead of 33: a BLAS thread spinning after our call halved torch's next GEMM).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from collections.abc import Callable, Iterator

import llvmlite.binding
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that np.dot in kernels calls)
import torch
from numba import cfunc, njit, types
from numba.extending import overload
from threadpoolctl import ThreadpoolController
from torch import Tensor

OPTIONS = dict(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
FLOATS = (types.float32, types.float64)


def kernel(signature: Callable[[types.Float], types.Type]) -> Callable:
    """``@njit`` with OPTIONS, compiled for float32 and float64: ``signature(float type)`` gives
    the kernel's signature for that dtype."""
    return njit([signature(f) for f in FLOATS], **OPTIONS)


# --- activations -----------------------------------------------------------------------------
# float32: tanh as a branch-free rational function (Eigen's coefficients, |error| < 4e-7) so the
# step loops vectorise (libm's tanhf is a scalar call); NaN passes every comparison. float64 keeps
# libm's accuracy.
_F = np.float32
_TANH_CLAMP = _F(7.90531110763549805)  # beyond it p/q is 1 to float precision
_TANH_P = tuple(
    _F(c)
    for c in (
        -2.76076847742355e-16,
        2.00018790482477e-13,
        -8.60467152213735e-11,
        5.12229709037114e-08,
        1.48572235717979e-05,
        6.37261928875436e-04,
        4.89352455891786e-03,
    )
)
_TANH_Q = tuple(
    _F(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                    4.89352518554385e-03)
)  # fmt: skip
_TANH_TINY = _F(0.0004)
_HALF = _F(0.5)


def tanh(x):
    """tanh of a float scalar inside kernels (float32: the rational function above)."""


def sigmoid(x):
    """1 / (1 + exp(-x)) of a float scalar inside kernels, without overflow for large |x|."""


@overload(tanh)
def _tanh(x):
    if x != types.float32:
        return lambda x: np.tanh(x)
    p0, p1, p2, p3, p4, p5, p6 = _TANH_P
    q0, q1, q2, q3 = _TANH_Q
    clamp, tiny = _TANH_CLAMP, _TANH_TINY

    def tanh_f32(x):
        xc = clamp if x > clamp else (-clamp if x < -clamp else x)
        x2 = xc * xc
        p = ((((((p0 * x2 + p1) * x2 + p2) * x2 + p3) * x2 + p4) * x2 + p5) * x2) + p6
        q = ((q0 * x2 + q1) * x2 + q2) * x2 + q3
        r = xc * p / q  # computed unconditionally so the select if-converts
        return x if abs(x) < tiny else r

    return tanh_f32


@overload(sigmoid)
def _sigmoid(x):
    if x != types.float32:
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    half = _HALF
    return lambda x: half + half * tanh(half * x)  # (1 + tanh(x/2)) / 2


# --- rows a step touches -----------------------------------------------------------------------


@njit(**OPTIONS)
def valid_span(lengths, t):
    """(lo, hi): the rows valid at step t (lengths[b] > t) all lie in [lo, hi); (0, 0) if none.
    The step GEMMs run on those rows only, so packed batches cost their true length."""
    B = lengths.shape[0]
    lo = 0
    while lo < B and lengths[lo] <= t:
        lo += 1
    hi = B
    while hi > lo and lengths[hi - 1] <= t:
        hi -= 1
    return lo, hi


# --- step GEMM ----------------------------------------------------------------------------------
# The Fortran sgemm_/dgemm_ that torch's CPU library exports (MKL, statically linked, in the x86-64
# wheels) run the small per-step GEMMs 1.4-2.4x faster than scipy's OpenBLAS (one thread:
# [8,64]x[64,256] 6.8 vs 16.4 us, [16,128]x[128,384] 29 vs 60 us, [32,256]x[256,1024] 294 vs
# 402 us) and thread on torch's own OpenMP pool, so they cannot oversubscribe it. Kernels call them
# by symbol name (registered below each process, so cached kernels link again); where torch has
# no such export, kernels get torch_blas=False and use np.dot (scipy's BLAS, one thread).
_FORTRAN_GEMM = types.void(*[types.intp] * 13)  # every argument by address
_sgemm = types.ExternalFunction("rnnkernels_sgemm", _FORTRAN_GEMM)
_dgemm = types.ExternalFunction("rnnkernels_dgemm", _FORTRAN_GEMM)
_CHAR_N, _CHAR_T = 78, 84  # ord("N"), ord("T")


def _torch_cpu_library() -> ctypes.CDLL | None:
    """torch's CPU library if it exports sgemm_, dgemm_ and MKL's per-thread thread count."""
    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "*torch_cpu.*")):
        try:
            lib = ctypes.CDLL(path)
            lib.sgemm_, lib.dgemm_, lib.MKL_Set_Num_Threads_Local  # noqa: B018
        except (OSError, AttributeError):
            continue
        lib.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
        return lib
    return None


_torch_cpu = _torch_cpu_library()
TORCH_BLAS = _torch_cpu is not None
if TORCH_BLAS:
    for name, function in (("rnnkernels_sgemm", "sgemm_"), ("rnnkernels_dgemm", "dgemm_")):
        llvmlite.binding.add_symbol(
            name, ctypes.cast(getattr(_torch_cpu, function), ctypes.c_void_p).value
        )
else:  # kernels never call these with torch_blas=False; the symbols must still resolve

    @cfunc(_FORTRAN_GEMM, cache=True)
    def _missing_gemm(*args):  # pragma: no cover
        pass

    for name in ("rnnkernels_sgemm", "rnnkernels_dgemm"):
        llvmlite.binding.add_symbol(name, _missing_gemm.address)


def step_gemm(a, w, trans_w, out, torch_blas):
    """Inside kernels: ``out = a @ w.T`` (trans_w) or ``a @ w``, all C-contiguous 2-D."""


@overload(step_gemm)
def _step_gemm(a, w, trans_w, out, torch_blas):
    fortran = _sgemm if a.dtype == types.float32 else _dgemm

    def impl(a, w, trans_w, out, torch_blas):
        if not torch_blas:
            if trans_w:
                np.dot(a, w.T, out)
            else:
                np.dot(a, w, out)
            return
        m, k = a.shape
        n = out.shape[1]
        # Row-major out[m, n] is column-major out^T = op(w)^T a^T.
        flags = np.empty(2, np.uint8)
        flags[0], flags[1] = _CHAR_T if trans_w else _CHAR_N, _CHAR_N
        dims = np.empty(6, np.int32)  # n, m, k, ld of w, ld of a, ld of out
        dims[0], dims[1], dims[2] = n, m, k
        dims[3], dims[4], dims[5] = k if trans_w else n, k, n
        alpha_beta = np.empty(2, a.dtype)
        alpha_beta[0], alpha_beta[1] = 1, 0
        f, d, s = flags.ctypes.data, dims.ctypes.data, alpha_beta.ctypes.data
        fortran(f, f + 1, d, d + 4, d + 8, s, w.ctypes.data, d + 12, a.ctypes.data, d + 16,
                s + alpha_beta.itemsize, out.ctypes.data, d + 20)  # fmt: skip

    return impl


# --- threads -----------------------------------------------------------------------------------

# A step GEMM of fewer FLOPs than this (2 * B * k * n for all B rows, as the kernels pass it to
# step_threads) runs on one thread (why, in the C++ kernels' words, common.h's OneBlasThread: a
# fork/join per step costs more than it saves on a small GEMM).
# The C++ kernels share the policy but not the number: split_step_gemm (csrc/cpu/step_weight.h)
# threads a step from 2,000,000 FLOPs, or whenever its weights exceed 512 KiB (a core's L2 on the
# machine it was measured on, so each core keeps its share of W in its own L2). The two were set
# separately: the C++ threshold and its L2 clause were measured with the C++ kernels (the
# numbers are beside split_step_gemm); this one came with the Numba kernels, with no measurement
# recorded, and has no L2 clause. Change either only after measuring its own backend.
MIN_THREADED_STEP_FLOPS = 1 << 20  # 1,048,576

_blas_lock = threading.Lock()
_blas_controller: list[ThreadpoolController] = []  # filled on first use


def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded in this process (scipy's among them), found once."""
    with _blas_lock:
        if not _blas_controller:
            _blas_controller.append(ThreadpoolController().select(user_api="blas"))
        return _blas_controller[0]


@contextlib.contextmanager
def step_threads(step_flops: int) -> Iterator[None]:
    """Threads of the step GEMMs inside a kernel call: torch's MKL on torch's threads, or on one
    thread below MIN_THREADED_STEP_FLOPS; scipy's BLAS (the fallback) always on one thread."""
    if not TORCH_BLAS:
        with _blas().limit(limits=1):
            yield
    elif step_flops >= MIN_THREADED_STEP_FLOPS:
        yield
    else:
        saved = _torch_cpu.MKL_Set_Num_Threads_Local(1)
        try:
            yield
        finally:
            _torch_cpu.MKL_Set_Num_Threads_Local(saved)


# --- arguments -----------------------------------------------------------------------------------


def as_array(t: Tensor) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor (of a contiguous copy if it is not contiguous)."""
    return t.detach().contiguous().numpy()
