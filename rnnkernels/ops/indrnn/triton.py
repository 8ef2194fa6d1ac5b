"""IndRNN layer kernels in Triton (CUDA; CPU tensors under TRITON_INTERPRET=1).

Same signatures and returns as naive.py. The recurrence is elementwise, so each program owns a
[BLOCK_B, BLOCK_H] tile of the state, keeps it in registers and runs the whole time loop for it:
no synchronisation between programs. Design and limits: README.md here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnkernels.ops.steps import full_lengths
from rnnkernels.ops.triton_common import accumulator_dtype, activate, activation_grad


@triton.jit
def _indrnn_fwd_kernel(
    gx_ptr,  # [T, B, H]
    u_ptr,  # [H] accumulator dtype
    h0_ptr,  # [B, H]
    lengths_ptr,  # [B] int64
    y_ptr,  # [T, B, H]
    hT_ptr,  # [B, H]
    T,
    B,
    H,
    RELU: tl.constexpr,  # else tanh
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    acc_dtype = u_ptr.dtype.element_ty  # pointwise math
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    row_in = rows < B
    tile = row_in[:, None] & (cols < H)[None, :]  # [BB, BH]
    offs = rows[:, None] * H + cols[None, :]
    plane = B * H  # elements of one step of [T, B, H]
    length = tl.load(lengths_ptr + rows, mask=row_in, other=0)  # [BB]
    u = tl.load(u_ptr + cols, mask=cols < H, other=0)[None, :]  # [1, BH]
    h = tl.load(h0_ptr + offs, mask=tile, other=0).to(acc_dtype)  # [BB, BH]
    for s in range(T):
        t = T - 1 - s if REVERSE else s
        keep = (t < length)[:, None]  # [BB, 1]
        step = t.to(tl.int64) * plane
        pre = tl.load(gx_ptr + step + offs, mask=tile, other=0).to(acc_dtype) + u * h
        h_new = activate(pre, RELU)
        tl.store(y_ptr + step + offs, tl.where(keep, h_new, 0).to(y_ptr.dtype.element_ty), tile)
        h = tl.where(keep, h_new, h)
    tl.store(hT_ptr + offs, h.to(hT_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _indrnn_bwd_kernel(
    grad_y_ptr,  # [T, B, H]
    grad_hT_ptr,  # [B, H]
    u_ptr,  # [H] accumulator dtype
    h0_ptr,  # [B, H]
    lengths_ptr,  # [B] int64
    y_ptr,  # [T, B, H]
    d_gx_ptr,  # [T, B, H]
    d_h0_ptr,  # [B, H]
    d_u_ptr,  # [cdiv(B, BLOCK_B), H] accumulator dtype: this program's rows' share of d_u
    T,
    B,
    H,
    RELU: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    acc_dtype = u_ptr.dtype.element_ty  # pointwise math and the d_u sum
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    row_in = rows < B
    tile = row_in[:, None] & (cols < H)[None, :]  # [BB, BH]
    offs = rows[:, None] * H + cols[None, :]
    plane = B * H  # elements of one step of [T, B, H]
    length = tl.load(lengths_ptr + rows, mask=row_in, other=0)  # [BB]
    u = tl.load(u_ptr + cols, mask=cols < H, other=0)[None, :]  # [1, BH]
    h0 = tl.load(h0_ptr + offs, mask=tile, other=0).to(acc_dtype)
    dh = tl.load(grad_hT_ptr + offs, mask=tile, other=0).to(acc_dtype)  # [BB, BH]
    d_u = tl.full([BLOCK_B, BLOCK_H], 0, acc_dtype)  # not tl.zeros: slow in the interpreter
    for s in range(T):
        t = s if REVERSE else T - 1 - s  # the forward's visiting order, backwards
        keep = (t < length)[:, None]  # [BB, 1]
        step = t.to(tl.int64) * plane
        dh_t = dh + tl.load(grad_y_ptr + step + offs, mask=tile, other=0).to(acc_dtype)
        y = tl.load(y_ptr + step + offs, mask=tile, other=0).to(acc_dtype)
        d_pre = tl.where(keep, activation_grad(dh_t, y, RELU), 0)
        tl.store(d_gx_ptr + step + offs, d_pre.to(d_gx_ptr.dtype.element_ty), mask=tile)
        prev = t + 1 if REVERSE else t - 1  # the step h_{t-1} came out of, where valid
        from_y = ((tl.full([BLOCK_B], prev, tl.int32) >= 0) & (prev < length))[:, None]
        y_prev = tl.load(y_ptr + prev.to(tl.int64) * plane + offs, mask=tile & from_y, other=0)
        h_prev = tl.where(from_y, y_prev.to(acc_dtype), h0)
        d_u += tl.where(keep, d_pre * h_prev, 0)
        dh = tl.where(keep, d_pre * u, dh)
    tl.store(d_h0_ptr + offs, dh.to(d_h0_ptr.dtype.element_ty), mask=tile)
    d_u_row = d_u_ptr + tl.program_id(0) * H
    tl.store(d_u_row + cols, tl.sum(d_u, axis=0), mask=cols < H)


def _blocks(B: int, H: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_H): up to 128 hidden units across a tile, then rows up to 256 elements.
    Small tiles give many programs, each a long serial loop over T."""
    block_h = min(128, triton.next_power_of_2(H))
    # B = 0 (an empty batch) launches no program; next_power_of_2(0) is 0, a block of none
    return min(triton.next_power_of_2(max(B, 1)), max(1, 256 // block_h)), block_h


def _prepare(
    u: Tensor, B: int, T: int, lengths: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """u in the accumulator dtype and [B] int64 lengths."""
    return u.to(accumulator_dtype(dtype)).contiguous(), full_lengths(lengths, T, B, u.device)


def indrnn_fwd(
    gx: Tensor,  # [T, B, H]  x W_ih^T + b_ih + b_hh
    u: Tensor,  # [H]
    h0: Tensor,  # [B, H]
    lengths: Tensor | None,  # [B] int64
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H] (zero past a sequence's end) and hT [B, H]."""
    T, B, H = gx.shape
    u, lengths = _prepare(u, B, T, lengths, gx.dtype)
    y = gx.new_empty(T, B, H)
    hT = h0.new_empty(B, H)
    block_b, block_h = _blocks(B, H)
    _indrnn_fwd_kernel[(triton.cdiv(B, block_b), triton.cdiv(H, block_h))](
        gx.contiguous(), u, h0.contiguous(), lengths, y, hT, T, B, H,
        RELU=nonlinearity == "relu", REVERSE=reverse, BLOCK_B=block_b, BLOCK_H=block_h,
    )  # fmt: skip
    return y, hT


def indrnn_bwd(
    grad_y: Tensor,  # [T, B, H]
    grad_hT: Tensor,  # [B, H]
    u: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    y: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns d_gx [T, B, H], d_u [H], d_h0 [B, H]."""
    T, B, H = y.shape
    u_acc, lengths = _prepare(u, B, T, lengths, y.dtype)
    d_gx = y.new_empty(T, B, H)
    d_h0 = h0.new_empty(B, H)
    block_b, block_h = _blocks(B, H)
    grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
    d_u_parts = u_acc.new_empty(grid[0], H)  # one row per batch tile, summed in a fixed order
    _indrnn_bwd_kernel[grid](
        grad_y.contiguous(), grad_hT.contiguous(), u_acc, h0.contiguous(), lengths, y.contiguous(),
        d_gx, d_h0, d_u_parts, T, B, H,
        RELU=nonlinearity == "relu", REVERSE=reverse, BLOCK_B=block_b, BLOCK_H=block_h,
    )  # fmt: skip
    return d_gx, d_u_parts.sum(0).to(u.dtype), d_h0
