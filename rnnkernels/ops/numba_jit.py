"""What every Numba kernel shares: compile options, the float32 activations, the step GEMM.

Compile options (``kernel``): explicit float32 and float64 signatures (compiled when the cell's
module is imported, or loaded from Numba's cache), ``cache=True`` (from a read-only install Numba
falls back to a per-user cache dir; ``NUMBA_CACHE_DIR`` moves it), ``nogil``, no ``parallel``.
``fastmath`` is limited to ``contract`` (FMA): the full set assumes no NaN/Inf and breaks NaN
propagation. ``error_model="numpy"`` lets a division by zero give Inf/NaN instead of a check that
raises, which keeps the step loops vectorisable. Numba keys each cached kernel on its own source
file only: after editing this module, delete ``ops/*/__pycache__/numba.*`` (an install replaces
every file, so users never meet a stale cache).

Step GEMM: ours (``step_gemm``), on weights packed once per call, not MKL's sgemm_ per step
through torch's library as before: that packs W again on every call, and ours beat it on one
thread at every size measured (``step_gemm``'s numbers). Threads: no Numba threading layer;
kernels run on the calling thread or on torch's own OpenMP team (``run``).
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from collections.abc import Callable

import llvmlite.binding
import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model
from torch import Tensor

from rnnkernels.ops.steps import full_lengths

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
_TANH_CLAMP = _F(7.90531110763549805)  # beyond it tanh rounds to within 3e-7 of 1: +-1 (below)
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
    clamp, tiny, one = _TANH_CLAMP, _TANH_TINY, _F(1)

    def tanh_f32(x):
        xc = clamp if x > clamp else (-clamp if x < -clamp else x)
        x2 = xc * xc
        p = ((((((p0 * x2 + p1) * x2 + p2) * x2 + p3) * x2 + p4) * x2 + p5) * x2) + p6
        q = ((q0 * x2 + q1) * x2 + q2) * x2 + q3
        r = xc * p / q  # computed unconditionally so the selects if-convert
        # +-1 exactly from the clamp on (contracted into FMAs, p/q lands 1 ulp short there), so a
        # saturated gate's derivative is 0, as torch's: 0 * Inf = NaN reaches d_W_ih as in torch
        # (NaN fails both comparisons and stays)
        saturated = one if x >= clamp else (-one if x <= -clamp else r)
        return x if abs(x) < tiny else saturated

    return tanh_f32


@overload(sigmoid)
def _sigmoid(x):
    if x != types.float32:
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    half = _HALF
    return lambda x: half + half * tanh(half * x)  # (1 + tanh(x/2)) / 2


# --- rows a step touches -----------------------------------------------------------------------


@njit(**OPTIONS)
def valid_span(lengths, t, b0, b1):
    """(lo, hi): the rows of [b0, b1) valid at step t (lengths[b] > t) all lie in [lo, hi); an
    empty span if none. The step GEMMs run on those rows only, so packed batches cost their true
    length."""
    lo = b0
    while lo < b1 and lengths[lo] <= t:
        lo += 1
    hi = b1
    while hi > lo and lengths[hi - 1] <= t:
        hi -= 1
    return lo, hi


# --- SIMD vectors ------------------------------------------------------------------------------
# The step GEMM's register block is written with explicit vectors: LLVM does not keep an array of
# accumulators in registers across a loop (Numba cannot mark arrays `restrict`, so the stores may
# alias the loads), and summing over k in vector lanes would need fast-math reassociation, which
# makes results depend on the vector width. A Vector is one SIMD register; llvm.fma rounds each
# multiply-add once, so every output element is the same k-ordered chain of FMAs whatever the
# register block, the batch rows or the vector width (bitwise the same results).
# 64 bytes (zmm) with AVX-512, else 32 (ymm with AVX2; LLVM splits it where registers are narrower).
VECTOR_BYTES = 64 if llvmlite.binding.get_host_cpu_features().get("avx512f") else 32


class Vector(types.Type):
    """A SIMD register of ``dtype`` lanes, VECTOR_BYTES wide, as a Numba value."""

    def __init__(self, dtype: types.Float):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES * 8 // dtype.bitwidth
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        lane = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(lane, fe_type.lanes))


def _row_major(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"


def _vector_address(context, builder, sig, args):
    """The address of a[row, col] (a: C-contiguous 2-D) as a pointer to a Vector."""
    aty, (a, row, col) = sig.args[0], args[:3]
    array = context.make_array(aty)(context, builder, a)
    ptr = cgutils.get_item_pointer(context, builder, aty, array, [row, col], wraparound=False)
    return builder.bitcast(ptr, context.get_value_type(Vector(aty.dtype)).as_pointer())


@intrinsic
def vload(typingctx, a, row, col):
    """``a[row, col : col + lanes]`` (a: C-contiguous 2-D; not bounds-checked)."""
    if not _row_major(a):
        return None

    def codegen(context, builder, sig, args):
        address = _vector_address(context, builder, sig, args)
        return builder.load(address, align=a.dtype.bitwidth // 8)

    return Vector(a.dtype)(a, row, col), codegen


@intrinsic
def vstore(typingctx, a, row, col, v):
    """``a[row, col : col + lanes] = v`` (a: C-contiguous 2-D; not bounds-checked)."""
    if not (_row_major(a) and v == Vector(a.dtype)):
        return None

    def codegen(context, builder, sig, args):
        address = _vector_address(context, builder, sig, args)
        builder.store(args[3], address, align=a.dtype.bitwidth // 8)

    return types.void(a, row, col, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """A Vector with x in every lane."""
    if not isinstance(x, types.Float):
        return None
    vector = Vector(x)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vector)
        undef = ir.Constant(vty, ir.Undefined)
        first = builder.insert_element(undef, args[0], ir.IntType(32)(0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), [0] * vector.lanes)
        return builder.shuffle_vector(first, undef, zeros)

    return vector(x), codegen


@intrinsic
def vfma(typingctx, x, y, acc):
    """``x * y + acc`` lane by lane, rounded once (llvm.fma)."""
    if not (isinstance(acc, Vector) and x == acc and y == acc):
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(acc)
        name = f"llvm.fma.v{acc.lanes}f{acc.dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
        return builder.call(fma, args)

    return acc(x, y, acc), codegen


def lanes(a):
    """Inside kernels: the lanes of a Vector of the array ``a``'s dtype (a constant)."""


