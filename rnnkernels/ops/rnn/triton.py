"""Elman RNN (``nn.RNN``) layer kernels in Triton (CUDA; CPU tensors under TRITON_INTERPRET=1).
Names: triton_common's docstring.

Same signatures and returns as naive.py; the GRU kernels' design (ops/gru/triton.py, README.md
there) with one gate and the activation of IndRNN's kernels (triton_common.activate). The grid is
(batch tiles of BLOCK_B rows, SPLIT programs per batch tile); the SPLIT programs of a batch tile
run the whole time loop together, each on its own hidden tiles, with ``step_barrier`` ending each
phase whose results the others read. W_hh is streamed from global memory (L2) every step; or, with
STATIONARY, each program has one hidden tile and loads its slice of W_hh once
(triton_common.launch_split decides). The forward: h_t = act(gx_t + h_{t-1} @ W_hh^T), one phase
per step. The backward: d_pre = (dh + grad_y) act'(y) into d_gx, a barrier, then
dh = d_pre @ W_hh; dW_hh is one GEMM over all T*B rows afterwards, in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnkernels.ops.steps import full_lengths, previous_states, weight_grad
from rnnkernels.ops.triton_common import (
    ON_CHIP_BLOCK_H,
    accumulator_dtype,
    activate,
    activation_grad,
    block_size,
    dot_on_chip,
    double_buffer,
    launch_split,
    load_rows,
    load_weights,
    split_prologue,
    step_barrier,
)

# Largest blocks, the GRU kernels' (not measured for RNN: no GPU in this change).
MAX_BLOCK_B = 16
MAX_BLOCK_H = 32
BLOCK_K_BYTES = 256
NUM_WARPS = 4


@triton.jit
def _dot_streamed(
    b_acc,  # [BLOCK_B, BLOCK_H]
    p_x,  # [B, H]: the rows' operand (h_{t-1}, or d_pre)
    o_xk,  # [BLOCK_B, BLOCK_K] the rows' first k-step in p_x
    m_b,  # [BLOCK_B, 1]
    p_w,  # the weight tile's first column: W[k, n] at p_w + k * K_STRIDE + o_w[0, n]
    o_w,  # [BLOCK_K, BLOCK_H] k-step 0 of the tile
    m_h,  # [BLOCK_H]
    H,
    K_STRIDE,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``b_acc`` + x @ W on one hidden tile, streaming W in k-steps of BLOCK_K."""
    o_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    for i_k in range(0, H, BLOCK_K):
        m_k = o_k < H - i_k  # [BLOCK_K]
        b_x = tl.load(p_x + i_k + o_xk, mask=m_b & m_k[None, :], other=0)
        b_x = b_x.to(p_w.dtype.element_ty)  # [BLOCK_B, BLOCK_K]
        b_w = tl.load(p_w + i_k * K_STRIDE + o_w, mask=m_k[:, None] & m_h[None, :], other=0)
        # out_dtype: triton 3.6 otherwise takes fp32 for fp64 inputs
        b_acc = tl.dot(b_x, b_w, b_acc, input_precision=PRECISION, out_dtype=b_acc.dtype)
    return b_acc


