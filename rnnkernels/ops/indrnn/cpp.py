"""IndRNN layer kernels of the compiled C++ extension (csrc/cpu/indrnn.cpp), CPU, fp32/fp64.

Importing this module loads rnnkernels._C, which registers the dispatcher ops
torch.ops.rnnkernels_cpp.indrnn_fwd / indrnn_bwd (schemas, CPU kernels and their fakes, Meta
kernels, in csrc/torch/ops.cpp). They take the arguments and return the tensors of naive.py's
indrnn_fwd / indrnn_bwd, an absent weight's gradient as an empty [0] tensor, so they are this
backend's kernels as they are.
"""

import torch

import rnnkernels._C  # noqa: F401  (loads the library: registers torch.ops.rnnkernels_cpp)

indrnn_fwd = torch.ops.rnnkernels_cpp.indrnn_fwd
indrnn_bwd = torch.ops.rnnkernels_cpp.indrnn_bwd