@overload(lanes)
def _lanes(a):
    n = Vector(a.dtype).lanes
    return lambda a: n


# --- step GEMM ----------------------------------------------------------------------------------
# out[M, N] = a[M, K] op(W), ours, on the thread that calls it. op(W) is packed once per layer call
# (pack_panels) into panels of PANEL_VECTORS vectors of columns, [K][panel] each, so that a step
# reads W in order. A register block of 4 rows x 2 panels (16 vector accumulators; 4 panel loads
# and 4 broadcasts per 16 FMAs) walks each pair of panels down k; the rows left over (B=1
# inference, a batch's last 1-3 rows) take 1 row x 2 panels (4 chains hide the FMA latency; such
# steps stream W and are bound by the cache it comes from).
# Zen 4 (2-vCPU EPYC, AVX-512 on 256-bit units), one thread, us per step, ours vs MKL's sgemm_
# (which the kernels called before, from torch's library; it packs W again on every call), both
# on a loaded machine, the best of many: [32,256]x[256,1024] 146 vs 363 (the FMA peak, 117
# GFLOP/s, is 143); [64,512]x[512,2048] 1343 vs 1502; [8,64]x[64,256] 2.4 vs 4.0;
# [16,128]x[128,512] 18.4 vs 25; [1,256]x[256,1024] 10.7 vs 20; [4,1024]x[1024,4096] 313 vs 1514
# (W is 16 MB there, from L3).
PANEL_VECTORS = 2