@triton.jit
def _rnn_fwd_kernel(
    gx,  # [T, B, H]
    w_hh,  # [H, H]
    lengths,  # [B] int64
    h_state,  # [2, B, H] scratch in ACC: the state by step parity; [0] is h0 on entry
    y,  # [T, B, H]
    arrivals,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    RELU: tl.constexpr,  # else tanh
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
    o_w = o_n[None, :] * H + o_k[:, None]  # [BLOCK_K, BLOCK_H] tile 0 in W_hh^T
    plane = B * H  # elements of one step of [T, B, H]
    if STATIONARY:  # this program's one tile: its columns of W_hh^T, once
        o_h = (i_first + o_n)[None, :]  # [1, BLOCK_H]
        b_w = load_weights(w_hh, o_h * H, o_h < H, 1, H, BLOCK_K)  # [BLOCK_K, BLOCK_H]
    for i_s in range(T):
        i_t = T - 1 - i_s if REVERSE else i_s
        m_t = (i_t < b_length)[:, None]  # [BLOCK_B, 1]; the state stays where False
        p_h_prev = h_state + (i_s % 2) * plane
        p_h_next = h_state + ((i_s + 1) % 2) * plane
        t_plane = i_t.to(tl.int64) * plane
        p_gx, p_y = gx + t_plane, y + t_plane
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            m_h = o_n < H - i_h  # [BLOCK_H]
            m_bh = m_b & m_h[None, :]  # [BLOCK_B, BLOCK_H]
            # The loads that do not wait for the dot first: their latency overlaps the k-loop.
            b_gx = tl.load(p_gx + i_h + o_y, mask=m_bh, other=0).to(ACC)
            b_h_prev = tl.load(p_h_prev + i_h + o_y, mask=m_bh, other=0)
            b_gh = tl.full([BLOCK_B, BLOCK_H], 0, ACC)
            if STATIONARY:
                b_h_rows = load_rows(p_h_prev, o_b[:, None] * H, m_b, H, BLOCK_K)
                b_h_rows = b_h_rows.to(w_hh.dtype.element_ty)  # [BLOCK_B, BLOCK_K]
                b_gh = tl.dot(b_h_rows, b_w, b_gh, input_precision=PRECISION, out_dtype=ACC)
            else:
                b_gh = _dot_streamed(b_gh, p_h_prev, o_bk, m_b, w_hh + i_h * H, o_w, m_h, H, 1,
                                     PRECISION, BLOCK_K)  # fmt: skip
            b_h = activate(b_gx + b_gh, RELU)
            tl.store(p_y + i_h + o_y, tl.where(m_t, b_h, 0).to(DTYPE), mask=m_bh)
            tl.store(p_h_next + i_h + o_y, tl.where(m_t, b_h, b_h_prev), mask=m_bh)
        n_arrivals += SPLIT
        step_barrier(p_arrivals, n_arrivals, SPLIT)  # h_t complete before step s + 1 reads it


@triton.jit
def _rnn_bwd_kernel(
    grad_y,  # [T, B, H]
    w_hh,  # [H, H]
    lengths,  # [B] int64
    y,  # [T, B, H]
    dh_state,  # [B, H] scratch in ACC: grad_hT on entry, d_h0 on exit
    d_gx,  # [T, B, H]
    arrivals,  # [batch tiles] int32 zeros: step_barrier's counters
    T,
    B,
    H,
    RELU: tl.constexpr,  # else tanh
    REVERSE: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    STATIONARY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # k-step of the W_hh dot (STATIONARY: all H rows)
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
    o_bk = o_b[:, None] * H + o_k[None, :]  # [BLOCK_B, BLOCK_K] k-step 0 in [B, H]
    o_w = o_k[:, None] * H + o_n[None, :]  # [BLOCK_K, BLOCK_H] tile 0 in W_hh
    plane = B * H  # elements of one step of [T, B, H]
    if STATIONARY:  # this program's one tile: its columns of W_hh, once
        o_h = (i_first + o_n)[None, :]  # [1, BLOCK_H]
        b_w = load_weights(w_hh, o_h, o_h < H, H, H, BLOCK_K)  # [BLOCK_K, BLOCK_H]
    for i_s in range(T):
        i_t = i_s if REVERSE else T - 1 - i_s  # the forward's last step first
        m_t = (i_t < b_length)[:, None]  # [BLOCK_B, 1]
        t_plane = i_t.to(tl.int64) * plane
        p_grad_y, p_y, p_d_gx = grad_y + t_plane, y + t_plane, d_gx + t_plane
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            m_bh = m_b & (o_n < H - i_h)[None, :]  # [BLOCK_B, BLOCK_H]
            b_dh_t = tl.load(dh_state + i_h + o_y, mask=m_bh, other=0)
            b_dh_t += tl.load(p_grad_y + i_h + o_y, mask=m_bh, other=0).to(ACC)
            b_y = tl.load(p_y + i_h + o_y, mask=m_bh, other=0).to(ACC)
            b_d_pre = tl.where(m_t, activation_grad(b_dh_t, b_y, RELU), 0)
            tl.store(p_d_gx + i_h + o_y, b_d_pre.to(DTYPE), mask=m_bh)
        n_arrivals += SPLIT
        step_barrier(p_arrivals, n_arrivals, SPLIT)  # all of d_gx[t] written: the dot reads it
        # dh_{t-1} = d_pre @ W_hh where the step is valid; the others keep theirs.
        for i_h in tl.range(i_first, H, SPLIT * BLOCK_H, num_stages=TILE_STAGES):
            m_h = o_n < H - i_h  # [BLOCK_H]
            m_bh = m_b & m_h[None, :]  # [BLOCK_B, BLOCK_H]
            b_dh = tl.load(dh_state + i_h + o_y, mask=m_bh, other=0)  # overlaps the k-loop
            b_dh_w = tl.full([BLOCK_B, BLOCK_H], 0, ACC)
            if STATIONARY:
                b_dh_w = dot_on_chip(b_dh_w, p_d_gx, o_b[:, None] * H, m_b, H, b_w, PRECISION,
                                     BLOCK_K)  # fmt: skip
            else:
                b_dh_w = _dot_streamed(b_dh_w, p_d_gx, o_bk, m_b, w_hh + i_h, o_w, m_h, H, H,
                                       PRECISION, BLOCK_K)  # fmt: skip
            tl.store(dh_state + i_h + o_y, tl.where(m_t, b_dh_w, b_dh), mask=m_bh)
        # Step s + 1 reads only this program's own tiles of dh: no wait for the others.
        tl.debug_barrier()


def _launch(kernel, tensors: list, T: int, B: int, H: int, **constexprs) -> None:
    """Runs ``kernel`` on ``tensors`` (the first sets dtype and device): as the GRU kernels'
    launch, with one [BLOCK_K, BLOCK_H] slice of W_hh per program on chip."""
    k_limit = BLOCK_K_BYTES // tensors[0].element_size()
    block_b = block_size(B, MAX_BLOCK_B)
    streaming = dict(BLOCK_B=block_b, BLOCK_H=block_size(H, MAX_BLOCK_H),
                     BLOCK_K=block_size(H, k_limit))  # fmt: skip
    on_chip = dict(BLOCK_B=block_b, BLOCK_H=block_size(H, ON_CHIP_BLOCK_H), BLOCK_K=block_size(H))
    slice_elements = on_chip["BLOCK_H"] * on_chip["BLOCK_K"]
    launch_split(kernel, tensors, (T, B, H), triton.cdiv(B, block_b), 1, streaming, on_chip,
                 slice_elements, **constexprs, num_warps=NUM_WARPS)  # fmt: skip


def rnn_fwd(
    gx: Tensor,  # [T, B, H]  x W_ih^T + b_ih + b_hh
    w_hh: Tensor,  # [H, H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H] (zero past a sequence's end) and hT [B, H]."""
    T, B, H = gx.shape
    gx = gx.contiguous()
    y = gx.new_empty(T, B, H)
    h_state = double_buffer(h0)
    tensors = [gx, w_hh.contiguous(), full_lengths(lengths, T, B, gx.device), h_state, y]
    _launch(_rnn_fwd_kernel, tensors, T, B, H, RELU=nonlinearity == "relu", REVERSE=reverse)
    return y, h_state[T % 2].to(gx.dtype, copy=True)


def rnn_bwd(
    grad_y: Tensor,  # [T, B, H]
    grad_hT: Tensor,  # [B, H]
    w_hh: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    y: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, H], d_w_hh [H, H], d_h0 [B, H]. The activation's derivative comes
    from y."""
    T, B, H = y.shape
    d_gx = y.new_empty(T, B, H)
    dh_state = grad_hT.to(
        accumulator_dtype(y.dtype), memory_format=torch.contiguous_format, copy=True
    )
    tensors = [grad_y.contiguous(), w_hh.contiguous(), full_lengths(lengths, T, B, y.device),
               y.contiguous(), dh_state, d_gx]  # fmt: skip
    _launch(_rnn_bwd_kernel, tensors, T, B, H, RELU=nonlinearity == "relu", REVERSE=reverse)
    d_w_hh = weight_grad(d_gx, previous_states(y, h0, lengths, reverse))
    return d_gx, d_w_hh, dh_state.to(y.dtype)
