import pytest
import torch

import rnnkernels

# Test tensors are tiny: one thread is fastest, and spinning OpenMP threads on a loaded 2-core
# machine made the suite 50x slower. Tests that are about threads set their own count.
torch.set_num_threads(1)


@pytest.fixture(
    params=["reference", "cpp", "numba", pytest.param("triton", marks=pytest.mark.triton)]
)
def backend(request):
    """Every backend is a test parameter; one that cannot run here is skipped, saying why."""
    if request.param not in rnnkernels.available_backends():
        why = rnnkernels.backends.why_unavailable(request.param)
        pytest.skip(f"backend {request.param!r} is not available here: {why}")
    return request.param


@pytest.fixture(params=["streaming", "on chip"])
def triton_weights(request, monkeypatch):
    """A Triton kernel test twice: the recurrent weights streamed every step, and each program's
    slice of them kept on chip (triton_common.WEIGHTS_ON_CHIP; it applies where every program
    gets one hidden tile: in the interpreter, H up to ON_CHIP_BLOCK_H)."""
    from rnnkernels.ops import triton_common

    monkeypatch.setattr(triton_common, "WEIGHTS_ON_CHIP", request.param == "on chip")
    return request.param