@njit(**OPTIONS)
def pack_panels(w, trans):
    """op(W) (``w.T`` if trans, else ``w``: [K, N]) as panels [ceil(N / panel), K, panel], the
    columns past N zero (panel: PANEL_VECTORS vectors)."""
    K, N = (w.shape[1], w.shape[0]) if trans else (w.shape[0], w.shape[1])
    L = PANEL_VECTORS * lanes(w)
    P = (N + L - 1) // L
    panels = np.empty((P, K, L), w.dtype)
    panels[P - 1 :] = 0  # the columns past N
    if trans:  # column c of op(W) is row c of W: read in order
        for c in range(N):
            panel, j, w_c = panels[c // L], c % L, w[c]
            for k in range(K):
                panel[k, j] = w_c[k]
    else:  # panel by panel, row by row (2-4x faster than all panels' row k, then k + 1)
        for p in range(P):
            n = min(L, N - p * L)
            for k in range(K):
                src, dst = w[k, p * L : p * L + n], panels[p, k]
                for j in range(n):
                    dst[j] = src[j]
    return panels


@njit(**OPTIONS)
def _store(out, row, col, n, v0, v1, v2, v3, spill):
    """out[row, col : col + n] = the first n lanes of v0..v3 (spill: [1, 4 vectors] scratch)."""
    width = lanes(out)
    if n == 4 * width:
        vstore(out, row, col, v0)
        vstore(out, row, col + width, v1)
        vstore(out, row, col + 2 * width, v2)
        vstore(out, row, col + 3 * width, v3)
        return
    vstore(spill, 0, 0, v0)
    vstore(spill, 0, width, v1)
    vstore(spill, 0, 2 * width, v2)
    vstore(spill, 0, 3 * width, v3)
    out[row, col : col + n] = spill[0, :n]


@njit(**OPTIONS)
def _four_rows(a, r, p, q, out, col, n, spill):
    """out[r : r + 4, col : col + n] = a[r : r + 4] [p q] (two panels side by side)."""
    width = lanes(a)
    z = vsplat(a.dtype.type(0))
    c00, c01, c02, c03, c10, c11, c12, c13 = z, z, z, z, z, z, z, z
    c20, c21, c22, c23, c30, c31, c32, c33 = z, z, z, z, z, z, z, z
    for k in range(a.shape[1]):
        w0, w1, w2, w3 = vload(p, k, 0), vload(p, k, width), vload(q, k, 0), vload(q, k, width)
        x = vsplat(a[r, k])
        c00, c01, c02, c03 = vfma(x, w0, c00), vfma(x, w1, c01), vfma(x, w2, c02), vfma(x, w3, c03)
        x = vsplat(a[r + 1, k])
        c10, c11, c12, c13 = vfma(x, w0, c10), vfma(x, w1, c11), vfma(x, w2, c12), vfma(x, w3, c13)
        x = vsplat(a[r + 2, k])
        c20, c21, c22, c23 = vfma(x, w0, c20), vfma(x, w1, c21), vfma(x, w2, c22), vfma(x, w3, c23)
        x = vsplat(a[r + 3, k])
        c30, c31, c32, c33 = vfma(x, w0, c30), vfma(x, w1, c31), vfma(x, w2, c32), vfma(x, w3, c33)
    _store(out, r, col, n, c00, c01, c02, c03, spill)
    _store(out, r + 1, col, n, c10, c11, c12, c13, spill)
    _store(out, r + 2, col, n, c20, c21, c22, c23, spill)
    _store(out, r + 3, col, n, c30, c31, c32, c33, spill)


@njit(**OPTIONS)
def _one_row(a, r, p, q, out, col, n, spill):
    """out[r, col : col + n] = a[r] [p q] (two panels side by side)."""
    width = lanes(a)
    z = vsplat(a.dtype.type(0))
    c0, c1, c2, c3 = z, z, z, z
    for k in range(a.shape[1]):
        x = vsplat(a[r, k])
        c0, c1 = vfma(x, vload(p, k, 0), c0), vfma(x, vload(p, k, width), c1)
        c2, c3 = vfma(x, vload(q, k, 0), c2), vfma(x, vload(q, k, width), c3)
    _store(out, r, col, n, c0, c1, c2, c3, spill)


@njit(**OPTIONS)
def step_gemm(a, panels, out, spill, pairs):
    """out[M, N] = a[M, K] op(W), op(W) as pack_panels packed it, for the column pairs of panels
    in ``pairs`` ((first, end), a part of a split step; (0, gemm_pairs(panels)) for all); spill:
    [1, 2 panels] scratch. Every element is the same chain of FMAs in k order, whichever block
    computes it."""
    M, N = out.shape
    P, L = panels.shape[0], panels.shape[2]
    M4 = M - M % 4
    for pair in range(pairs[0], pairs[1]):  # panels p, p + 1 (an odd last one twice, stored once)
        p = 2 * pair
        q = min(p + 1, P - 1)
        col = p * L
        n = min(N - col, L if q == p else 2 * L)
        for r in range(0, M4, 4):
            _four_rows(a, r, panels[p], panels[q], out, col, n, spill)
        for r in range(M4, M):
            _one_row(a, r, panels[p], panels[q], out, col, n, spill)


@njit(**OPTIONS)
def gemm_pairs(panels):
    """How many column pairs of panels step_gemm walks."""
    return (panels.shape[0] + 1) // 2


@njit(**OPTIONS)
def gemm_columns(panels, pairs, N):
    """(lo, hi): the columns of out step_gemm writes for ``pairs`` (out has N columns)."""
    L = 2 * panels.shape[2]
    return min(N, pairs[0] * L), min(N, pairs[1] * L)


# --- threads -------------------------------------------------------------------------------------
# With torch's thread count (torch.get_num_threads()) above one, a kernel runs on torch's own
# OpenMP team, as the C++ kernels' at::parallel_for does: we call the GOMP_parallel of the OpenMP
# library torch loaded (``run``), whose threads run a kernel's entry (a cfunc of the cell's module,
# ``run_part``). A second pool beside torch's fights it on the same cores: with threads of our
# own, torch's OpenMP threads still spinning after the input GEMM (libgomp spins ~300k iterations
# before it sleeps) took a core, and T=100 B=1 H=256 split steps ran 8x slower than on one
# thread. The work is divided in one of two ways:
# - Batch chunks: the rows of a batch are independent recurrences, so each thread runs the whole
#   time loop for a chunk of rows [b0, b1), with no synchronisation between steps (the C++
#   kernels' for_batch_chunks, common.h). When every thread gets MIN_CHUNK_ROWS rows (one
#   register block of the step GEMM).
# - Split steps: with fewer rows, each of the team's threads takes its share of every step (part
#   `part` of `parts`): its column pairs of the step GEMMs and its hidden units of the pointwise
#   pass, with a barrier (``barrier``) wherever a phase reads what another part wrote. When a step
#   is large enough to repay two barriers (MIN_SPLIT_STEP_FLOPS), or its weights exceed
#   SPLIT_WEIGHT_BYTES, so that each core keeps its share of W in its own L2 where one core would
#   stream all of W every step (split_step_gemm in the C++ kernels, csrc/cpu/step_weight.h).
# Every kernel takes (spill, sync, b0, b1, part, parts) after its own arguments. Each element is
# computed by the same code whichever thread runs it (step_gemm's blocks give the same bits), so
# the thread count does not change the results. A call with less than MIN_THREADED_FLOPS of step
# GEMMs runs on the calling thread. Where torch has no such OpenMP library, kernels run on the
# calling thread.
MIN_CHUNK_ROWS = 4
MIN_THREADED_FLOPS = 2_000_000
MIN_SPLIT_STEP_FLOPS = 2_000_000
SPLIT_WEIGHT_BYTES = 512 << 10
# A part waiting at a barrier spins (with a pause hint), then sleeps (a futex), as libgomp's
# threads wait, and for as long (300k spins, ~7 ms here). Shorter failed: a part that slept after
# 2^10 or 2^16 spins left its core to the scheduler, which woke it on its partner's core, and the
# two took turns on one core from then on (T=100 B=1 H=256 forward, split: 4-324 ms where it ran
# in 0.9 ms on two cores); spinning longer than the scheduler's balancing interval lets it move
# one of them to the other core. Yielding the core every 2^10 spins was worse on a loaded machine
# (8 ms: the core went to other processes).
SPINS_BEFORE_SLEEP = 300_000


def _int32_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.int32 and a.ndim == 1


def _element(context, builder, sig, args):
    """The address of a[i] (a: int32 1-D C-contiguous; not bounds-checked)."""
    array = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(
        context, builder, sig.args[0], array, [args[1]], wraparound=False
    )


@intrinsic
def _fetch_add(typingctx, a, i, value):
    """a[i] += value atomically (sequentially consistent); returns the old a[i]."""
    if not _int32_array(a):
        return None

    def codegen(context, builder, sig, args):
        value = builder.trunc(args[2], ir.IntType(32))
        return builder.atomic_rmw("add", _element(context, builder, sig, args), value, "seq_cst")

    return types.int32(a, i, value), codegen


@intrinsic
def _atomic_load(typingctx, a, i):
    """a[i], loaded atomically (sequentially consistent)."""
    if not _int32_array(a):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_element(context, builder, sig, args), "seq_cst", align=4)

    return types.int32(a, i), codegen


