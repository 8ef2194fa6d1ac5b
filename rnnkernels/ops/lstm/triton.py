"""LSTM layer kernels in Triton: the whole time loop of a layer inside one kernel (see README.md,
"Triton kernel"). Same signatures and returns as naive.py. Names: triton_common's docstring.

The grid is (batch tiles of BLOCK_B rows, SPLIT programs per batch tile). The SPLIT programs of a
batch tile run every step together, each on its own hidden tiles (i_h = part * BLOCK_H, then every
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
    block_size,
    dot_on_chip,
    double_buffer,
    launch_split,
    load_rows,
    load_weights,
    sigmoid,
    split_prologue,
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
def _dot_streaming(
    b_acc,  # [BLOCK_B, BLOCK_H]
    x,  # x[r, k] at x + o_bx[r] + k
    o_bx,  # [BLOCK_B, 1] int64
    m_b,  # [BLOCK_B, 1]
    w,  # w[k, n] at w + k * k_stride + o_w[n]
    k_stride,
    o_w,  # [1, BLOCK_H] int64
    m_w,  # [1, BLOCK_H]
    K,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``b_acc`` + x[rows, :K] @ w[:K, columns], streaming w in k-steps of BLOCK_K."""
    for i_k in range(0, K, BLOCK_K):
        o_k = tl.arange(0, BLOCK_K).to(tl.int64) + i_k  # [BLOCK_K]
        m_k = o_k < K
        b_x = tl.load(x + o_bx + o_k[None, :], mask=m_b & m_k[None, :], other=0)
        b_w = tl.load(w + o_k[:, None] * k_stride + o_w, mask=m_k[:, None] & m_w, other=0)
        b_acc = tl.dot(b_x, b_w, b_acc, input_precision=PRECISION, out_dtype=b_acc.dtype)
    return b_acc


