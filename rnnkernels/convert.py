"""``convert(model)``: swap every torch.nn.LSTM / GRU / RNN inside a model for ours, in place;
``unconvert(model)``: the inverse, for the paths that only take torch's modules."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantization_mappings
from torch.nn.utils import parametrize

from rnnkernels.modules import GRU, LSTM, RNN, IndRNN, rnn_config

_OURS: dict[type[nn.Module], type[nn.Module]] = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}
_THEIRS: dict[type[nn.Module], type[nn.Module]] = {LSTM: nn.LSTM, GRU: nn.GRU, RNN: nn.RNN}
# What a subclass's class body may hold and still convert: Python's bookkeeping (3.13 adds
# __firstlineno__ and __static_attributes__) and __init__, whose work is instance state, carried
# over. Anything else (forward, reset_parameters, a helper, a class constant) would be lost.
_CARRIED_CLASS_NAMES = frozenset(
    ("__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__",
     "__firstlineno__", "__static_attributes__", "__init__")
)  # fmt: skip
# Instance state that never moves to the new module: torch.compile's Module.compile() of the old
# forward, and the configuration our modules keep for TorchScript (__prepare_scriptable__).
_NEVER_CARRIED = frozenset(("_compiled_call_impl", "_script_config"))


def convert(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Replaces each ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` in ``model`` (the model itself included)
    with ``rnnkernels.LSTM`` / ``GRU`` / ``RNN`` built with ``backend=backend``, in place, and
    returns the (possibly new) top-level module. A module reachable by several paths is converted
    once.

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
    return _replace_all(model, _OURS, "convert", {"backend": backend})


def unconvert(model: nn.Module, *, keep_indrnn: bool = False) -> nn.Module:
    """The inverse of ``convert``: replaces each ``rnnkernels.LSTM`` / ``GRU`` / ``RNN`` in
    ``model`` (the model itself included) with ``nn.LSTM`` / ``GRU`` / ``RNN``, in place, and
    returns the (possibly new) top-level module. For the paths that take torch's modules only:
    ``torch.ao.quantization.quantize_dynamic`` with a spec naming ``nn.LSTM`` / ``nn.GRU``,
    ``torch.func`` transforms, code that checks ``isinstance(m, nn.LSTM)``.

    Everything ``convert`` carries over is carried back, the very objects: Parameters,
    buffers, submodules, parametrizations, hooks and their handles, ``training``, and the
    instance state of a subclass that defines nothing but ``__init__`` (other subclasses are left
    as they are, with a UserWarning saying why, as ``convert`` does). The module's ``backend=`` is
    not: torch's modules have none; ``convert(model, backend=...)`` sets it again, and
    ``convert(unconvert(model))`` gives the same parameters and outputs back.

    ``rnnkernels.IndRNN`` has no torch module. Unless ``keep_indrnn=True`` (IndRNNs stay ours),
    a model holding one raises ``ValueError`` naming each, before anything is replaced.
    """
    if not keep_indrnn:
        found = [path or "<model>" for path, m in model.named_modules() if isinstance(m, IndRNN)]
        if found:
            raise ValueError(
                f"rnnkernels.unconvert: {', '.join(map(repr, found))} "
                f"{'is an' if len(found) == 1 else 'are'} rnnkernels.IndRNN, which torch.nn has "
                "no module for; pass keep_indrnn=True to leave IndRNNs as they are"
            )
    return _replace_all(model, _THEIRS, "unconvert", {})


def _replace_all(
    model: nn.Module, targets: dict[type[nn.Module], type[nn.Module]], verb: str, kwargs: dict
) -> nn.Module:
    """Replaces, in place, every module of a class in ``targets`` (or a subclass that can move)
    with one of its target class built with ``kwargs``; ``verb`` names the caller in warnings."""
    done: dict[int, nn.Module] = {}  # id(module) -> what replaces it
    left_alone: list[str] = []

    def visit(module: nn.Module, path: str) -> nn.Module:
        if id(module) not in done:
            done[id(module)] = module  # what a cycle back to it meets
            for name, child in list(module._modules.items()):
                child_path = f"{path}.{name}" if path else name
                if child is not None and (new := visit(child, child_path)) is not child:
                    setattr(module, name, new)
            done[id(module)] = replaced(module, path)
        return done[id(module)]

    def replaced(module: nn.Module, path: str) -> nn.Module:
        cls = parametrize.type_before_parametrizations(module)
        base = next((base for base in targets if issubclass(cls, base)), None)
        if base is None:
            return module
        if reason := _reason_to_leave(module, cls, base, targets[base]):
            left_alone.append(
                f"rnnkernels.{verb}: left {path or '<model>'!r} ({cls.__name__}) as it is: {reason}"
            )
            return module
        return _swap(module, base, targets[base], kwargs)

    model = visit(model, "")
    for message in left_alone:
        warnings.warn(message, UserWarning, stacklevel=3)
    return model


def _reason_to_leave(
    module: nn.Module, cls: type[nn.Module], base: type[nn.Module], target: type[nn.Module]
) -> str:
    """Why ``module`` (of class ``cls``, a subclass of ``base``) cannot become a ``target``; ""
    if it can."""
    new = _name(target)
    own = {name for k in cls.__mro__ if k not in base.__mro__ for name in vars(k)}
    if defined := sorted(own - _CARRIED_CLASS_NAMES):
        return f"its class defines {', '.join(defined)}, which {new} would not have"
    if clashes := sorted((vars(module).keys() - _attributes(base)) & _attributes(target)):
        return f"it sets {', '.join(clashes)}, which {new} sets itself"
    return ""


def _swap(
    old: nn.Module, base: type[nn.Module], target: type[nn.Module], kwargs: dict
) -> nn.Module:
    """A ``target`` configured as ``old`` (a ``base``), taking over its state."""
    # the arguments only some cells take (mode: "RNN_TANH" / "RNN_RELU" for both RNNs)
    extra = {"proj_size": old.proj_size} if old.mode == "LSTM" else {}
    if old.mode.startswith("RNN"):
        extra = {"nonlinearity": old.nonlinearity}
    # meta: its own parameters are dropped below for old's
    new = target(**rnn_config(old), **extra, **kwargs, device=torch.device("meta"))
    for name in old.parametrizations if parametrize.is_parametrized(old) else ():
        # torch's parametrized class and its property for `name`, set up on a placeholder; the
        # property reads new.parametrizations[name], old's ParametrizationList once old's
        # _modules move in below
        new.register_parameter(name, nn.Parameter(torch.empty(0, device="meta")))
        parametrize.register_parametrization(new, name, nn.Identity(), unsafe=True)
    # nn.Module's own state (dicts of parameters, buffers, modules, hooks; training) and a
    # subclass's attributes move in; the RNN attributes of old's class do not
    dropped = _attributes(base) | _NEVER_CARRIED
    vars(new).update((k, v) for k, v in vars(old).items() if k not in dropped)
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # torch's cached list of the weights, now old's
    return new


@functools.cache
def _attributes(cls: type[nn.Module]) -> frozenset[str]:
    """The instance attributes a fresh ``cls`` RNN sets beyond those of every nn.Module (for
    nn.RNN / RNN, ``nonlinearity`` too)."""
    return frozenset(vars(cls(1, 2, device="meta"))) - frozenset(vars(nn.Module()))


def _name(cls: type[nn.Module]) -> str:
    return f"{'nn' if cls.__module__.startswith('torch.') else 'rnnkernels'}.{cls.__name__}"


class _DynamicQuantized:
    """What ``torch.ao.quantization.quantize_dynamic`` swaps a ``rnnkernels.LSTM`` / ``GRU`` for
    when its spec names our class: torch's dynamic quantized module (``nnqd.LSTM`` /
    ``nnqd.GRU``), made by torch's own ``from_float`` from an ``nn.LSTM`` / ``nn.GRU`` over the
    same parameters, so the numbers are those of quantizing the torch model."""

    def __init__(self, ours: type[nn.Module], quantized: type[nn.Module]) -> None:
        self.ours, self.quantized = ours, quantized

    def from_float(self, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        # a torch module sharing mod's state (qconfig included); mod itself is not changed
        theirs = _swap(mod, self.ours, _THEIRS[self.ours], {})
        return self.quantized.from_float(theirs, use_precomputed_fake_quant)


class _NoDynamicQuantized:
    """What ``quantize_dynamic`` finds for ``rnnkernels.IndRNN``: an error, not an fp32 leftover."""

    def from_float(self, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        raise TypeError(
            "rnnkernels.IndRNN has no dynamic quantized form (torch.ao.nn.quantized.dynamic has "
            "no IndRNN), so quantize_dynamic cannot quantize it: leave it out of qconfig_spec "
            "(name the modules to quantize by type, e.g. {nn.Linear, rnnkernels.LSTM}, rather "
            "than a module that holds an IndRNN)"
        )


def _register_dynamic_quantization(mapping: dict[Callable, object]) -> None:
    """quantize_dynamic matches module types exactly, in this mapping (torch's default, which it
    reads when no ``mapping=`` is given): without an entry, a spec naming our classes would leave
    them fp32 silently. ``rnnkernels.RNN`` has none, as torch's ``nn.RNN`` has none: both stay
    fp32 (torch.ao.nn.quantized.dynamic has no RNN), what quantizing torch's model does."""
    mapping[LSTM] = _DynamicQuantized(LSTM, nnqd.LSTM)
    mapping[GRU] = _DynamicQuantized(GRU, nnqd.GRU)
    mapping[IndRNN] = _NoDynamicQuantized()


_register_dynamic_quantization(quantization_mappings.get_default_dynamic_quant_module_mappings())
