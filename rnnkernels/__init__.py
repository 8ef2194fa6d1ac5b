"""rnnkernels: fused LSTM, GRU and IndRNN kernels behind drop-in torch modules."""

from rnnkernels import functional
from rnnkernels.backends import (
    BackendError,
    available_backends,
    backend_names,
    get_backend,
    set_backend,
)
from rnnkernels.convert import convert
from rnnkernels.modules import GRU, LSTM, IndRNN

__all__ = [
    "GRU",
    "LSTM",
    "BackendError",
    "IndRNN",
    "available_backends",
    "backend_names",
    "convert",
    "functional",
    "get_backend",
    "set_backend",
]
__version__ = "0.1.0"