@triton.jit
def _gate_dots(
    b_i,  # [BLOCK_B, BLOCK_H] each: gate i, f, g, o so far
    b_f,
    b_g,
    b_o,
    p_h,  # [B, R]: h_{t-1}
    o_by,  # [BLOCK_B, 1] the rows' starts in p_h
    m_b,  # [BLOCK_B, 1]
    w_hh,  # [4H, R]
    o_w,  # [1, BLOCK_H] gate i's columns of W_hh^T
    m_h,  # [1, BLOCK_H]
    H,
    R,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The gates + h_{t-1} @ W_hh^T on one hidden tile of each gate i, f, g, o, streaming W_hh in
    k-steps of BLOCK_K."""
    gate_stride = H * R  # int32: backends.TRITON_INDEX_LIMIT bounds W_hh
    for i_k in range(0, R, BLOCK_K):
        o_k = tl.arange(0, BLOCK_K).to(tl.int64) + i_k  # [BLOCK_K]
        m_k = o_k < R
        b_h = tl.load(p_h + o_by + o_k[None, :], mask=m_b & m_k[None, :], other=0)
        p_w = w_hh + o_w + o_k[:, None]  # [BLOCK_K, BLOCK_H] gate i's tile of W_hh^T
        m_w = m_k[:, None] & m_h
        b_wi = tl.load(p_w, mask=m_w, other=0)
        b_wf = tl.load(p_w + gate_stride, mask=m_w, other=0)
        b_wg = tl.load(p_w + 2 * gate_stride, mask=m_w, other=0)
        b_wo = tl.load(p_w + 3 * gate_stride, mask=m_w, other=0)
        b_i = tl.dot(b_h, b_wi, b_i, input_precision=PRECISION, out_dtype=b_i.dtype)
        b_f = tl.dot(b_h, b_wf, b_f, input_precision=PRECISION, out_dtype=b_f.dtype)
        b_g = tl.dot(b_h, b_wg, b_g, input_precision=PRECISION, out_dtype=b_g.dtype)
        b_o = tl.dot(b_h, b_wo, b_o, input_precision=PRECISION, out_dtype=b_o.dtype)
    return b_i, b_f, b_g, b_o


@triton.jit
def _lstm_fwd_kernel(
    gx,  # [T, B, 4H]
    w_hh,  # [4H, R]
    w_hr,  # [R, H], or None (HAS_PROJ)
    lengths,  # [B]
    y,  # [T, B, R]
    gates,  # [T, B, 4H]
    cells,  # [T, B, H]
    h_state,  # [2, B, R] scratch: the state by step parity
    c_state,  # [2, B, H] scratch in ACC
    hidden,  # [B, H] scratch: o * tanh(c) before the projection, or None (HAS_PROJ)
    arrivals,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    R,
    REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dots (all of K when STATIONARY)
    BLOCK_KP: tl.constexpr,  # k-step of the W_hr dots
):
    o_b, i_first, p_arrivals, b_length, m_b = split_prologue(
        lengths, arrivals, B, tl.int64, BLOCK_B, BLOCK_H, BLOCK_K
    )
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None  # one tile: no prefetch of a next one
    n_arrivals = 0
    ACC = c_state.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    DTYPE = y.dtype.element_ty
    o_bg, o_bc, o_by = o_b[:, None] * 4 * H, o_b[:, None] * H, o_b[:, None] * R  # [BLOCK_B, 1]
    o_n = tl.arange(0, BLOCK_H).to(tl.int64)[None, :]  # [1, BLOCK_H] a tile's units from its first
    if STATIONARY:  # this program's one tile: its columns of W_hh^T and W_hr^T, once
        o_h = o_n + i_first  # its units, of H and of R
        gate_stride = H * R
        b_wi = load_weights(w_hh, o_h * R, o_h < H, 1, R, BLOCK_K)  # [BLOCK_K, BLOCK_H]
        b_wf = load_weights(w_hh + gate_stride, o_h * R, o_h < H, 1, R, BLOCK_K)
        b_wg = load_weights(w_hh + 2 * gate_stride, o_h * R, o_h < H, 1, R, BLOCK_K)
        b_wo = load_weights(w_hh + 3 * gate_stride, o_h * R, o_h < H, 1, R, BLOCK_K)
        if HAS_PROJ:
            b_wr = load_weights(w_hr, o_h * H, o_h < R, 1, H, BLOCK_KP)  # [BLOCK_KP, BLOCK_H]
    for i_s in range(T):
        i_t = tl.cast(T - 1 - i_s if REVERSE else i_s, tl.int64)
        m_t = m_b & (i_t < b_length)[:, None]  # [BLOCK_B, 1]; the state stays where False
        parity = tl.cast(i_s % 2, tl.int64)
        p_h_prev, p_h_next = h_state + parity * B * R, h_state + (1 - parity) * B * R
        p_c_prev, p_c_next = c_state + parity * B * H, c_state + (1 - parity) * B * H
        p_gx, p_gates = gx + i_t * B * 4 * H, gates + i_t * B * 4 * H
        p_cells, p_y = cells + i_t * B * H, y + i_t * B * R
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            o_h = o_n + i_h  # [1, BLOCK_H]
            m_h = o_h < H
            m_bh = m_b & m_h  # [BLOCK_B, BLOCK_H]
            o_g = o_bg + o_h  # gate i's tile in [B, 4H]; gate k's at + k * H
            o_c = o_bc + o_h  # the tile in [B, H]
            # The loads that do not wait for the dots first: their latency overlaps the k-loop.
            b_c_prev = tl.load(p_c_prev + o_c, mask=m_bh, other=0)
            if not HAS_PROJ:
                b_h_prev = tl.load(p_h_prev + o_c, mask=m_bh, other=0)  # R == H
            b_i = tl.load(p_gx + o_g, mask=m_bh, other=0).to(ACC)
            b_f = tl.load(p_gx + o_g + H, mask=m_bh, other=0).to(ACC)
            b_g = tl.load(p_gx + o_g + 2 * H, mask=m_bh, other=0).to(ACC)
            b_o = tl.load(p_gx + o_g + 3 * H, mask=m_bh, other=0).to(ACC)
            if STATIONARY:
                b_h_rows = load_rows(p_h_prev, o_by, m_b, R, BLOCK_K)  # [BLOCK_B, BLOCK_K]
                b_i = tl.dot(b_h_rows, b_wi, b_i, input_precision=PRECISION, out_dtype=ACC)
                b_f = tl.dot(b_h_rows, b_wf, b_f, input_precision=PRECISION, out_dtype=ACC)
                b_g = tl.dot(b_h_rows, b_wg, b_g, input_precision=PRECISION, out_dtype=ACC)
                b_o = tl.dot(b_h_rows, b_wo, b_o, input_precision=PRECISION, out_dtype=ACC)
            else:
                b_i, b_f, b_g, b_o = _gate_dots(b_i, b_f, b_g, b_o, p_h_prev, o_by, m_b, w_hh,
                                                o_h * R, m_h, H, R, PRECISION, BLOCK_K)  # fmt: skip
            b_i, b_f, b_g, b_o = sigmoid(b_i), sigmoid(b_f), tanh(b_g), sigmoid(b_o)
            b_c = tl.where(m_t, b_f * b_c_prev + b_i * b_g, b_c_prev)
            tl.store(p_c_next + o_c, b_c, mask=m_bh)
            tl.store(p_cells + o_c, b_c.to(DTYPE), mask=m_bh)
            tl.store(p_gates + o_g, tl.where(m_t, b_i, 0).to(DTYPE), mask=m_bh)
            tl.store(p_gates + o_g + H, tl.where(m_t, b_f, 0).to(DTYPE), mask=m_bh)
            tl.store(p_gates + o_g + 2 * H, tl.where(m_t, b_g, 0).to(DTYPE), mask=m_bh)
            tl.store(p_gates + o_g + 3 * H, tl.where(m_t, b_o, 0).to(DTYPE), mask=m_bh)
            b_h = (b_o * tanh(b_c)).to(DTYPE)
            if HAS_PROJ:
                tl.store(hidden + o_c, b_h, mask=m_bh)
            else:
                tl.store(p_h_next + o_c, tl.where(m_t, b_h, b_h_prev), mask=m_bh)
                tl.store(p_y + o_c, tl.where(m_t, b_h, 0), mask=m_bh)
        if HAS_PROJ:
            n_arrivals += SPLIT
            step_barrier(p_arrivals, n_arrivals, SPLIT)  # all of o * tanh(c) is in `hidden`
            for i_r in tl.range(i_first, R, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
                o_r = o_n + i_r  # [1, BLOCK_H] the tile's units of R
                m_r = o_r < R
                m_br = m_b & m_r  # [BLOCK_B, BLOCK_H]
                o_y = o_by + o_r  # the tile in [B, R]
                b_h_prev = tl.load(p_h_prev + o_y, mask=m_br, other=0)
                b_h = tl.full((BLOCK_B, BLOCK_H), 0, ACC)
                if STATIONARY:
                    b_h = dot_on_chip(b_h, hidden, o_bc, m_b, H, b_wr, PRECISION, BLOCK_KP)
                else:
                    b_h = _dot_streaming(b_h, hidden, o_bc, m_b, w_hr, 1, o_r * H, m_r, H,
                                         PRECISION, BLOCK_KP)  # fmt: skip
                b_h = b_h.to(DTYPE)
                tl.store(p_h_next + o_y, tl.where(m_t, b_h, b_h_prev), mask=m_br)
                tl.store(p_y + o_y, tl.where(m_t, b_h, 0), mask=m_br)
        n_arrivals += SPLIT
        step_barrier(p_arrivals, n_arrivals, SPLIT)  # h_t complete before step s + 1 reads it


@triton.jit
def _lstm_bwd_kernel(
    grad_y,  # [T, B, R]
    w_hh,  # [4H, R]
    w_hr,  # [R, H], or None (HAS_PROJ)
    c0,  # [B, H]
    lengths,  # [B]
    gates,  # [T, B, 4H] saved by the forward
    cells,  # [T, B, H] saved by the forward
    d_gx,  # [T, B, 4H]
    d_h,  # [T, B, R]: the gradient reaching each step's output, or None (HAS_PROJ)
    dh_state,  # [2, B, R] scratch in ACC: the state gradients by step parity
    dc_state,  # [2, B, H] scratch in ACC
    arrivals,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    R,
    REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dots (STATIONARY: all H rows of a gate)
    BLOCK_KP: tl.constexpr,  # k-step of the W_hr dots
):
    o_b, i_first, p_arrivals, b_length, m_b = split_prologue(
        lengths, arrivals, B, tl.int64, BLOCK_B, BLOCK_H, BLOCK_K
    )
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None  # one tile: no prefetch of a next one
    n_arrivals = 0
    ACC = dh_state.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    DTYPE = d_gx.dtype.element_ty
    o_bg, o_bc, o_by = o_b[:, None] * 4 * H, o_b[:, None] * H, o_b[:, None] * R  # [BLOCK_B, 1]
    o_n = tl.arange(0, BLOCK_H).to(tl.int64)[None, :]  # [1, BLOCK_H] a tile's units from its first
    if STATIONARY:  # this program's one tile: its columns of W_hh per gate and of W_hr, once
        o_h = o_n + i_first  # its units, of R and of H
        gate_stride = H * R
        b_wi = load_weights(w_hh, o_h, o_h < R, R, H, BLOCK_K)  # [BLOCK_K, BLOCK_H]
        b_wf = load_weights(w_hh + gate_stride, o_h, o_h < R, R, H, BLOCK_K)
        b_wg = load_weights(w_hh + 2 * gate_stride, o_h, o_h < R, R, H, BLOCK_K)
        b_wo = load_weights(w_hh + 3 * gate_stride, o_h, o_h < R, R, H, BLOCK_K)
        if HAS_PROJ:
            b_wr = load_weights(w_hr, o_h, o_h < H, H, R, BLOCK_KP)  # [BLOCK_KP, BLOCK_H]
    for i_s in range(T):
        i_t = tl.cast(i_s if REVERSE else T - 1 - i_s, tl.int64)  # the forward's last step first
        m_t = m_b & (i_t < b_length)[:, None]  # [BLOCK_B, 1]
        parity = tl.cast(i_s % 2, tl.int64)
        p_dh_prev, p_dh_next = dh_state + parity * B * R, dh_state + (1 - parity) * B * R
        p_dc_prev, p_dc_next = dc_state + parity * B * H, dc_state + (1 - parity) * B * H
        p_grad_y, p_d_gx = grad_y + i_t * B * R, d_gx + i_t * B * 4 * H
        p_gates, p_cells = gates + i_t * B * 4 * H, cells + i_t * B * H
        if i_s == T - 1:  # the forward's first step started from c0
            p_c_prev = c0
        else:
            p_c_prev = cells + (i_t + 1 if REVERSE else i_t - 1) * B * H
        if HAS_PROJ:
            p_d_h = d_h + i_t * B * R
            for i_r in tl.range(i_first, R, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
                o_r = o_n + i_r  # [1, BLOCK_H] the tile's units of R
                m_br = m_b & (o_r < R)  # [BLOCK_B, BLOCK_H]
                o_y = o_by + o_r  # the tile in [B, R]
                b_dh = tl.load(p_dh_prev + o_y, mask=m_br, other=0)
                b_dh += tl.load(p_grad_y + o_y, mask=m_br, other=0).to(ACC)
                tl.store(p_d_h + o_y, tl.where(m_t, b_dh, 0).to(d_h.dtype.element_ty), mask=m_br)
            n_arrivals += SPLIT
            step_barrier(p_arrivals, n_arrivals, SPLIT)  # d_h[t] complete before dr reads it
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            o_h = o_n + i_h  # [1, BLOCK_H]
            m_h = o_h < H
            m_bh = m_b & m_h  # [BLOCK_B, BLOCK_H]
            o_g = o_bg + o_h  # gate i's tile in [B, 4H]; gate k's at + k * H
            o_c = o_bc + o_h  # the tile in [B, H]
            b_i = tl.load(p_gates + o_g, mask=m_bh, other=0).to(ACC)
            b_f = tl.load(p_gates + o_g + H, mask=m_bh, other=0).to(ACC)
            b_g = tl.load(p_gates + o_g + 2 * H, mask=m_bh, other=0).to(ACC)
            b_o = tl.load(p_gates + o_g + 3 * H, mask=m_bh, other=0).to(ACC)
            b_tanh_c = tanh(tl.load(p_cells + o_c, mask=m_bh, other=0).to(ACC))
            b_c_prev = tl.load(p_c_prev + o_c, mask=m_bh, other=0).to(ACC)
            b_dc_prev = tl.load(p_dc_prev + o_c, mask=m_bh, other=0)
            if HAS_PROJ:  # dr = d_h[t] @ W_hr, after the loads above so that they overlap it
                b_dr = tl.full((BLOCK_B, BLOCK_H), 0, ACC)
                if STATIONARY:
                    b_dr = dot_on_chip(b_dr, p_d_h, o_by, m_b, R, b_wr, PRECISION, BLOCK_KP)
                else:
                    b_dr = _dot_streaming(b_dr, p_d_h, o_by, m_b, w_hr, H, o_h, m_h, R,
                                          PRECISION, BLOCK_KP)  # fmt: skip
            else:
                b_dr = tl.load(p_dh_prev + o_c, mask=m_bh, other=0)  # R == H
                b_dr += tl.load(p_grad_y + o_c, mask=m_bh, other=0).to(ACC)
                b_dr = tl.where(m_t, b_dr, 0)
            b_dc = b_dc_prev + b_dr * b_o * (1 - b_tanh_c * b_tanh_c)
            tl.store(p_dc_next + o_c, tl.where(m_t, b_dc * b_f, b_dc_prev), mask=m_bh)
            b_di = tl.where(m_t, b_dc * b_g * b_i * (1 - b_i), 0)
            b_df = tl.where(m_t, b_dc * b_c_prev * b_f * (1 - b_f), 0)
            b_dg = tl.where(m_t, b_dc * b_i * (1 - b_g * b_g), 0)
            b_do = tl.where(m_t, b_dr * b_tanh_c * b_o * (1 - b_o), 0)
            tl.store(p_d_gx + o_g, b_di.to(DTYPE), mask=m_bh)
            tl.store(p_d_gx + o_g + H, b_df.to(DTYPE), mask=m_bh)
            tl.store(p_d_gx + o_g + 2 * H, b_dg.to(DTYPE), mask=m_bh)
            tl.store(p_d_gx + o_g + 3 * H, b_do.to(DTYPE), mask=m_bh)
        n_arrivals += SPLIT
        step_barrier(p_arrivals, n_arrivals, SPLIT)  # d_gx[t] complete: dh = d_gx[t] @ W_hh
        for i_r in tl.range(i_first, R, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            o_r = o_n + i_r  # [1, BLOCK_H] the tile's units of R
            m_r = o_r < R
            m_br = m_b & m_r  # [BLOCK_B, BLOCK_H]
            o_y = o_by + o_r  # the tile in [B, R]
            b_dh_prev = tl.load(p_dh_prev + o_y, mask=m_br, other=0)
            b_dh = tl.full((BLOCK_B, BLOCK_H), 0, ACC)
            if STATIONARY:  # a dot per gate: d_gx[t] of gate i, f, g, o against its slice
                b_dh = dot_on_chip(b_dh, p_d_gx, o_bg, m_b, H, b_wi, PRECISION, BLOCK_K)
                b_dh = dot_on_chip(b_dh, p_d_gx + H, o_bg, m_b, H, b_wf, PRECISION, BLOCK_K)
                b_dh = dot_on_chip(b_dh, p_d_gx + 2 * H, o_bg, m_b, H, b_wg, PRECISION, BLOCK_K)
                b_dh = dot_on_chip(b_dh, p_d_gx + 3 * H, o_bg, m_b, H, b_wo, PRECISION, BLOCK_K)
            else:
                b_dh = _dot_streaming(b_dh, p_d_gx, o_bg, m_b, w_hh, R, o_r, m_r, 4 * H,
                                      PRECISION, BLOCK_K)  # fmt: skip
            tl.store(p_dh_next + o_y, tl.where(m_t, b_dh, b_dh_prev), mask=m_br)
        # Step s + 1 reads only this program's own tiles of dh and dc: no wait for the others.
        tl.debug_barrier()


def _launch(kernel, tensors: list, T: int, B: int, H: int, R: int, phases: int, backward: bool,
            **constexprs):  # fmt: skip
    """Runs ``kernel`` on ``tensors`` (the first sets dtype and device) with ``phases`` barriers
    per step. Blocks (``block_size``) up to the limits above, covering the batch, H and 4H when
    they are smaller; with the weights on chip the k-blocks cover each dot's whole K (the
    forward's R for W_hh and H for W_hr, the backward's H, a gate, and R), and the slices per
    program are 4 of [BLOCK_K, BLOCK_H] and one of [BLOCK_KP, BLOCK_H] with a projection.
    ``launch_split`` decides between the two and how many programs share a batch tile."""
    k_limit = BLOCK_K_BYTES // tensors[0].element_size()
    block_b = block_size(B, MAX_BLOCK_B)
    block_k = block_size(4 * H, k_limit)
    streaming = dict(BLOCK_B=block_b, BLOCK_H=block_size(H, MAX_BLOCK_H), BLOCK_K=block_k,
                     BLOCK_KP=block_k)  # fmt: skip
    k, kp = (block_size(H), block_size(R)) if backward else (block_size(R), block_size(H))
    on_chip = dict(BLOCK_B=block_b, BLOCK_H=block_size(H, ON_CHIP_BLOCK_H), BLOCK_K=k, BLOCK_KP=kp)
    slice_elements = on_chip["BLOCK_H"] * (4 * k + (kp if constexprs["HAS_PROJ"] else 0))
    launch_split(kernel, tensors, (T, B, H, R), triton.cdiv(B, block_b), phases, streaming,
                 on_chip, slice_elements, **constexprs, num_warps=NUM_WARPS)  # fmt: skip


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
    c_state = double_buffer(c0)
    has_proj = w_hr is not None
    hidden = gx.new_empty(B, H) if has_proj else None  # o * tanh(c) before the projection
    lengths = full_lengths(lengths, T, B, gx.device)
    tensors = [gx, w_hh, w_hr.contiguous() if has_proj else None, lengths, y, gates, cells,
               h_state, c_state, hidden]  # fmt: skip
    _launch(_lstm_fwd_kernel, tensors, T, B, H, R, 2 if has_proj else 1, False, REVERSE=reverse,
            HAS_PROJ=has_proj)  # fmt: skip
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
    has_proj = w_hr is not None
    d_gx = torch.empty_like(gates)
    d_h = torch.empty_like(grad_y) if has_proj else None
    dh_state, dc_state = double_buffer(grad_hT), double_buffer(grad_cT)
    lengths = full_lengths(lengths, T, B, gates.device)
    tensors = [grad_y, w_hh, w_hr.contiguous() if has_proj else None, c0.contiguous(), lengths,
               gates, cells, d_gx, d_h, dh_state, dc_state]  # fmt: skip
    _launch(_lstm_bwd_kernel, tensors, T, B, H, R, 2 if has_proj else 1, True, REVERSE=reverse,
            HAS_PROJ=has_proj)  # fmt: skip
    h_prev = previous_states(y, h0, lengths, reverse)
    d_w_hh = weight_grad(d_gx, h_prev)
    d_w_hr = absent_grad(y)
    if has_proj:
        hidden = gates[..., 3 * H :] * cells.tanh()  # o * tanh(c), before projection
        d_w_hr = weight_grad(d_h, hidden)
    d_h0 = dh_state[T % 2].to(h0.dtype, copy=True)
    return d_gx, d_w_hh, d_w_hr, d_h0, dc_state[T % 2].to(c0.dtype, copy=True)
