"""GRU layer kernels in Triton (CUDA; CPU tensors under TRITON_INTERPRET=1). Names: triton_common's
docstring.

Same signatures and returns as naive.py. The grid is (batch tiles of BLOCK_B rows, SPLIT programs
per batch tile); the SPLIT programs of a batch tile run the whole time loop together, each on its
own hidden tiles (i_h = part * BLOCK_H, then every SPLIT * BLOCK_H), with ``step_barrier`` ending
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

# Largest blocks (measured on an H200, README.md): 16 batch rows (tl.dot's smallest M), 32 hidden
# units, a k-step of 256 bytes of a W_hh row, which bounds the shared memory of the k-loop.
MAX_BLOCK_B = 16
MAX_BLOCK_H = 32
BLOCK_K_BYTES = 256
NUM_WARPS = 4


@triton.jit
def _gate_dots(
    b_gh_r,  # [BLOCK_B, BLOCK_H] each: h_{t-1} @ W_hh^T so far, gate r, z, n
    b_gh_z,
    b_gh_n,
    p_h,  # [B, H] in the accumulator dtype: h_{t-1}
    o_bk,  # [BLOCK_B, BLOCK_K] the rows' first k-step in p_h
    m_b,  # [BLOCK_B, 1]
    p_w,  # W_hh^T[k, n] of gate r at p_w + o_w[k, n]: the tile's first column
    o_w,  # [BLOCK_K, BLOCK_H]
    m_h,  # [BLOCK_H]
    H,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The gates + h_{t-1} @ W_hh^T on one hidden tile of each gate r, z, n, streaming W_hh in
    k-steps of BLOCK_K."""
    o_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    for i_k in range(0, H, BLOCK_K):
        m_k = o_k < H - i_k  # [BLOCK_K]
        b_h = tl.load(p_h + i_k + o_bk, mask=m_b & m_k[None, :], other=0)
        b_h = b_h.to(p_w.dtype.element_ty)  # [BLOCK_B, BLOCK_K]
        p_wk = p_w + i_k + o_w  # [BLOCK_K, BLOCK_H] gate r's tile of W_hh^T
        m_w = m_k[:, None] & m_h[None, :]
        b_w = tl.load(p_wk, mask=m_w, other=0)
        b_gh_r = tl.dot(b_h, b_w, b_gh_r, input_precision=PRECISION, out_dtype=b_gh_r.dtype)
        b_w = tl.load(p_wk + H * H, mask=m_w, other=0)
        b_gh_z = tl.dot(b_h, b_w, b_gh_z, input_precision=PRECISION, out_dtype=b_gh_z.dtype)
        b_w = tl.load(p_wk + 2 * H * H, mask=m_w, other=0)
        b_gh_n = tl.dot(b_h, b_w, b_gh_n, input_precision=PRECISION, out_dtype=b_gh_n.dtype)
    return b_gh_r, b_gh_z, b_gh_n


