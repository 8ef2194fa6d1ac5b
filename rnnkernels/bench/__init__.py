"""``python -m rnnkernels.bench``: time every available backend against torch, same weights.

For each shape of the chosen presets (``shapes.PRESETS``, the one table the pytest-benchmark
suite in ``benchmarks/`` also uses), each mode (``fwd`` under ``torch.no_grad``; ``fwdbwd`` =
forward, then ``loss = output.sum() + final states sum`` backward into the input and every
parameter) and each provider (``torch`` = ``rnnkernels.testing.torch_twin`` of the module: cuDNN
on GPU, torch's CPU path on CPU, an eager loop for IndRNN, which are also the ``torch`` backend's
numbers; ``auto``, our module choosing per call; plus each other backend), the providers are
warmed up, then called in turn (torch, backend, ..., torch, backend, ...) and the median time is
reported with the speedup ``torch_ms / provider_ms`` from the same run, the time of each
provider's first call (``first_ms``: JIT compile or kernel-cache load; never part of the median),
the GFLOP/s of the recurrent cell (:func:`cell_flops`), that rate as a fraction of this machine's
peak rate measured at the start (:func:`measure.peak_rate`: the cores' FMA rate on CPU), and the
peak memory of one call (:func:`measure.peak_memory`). Results go to JSON, CSV and a PNG plot.

``--tune`` times the candidates ``auto`` chooses among instead and writes the dispatch table
(``tune``; ``rnnkernels/dispatch.py``).

Modules: ``shapes`` (the table, FLOPs), ``measure`` (providers, timing, memory, machine),
``report`` (table, files, plot, compare), ``tune`` (the dispatch table), ``cli`` (options,
:func:`main`). Nothing heavy is imported at import time.
"""

from rnnkernels.bench.cli import main, parse_args
from rnnkernels.bench.measure import (
    build_case,
    clear_grads,
    machine_info,
    make_call,
    peak_memory,
    peak_rate,
    time_providers,
)
from rnnkernels.bench.report import compare
from rnnkernels.bench.shapes import CELLS, MODES, PRESETS, Preset, Shape, cell_flops, parse_shape

__all__ = [
    "CELLS",
    "MODES",
    "PRESETS",
    "Preset",
    "Shape",
    "build_case",
    "cell_flops",
    "clear_grads",
    "compare",
    "peak_rate",
    "machine_info",
    "main",
    "make_call",
    "parse_args",
    "parse_shape",
    "peak_memory",
    "time_providers",
]
