"""GRU layer kernels in Triton (CUDA; CPU tensors under TRITON_INTERPRET=1).

Same signatures and returns as naive.py. The grid is (batch tiles of BLOCK_B rows, SPLIT programs
per batch tile); the SPLIT programs of a batch tile run the whole time loop together, each on its
own hidden tiles (j = part * BLOCK_H, then every SPLIT * BLOCK_H), with ``step_barrier`` ending
each phase whose results the others read. W_hh is streamed from global memory (L2) every step, so
no hidden size is too large for the chip; or, with STATIONARY, each program has one hidden tile
and loads its slice of W_hh once, before the time loop (triton_common.launch_split decides).
Design and limits: README.md here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnkernels.ops.steps import absent_grad, full_lengths, previous_states, weight_grad
from rnnkernels.ops.triton_common import (
    ON_CHIP_BLOCK_H,
    accumulator_dtype,
    dot_rows,
    launch_split,
    load_rows,
    load_weights,
    sigmoid,
    step_barrier,
    tanh,
)


@triton.jit
def _gate_dots(
    acc_r,  # [BB, BH] each
    acc_z,
    acc_n,
    h_read,  # [B, H] accumulator dtype: h_{t-1}
    k_offs,  # [BB, BK] offsets of a k-step of the rows in h_read
    row_in,  # [BB, 1]
    w_tile,  # W_hh^T[k, n] of gate r at w_tile + w_offs[k, n]: the tile's first column
    w_offs,  # [BK, BH]
    cols_in,  # [BH]
    H,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + h_{t-1} @ W_hh^T on one hidden tile of each gate r, z, n, streaming W_hh in k-steps
    of BLOCK_K."""
    k_span = tl.arange(0, BLOCK_K)
    for k in range(0, H, BLOCK_K):
        k_in = k_span < H - k  # [BK]
        h_k = tl.load(h_read + k + k_offs, mask=row_in & k_in[None, :], other=0)
        h_k = h_k.to(w_tile.dtype.element_ty)  # [BB, BK]
        w_ptrs = w_tile + k + w_offs  # [BK, BH] tile of W_hh^T
        w_in = k_in[:, None] & cols_in[None, :]
        w_r = tl.load(w_ptrs, mask=w_in, other=0)
        acc_r = tl.dot(h_k, w_r, acc_r, input_precision=PRECISION, out_dtype=acc_r.dtype)
        w_z = tl.load(w_ptrs + H * H, mask=w_in, other=0)
        acc_z = tl.dot(h_k, w_z, acc_z, input_precision=PRECISION, out_dtype=acc_z.dtype)
        w_n = tl.load(w_ptrs + 2 * H * H, mask=w_in, other=0)
        acc_n = tl.dot(h_k, w_n, acc_n, input_precision=PRECISION, out_dtype=acc_n.dtype)
    return acc_r, acc_z, acc_n