@intrinsic
def _atomic_store(typingctx, a, i, value):
    """a[i] = value, stored atomically (sequentially consistent)."""
    if not _int32_array(a):
        return None

    def codegen(context, builder, sig, args):
        value = builder.trunc(args[2], ir.IntType(32))
        builder.store_atomic(value, _element(context, builder, sig, args), "seq_cst", align=4)

    return types.void(a, i, value), codegen


# Linux's futex (the system call a waiting OpenMP thread sleeps in): a part that has spun long
# enough sleeps until the last part to arrive wakes it, so a part whose thread has no core (torch's
# OpenMP threads still spinning after a torch op, other processes) gets one. Elsewhere the waiting
# part yields its core instead (sched_yield / SwitchToThread), which the scheduler may ignore.
_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine()) if sys.platform == "linux" else None
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129


def _os_function(name: str) -> int:
    if os.name == "nt":
        return ctypes.cast(getattr(ctypes.windll.kernel32, name), ctypes.c_void_p).value
    return ctypes.cast(getattr(ctypes.CDLL(None), name), ctypes.c_void_p).value


# By symbol name, registered in each process (so that a kernel loaded from Numba's cache links).
if _FUTEX is not None:
    llvmlite.binding.add_symbol("rnnkernels_syscall", _os_function("syscall"))
