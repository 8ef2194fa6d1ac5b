"""pytest-benchmark suite: every provider (torch = ``torch_twin``: cuDNN on GPU, torch's CPU path
on CPU, an eager loop for IndRNN; plus each available backend) x mode x shape.

Shapes come from ``rnnkernels.bench.PRESETS``, the table ``python -m rnnkernels.bench`` uses:
the ``tiny`` preset is the default tier (on CPU, and on CUDA when there is a GPU); every other
preset's shapes, on the device the preset is for, are marked ``slow``. Plain ``pytest`` runs
each default-tier benchmark once (``--benchmark-disable`` in pyproject) as a smoke test;
``pytest benchmarks --benchmark-enable`` times them, ``-m slow`` selects the slow tier.
"""

from dataclasses import replace

import pytest
import torch

import rnnkernels
from rnnkernels import bench
from rnnkernels.backends import LayerCall, why_not

PROVIDERS = ["torch", "auto", *(b for b in rnnkernels.available_backends() if b != "torch")]


def _cases():
    seen = set()
    for name, preset in bench.PRESETS.items():  # "tiny" first: its shapes stay in the default tier
        for device in [preset.device] if preset.device else ["cpu", "cuda"]:
            for shape in preset.shapes:
                key = (device, replace(shape, reps=0))
                if key in seen:
                    continue
                seen.add(key)
                marks = [] if name == "tiny" else [pytest.mark.slow]
                marks += [pytest.mark.gpu] if device == "cuda" else []
                label = shape.label.replace("=", "").replace(" ", "-")
                yield pytest.param(device, shape, id=f"{device}-{shape.cell}-{label}", marks=marks)


CASES = list(_cases())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize(("device", "shape"), CASES)
def test_provider(benchmark, device, shape, mode, provider):
    if provider not in ("torch", "auto"):
        why = why_not(provider, LayerCall(shape.cell, torch.device(device), torch.float32))
        if why is not None:
            pytest.skip(f"{provider} cannot run {shape.cell} on {device}: {why}")
    backends = [] if provider == "torch" else [provider]
    modules, x = bench.build_case(shape, torch.float32, backends, device=device)
    call = bench.make_call(modules[provider], x, mode)

    def run():
        call()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{device} {shape.cell} {shape.label} {mode}"
    benchmark.extra_info["flops"] = bench.cell_flops(shape, mode)
    try:
        benchmark(run)
    except rnnkernels.BackendError as e:
        pytest.skip(f"{provider} cannot run {shape.cell} {shape.label}: {e}")