@triton.jit
def _dh_dot(
    acc,  # [BB, BH]
    d_gh_t,  # [B, 3H]
    k_gate_offs,  # [BB, BK] offsets of a k-step of the rows in d_gh_t
    row_in,  # [BB, 1]
    w_tile,  # W_hh[k, n] at w_tile + w_offs[k, n]: the tile's first column
    w_offs,  # [BK, BH]
    cols_in,  # [1, BH]
    H,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + d_gh_t @ W_hh on one hidden tile, a k-loop over all 3H gate columns."""
    k_span = tl.arange(0, BLOCK_K)
    for k in range(0, 3 * H, BLOCK_K):
        k_in = k_span < 3 * H - k  # [BK]
        d_gh = tl.load(d_gh_t + k + k_gate_offs, mask=row_in & k_in[None, :], other=0)
        w = tl.load(w_tile + k * H + w_offs, mask=k_in[:, None] & cols_in, other=0)
        # [BB, BK] x [BK, BH]; out_dtype: triton 3.6 otherwise takes fp32 for fp64 inputs
        acc = tl.dot(d_gh, w, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _gru_fwd_kernel(
    gx_ptr,  # [T, B, 3H]
    w_hh_ptr,  # [3H, H]
    b_hh_ptr,  # [3H] (unused without bias)
    lengths_ptr,  # [B] int64
    state_ptr,  # [2, B, H] accumulator dtype: h_{t-1} / h_t by step parity; [0] is h0 on entry
    y_ptr,  # [T, B, H]
    gates_ptr,  # [T, B, 3H]
    hn_ptr,  # [T, B, H]
    arrivals_ptr,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    HAS_BIAS: tl.constexpr,
    REVERSE: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dot (all of K when STATIONARY)
):
    tl.static_assert(BLOCK_B >= 16 and BLOCK_H >= 16 and BLOCK_K >= 16, "tl.dot needs 16 at least")
    acc_dtype = state_ptr.dtype.element_ty  # accumulation and pointwise math
    out_dtype = y_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    first = tl.program_id(1) * BLOCK_H  # this program's first hidden tile; then every SPLIT-th
    arrivals_ptr += tl.program_id(0)
    # With STATIONARY a program has one tile: no prefetch of a next one (2x the row buffers).
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None
    arrivals = 0
    row_in = (rows < B)[:, None]  # [BB, 1]
    length = tl.load(lengths_ptr + rows, mask=rows < B, other=0)  # [BB]
    span = tl.arange(0, BLOCK_H)  # [BH] a tile's columns, counted from its first
    k_span = tl.arange(0, BLOCK_K)  # [BK] the same for a step of the dot's k-loop
    offs = rows[:, None] * H + span[None, :]  # [BB, BH] into [B, H]
    k_offs = rows[:, None] * H + k_span[None, :]  # [BB, BK] into [B, H]
    gate_offs = rows[:, None] * 3 * H + span[None, :]  # [BB, BH] into [B, 3H]
    w_offs = span[None, :] * H + k_span[:, None]  # [BK, BH] into [3H, H], transposed
    plane = B * H  # elements of one step of [T, B, H]
    if STATIONARY:  # this program's one hidden tile: its columns of W_hh^T per gate, once
        cols = (first + span)[None, :]  # [1, BH]
        slice_r = load_weights(w_hh_ptr, cols * H, cols < H, 1, H, BLOCK_K)  # [BK, BH]
        slice_z = load_weights(w_hh_ptr + H * H, cols * H, cols < H, 1, H, BLOCK_K)
        slice_n = load_weights(w_hh_ptr + 2 * H * H, cols * H, cols < H, 1, H, BLOCK_K)
    for s in range(T):
        t = T - 1 - s if REVERSE else s
        keep = (t < length)[:, None]  # [BB, 1]
        h_read = state_ptr + (s % 2) * plane
        h_write = state_ptr + ((s + 1) % 2) * plane
        t_plane = t.to(tl.int64) * plane
        gx_t = gx_ptr + 3 * t_plane
        gates_t = gates_ptr + 3 * t_plane
        y_t = y_ptr + t_plane
        hn_t = hn_ptr + t_plane
        for j in tl.range(first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            cols_in = span < H - j  # [BH]
            tile = row_in & cols_in[None, :]  # [BB, BH]
            # The loads that do not wait for the dots first: their latency overlaps the k-loop.
            gx_ptrs = gx_t + j + gate_offs
            gx_r = tl.load(gx_ptrs, mask=tile, other=0).to(acc_dtype)
            gx_z = tl.load(gx_ptrs + H, mask=tile, other=0).to(acc_dtype)
            gx_n = tl.load(gx_ptrs + 2 * H, mask=tile, other=0).to(acc_dtype)
            h_prev = tl.load(h_read + j + offs, mask=tile, other=0)
            # tl.full, not tl.zeros: a jit function, which the interpreter re-patches per call
            acc_r = tl.full([BLOCK_B, BLOCK_H], 0, acc_dtype)
            acc_z = tl.full([BLOCK_B, BLOCK_H], 0, acc_dtype)
            acc_n = tl.full([BLOCK_B, BLOCK_H], 0, acc_dtype)
            if STATIONARY:
                h_all = load_rows(h_read, rows[:, None] * H, row_in, H, BLOCK_K)  # [BB, BK]
                h_all = h_all.to(w_hh_ptr.dtype.element_ty)
                acc_r = tl.dot(
                    h_all, slice_r, acc_r, input_precision=PRECISION, out_dtype=acc_dtype
                )
                acc_z = tl.dot(
                    h_all, slice_z, acc_z, input_precision=PRECISION, out_dtype=acc_dtype
                )
                acc_n = tl.dot(
                    h_all, slice_n, acc_n, input_precision=PRECISION, out_dtype=acc_dtype
                )
            else:
                acc_r, acc_z, acc_n = _gate_dots(
                    acc_r, acc_z, acc_n, h_read, k_offs, row_in, w_hh_ptr + j * H, w_offs,
                    cols_in, H, PRECISION, BLOCK_K,
                )  # fmt: skip
            if HAS_BIAS:
                b_ptrs = b_hh_ptr + j + span
                acc_r += tl.load(b_ptrs, mask=cols_in, other=0).to(acc_dtype)[None, :]
                acc_z += tl.load(b_ptrs + H, mask=cols_in, other=0).to(acc_dtype)[None, :]
                acc_n += tl.load(b_ptrs + 2 * H, mask=cols_in, other=0).to(acc_dtype)[None, :]
            r = sigmoid(gx_r + acc_r)
            z = sigmoid(gx_z + acc_z)
            n = tanh(gx_n + r * acc_n)
            h_new = (1 - z) * n + z * h_prev
            gates_ptrs = gates_t + j + gate_offs
            tl.store(gates_ptrs, tl.where(keep, r, 0).to(out_dtype), mask=tile)
            tl.store(gates_ptrs + H, tl.where(keep, z, 0).to(out_dtype), mask=tile)
            tl.store(gates_ptrs + 2 * H, tl.where(keep, n, 0).to(out_dtype), mask=tile)
            tl.store(hn_t + j + offs, tl.where(keep, acc_n, 0).to(out_dtype), mask=tile)
            tl.store(y_t + j + offs, tl.where(keep, h_new, 0).to(out_dtype), mask=tile)
            tl.store(h_write + j + offs, tl.where(keep, h_new, h_prev), mask=tile)
        arrivals += SPLIT
        step_barrier(arrivals_ptr, arrivals, SPLIT)  # h_t complete before step t + 1 reads it


@triton.jit
def _gru_bwd_kernel(
    grad_y_ptr,  # [T, B, H]
    w_hh_ptr,  # [3H, H]
    h0_ptr,  # [B, H]
    lengths_ptr,  # [B] int64
    y_ptr,  # [T, B, H]
    gates_ptr,  # [T, B, 3H]
    hn_ptr,  # [T, B, H]
    dh_ptr,  # [B, H] accumulator dtype: grad_hT on entry, d_h0 on exit
    d_gx_ptr,  # [T, B, 3H]
    d_gh_ptr,  # [T, B, 3H]
    arrivals_ptr,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dot (STATIONARY: all H rows of a gate)
):
    tl.static_assert(BLOCK_B >= 16 and BLOCK_H >= 16 and BLOCK_K >= 16, "tl.dot needs 16 at least")
    acc_dtype = dh_ptr.dtype.element_ty  # accumulation and pointwise math
    out_dtype = d_gx_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    first = tl.program_id(1) * BLOCK_H  # this program's first hidden tile; then every SPLIT-th
    arrivals_ptr += tl.program_id(0)
    # With STATIONARY a program has one tile: no prefetch of a next one (2x the row buffers).
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None
    arrivals = 0
    row_in = (rows < B)[:, None]  # [BB, 1]
    length = tl.load(lengths_ptr + rows, mask=rows < B, other=0)  # [BB]
    span = tl.arange(0, BLOCK_H)  # [BH] a tile's columns, counted from its first
    k_span = tl.arange(0, BLOCK_K)  # [BK] the same for a step of the dot's k-loop
    offs = rows[:, None] * H + span[None, :]  # [BB, BH] into [B, H]
    rows_g = rows[:, None] * 3 * H  # [BB, 1] each row's start in [B, 3H]
    gate_offs = rows_g + span[None, :]  # [BB, BH] into [B, 3H]
    k_gate_offs = rows_g + k_span[None, :]  # [BB, BK] into [B, 3H]
    w_offs = k_span[:, None] * H + span[None, :]  # [BK, BH] into [3H, H]
    plane = B * H  # elements of one step of [T, B, H]
    if STATIONARY:  # this program's one hidden tile: its columns of W_hh per gate, once
        cols = (first + span)[None, :]  # [1, BH]
        slice_r = load_weights(w_hh_ptr, cols, cols < H, H, H, BLOCK_K)  # [BK, BH]
        slice_z = load_weights(w_hh_ptr + H * H, cols, cols < H, H, H, BLOCK_K)
        slice_n = load_weights(w_hh_ptr + 2 * H * H, cols, cols < H, H, H, BLOCK_K)
    for s in range(T):
        t = s if REVERSE else T - 1 - s  # the forward's visiting order, backwards
        keep = (t < length)[:, None]  # [BB, 1]
        prev = t + 1 if REVERSE else t - 1  # the step h_{t-1} came out of, where valid
        from_y = ((tl.full([BLOCK_B], prev, tl.int32) >= 0) & (prev < length))[:, None]
        y_prev = y_ptr + prev.to(tl.int64) * plane
        t_plane = t.to(tl.int64) * plane
        grad_y_t = grad_y_ptr + t_plane
        hn_t = hn_ptr + t_plane
        gates_t = gates_ptr + 3 * t_plane
        d_gx_t = d_gx_ptr + 3 * t_plane
        d_gh_t = d_gh_ptr + 3 * t_plane
        # Gate gradients; dh holds dh_t * z (the part not through W_hh) afterwards.
        for j in tl.range(first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            tile = row_in & (span < H - j)[None, :]  # [BB, BH]
            dh = tl.load(dh_ptr + j + offs, mask=tile, other=0)
            dh_t = dh + tl.load(grad_y_t + j + offs, mask=tile, other=0).to(acc_dtype)
            gates_ptrs = gates_t + j + gate_offs
            r = tl.load(gates_ptrs, mask=tile, other=0).to(acc_dtype)
            z = tl.load(gates_ptrs + H, mask=tile, other=0).to(acc_dtype)
            n = tl.load(gates_ptrs + 2 * H, mask=tile, other=0).to(acc_dtype)
            hn = tl.load(hn_t + j + offs, mask=tile, other=0).to(acc_dtype)
            h_prev = tl.where(
                from_y,
                tl.load(y_prev + j + offs, mask=tile & from_y, other=0),
                tl.load(h0_ptr + j + offs, mask=tile, other=0),
            ).to(acc_dtype)
            d_n = dh_t * (1 - z) * (1 - n * n)
            d_r = tl.where(keep, d_n * hn * r * (1 - r), 0).to(out_dtype)
            d_z = tl.where(keep, dh_t * (h_prev - n) * z * (1 - z), 0).to(out_dtype)
            d_gx_ptrs = d_gx_t + j + gate_offs
            tl.store(d_gx_ptrs, d_r, mask=tile)
            tl.store(d_gx_ptrs + H, d_z, mask=tile)
            tl.store(d_gx_ptrs + 2 * H, tl.where(keep, d_n, 0).to(out_dtype), mask=tile)
            d_gh_ptrs = d_gh_t + j + gate_offs
            tl.store(d_gh_ptrs, d_r, mask=tile)
            tl.store(d_gh_ptrs + H, d_z, mask=tile)
            tl.store(d_gh_ptrs + 2 * H, tl.where(keep, d_n * r, 0).to(out_dtype), mask=tile)
            tl.store(dh_ptr + j + offs, tl.where(keep, dh_t * z, dh), mask=tile)
        arrivals += SPLIT
        step_barrier(arrivals_ptr, arrivals, SPLIT)  # all of d_gh_t written: the dot reads it
        # dh_{t-1} = dh_t * z + d_gh_t W_hh, a k-loop over all 3H gate columns.
        for j in tl.range(first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            cols_in = (span < H - j)[None, :]  # [1, BH]
            tile = row_in & cols_in
            dh = tl.load(dh_ptr + j + offs, mask=tile, other=0)  # overlaps the k-loop
            acc = tl.full([BLOCK_B, BLOCK_H], 0, acc_dtype)
            if STATIONARY:  # a dot per gate: d_gh_t of gate r, z, n against its slice
                acc = dot_rows(acc, d_gh_t, rows_g, row_in, H, slice_r, PRECISION, BLOCK_K)
                acc = dot_rows(acc, d_gh_t + H, rows_g, row_in, H, slice_z, PRECISION, BLOCK_K)
                acc = dot_rows(acc, d_gh_t + 2 * H, rows_g, row_in, H, slice_n, PRECISION, BLOCK_K)
            else:
                acc = _dh_dot(acc, d_gh_t, k_gate_offs, row_in, w_hh_ptr + j, w_offs, cols_in, H,
                              PRECISION, BLOCK_K)  # fmt: skip
            tl.store(dh_ptr + j + offs, tl.where(keep, dh + acc, dh), mask=tile)
        # Step t - 1 reads only this program's own tiles of dh: no wait for the others.
        tl.debug_barrier()


# Blocks (measured on an H200, README.md): 16 batch rows (tl.dot's smallest M), up to 32 hidden
# columns, a k-step of 256 bytes of a W_hh row.
BLOCK_B = 16
MAX_BLOCK_H = 32
BLOCK_K_BYTES = 256
NUM_WARPS = 4


def _blocks(H: int, dtype: torch.dtype) -> dict[str, int]:
    """Hidden columns per tile (BLOCK_H, up to MAX_BLOCK_H) and the k-step of the recurrent dot
    (BLOCK_K: BLOCK_K_BYTES of a W_hh row, 128 fp16 / 64 fp32 / 32 fp64), powers of two from 16.
    The k-step bounds the shared memory of the pipelined k-loop (README.md)."""
    fit = max(16, triton.next_power_of_2(H))
    block_k = max(16, BLOCK_K_BYTES // dtype.itemsize)
    return {"BLOCK_H": min(MAX_BLOCK_H, fit), "BLOCK_K": min(block_k, fit)}


def _launch(kernel, tensors: list, T: int, B: int, H: int, **constexprs) -> None:
    """Runs ``kernel`` on ``tensors`` (the first sets dtype and device) over cdiv(B, BLOCK_B)
    batch tiles, each shared by the programs ``launch_split`` decides on; one barrier per step.
    With the weights on chip one k-block covers the H rows of a gate, and the slices per
    program are three [BLOCK_K, BLOCK_H], forward and backward."""
    fit = max(16, triton.next_power_of_2(H))
    on_chip = dict(BLOCK_B=BLOCK_B, BLOCK_H=min(ON_CHIP_BLOCK_H, fit), BLOCK_K=fit)
    slice_elements = 3 * on_chip["BLOCK_H"] * on_chip["BLOCK_K"]
    launch_split(kernel, tensors, (T, B, H), triton.cdiv(B, BLOCK_B), 1,
                 dict(BLOCK_B=BLOCK_B, **_blocks(H, tensors[0].dtype)), on_chip, slice_elements,
                 **constexprs, num_warps=NUM_WARPS)  # fmt: skip


def gru_fwd(
    gx: Tensor,  # [T, B, 3H]  x W_ih^T + b_ih
    w_hh: Tensor,  # [3H, H]
    b_hh: Tensor | None,  # [3H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, H], hT [B, H], gates [T, B, 3H] (r, z, n after their activations) and
    hn [T, B, H] (h W_hn^T + b_hn); both zero past a sequence's end."""
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[1]
    gx, w_hh = gx.contiguous(), w_hh.contiguous()
    y = gx.new_empty(T, B, H)
    gates = gx.new_empty(T, B, 3 * H)
    hn = gx.new_empty(T, B, H)
    state = gx.new_empty(2, B, H, dtype=accumulator_dtype(gx.dtype))
    state[0] = h0
    b_hh_or_unused = b_hh.contiguous() if b_hh is not None else gx
    tensors = [gx, w_hh, b_hh_or_unused, full_lengths(lengths, T, B, gx.device), state, y, gates,
               hn]  # fmt: skip
    _launch(_gru_fwd_kernel, tensors, T, B, H, HAS_BIAS=b_hh is not None, REVERSE=reverse)
    return y, state[T % 2].to(gx.dtype, copy=True), gates, hn


def gru_bwd(
    grad_y: Tensor,  # [T, B, H]
    grad_hT: Tensor,  # [B, H]
    w_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    hn: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, 3H], d_w_hh [3H, H], d_b_hh [3H] ([0] without bias),
    d_h0 [B, H]."""
    T, B, H = y.shape
    d_gx = gates.new_empty(T, B, 3 * H)
    d_gh = gates.new_empty(T, B, 3 * H)  # gradient of h W_hh^T + b_hh; d_gx but for the n part
    dh = grad_hT.to(accumulator_dtype(y.dtype), memory_format=torch.contiguous_format, copy=True)
    tensors = [grad_y.contiguous(), w_hh.contiguous(), h0.contiguous(),
               full_lengths(lengths, T, B, y.device), y.contiguous(), gates.contiguous(),
               hn.contiguous(), dh, d_gx, d_gh]  # fmt: skip
    _launch(_gru_bwd_kernel, tensors, T, B, H, REVERSE=reverse)
    h_prev = previous_states(y, h0, lengths, reverse)
    d_w_hh = weight_grad(d_gh, h_prev)
    d_b_hh = d_gh.sum((0, 1)) if b_hh is not None else absent_grad(y)
    return d_gx, d_w_hh, d_b_hh, dh.to(y.dtype)