else:
    llvmlite.binding.add_symbol(
        "rnnkernels_yield", _os_function("SwitchToThread" if os.name == "nt" else "sched_yield")
    )


@intrinsic
def _sleep_while(typingctx, a, i, value):
    """Sleeps while a[i] == value (a futex wait; returns at once if it differs, may return early;
    elsewhere: yields the core once)."""
    if not _int32_array(a):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        if _FUTEX is None:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "rnnkernels_yield"
            )
            builder.call(fn, [])
            return
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64], var_arg=True), "rnnkernels_syscall"
        )
        address = builder.ptrtoint(_element(context, builder, sig, args), i64)
        value = builder.trunc(args[2], ir.IntType(32))
        builder.call(fn, [i64(_FUTEX), address, ir.IntType(32)(_FUTEX_WAIT_PRIVATE), value, i64(0)])

    return types.void(a, i, value), codegen


@intrinsic
def _wake(typingctx, a, i):
    """Wakes every thread sleeping on a[i] (nothing without futexes)."""
    if not _int32_array(a):
        return None

    def codegen(context, builder, sig, args):
        if _FUTEX is None:
            return
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64], var_arg=True), "rnnkernels_syscall"
        )
        address = builder.ptrtoint(_element(context, builder, sig, args), i64)
        all_ = ir.IntType(32)(2**31 - 1)
        builder.call(fn, [i64(_FUTEX), address, ir.IntType(32)(_FUTEX_WAKE_PRIVATE), all_])

    return types.void(a, i), codegen


