"""Time-step bookkeeping shared by the pure-torch oracles of every cell (and the ops' autograd).

A layer runs over a time-major padded batch. Sequence b is valid for t < lengths[b]; past its end
the state is frozen and the output is zero. A reverse pass visits t = T-1 .. 0, so a sequence that
ends early simply keeps its initial state until its own last step is reached.
"""

from __future__ import annotations

import torch
from torch import Tensor


def zeros_for_none(*pairs: tuple[Tensor | None, Tensor]) -> tuple[Tensor, ...]:
    """Each (gradient, like) pair's gradient, or zeros like ``like`` where autograd passed None
    (an output the loss does not use, with materialized gradients switched off)."""
    return tuple(torch.zeros_like(like) if grad is None else grad for grad, like in pairs)


def absent_grad(like: Tensor) -> Tensor:
    """The gradient of an absent weight (no projection, no bias): an empty [0] tensor, its one
    form from the kernels to the ops' autograd formulas, which return None for it (a custom op
    cannot return None; the C++ kernels return the same)."""
    return like.new_empty(0)


def time_steps(T: int, reverse: bool) -> range:
    """The order in which the forward pass visits the steps."""
    return range(T - 1, -1, -1) if reverse else range(T)


def step_mask(lengths: Tensor | None, t: int) -> Tensor | None:
    """[B, 1] bool: which sequences are valid at step t (None when all are)."""
    if lengths is None:
        return None
    return (lengths > t).unsqueeze(1)


def keep(valid: Tensor | None, new: Tensor, old: Tensor | float) -> Tensor:
    """new where the step is valid, old elsewhere."""
    if valid is None:
        return new
    return torch.where(valid, new, old)


def full_lengths(
    lengths: Tensor | None, T: int, B: int, device: torch.device | str = "cpu"
) -> Tensor:
    """[B] int64 on ``device``: the valid steps of each sequence clipped to [0, T]; all T when a
    call has no lengths. What the kernels of every backend index with."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=device)
    return lengths.to(device=device, dtype=torch.int64).clamp(0, T).contiguous()


def weight_grad(d_out: Tensor, inputs: Tensor) -> Tensor:
    """[N, K]: the gradient of a weight applied at every step, sum over t and b of
    d_out[t, b]^T inputs[t, b], as one GEMM over all T*B rows ([T, B, N] and [T, B, K] in)."""
    return d_out.flatten(0, 1).T @ inputs.flatten(0, 1)


def previous_states(y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """[T, B, R]: the recurrent state each valid step started from, rebuilt from y and h0.

    Entries at invalid steps are meaningless (their gradients are zero).
    """
    if not reverse:
        return torch.cat([h0.unsqueeze(0), y[:-1]])
    shifted = torch.cat([y[1:], h0.unsqueeze(0)])
    if lengths is None:
        return shifted
    T = y.shape[0]
    next_valid = lengths.unsqueeze(0) > torch.arange(1, T + 1, device=y.device).unsqueeze(1)
    return torch.where(next_valid.unsqueeze(2), shifted, h0.unsqueeze(0))


def differentiable_backward(*grads_of_saved: Tensor | None) -> bool:
    """Whether a layer op's backward runs its cell's reference formulas (``naive.<cell>_bwd``, in
    torch ops, which autograd and torch.func differentiate) rather than the backend's ``_bwd``
    op, which has no derivative: when the backward is itself differentiated (grad mode on inside
    a backward: ``create_graph=True``, and every torch.func transform), or when gradients reach
    the saved activations (``grads_of_saved``: the backward of such a backward)."""
    return torch.is_grad_enabled() or any(g is not None for g in grads_of_saved)
