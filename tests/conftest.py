import os

# The Triton interpreter must be chosen before triton is first imported (torch.compile imports it).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test tensors are tiny: one thread is fastest, and spinning OpenMP threads on a loaded 2-core
# machine made the suite 50x slower. Tests that are about threads set their own count.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["reference", "cpp"])
def backend(request):
    """Every backend that runs here is a test parameter (added as backends land)."""
    if request.param not in __import__("rnnkernels").available_backends():
        pytest.skip(f"backend {request.param!r} is not available here")
    return request.param
