"""Time-step bookkeeping shared by the pure-torch oracles of every cell (and the ops' autograd).

A layer runs over a time-major padded batch. Sequence b is valid for t < lengths[b]; past its end
the state is frozen and the output is zero. A reverse pass visits t = T-1 .. 0, so a sequence that
ends early simply keeps its initial state until its own last step is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

HALF_TYPES = (torch.bfloat16, torch.float16)
# The backends that run a half-type layer on float32 kernels and keep its saved activations
# (gates, cells / hn) in float32 (docs/design.md, "Mixed precision"; csrc/cpu/common.h).
FLOAT_SAVING_BACKENDS = ("cpp", "numba")


def saved_dtype(dtype: torch.dtype, backend: str) -> torch.dtype:
    """The dtype of the activations a forward of ``dtype`` saves for its backward on
    ``backend``: float32 for a half type on the CPU backends, else ``dtype``."""
    return torch.float32 if dtype in HALF_TYPES and backend in FLOAT_SAVING_BACKENDS else dtype


def formulas_in_saved_dtype(
    formulas: Callable[..., tuple], layer: torch.dtype, saved: torch.dtype, *args: Any
) -> tuple:
    """A differentiable backward (the reference formulas, ``naive.<cell>_bwd``) of a layer of
    dtype ``layer`` whose saved activations are of the wider ``saved`` (a half-type layer on cpp /
    numba: ``saved_dtype``): run on every floating tensor of ``args`` cast to ``saved`` (the casts
    differentiable), the gradients cast back to ``layer``. No cast for any other layer."""
    if saved == layer:
        return formulas(*args)
    wide = [a.to(saved) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
    return tuple(g.to(layer) for g in formulas(*wide))


class FloatKernels:
    """A backend's float32 kernels of one cell, run for its half-type (bfloat16, float16) calls:
    the numba backend's (docs/design.md, section 5). The tensors of the layer's dtype are
    converted to float32 at the call, the outputs rounded back, but for the saved activations
    (gates, cells / hn), which stay float32 as the cpp backend keeps them (``saved_dtype``).
    Other dtypes pass through untouched."""

    _ROUNDED_OUTPUTS = {"lstm": 3, "gru": 2, "indrnn": 2, "rnn": 2}  # y and the final states

    def __init__(self, module: Any, cell: str) -> None:
        self._module = module
        setattr(self, f"{cell}_fwd", self._wrap(getattr(module, f"{cell}_fwd"),
                                                self._ROUNDED_OUTPUTS[cell]))  # fmt: skip
        setattr(self, f"{cell}_bwd", self._wrap(getattr(module, f"{cell}_bwd"), None))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    @staticmethod
    def _wrap(kernel: Callable[..., tuple], rounded: int | None) -> Callable[..., tuple]:
        """``kernel`` converting at the boundary; ``rounded``: how many leading outputs return in
        the layer's dtype (None: all, the gradients of a backward)."""

        def run(*args: Any) -> tuple:
            io = args[0].dtype  # gx, or grad_y: the layer's dtype
            if io not in HALF_TYPES:
                return kernel(*args)
            outputs = kernel(*(a.float() if isinstance(a, Tensor) and a.dtype == io else a
                               for a in args))  # fmt: skip
            n = len(outputs) if rounded is None else rounded
            return tuple(o.to(io) if i < n else o for i, o in enumerate(outputs))

        return run


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