@triton.jit
def _dh_dot(
    b_dh,  # [BLOCK_B, BLOCK_H]
    p_d_gh,  # [B, 3H]: d_gh[t]
    o_gk,  # [BLOCK_B, BLOCK_K] the rows' first k-step in p_d_gh
    m_b,  # [BLOCK_B, 1]
    p_w,  # W_hh[k, n] at p_w + o_w[k, n]: the tile's first column
    o_w,  # [BLOCK_K, BLOCK_H]
    m_h,  # [1, BLOCK_H]
    H,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``b_dh`` + d_gh[t] @ W_hh on one hidden tile, a k-loop over all 3H gate columns."""
    o_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    for i_k in range(0, 3 * H, BLOCK_K):
        m_k = o_k < 3 * H - i_k  # [BLOCK_K]
        b_d_gh = tl.load(p_d_gh + i_k + o_gk, mask=m_b & m_k[None, :], other=0)
        b_w = tl.load(p_w + i_k * H + o_w, mask=m_k[:, None] & m_h, other=0)
        # out_dtype: triton 3.6 otherwise takes fp32 for fp64 inputs
        b_dh = tl.dot(b_d_gh, b_w, b_dh, input_precision=PRECISION, out_dtype=b_dh.dtype)
    return b_dh


@triton.jit
def _gru_fwd_kernel(
    gx,  # [T, B, 3H]
    w_hh,  # [3H, H]
    bias,  # [3H] b_hh, or None (HAS_BIAS)
    lengths,  # [B] int64
    h_state,  # [2, B, H] scratch in ACC: the state by step parity; [0] is h0 on entry
    y,  # [T, B, H]
    gates,  # [T, B, 3H]
    hn,  # [T, B, H]
    arrivals,  # [batch tiles] int32 zeros: step_barrier's counters
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
    o_b, i_first, p_arrivals, b_length, m_b = split_prologue(
        lengths, arrivals, B, tl.int32, BLOCK_B, BLOCK_H, BLOCK_K
    )
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None  # one tile: no prefetch of a next one
    n_arrivals = 0
    ACC = h_state.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    DTYPE = y.dtype.element_ty
    o_n = tl.arange(0, BLOCK_H)  # [BLOCK_H] a tile's units from its first
    o_k = tl.arange(0, BLOCK_K)  # [BLOCK_K] a k-step's from its first
    o_y = o_b[:, None] * H + o_n[None, :]  # [BLOCK_B, BLOCK_H] tile 0 in [B, H]; tile i_h + i_h
    o_bk = o_b[:, None] * H + o_k[None, :]  # [BLOCK_B, BLOCK_K] k-step 0 in [B, H]
    o_g = o_b[:, None] * 3 * H + o_n[None, :]  # [BLOCK_B, BLOCK_H] gate r's tile 0 in [B, 3H]
    o_w = o_n[None, :] * H + o_k[:, None]  # [BLOCK_K, BLOCK_H] tile 0 in W_hh^T
    plane = B * H  # elements of one step of [T, B, H]
    if STATIONARY:  # this program's one tile: its columns of W_hh^T per gate, once
        o_h = (i_first + o_n)[None, :]  # [1, BLOCK_H]
        b_wr = load_weights(w_hh, o_h * H, o_h < H, 1, H, BLOCK_K)  # [BLOCK_K, BLOCK_H]
        b_wz = load_weights(w_hh + H * H, o_h * H, o_h < H, 1, H, BLOCK_K)
        b_wn = load_weights(w_hh + 2 * H * H, o_h * H, o_h < H, 1, H, BLOCK_K)
    for i_s in range(T):
        i_t = T - 1 - i_s if REVERSE else i_s
        m_t = (i_t < b_length)[:, None]  # [BLOCK_B, 1]; the state stays where False
        p_h_prev = h_state + (i_s % 2) * plane
        p_h_next = h_state + ((i_s + 1) % 2) * plane
        t_plane = i_t.to(tl.int64) * plane
        p_gx, p_gates = gx + 3 * t_plane, gates + 3 * t_plane
        p_y, p_hn = y + t_plane, hn + t_plane
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            m_h = o_n < H - i_h  # [BLOCK_H]
            m_bh = m_b & m_h[None, :]  # [BLOCK_B, BLOCK_H]
            # The loads that do not wait for the dots first: their latency overlaps the k-loop.
            b_gx_r = tl.load(p_gx + i_h + o_g, mask=m_bh, other=0).to(ACC)
            b_gx_z = tl.load(p_gx + i_h + o_g + H, mask=m_bh, other=0).to(ACC)
            b_gx_n = tl.load(p_gx + i_h + o_g + 2 * H, mask=m_bh, other=0).to(ACC)
            b_h_prev = tl.load(p_h_prev + i_h + o_y, mask=m_bh, other=0)
            b_gh_r = tl.full([BLOCK_B, BLOCK_H], 0, ACC)
            b_gh_z = tl.full([BLOCK_B, BLOCK_H], 0, ACC)
            b_gh_n = tl.full([BLOCK_B, BLOCK_H], 0, ACC)
            if STATIONARY:
                b_h_rows = load_rows(p_h_prev, o_b[:, None] * H, m_b, H, BLOCK_K)
                b_h_rows = b_h_rows.to(w_hh.dtype.element_ty)  # [BLOCK_B, BLOCK_K]
                b_gh_r = tl.dot(b_h_rows, b_wr, b_gh_r, input_precision=PRECISION, out_dtype=ACC)
                b_gh_z = tl.dot(b_h_rows, b_wz, b_gh_z, input_precision=PRECISION, out_dtype=ACC)
                b_gh_n = tl.dot(b_h_rows, b_wn, b_gh_n, input_precision=PRECISION, out_dtype=ACC)
            else:
                b_gh_r, b_gh_z, b_gh_n = _gate_dots(
                    b_gh_r, b_gh_z, b_gh_n, p_h_prev, o_bk, m_b, w_hh + i_h * H, o_w, m_h, H,
                    PRECISION, BLOCK_K,
                )  # fmt: skip
            if HAS_BIAS:
                p_bias = bias + i_h + o_n  # [BLOCK_H]
                b_gh_r += tl.load(p_bias, mask=m_h, other=0).to(ACC)[None, :]
                b_gh_z += tl.load(p_bias + H, mask=m_h, other=0).to(ACC)[None, :]
                b_gh_n += tl.load(p_bias + 2 * H, mask=m_h, other=0).to(ACC)[None, :]
            b_r = sigmoid(b_gx_r + b_gh_r)
            b_z = sigmoid(b_gx_z + b_gh_z)
            b_n = tanh(b_gx_n + b_r * b_gh_n)
            b_h = (1 - b_z) * b_n + b_z * b_h_prev
            tl.store(p_gates + i_h + o_g, tl.where(m_t, b_r, 0).to(DTYPE), mask=m_bh)
            tl.store(p_gates + i_h + o_g + H, tl.where(m_t, b_z, 0).to(DTYPE), mask=m_bh)
            tl.store(p_gates + i_h + o_g + 2 * H, tl.where(m_t, b_n, 0).to(DTYPE), mask=m_bh)
            tl.store(p_hn + i_h + o_y, tl.where(m_t, b_gh_n, 0).to(DTYPE), mask=m_bh)
            tl.store(p_y + i_h + o_y, tl.where(m_t, b_h, 0).to(DTYPE), mask=m_bh)
            tl.store(p_h_next + i_h + o_y, tl.where(m_t, b_h, b_h_prev), mask=m_bh)
        n_arrivals += SPLIT
        step_barrier(p_arrivals, n_arrivals, SPLIT)  # h_t complete before step s + 1 reads it


@triton.jit
def _gru_bwd_kernel(
    grad_y,  # [T, B, H]
    w_hh,  # [3H, H]
    h0,  # [B, H]
    lengths,  # [B] int64
    y,  # [T, B, H]
    gates,  # [T, B, 3H] saved by the forward
    hn,  # [T, B, H] saved by the forward
    dh_state,  # [B, H] scratch in ACC: grad_hT on entry, d_h0 on exit
    d_gx,  # [T, B, 3H]
    d_gh,  # [T, B, 3H]
    arrivals,  # [batch tiles] int32 zeros: step_barrier's counters
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
    o_b, i_first, p_arrivals, b_length, m_b = split_prologue(
        lengths, arrivals, B, tl.int32, BLOCK_B, BLOCK_H, BLOCK_K
    )
    TILE_STAGES: tl.constexpr = 1 if STATIONARY else None  # one tile: no prefetch of a next one
    n_arrivals = 0
    ACC = dh_state.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    DTYPE = d_gx.dtype.element_ty
    o_n = tl.arange(0, BLOCK_H)  # [BLOCK_H] a tile's units from its first
    o_k = tl.arange(0, BLOCK_K)  # [BLOCK_K] a k-step's from its first
    o_y = o_b[:, None] * H + o_n[None, :]  # [BLOCK_B, BLOCK_H] tile 0 in [B, H]; tile i_h + i_h
    o_bg = o_b[:, None] * 3 * H  # [BLOCK_B, 1] the rows' starts in [B, 3H]
    o_g = o_bg + o_n[None, :]  # [BLOCK_B, BLOCK_H] gate r's tile 0 in [B, 3H]
    o_gk = o_bg + o_k[None, :]  # [BLOCK_B, BLOCK_K] k-step 0 in [B, 3H]
    o_w = o_k[:, None] * H + o_n[None, :]  # [BLOCK_K, BLOCK_H] tile 0 in W_hh
    plane = B * H  # elements of one step of [T, B, H]
    if STATIONARY:  # this program's one tile: its columns of W_hh per gate, once
        o_h = (i_first + o_n)[None, :]  # [1, BLOCK_H]
        b_wr = load_weights(w_hh, o_h, o_h < H, H, H, BLOCK_K)  # [BLOCK_K, BLOCK_H]
        b_wz = load_weights(w_hh + H * H, o_h, o_h < H, H, H, BLOCK_K)
        b_wn = load_weights(w_hh + 2 * H * H, o_h, o_h < H, H, H, BLOCK_K)
    for i_s in range(T):
        i_t = i_s if REVERSE else T - 1 - i_s  # the forward's last step first
        m_t = (i_t < b_length)[:, None]  # [BLOCK_B, 1]
        i_prev = i_t + 1 if REVERSE else i_t - 1  # the step h_{t-1} came out of, where valid
        m_y = ((tl.full([BLOCK_B], i_prev, tl.int32) >= 0) & (i_prev < b_length))[:, None]
        p_y_prev = y + i_prev.to(tl.int64) * plane  # h_{t-1} where m_y, else h0
        t_plane = i_t.to(tl.int64) * plane
        p_grad_y, p_hn = grad_y + t_plane, hn + t_plane
        p_gates, p_d_gx, p_d_gh = gates + 3 * t_plane, d_gx + 3 * t_plane, d_gh + 3 * t_plane
        # Gate gradients; dh holds dh_t * z (the part not through W_hh) afterwards.
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            m_bh = m_b & (o_n < H - i_h)[None, :]  # [BLOCK_B, BLOCK_H]
            b_dh = tl.load(dh_state + i_h + o_y, mask=m_bh, other=0)
            b_dh_t = b_dh + tl.load(p_grad_y + i_h + o_y, mask=m_bh, other=0).to(ACC)
            b_r = tl.load(p_gates + i_h + o_g, mask=m_bh, other=0).to(ACC)
            b_z = tl.load(p_gates + i_h + o_g + H, mask=m_bh, other=0).to(ACC)
            b_n = tl.load(p_gates + i_h + o_g + 2 * H, mask=m_bh, other=0).to(ACC)
            b_gh_n = tl.load(p_hn + i_h + o_y, mask=m_bh, other=0).to(ACC)
            b_h_prev = tl.where(
                m_y,
                tl.load(p_y_prev + i_h + o_y, mask=m_bh & m_y, other=0),
                tl.load(h0 + i_h + o_y, mask=m_bh, other=0),
            ).to(ACC)
            b_dn = b_dh_t * (1 - b_z) * (1 - b_n * b_n)
            b_dr = tl.where(m_t, b_dn * b_gh_n * b_r * (1 - b_r), 0).to(DTYPE)
            b_dz = tl.where(m_t, b_dh_t * (b_h_prev - b_n) * b_z * (1 - b_z), 0).to(DTYPE)
            tl.store(p_d_gx + i_h + o_g, b_dr, mask=m_bh)
            tl.store(p_d_gx + i_h + o_g + H, b_dz, mask=m_bh)
            tl.store(p_d_gx + i_h + o_g + 2 * H, tl.where(m_t, b_dn, 0).to(DTYPE), mask=m_bh)
            tl.store(p_d_gh + i_h + o_g, b_dr, mask=m_bh)
            tl.store(p_d_gh + i_h + o_g + H, b_dz, mask=m_bh)
            tl.store(p_d_gh + i_h + o_g + 2 * H, tl.where(m_t, b_dn * b_r, 0).to(DTYPE), mask=m_bh)
            tl.store(dh_state + i_h + o_y, tl.where(m_t, b_dh_t * b_z, b_dh), mask=m_bh)
        n_arrivals += SPLIT
        step_barrier(p_arrivals, n_arrivals, SPLIT)  # all of d_gh[t] written: the dot reads it
        # dh_{t-1} = dh_t * z + d_gh[t] @ W_hh, a k-loop over all 3H gate columns.
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            m_h = (o_n < H - i_h)[None, :]  # [1, BLOCK_H]
            m_bh = m_b & m_h  # [BLOCK_B, BLOCK_H]
            b_dh = tl.load(dh_state + i_h + o_y, mask=m_bh, other=0)  # overlaps the k-loop
            b_dh_w = tl.full([BLOCK_B, BLOCK_H], 0, ACC)
            if STATIONARY:  # a dot per gate: d_gh[t] of gate r, z, n against its slice
                b_dh_w = dot_on_chip(b_dh_w, p_d_gh, o_bg, m_b, H, b_wr, PRECISION, BLOCK_K)
                b_dh_w = dot_on_chip(b_dh_w, p_d_gh + H, o_bg, m_b, H, b_wz, PRECISION, BLOCK_K)
                b_dh_w = dot_on_chip(b_dh_w, p_d_gh + 2 * H, o_bg, m_b, H, b_wn, PRECISION,
                                     BLOCK_K)  # fmt: skip
            else:
                b_dh_w = _dh_dot(b_dh_w, p_d_gh, o_gk, m_b, w_hh + i_h, o_w, m_h, H, PRECISION,
                                 BLOCK_K)  # fmt: skip
            tl.store(dh_state + i_h + o_y, tl.where(m_t, b_dh + b_dh_w, b_dh), mask=m_bh)
        # Step s + 1 reads only this program's own tiles of dh: no wait for the others.
        tl.debug_barrier()


def _launch(kernel, tensors: list, T: int, B: int, H: int, **constexprs) -> None:
    """Runs ``kernel`` on ``tensors`` (the first sets dtype and device) with one barrier per
    step. Blocks (``block_size``) up to the limits above, covering the batch and H when they are
    smaller; with the weights on chip one k-block covers the H rows of a gate, and the slices per
    program are three [BLOCK_K, BLOCK_H], forward and backward. ``launch_split`` decides between
    the two and how many programs share a batch tile."""
    k_limit = BLOCK_K_BYTES // tensors[0].element_size()
    block_b = block_size(B, MAX_BLOCK_B)
    streaming = dict(BLOCK_B=block_b, BLOCK_H=block_size(H, MAX_BLOCK_H),
                     BLOCK_K=block_size(H, k_limit))  # fmt: skip
    on_chip = dict(BLOCK_B=block_b, BLOCK_H=block_size(H, ON_CHIP_BLOCK_H), BLOCK_K=block_size(H))
    slice_elements = 3 * on_chip["BLOCK_H"] * on_chip["BLOCK_K"]
    launch_split(kernel, tensors, (T, B, H), triton.cdiv(B, block_b), 1, streaming, on_chip,
                 slice_elements, **constexprs, num_warps=NUM_WARPS)  # fmt: skip


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
    y, gates, hn = gx.new_empty(T, B, H), gx.new_empty(T, B, 3 * H), gx.new_empty(T, B, H)
    h_state = double_buffer(h0)
    has_bias = b_hh is not None
    tensors = [gx, w_hh, b_hh.contiguous() if has_bias else None,
               full_lengths(lengths, T, B, gx.device), h_state, y, gates, hn]  # fmt: skip
    _launch(_gru_fwd_kernel, tensors, T, B, H, HAS_BIAS=has_bias, REVERSE=reverse)
    return y, h_state[T % 2].to(gx.dtype, copy=True), gates, hn


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
    dh_state = grad_hT.to(
        accumulator_dtype(y.dtype), memory_format=torch.contiguous_format, copy=True
    )
    tensors = [grad_y.contiguous(), w_hh.contiguous(), h0.contiguous(),
               full_lengths(lengths, T, B, y.device), y.contiguous(), gates.contiguous(),
               hn.contiguous(), dh_state, d_gx, d_gh]  # fmt: skip
    _launch(_gru_bwd_kernel, tensors, T, B, H, REVERSE=reverse)
    h_prev = previous_states(y, h0, lengths, reverse)
    d_w_hh = weight_grad(d_gh, h_prev)
    d_b_hh = d_gh.sum((0, 1)) if b_hh is not None else absent_grad(y)
    return d_gx, d_w_hh, d_b_hh, dh_state.to(y.dtype)
