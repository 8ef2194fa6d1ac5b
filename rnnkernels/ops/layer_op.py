"""How each cell's forward op is defined: a torch.library op whose autograd kernel records one
autograd node per gradient level, as a C++ autograd kernel does, so that torch.func transforms and
higher-order gradients run through it.

Why not ``torch.library.custom_op`` + ``register_autograd`` (as the backward ops are): its autograd
kernel applies a generated ``autograd.Function``, which every torch.func transform refuses
("must override the setup_context staticmethod"; pytorch/pytorch#168393, #170834, #179652, open
in torch 2.13); and a plain ``autograd.Function``, even with ``setup_context``, cannot be applied
from inside an op's autograd kernel under torch.func (the transform's dispatch has already run
there: #179652). So the kernel here applies a single-level function, which records a node at the
current level only, and runs the op beneath with gradients (reverse and forward mode) switched
back on, so that every transform below records its own (grad of grad). This is how torch.func
itself runs an ``autograd.Function`` (``torch/_functorch/autograd_function.py``), and how
pytorch/pytorch#184974 proposed to fix ``register_autograd``; it uses the same private pieces
(``_SingleLevelFunction``, ``enable_single_level_autograd_function``,
``_AutoDispatchBelowAutograd``, ``_after_autograd_keyset``, ``_set_fwd_grad_enabled``), which
tests/test_func.py and tests/test_double_backward.py guard. What custom_op gives is kept: the
schema inferred from the kernel's annotations, one kernel for every device, the fake for FakeTensor
/ torch.compile / torch.export, the op whole in their graphs, ``opcheck``. docs/design.md,
section 3, "Higher-order gradients and torch.func".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd import forward_ad

# One library fragment for every layer op (custom_op makes its own for the backward ops and
# validation's invalid_call; fragments of one namespace coexist).
_LIBRARY = torch.library.Library("rnnkernels", "FRAGMENT")


def _without_autocast(backward: Callable[..., Any]) -> Callable[..., Any]:
    """``backward`` run as ``torch.amp.custom_bwd`` runs one: with autocast off. The op's forward
    runs at fp32 (functional._Autocast), and a ``loss.backward()`` called inside an autocast region
    would otherwise run the backward's torch-side GEMMs (weight gradients, the reference and
    differentiable backwards) in bf16 / fp16."""

    def run(ctx: Any, *grads: Any) -> Any:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return backward(ctx, *grads)

    return run


def define_layer_op(
    name: str,
    kernel: Callable[..., Any],
    fake: Callable[..., Any],
    setup_context: Callable[..., None],
    backward: Callable[..., tuple[Tensor | None, ...]],
    batch_dims: Mapping[str, int] | Callable[..., Any],
) -> torch._ops.OpOverload:
    """Defines ``rnnkernels::<name>`` and returns it: schema from ``kernel``'s annotations,
    ``kernel`` for every device, ``fake`` for FakeTensor, and autograd by ``setup_context(ctx,
    inputs, output)`` / ``backward(ctx, *grads)`` (``register_autograd``'s two functions; inputs
    always in full, defaults filled in; ``backward`` differentiable when it runs with grad mode
    on). No forward-mode derivative: a tangent raises, naming what works. ``batch_dims``: the
    arguments that hold the batch (``gx`` [T,B,*], the initial states [B,*], ``lengths`` [B]) and
    where, for the vmap rule (``_vmap_rule``); or the op's own vmap rule (``register_vmap``'s), for
    an op of another form (the cpp backend's input GEMM, ``ops/linear.py``)."""
    _LIBRARY.define(name + torch.library.infer_schema(kernel, mutates_args=()))
    op = getattr(torch.ops.rnnkernels, name).default
    _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(op, fake, lib=_LIBRARY)
    defaults = tuple(arg.default_value for arg in op._schema.arguments)

    def forward(*args: Any) -> Any:
        # The op below this level's autograd key. The node's apply turned gradients off; on again
        # for the torch.func levels beneath (their own autograd kernel runs there, or their vmap):
        # without, a grad of grad or a jvp over grad would see constants, silently.
        with (
            torch._C._AutoDispatchBelowAutograd(),
            torch.enable_grad(),
            forward_ad._set_fwd_grad_enabled(True),
        ):
            return op(*args)

    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise NotImplementedError(
            f"rnnkernels::{name} has no forward-mode derivative: forward-mode AD "
            "(torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad) is not implemented "
            "for rnnkernels' layers. Reverse mode works (torch.autograd.grad with "
            "create_graph=True, torch.func.grad, vjp, jacrev; a Hessian as jacrev(jacrev(f))). "
            "For forward mode through LSTM / GRU, run torch's own modules: "
            "rnnkernels.unconvert(model)."
        )

    function = type(
        f"{name}_autograd",
        (torch.autograd.function._SingleLevelFunction,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(_without_autocast(backward)),
            "jvp": staticmethod(jvp),
        },
    )

    def autograd_kernel(keyset: torch._C.DispatchKeySet, *args: Any) -> Any:
        args = (*args, *defaults[len(args) :])  # the dispatcher drops trailing defaults
        # A node when a gradient will be asked for, and when a tangent comes in (forward mode:
        # jvp raises; without the node the tangent would be dropped, a silent zero). Tangents
        # exist only inside a dual level (forward_ad's, which torch.func.jvp enters too): outside
        # one, inference pays no look for them.
        if (
            torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
        ) or (
            forward_ad._current_level >= 0
            and any(
                isinstance(a, Tensor) and forward_ad.unpack_dual(a).tangent is not None
                for a in args
            )
        ):
            with enable_single_level_autograd_function():
                return function.apply(*args)
        return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _LIBRARY.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    names = [arg.name for arg in op._schema.arguments]
    if not callable(batch_dims):
        batch_dims = partial(_vmap_rule, op, names, defaults, batch_dims)
    torch.library.register_vmap(op, batch_dims, lib=_LIBRARY)
    return op


def _vmap_rule(
    op: torch._ops.OpOverload,
    names: list[str],
    defaults: tuple,
    batch_dims: Mapping[str, int],
    info: Any,
    in_dims: tuple[int | None, ...],
    *args: Any,
) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
    """vmap of a layer op. The sequences of a layer are independent, so when only batch-holding
    arguments are vmapped (the per-sample gradients' case: inputs vmapped, weights shared), the
    vmapped dim joins the batch: one call on V*B sequences, the outputs split again (each output
    holds the batch at its second-to-last dim: [T,B,*] or [B,*]). Vmapped weights (an ensemble)
    have no such form: one call per sample."""
    args = (*args, *defaults[len(args) :])
    in_dims = (*in_dims, *(None,) * (len(args) - len(in_dims)))
    V = info.batch_size
    if any(d is not None and n not in batch_dims for n, d in zip(names, in_dims)):
        samples = [
            op(*(a if d is None else a.select(d, v) for a, d in zip(args, in_dims)))
            for v in range(V)
        ]
        return tuple(torch.stack(outputs) for outputs in zip(*samples)), (0,) * len(samples[0])
    folded = []
    for n, a, d in zip(names, args, in_dims):
        if n in batch_dims and a is not None:
            at = batch_dims[n]
            a = (
                a.movedim(d, at)
                if d is not None
                else a.unsqueeze(at).expand(*a.shape[:at], V, *a.shape[at:])
            )
            a = a.flatten(at, at + 1)
        folded.append(a)
    outputs = op(*folded)
    return (
        tuple(o.unflatten(o.dim() - 2, (V, -1)) for o in outputs),
        tuple(o.dim() - 2 for o in outputs),
    )
