"""rnnkernels: fused LSTM, GRU, RNN and IndRNN kernels behind drop-in torch modules."""

import os as _os

from rnnkernels import functional
from rnnkernels.backends import (
    BackendError,
    available_backends,
    backend_names,
    get_backend,
    set_backend,
    set_default_backend,
)
from rnnkernels.convert import convert, unconvert
from rnnkernels.dispatch import explain
from rnnkernels.modules import GRU, LSTM, RNN, IndRNN

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BackendError",
    "IndRNN",
    "available_backends",
    "backend_names",
    "cmake_prefix_path",
    "convert",
    "explain",
    "functional",
    "get_backend",
    "set_backend",
    "set_default_backend",
    "unconvert",
]
__version__ = "0.1.0"

# Where CMake finds find_package(rnnkernels), as torch.utils.cmake_prefix_path does for torch: the
# C++ library installed into this package (lib/, include/, share/cmake/rnnkernels/; see
# CMakeLists.txt). `python -m rnnkernels --cmake-prefix-path` prints it.
cmake_prefix_path: str = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "share/cmake")
