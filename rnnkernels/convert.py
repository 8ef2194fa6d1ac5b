"""``convert(model)``: swap every torch.nn.LSTM / torch.nn.GRU inside a model for ours, in place."""

from __future__ import annotations

import torch
from torch import nn

from rnnkernels.modules import GRU, LSTM, rnn_config


def convert(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Replaces each ``nn.LSTM`` / ``nn.GRU`` in ``model`` (the model itself included) with
    ``rnnkernels.LSTM`` / ``rnnkernels.GRU`` holding the very same Parameter objects, so
    optimisers and tied weights keep working. Returns the (possibly new) top-level module."""
    if type(model) in (nn.LSTM, nn.GRU):
        return _swap(model, backend)
    for name, child in model.named_children():
        setattr(model, name, convert(child, backend))
    return model


def _swap(old: nn.LSTM | nn.GRU, backend: str | None) -> LSTM | GRU:
    # meta: the parameters are replaced right below
    config = dict(rnn_config(old), device=torch.device("meta"), backend=backend)
    if isinstance(old, nn.LSTM):
        new = LSTM(proj_size=old.proj_size, **config)
    else:
        new = GRU(**config)
    for name in old._flat_weights_names:
        setattr(new, name, getattr(old, name))
    return new.train(old.training)
