"""LSTM layer kernels in Triton: the whole time loop of a layer inside one kernel (see README.md,
"Triton kernel"). Same signatures and returns as naive.py.

The grid is (batch tiles of BLOCK_B rows, SPLIT programs per batch tile). The SPLIT programs of a
batch tile run every step together, each on its own hidden tiles (j = part * BLOCK_H, then every
SPLIT * BLOCK_H), so each streams only its slice of the weights. The recurrent state lives in
global scratch, double-buffered by step parity; ``step_barrier`` (triton_common) ends each phase
of a step whose results other programs read. With STATIONARY each program has one hidden tile
and loads its slices of the weights once, before the time loop, rather than every step
(triton_common.launch_split decides). Offsets into [T, B, ...] tensors are int64; weight offsets
are int32 (backends.TRITON_INDEX_LIMIT bounds the weights).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnkernels.backends import triton_interpreted
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

# Largest blocks. On a GPU (measured on an H200, README.md): batch tiles of 16 rows (more programs
# for a batch of 64), 32 hidden units, a k-step of 256 bytes of a weight row; four [BLOCK_B,
# BLOCK_H] fp32 gate accumulators and four [BLOCK_K, BLOCK_H] weight tiles stay in registers.
# The interpreter pays per operation, so fewer, larger tiles run faster there.
MAX_BLOCK_B = 128 if triton_interpreted() else 16
MAX_BLOCK_H = 128 if triton_interpreted() else 32
BLOCK_K_BYTES = 1024 if triton_interpreted() else 256
NUM_WARPS = 4


@triton.jit
def _dot_tile(
    acc,  # [BB, BN]
    a,  # a[r, k] at a + a_rows[r] + k
    a_rows,  # [BB, 1] int64
    row_mask,  # [BB, 1]
    b,  # b[k, n] at b + k * b_row_stride + b_cols[n]
    b_row_stride,
    b_cols,  # [1, BN] int64
    col_mask,  # [1, BN]
    K,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + a[rows, :K] @ b[:K, cols], streaming b in k-steps of BLOCK_K."""
    for k in range(0, K, BLOCK_K):
        ks = tl.arange(0, BLOCK_K).to(tl.int64) + k  # [BK]
        k_in = ks < K
        a_tile = tl.load(a + a_rows + ks[None, :], mask=row_mask & k_in[None, :], other=0)
        b_tile = tl.load(
            b + ks[:, None] * b_row_stride + b_cols, mask=k_in[:, None] & col_mask, other=0
        )  # [BK, BN]
        acc = tl.dot(a_tile, b_tile, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _gate_preacts(
    acc_i,  # [BB, BH] each: gx_t of gate i, f, g, o
    acc_f,
    acc_g,
    acc_o,
    h_prev,  # [B, R]
    h_rows,  # [BB, 1] int64 offsets of the rows in h_prev
    row_mask,  # [BB, 1]
    w_hh,  # [4H, R]
    w_cols,  # [1, BH] int64 offsets of gate i's hidden units as columns of W_hh^T
    col_mask,  # [1, BH]
    H,
    R,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + h_prev @ W_hh^T on one tile of each gate i, f, g, o, streaming W_hh in k-steps."""
    gate_stride = H * R  # int32: backends.TRITON_INDEX_LIMIT bounds W_hh
    for k in range(0, R, BLOCK_K):
        ks = tl.arange(0, BLOCK_K).to(tl.int64) + k  # [BK]
        k_in = ks < R
        h = tl.load(h_prev + h_rows + ks[None, :], mask=row_mask & k_in[None, :], other=0)
        w = w_hh + w_cols + ks[:, None]  # [BK, BH] pointers into W_hh^T, gate i
        w_mask = k_in[:, None] & col_mask
        w_i = tl.load(w, mask=w_mask, other=0)
        w_f = tl.load(w + gate_stride, mask=w_mask, other=0)
        w_g = tl.load(w + 2 * gate_stride, mask=w_mask, other=0)
        w_o = tl.load(w + 3 * gate_stride, mask=w_mask, other=0)
        acc_i = tl.dot(h, w_i, acc_i, input_precision=PRECISION, out_dtype=acc_i.dtype)
        acc_f = tl.dot(h, w_f, acc_f, input_precision=PRECISION, out_dtype=acc_f.dtype)
        acc_g = tl.dot(h, w_g, acc_g, input_precision=PRECISION, out_dtype=acc_g.dtype)
        acc_o = tl.dot(h, w_o, acc_o, input_precision=PRECISION, out_dtype=acc_o.dtype)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _lstm_fwd_kernel(
    gx,  # [T, B, 4H]
    w_hh,  # [4H, R]
    w_hr,  # [P, H] (PROJ)
    lengths,  # [B]
    y,  # [T, B, R]
    gates,  # [T, B, 4H]
    cells,  # [T, B, H]
    h_state,  # [2, B, R] scratch: the state by step parity
    c_state,  # [2, B, H] scratch in the accumulator dtype
    hidden,  # [B, H] scratch (PROJ): o * tanh(c) before projection
    arrivals_ptr,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    R,
    REVERSE: tl.constexpr,
    PROJ: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dots (all of K when STATIONARY)
    BLOCK_KP: tl.constexpr,  # k-step of the W_hr dots
):
    tl.static_assert(BLOCK_B >= 16 and BLOCK_H >= 16 and BLOCK_K >= 16)  # tl.dot's minimum
    ACC = c_state.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    first = tl.program_id(1) * BLOCK_H  # this program's first hidden tile; then every SPLIT-th
    arrivals_ptr += tl.program_id(0)
    # With STATIONARY a program has one tile: no prefetch of a next one (2x the row buffers).
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None
    arrivals = 0
    length = tl.load(lengths + rows, mask=rows < B, other=0)  # [BB]
    row_mask = (rows < B)[:, None]  # [BB, 1]
    rows_g, rows_h, rows_r = rows[:, None] * 4 * H, rows[:, None] * H, rows[:, None] * R
    units = tl.arange(0, BLOCK_H).to(tl.int64)[None, :]  # [1, BH]
    if STATIONARY:  # this program's one hidden tile: its columns of W_hh^T and W_hr^T, once
        cols = units + first
        gate_stride = H * R
        slice_i = load_weights(w_hh, cols * R, cols < H, 1, R, BLOCK_K)  # [BK, BH]
        slice_f = load_weights(w_hh + gate_stride, cols * R, cols < H, 1, R, BLOCK_K)
        slice_g = load_weights(w_hh + 2 * gate_stride, cols * R, cols < H, 1, R, BLOCK_K)
        slice_o = load_weights(w_hh + 3 * gate_stride, cols * R, cols < H, 1, R, BLOCK_K)
        if PROJ:
            slice_p = load_weights(w_hr, cols * H, cols < R, 1, H, BLOCK_KP)  # [BKP, BP]
    for s in range(T):
        t = tl.cast(T - 1 - s if REVERSE else s, tl.int64)
        valid = row_mask & (t < length)[:, None]  # [BB, 1]; state frozen elsewhere
        parity = tl.cast(s % 2, tl.int64)
        h_prev, h_next = h_state + parity * B * R, h_state + (1 - parity) * B * R
        c_prev, c_next = c_state + parity * B * H, c_state + (1 - parity) * B * H
        gx_t, gates_t = gx + t * B * 4 * H, gates + t * B * 4 * H
        cells_t, y_t = cells + t * B * H, y + t * B * R
        for j in tl.range(first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            cols = units + j  # [1, BH]
            col_mask = cols < H
            mask = row_mask & col_mask
            tile = rows_g + cols
            state = rows_h + cols
            # The loads that do not wait for the dots first: their latency overlaps the k-loop.
            c_old = tl.load(c_prev + state, mask=mask, other=0)
            if not PROJ:
                h_old = tl.load(h_prev + state, mask=mask, other=0)
            acc_i = tl.load(gx_t + tile, mask=mask, other=0).to(ACC)
            acc_f = tl.load(gx_t + tile + H, mask=mask, other=0).to(ACC)
            acc_g = tl.load(gx_t + tile + 2 * H, mask=mask, other=0).to(ACC)
            acc_o = tl.load(gx_t + tile + 3 * H, mask=mask, other=0).to(ACC)
            if STATIONARY:
                h = load_rows(h_prev, rows_r, row_mask, R, BLOCK_K)  # [BB, BK]
                acc_i = tl.dot(h, slice_i, acc_i, input_precision=PRECISION, out_dtype=ACC)
                acc_f = tl.dot(h, slice_f, acc_f, input_precision=PRECISION, out_dtype=ACC)
                acc_g = tl.dot(h, slice_g, acc_g, input_precision=PRECISION, out_dtype=ACC)
                acc_o = tl.dot(h, slice_o, acc_o, input_precision=PRECISION, out_dtype=ACC)
            else:
                acc_i, acc_f, acc_g, acc_o = _gate_preacts(
                    acc_i, acc_f, acc_g, acc_o, h_prev, rows_r, row_mask, w_hh, cols * R,
                    col_mask, H, R, PRECISION, BLOCK_K,
                )  # fmt: skip
            i, f, g, o = sigmoid(acc_i), sigmoid(acc_f), tanh(acc_g), sigmoid(acc_o)  # [BB, BH]
            c = tl.where(valid, f * c_old + i * g, c_old)
            tl.store(c_next + state, c, mask=mask)
            out_ty = gates.dtype.element_ty
            tl.store(cells_t + state, c.to(out_ty), mask=mask)
            tl.store(gates_t + tile, tl.where(valid, i, 0).to(out_ty), mask=mask)
            tl.store(gates_t + tile + H, tl.where(valid, f, 0).to(out_ty), mask=mask)
            tl.store(gates_t + tile + 2 * H, tl.where(valid, g, 0).to(out_ty), mask=mask)
            tl.store(gates_t + tile + 3 * H, tl.where(valid, o, 0).to(out_ty), mask=mask)
            h = (o * tanh(c)).to(out_ty)  # [BB, BH]
            if PROJ:
                tl.store(hidden + state, h, mask=mask)
            else:
                tl.store(h_next + state, tl.where(valid, h, h_old), mask=mask)
                tl.store(y_t + state, tl.where(valid, h, 0), mask=mask)
        if PROJ:
            arrivals += SPLIT
            step_barrier(arrivals_ptr, arrivals, SPLIT)  # all of o * tanh(c) is in `hidden`
            for n in tl.range(first, R, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
                cols = units + n  # [1, BP]
                col_mask = cols < R
                mask = row_mask & col_mask
                state = rows_r + cols
                h_old = tl.load(h_prev + state, mask=mask, other=0)
                h = tl.full((BLOCK_B, BLOCK_H), 0, ACC)
                if STATIONARY:
                    hidden_rows = load_rows(hidden, rows_h, row_mask, H, BLOCK_KP)
                    h = tl.dot(hidden_rows, slice_p, h, input_precision=PRECISION, out_dtype=ACC)
                else:
                    h = _dot_tile(h, hidden, rows_h, row_mask, w_hr, 1, cols * H, col_mask, H,
                                  PRECISION, BLOCK_KP)  # fmt: skip
                h = h.to(y.dtype.element_ty)
                tl.store(h_next + state, tl.where(valid, h, h_old), mask=mask)
                tl.store(y_t + state, tl.where(valid, h, 0), mask=mask)
        arrivals += SPLIT
        step_barrier(arrivals_ptr, arrivals, SPLIT)  # h_t complete before step s + 1 reads it


@triton.jit
def _lstm_bwd_kernel(
    grad_y,  # [T, B, R]
    w_hh,  # [4H, R]
    w_hr,  # [P, H] (PROJ)
    c0,  # [B, H]
    lengths,  # [B]
    gates,  # [T, B, 4H] saved by the forward
    cells,  # [T, B, H] saved by the forward
    d_gx,  # [T, B, 4H]
    d_h,  # [T, B, P] (PROJ): the gradient reaching each step's output
    dh_state,  # [2, B, R] scratch in the accumulator dtype: the state gradients by step parity
    dc_state,  # [2, B, H] scratch in the accumulator dtype
    arrivals_ptr,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    R,
    REVERSE: tl.constexpr,
    PROJ: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dots (STATIONARY: all H rows of a gate)
    BLOCK_KP: tl.constexpr,  # k-step of the W_hr dots
):
    tl.static_assert(BLOCK_B >= 16 and BLOCK_H >= 16 and BLOCK_K >= 16)  # tl.dot's minimum
    ACC = dh_state.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    first = tl.program_id(1) * BLOCK_H  # this program's first hidden tile; then every SPLIT-th
    arrivals_ptr += tl.program_id(0)
    # With STATIONARY a program has one tile: no prefetch of a next one (2x the row buffers).
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None
    arrivals = 0
    length = tl.load(lengths + rows, mask=rows < B, other=0)  # [BB]
    row_mask = (rows < B)[:, None]  # [BB, 1]
    rows_g, rows_h, rows_r = rows[:, None] * 4 * H, rows[:, None] * H, rows[:, None] * R
    units = tl.arange(0, BLOCK_H).to(tl.int64)[None, :]  # [1, BH]
    if STATIONARY:  # this program's one tile: its columns of W_hh per gate and of W_hr, once
        cols = units + first
        gate_stride = H * R
        slice_i = load_weights(w_hh, cols, cols < R, R, H, BLOCK_K)  # [BK, BR]
        slice_f = load_weights(w_hh + gate_stride, cols, cols < R, R, H, BLOCK_K)
        slice_g = load_weights(w_hh + 2 * gate_stride, cols, cols < R, R, H, BLOCK_K)
        slice_o = load_weights(w_hh + 3 * gate_stride, cols, cols < R, R, H, BLOCK_K)
        if PROJ:
            slice_p = load_weights(w_hr, cols, cols < H, H, R, BLOCK_KP)  # [BKP, BH]
    for s in range(T):
        t = tl.cast(s if REVERSE else T - 1 - s, tl.int64)  # the forward's last step comes first
        valid = row_mask & (t < length)[:, None]  # [BB, 1]
        parity = tl.cast(s % 2, tl.int64)
        dh_prev, dh_next = dh_state + parity * B * R, dh_state + (1 - parity) * B * R
        dc_prev, dc_next = dc_state + parity * B * H, dc_state + (1 - parity) * B * H
        grad_y_t, d_h_t, d_gx_t = grad_y + t * B * R, d_h + t * B * R, d_gx + t * B * 4 * H
        gates_t, cells_t = gates + t * B * 4 * H, cells + t * B * H
        if s == T - 1:  # the forward's first step started from c0
            c_before = c0
        else:
            c_before = cells + (t + 1 if REVERSE else t - 1) * B * H
        if PROJ:
            for n in tl.range(first, R, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
                cols = units + n  # [1, BP]
                mask = row_mask & (cols < R)
                state = rows_r + cols
                dh = tl.load(dh_prev + state, mask=mask, other=0)
                dh += tl.load(grad_y_t + state, mask=mask, other=0).to(ACC)
                tl.store(d_h_t + state, tl.where(valid, dh, 0).to(d_h.dtype.element_ty), mask=mask)
            arrivals += SPLIT
            step_barrier(arrivals_ptr, arrivals, SPLIT)  # d_h[t] complete before dr reads it
        for j in tl.range(first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            cols = units + j  # [1, BH]
            col_mask = cols < H
            mask = row_mask & col_mask
            state = rows_h + cols
            tile = rows_g + cols
            i = tl.load(gates_t + tile, mask=mask, other=0).to(ACC)
            f = tl.load(gates_t + tile + H, mask=mask, other=0).to(ACC)
            g = tl.load(gates_t + tile + 2 * H, mask=mask, other=0).to(ACC)
            o = tl.load(gates_t + tile + 3 * H, mask=mask, other=0).to(ACC)
            tanh_c = tanh(tl.load(cells_t + state, mask=mask, other=0).to(ACC))
            c_prev = tl.load(c_before + state, mask=mask, other=0).to(ACC)
            dc_old = tl.load(dc_prev + state, mask=mask, other=0)
            if PROJ:  # dr = d_h[t] @ W_hr, after the loads above so that they overlap it
                dr = tl.full((BLOCK_B, BLOCK_H), 0, ACC)
                if STATIONARY:
                    d_h_rows = load_rows(d_h_t, rows_r, row_mask, R, BLOCK_KP)
                    dr = tl.dot(d_h_rows, slice_p, dr, input_precision=PRECISION, out_dtype=ACC)
                else:
                    dr = _dot_tile(dr, d_h_t, rows_r, row_mask, w_hr, H, cols, col_mask, R,
                                   PRECISION, BLOCK_KP)  # fmt: skip
            else:
                dr = tl.load(dh_prev + state, mask=mask, other=0)
                dr += tl.load(grad_y_t + state, mask=mask, other=0).to(ACC)
                dr = tl.where(valid, dr, 0)  # [BB, BH]
            dc = dc_old + dr * o * (1 - tanh_c * tanh_c)
            tl.store(dc_next + state, tl.where(valid, dc * f, dc_old), mask=mask)
            out_ty = d_gx.dtype.element_ty
            d_i = tl.where(valid, dc * g * i * (1 - i), 0)
            d_f = tl.where(valid, dc * c_prev * f * (1 - f), 0)
            d_g = tl.where(valid, dc * i * (1 - g * g), 0)
            d_o = tl.where(valid, dr * tanh_c * o * (1 - o), 0)
            tl.store(d_gx_t + tile, d_i.to(out_ty), mask=mask)
            tl.store(d_gx_t + tile + H, d_f.to(out_ty), mask=mask)
            tl.store(d_gx_t + tile + 2 * H, d_g.to(out_ty), mask=mask)
            tl.store(d_gx_t + tile + 3 * H, d_o.to(out_ty), mask=mask)
        arrivals += SPLIT
        step_barrier(arrivals_ptr, arrivals, SPLIT)  # d_gx[t] complete: dh = d_gx[t] @ W_hh
        for n in tl.range(first, R, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            cols = units + n  # [1, BR]
            col_mask = cols < R
            mask = row_mask & col_mask
            state = rows_r + cols
            dh_old = tl.load(dh_prev + state, mask=mask, other=0)
            dh = tl.full((BLOCK_B, BLOCK_H), 0, ACC)
            if STATIONARY:  # a dot per gate: d_gx[t] of gate i, f, g, o against its slice
                dh = dot_rows(dh, d_gx_t, rows_g, row_mask, H, slice_i, PRECISION, BLOCK_K)
                dh = dot_rows(dh, d_gx_t + H, rows_g, row_mask, H, slice_f, PRECISION, BLOCK_K)
                dh = dot_rows(dh, d_gx_t + 2 * H, rows_g, row_mask, H, slice_g, PRECISION, BLOCK_K)
                dh = dot_rows(dh, d_gx_t + 3 * H, rows_g, row_mask, H, slice_o, PRECISION, BLOCK_K)
            else:
                dh = _dot_tile(dh, d_gx_t, rows_g, row_mask, w_hh, R, cols, col_mask, 4 * H,
                               PRECISION, BLOCK_K)  # fmt: skip
            tl.store(dh_next + state, tl.where(valid, dh, dh_old), mask=mask)
        # Step s + 1 reads only this program's own tiles of dh and dc: no wait for the others.
        tl.debug_barrier()


def _launch(kernel, tensors: list, T: int, B: int, H: int, R: int, phases: int, backward: bool,
            **constexprs):  # fmt: skip
    """Runs ``kernel`` on ``tensors`` (the first sets dtype and device) with ``phases`` barriers
    per step. Block sizes are powers of two from 16 (tl.dot's minimum) up to the limits above,
    covering the batch, H and 4H when they are smaller; with the weights on chip the k-blocks
    cover each dot's whole K (the forward's R for W_hh and H for W_hr, the backward's H, a gate,
    and R), and the slices per program are 4 of [BLOCK_K, BLOCK_H] and one of [BLOCK_KP,
    BLOCK_H] with a projection. ``launch_split`` decides between the two and how many programs
    share a batch tile."""

    def block(n: int, limit: int = 2**31) -> int:
        return max(16, min(limit, triton.next_power_of_2(n)))

    k_limit = BLOCK_K_BYTES // tensors[0].element_size()
    block_b = block(B, MAX_BLOCK_B)
    streaming = dict(BLOCK_B=block_b, BLOCK_H=block(H, MAX_BLOCK_H),
                     BLOCK_K=block(4 * H, k_limit), BLOCK_KP=block(4 * H, k_limit))  # fmt: skip
    k, kp = (block(H), block(R)) if backward else (block(R), block(H))
    on_chip = dict(BLOCK_B=block_b, BLOCK_H=block(H, ON_CHIP_BLOCK_H), BLOCK_K=k, BLOCK_KP=kp)
    slice_elements = on_chip["BLOCK_H"] * (4 * k + (kp if constexprs["PROJ"] else 0))
    launch_split(kernel, tensors, (T, B, H, R), triton.cdiv(B, block_b), phases, streaming,
                 on_chip, slice_elements, **constexprs, num_warps=NUM_WARPS)  # fmt: skip


def _double_buffer(first: Tensor) -> Tensor:
    """Scratch [2, *first.shape] in the accumulator dtype for a state indexed by step parity;
    slot 0 holds ``first``."""
    state = first.new_empty(2, *first.shape, dtype=accumulator_dtype(first.dtype))
    state[0] = first
    return state


def lstm_fwd(
    gx: Tensor,  # [T, B, 4H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [4H, R]  R = P with projection, else H
    w_hr: Tensor | None,  # [P, H]
    h0: Tensor,  # [B, R]
    c0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y [T, B, R], hT [B, R], cT [B, H], gates [T, B, 4H] (i, f, g, o after their
    activations; zero past a sequence's end) and cells [T, B, H] (frozen past the end)."""
    T, B, G = gx.shape
    H, R = G // 4, w_hh.shape[1]
    gx, w_hh = gx.contiguous(), w_hh.contiguous()
    y, gates, cells = gx.new_empty(T, B, R), torch.empty_like(gx), gx.new_empty(T, B, H)
    h_state = torch.stack([h0, h0]).contiguous()  # the state h is y's dtype, as y is
    c_state = _double_buffer(c0)
    proj = w_hr is not None
    hidden = gx.new_empty(B, H) if proj else c_state  # only the projection uses `hidden`
    lengths = full_lengths(lengths, T, B, gx.device)
    tensors = [gx, w_hh, w_hr.contiguous() if proj else w_hh, lengths, y, gates, cells, h_state,
               c_state, hidden]  # fmt: skip
    _launch(_lstm_fwd_kernel, tensors, T, B, H, R, 2 if proj else 1, False, REVERSE=reverse,
            PROJ=proj)  # fmt: skip
    return y, h_state[T % 2].clone(), c_state[T % 2].to(gx.dtype, copy=True), gates, cells


def lstm_bwd(
    grad_y: Tensor,  # [T, B, R]
    grad_hT: Tensor,  # [B, R]
    grad_cT: Tensor,  # [B, H]
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    cells: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, 4H], d_w_hh [4H, R], d_w_hr [P, H] ([0] without projection),
    d_h0 [B, R], d_c0 [B, H]."""
    T, B, G = gates.shape
    H, R = G // 4, w_hh.shape[1]
    grad_y, w_hh, gates, cells = (x.contiguous() for x in (grad_y, w_hh, gates, cells))
    proj = w_hr is not None
    d_gx = torch.empty_like(gates)
    d_h = torch.empty_like(grad_y) if proj else d_gx  # only the projection uses `d_h`
    dh_state, dc_state = _double_buffer(grad_hT), _double_buffer(grad_cT)
    lengths = full_lengths(lengths, T, B, gates.device)
    tensors = [grad_y, w_hh, w_hr.contiguous() if proj else w_hh, c0.contiguous(), lengths,
               gates, cells, d_gx, d_h, dh_state, dc_state]  # fmt: skip
    _launch(_lstm_bwd_kernel, tensors, T, B, H, R, 2 if proj else 1, True, REVERSE=reverse,
            PROJ=proj)  # fmt: skip
    h_prev = previous_states(y, h0, lengths, reverse)
    d_w_hh = weight_grad(d_gx, h_prev)
    d_w_hr = absent_grad(y)
    if proj:
        hidden = gates[..., 3 * H :] * cells.tanh()  # o * tanh(c), before projection
        d_w_hr = weight_grad(d_h, hidden)
    d_h0 = dh_state[T % 2].to(h0.dtype, copy=True)
    return d_gx, d_w_hh, d_w_hr, d_h0, dc_state[T % 2].to(c0.dtype, copy=True)
