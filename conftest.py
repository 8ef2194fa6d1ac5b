"""Shared by tests/ and benchmarks/."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter; that must be chosen before triton is
# first imported (torch.compile imports it), so here rather than in a test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
