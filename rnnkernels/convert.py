"""``convert(model)``: swap every torch.nn.LSTM / torch.nn.GRU inside a model for ours, in place."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from rnnkernels.modules import GRU, LSTM, rnn_config

_OURS: dict[type[nn.Module], type[LSTM | GRU]] = {nn.LSTM: LSTM, nn.GRU: GRU}
# What a subclass's class body may hold and still convert: Python's bookkeeping (3.13 adds
# __firstlineno__ and __static_attributes__) and __init__, whose work is instance state, carried
# over. Anything else (forward, reset_parameters, a helper, a class constant) would be lost.
_CARRIED_CLASS_NAMES = frozenset(
    ("__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__",
     "__firstlineno__", "__static_attributes__", "__init__")
)  # fmt: skip


def convert(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Replaces each ``nn.LSTM`` / ``nn.GRU`` in ``model`` (the model itself included) with
    ``rnnkernels.LSTM`` / ``rnnkernels.GRU`` built with ``backend=backend``, in place, and returns
    the (possibly new) top-level module. A module reachable by several paths is converted once.

    The new module takes over the old one's state, the very objects: its Parameters (optimisers
    and tied weights keep working), buffers, submodules, its parametrizations
    (``torch.nn.utils.parametrize``: the parametrized weights are still computed from the same
    ``parametrizations.<name>.original`` each forward, and gradients reach them), its hooks of
    every kind (forward, pre-forward, backward, state-dict; the handles still remove them) and its
    ``training`` flag. The old module shares that state afterwards: use the converted model.

    A subclass of ``nn.LSTM`` / ``nn.GRU`` converts when its class defines nothing but
    ``__init__``: the attributes its ``__init__`` set are carried over, and the module becomes a
    ``rnnkernels.LSTM`` / ``GRU`` (``isinstance`` against the subclass no longer holds). A subclass
    that defines anything else (``forward``, ``reset_parameters``, another method, a class
    attribute), or sets an attribute our module uses itself, is left as it is, with a UserWarning
    naming its path (``'<model>'`` for the model itself) and the reason: such methods are written
    against torch's module (its ``_flat_weights``, its cuDNN buffers), so grafting them onto ours
    is unsafe, and dropping them would silently change what the model does.
    """
    done: dict[int, nn.Module] = {}  # id(module) -> what replaces it
    left_alone: list[str] = []

    def visit(module: nn.Module, path: str) -> nn.Module:
        if id(module) not in done:
            done[id(module)] = module  # what a cycle back to it meets
            for name, child in list(module._modules.items()):
                child_path = f"{path}.{name}" if path else name
                if child is not None and (new := visit(child, child_path)) is not child:
                    setattr(module, name, new)
            done[id(module)] = _converted(module, path, backend, left_alone)
        return done[id(module)]

    model = visit(model, "")
    for message in left_alone:
        warnings.warn(message, UserWarning, stacklevel=2)
    return model


def _converted(
    module: nn.Module, path: str, backend: str | None, left_alone: list[str]
) -> nn.Module:
    """Ours for a torch LSTM / GRU that can convert; else ``module`` itself, noting in
    ``left_alone`` why a torch LSTM / GRU could not."""
    cls = parametrize.type_before_parametrizations(module)
    base = next((base for base in _OURS if issubclass(cls, base)), None)
    if base is None:
        return module
    if reason := _reason_to_leave(module, cls, base):
        where = path or "<model>"
        left_alone.append(f"rnnkernels.convert: left {where!r} ({cls.__name__}) as it is: {reason}")
        return module
    return _swap(module, base, backend)


def _reason_to_leave(module: nn.Module, cls: type[nn.Module], base: type[nn.Module]) -> str:
    """Why ``module`` (of class ``cls``, a subclass of ``base``) cannot convert; "" if it can."""
    ours = f"rnnkernels.{base.__name__}"
    own = {name for k in cls.__mro__ if k not in base.__mro__ for name in vars(k)}
    if defined := sorted(own - _CARRIED_CLASS_NAMES):
        return f"its class defines {', '.join(defined)}, which {ours} would not have"
    if clashes := sorted((vars(module).keys() - _attributes(base)) & _attributes(_OURS[base])):
        return f"it sets {', '.join(clashes)}, which {ours} sets itself"
    return ""


def _swap(old: nn.Module, base: type[nn.Module], backend: str | None) -> LSTM | GRU:
    """Ours, configured as ``old`` (a ``base``), taking over its state."""
    ours = _OURS[base]
    extra = {"proj_size": old.proj_size} if ours is LSTM else {}
    # meta: its own parameters are dropped below for old's
    new = ours(**rnn_config(old), **extra, device=torch.device("meta"), backend=backend)
    for name in old.parametrizations if parametrize.is_parametrized(old) else ():
        # torch's parametrized class and its property for `name`, set up on a placeholder; the
        # property reads new.parametrizations[name], old's ParametrizationList once old's
        # _modules move in below
        new.register_parameter(name, nn.Parameter(torch.empty(0, device="meta")))
        parametrize.register_parametrization(new, name, nn.Identity(), unsafe=True)
    # nn.Module's own state (dicts of parameters, buffers, modules, hooks; training) and a
    # subclass's attributes move in; torch's RNN attributes do not, nor a Module.compile() of
    # old's forward
    dropped = _attributes(base) | {"_compiled_call_impl"}
    vars(new).update((k, v) for k, v in vars(old).items() if k not in dropped)
    return new


@functools.cache
def _attributes(cls: type[nn.Module]) -> frozenset[str]:
    """The instance attributes a fresh ``cls`` RNN sets beyond those of every nn.Module."""
    return frozenset(vars(cls(1, 2, device="meta"))) - frozenset(vars(nn.Module()))