@intrinsic
def _pause(typingctx):
    """A spin-wait hint to the CPU (x86's pause; nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if platform.machine() in ("x86_64", "AMD64"):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(fn, [])

    return types.void(), codegen


@njit(**OPTIONS)
def barrier(sync, parts, generation):
    """Waits until each of the ``parts`` parts has reached this barrier, its ``generation``-th
    (every part passes the same barriers in the same order). sync: int32 [arrived, released,
    sleepers], zeros before the first barrier."""
    if parts == 1:
        return
    released = generation & 0x3FFFFFFF  # the barrier's number as sync[1] holds it
    if _fetch_add(sync, 0, 1) == parts - 1:  # the last to arrive releases the others
        _atomic_store(sync, 0, 0)
        _atomic_store(sync, 1, released)
        if _atomic_load(sync, 2) > 0:
            _wake(sync, 1)
        return
    spins = 0
    while _atomic_load(sync, 1) != released:
        _pause()
        spins += 1
        if spins >= SPINS_BEFORE_SLEEP:
            _fetch_add(sync, 2, 1)  # before the check in _sleep_while: the releaser sees it
            _sleep_while(sync, 1, (released - 1) & 0x3FFFFFFF)
            _fetch_add(sync, 2, -1)


@njit(**OPTIONS)
def share(n, part, parts, align):
    """(lo, hi): part ``part`` of ``parts`` of range(n), split at multiples of ``align``."""
    units = (n + align - 1) // align
    return min(n, units * part // parts * align), min(n, units * (part + 1) // parts * align)


def _openmp_library() -> ctypes.CDLL | None:
    """The OpenMP library torch's CPU library uses, if it has GOMP_parallel (libgomp, and LLVM's
    libomp, which implements libgomp's entry points)."""
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libgomp*", "libomp*", "libiomp5*"):
        for path in sorted(glob.glob(os.path.join(folder, name))):
            try:
                library = ctypes.CDLL(path)  # the one torch loaded: dlopen returns its handle
                library.GOMP_parallel, library.omp_get_thread_num, library.omp_get_num_threads  # noqa: B018
            except (OSError, AttributeError):
                continue
            return library
    return None


_openmp = _openmp_library()
OPENMP = _openmp is not None
for _name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"):
    # Kernels that call them are compiled only with OPENMP (the entries are never run without).
    address = ctypes.cast(getattr(_openmp, _name), ctypes.c_void_p).value if OPENMP else 0
    llvmlite.binding.add_symbol("rnnkernels_" + _name, address)
_gomp_parallel = types.ExternalFunction(
    "rnnkernels_GOMP_parallel", types.void(types.intp, types.voidptr, types.uint32, types.uint32)
)
_thread_num = types.ExternalFunction("rnnkernels_omp_get_thread_num", types.int32())
_num_threads = types.ExternalFunction("rnnkernels_omp_get_num_threads", types.int32())


@intrinsic
def _stack_address(typingctx, value):
    """The address of a copy of ``value`` on the caller's stack (valid until it returns)."""

    def codegen(context, builder, sig, args):
        address = cgutils.alloca_once_value(builder, args[0])
        return builder.bitcast(address, ir.IntType(8).as_pointer())

    return types.voidptr(value), codegen


@intrinsic
def load_job(typingctx, address, job_type):
    """Inside an entry: the job (a tuple of type ``job_type``) at ``address``, a new reference."""
    job = job_type.instance_type

    def codegen(context, builder, sig, args):
        value = builder.load(builder.bitcast(args[0], context.get_value_type(job).as_pointer()))
        context.nrt.incref(builder, job, value)  # the caller's stays; ours is released after
        return value

    return job(address, job_type), codegen


ENTRY = types.void(types.voidptr)  # an entry's signature: the address of its job
ENTRY_OPTIONS = dict(nogil=True, cache=True)


def job_types(signature: Callable[[types.Float], types.Type]) -> tuple[types.Tuple, ...]:
    """The job of a kernel of @kernel(signature), float32 then float64 (an entry's argument):
    the kernel's own arguments, then spills [threads, spill], sync, chunks [n, 2] (the rows of each
    batch chunk; one row: all of them) and split (whether the team splits each step). An entry:

        @cfunc(ENTRY, **ENTRY_OPTIONS)
        def entry(address):
            own, spill, sync, calls = thread_share(load_job(address, JOB))
            for b0, b1, part, parts in calls:
                kernel(*own, spill, sync, b0, b1, part, parts)
    """
    jobs = []
    for f in FLOATS:
        own = signature(f).args[:-6]  # less the arguments run_part gives
        jobs.append(types.Tuple([*own, f[:, ::1], types.int32[::1], types.int64[:, ::1],
                                 types.boolean]))  # fmt: skip
    return tuple(jobs)


@njit(**OPTIONS)
def thread_share(job):
    """Inside an entry, on each thread of the team: (the kernel's own arguments, spill, sync,
    calls), calls [n, 4]: the (b0, b1, part, parts) of each kernel call this thread makes."""
    own, spills, sync, chunks, split = job[:-4], job[-4], job[-3], job[-2], job[-1]
    part, parts = _thread_num(), _num_threads()
    if split:  # parts: the team's size, which every barrier counts
        calls = np.empty((1, 4), np.int64)
        calls[0, 0], calls[0, 1], calls[0, 2], calls[0, 3] = chunks[0, 0], chunks[0, 1], part, parts
    else:  # chunk c on thread c % parts (all on one if the team has one thread)
        calls = np.zeros((len(range(part, chunks.shape[0], parts)), 4), np.int64)
        for i, c in enumerate(range(part, chunks.shape[0], parts)):
            calls[i, 0], calls[i, 1], calls[i, 3] = chunks[c, 0], chunks[c, 1], 1
    return own, spills[part : part + 1], sync, calls


@njit(nogil=True, cache=True)
def _on_team(entry, threads, job):
    _gomp_parallel(entry, _stack_address(job), threads, 0)


def batch_chunks(lengths: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """[(b0, b1), ...]: one chunk of rows per thread, ending on whole register blocks, with about
    equal shares of the valid steps (sum of lengths, each row at least 1); [(0, B)] when the rows
    do not give two threads MIN_CHUNK_ROWS each."""
    B = lengths.shape[0]
    threads = min(threads, B // MIN_CHUNK_ROWS)
    if threads < 2:
        return [(0, B)]
    cost = np.concatenate([[0], np.cumsum(np.maximum(lengths, 1))])  # cost[b]: rows [0, b)
    blocks = np.arange(MIN_CHUNK_ROWS, B, MIN_CHUNK_ROWS)  # possible chunk ends
    ends = [0]
    for c in range(1, threads):  # the block end nearest an equal share, after the last end
        later = blocks[blocks > ends[-1]]
        if not len(later):
            break
        ends.append(int(later[np.argmin(np.abs(cost[later] - cost[B] * c / threads))]))
    ends.append(B)
    return list(zip(ends, ends[1:]))


def threading_args(f: types.Float) -> tuple[types.Type, ...]:
    """The types of the arguments every kernel ends with: spill (step_gemm's scratch), sync (the
    barriers' counters), b0, b1 (its rows), part, parts (its share of each step)."""
    return f[:, ::1], types.int32[::1], types.int64, types.int64, types.int64, types.int64


_NO_SYNC = np.zeros(3, np.int32)


def run(
    kernel: Callable, entries: tuple, args: tuple, lengths: np.ndarray, step_flops: int
) -> None:
    """kernel(*args, spill, sync, b0, b1, part, parts): on torch's OpenMP team through the entry
    of args' dtype (entries: float32, float64) as batch chunks or split steps, or on this thread
    (see above). ``lengths``: clipped to [0, T] (``full_lengths_array``); ``step_flops``: the
    FLOPs of one row's step GEMMs (twice their weights' elements); args[0]: an array of the
    kernel's dtype."""
    B, threads, dtype = lengths.shape[0], torch.get_num_threads(), args[0].dtype
    spill = 2 * PANEL_VECTORS * VECTOR_BYTES // dtype.itemsize
    chunks, split = [(0, B)], False
    if OPENMP and threads > 1 and step_flops * int(lengths.sum()) >= MIN_THREADED_FLOPS:
        chunks = batch_chunks(lengths, threads)
        split = len(chunks) == 1 and (
            step_flops * B >= MIN_SPLIT_STEP_FLOPS
            or step_flops // 2 * dtype.itemsize > SPLIT_WEIGHT_BYTES
        )
    if len(chunks) == 1 and not split:  # one part: no barrier reads or writes sync
        kernel(*args, np.empty((1, spill), dtype), _NO_SYNC, 0, B, 0, 1)
        return
    team = threads if split else len(chunks)
    sync = np.zeros(3, np.int32)
    job = (*args, np.empty((team, spill), dtype), sync, np.array(chunks, np.int64), split)
    entry = entries[0] if dtype == np.float32 else entries[1]
    _on_team(entry.address, team, job)


# --- arguments -----------------------------------------------------------------------------------


def full_lengths_array(lengths: Tensor | None, T: int, B: int) -> np.ndarray:
    """[B] int64: steps.full_lengths as an array (without a torch op when lengths is None)."""
    return np.full(B, T, np.int64) if lengths is None else as_array(full_lengths(lengths, T, B))


def as_array(t: Tensor) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor (of a contiguous copy if it is not contiguous)."""
    return t.detach().contiguous().numpy()
