"""What the IndRNN paper examples share (adding_problem.py, sequential_digits.py).

The paper's initialisation and constraint of the recurrent weights ``u``, an eager IndRNN loop (the
speed baseline: how IndRNN is written without a fused kernel), step timing, and the record of a
run (machine, load, command) written next to its results.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkernels


def recurrent_bound(T: int) -> float:
    """The paper's bound on ``|u|`` for relu: ``2 ** (1 / T)``, so that no neuron's state can grow
    (or a gradient through the recurrence alone) by more than 2x over T steps."""
    return 2.0 ** (1.0 / T)


def init_recurrent_(u: Tensor, T: int, last_layer: bool) -> None:
    """The authors' initialisation of one layer's ``u`` (their Theano code for the paper):
    uniform in (0, 2^(1/T)), and for the last layer in (2^(-1/T), 2^(1/T)), so that the layer
    the output reads starts with every neuron keeping its memory over the whole sequence."""
    bound = recurrent_bound(T)
    with torch.no_grad():
        u.uniform_(1.0 / bound if last_layer else 0.0, bound)


def project_recurrent_(model: nn.Module) -> None:
    """Clip ``u`` of every ``rnnkernels.IndRNN`` in ``model`` that has a ``recurrent_max_abs``
    into ``[-recurrent_max_abs, recurrent_max_abs]``, after an optimizer step, as the authors'
    code does. The module's forward clamps ``u`` anyway (so the constraint holds whatever the
    parameter holds); clipping the parameter too keeps a ``u`` that Adam pushed past the bound
    from sitting there with a zero gradient."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, rnnkernels.IndRNN) and module.recurrent_max_abs is not None:
                bound = module.recurrent_max_abs
                for k in range(module.num_layers):
                    getattr(module, f"weight_hh_l{k}").clamp_(-bound, bound)


def init_forget_bias_(lstm: nn.LSTM, value: float = 1.0) -> None:
    """Every layer's forget-gate bias (``b_ih + b_hh``) at ``value``, as the authors' LSTM
    baseline starts: the gates are ordered i, f, g, o."""
    H = lstm.hidden_size
    with torch.no_grad():
        for k in range(lstm.num_layers):
            getattr(lstm, f"bias_ih_l{k}")[H : 2 * H] = value
            getattr(lstm, f"bias_hh_l{k}")[H : 2 * H] = 0.0


def torch_baseline(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same weights) with every ``rnnkernels.LSTM`` swapped for ``nn.LSTM``
    and every ``rnnkernels.IndRNN`` wrapped in ``EagerIndRNN``: the same model on torch's path,
    for timing."""
    twin = rnnkernels.unconvert(copy.deepcopy(model), keep_indrnn=True)
    for name, module in list(twin.named_modules()):
        if isinstance(module, rnnkernels.IndRNN):
            twin.set_submodule(name, EagerIndRNN(module))
    return twin


class EagerIndRNN(nn.Module):
    """An ``rnnkernels.IndRNN``'s forward as a plain torch loop over the time steps, on the same
    Parameters, with autograd through every step: the baseline a fused kernel is timed against.
    Time-major input, one direction, no dropout, zero initial state; returns
    ``(output, h_n)`` as the module does."""

    def __init__(self, indrnn: rnnkernels.IndRNN) -> None:
        super().__init__()
        if indrnn.bidirectional or indrnn.batch_first or indrnn.dropout:
            raise ValueError(
                "EagerIndRNN: expected a unidirectional, time-major IndRNN without dropout, got "
                f"{indrnn!r}"
            )
        self.indrnn = indrnn

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.indrnn
        act = torch.relu if m.nonlinearity == "relu" else torch.tanh
        finals = []
        for k in range(m.num_layers):
            u = getattr(m, f"weight_hh_l{k}")
            if m.recurrent_max_abs is not None:
                u = u.clamp(-m.recurrent_max_abs, m.recurrent_max_abs)
            bias = getattr(m, f"bias_ih_l{k}") + getattr(m, f"bias_hh_l{k}") if m.bias else None
            gx = F.linear(x, getattr(m, f"weight_ih_l{k}"), bias)
            h = gx.new_zeros(gx.shape[1:])
            steps = []
            for g in gx.unbind(0):
                h = act(g + u * h)
                steps.append(h)
            x = torch.stack(steps)
            finals.append(h)
        return x, torch.stack(finals)


def median_seconds(
    step: Callable[[], object], repeats: int, warmup: int = 1
) -> tuple[float, float]:
    """Median wall time and median CPU time (this process, all its threads) of ``step()`` over
    ``repeats`` calls, after ``warmup`` untimed calls (first-call costs: Numba's kernel load,
    allocator growth). On a shared machine the wall time is what this process's share of the
    cores allows; the CPU time is the work done, much less sensitive to the load."""
    for _ in range(warmup):
        step()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def chosen_backend(module: nn.Module, x: Tensor) -> str:
    """Which backend a training call of ``module(x)`` runs: 'torch.nn' for torch's own modules,
    'eager loop' for ``EagerIndRNN``, else the one ``rnnkernels.explain`` names (``auto``
    chooses per call)."""
    if isinstance(module, EagerIndRNN):
        return "eager loop"
    if not isinstance(module, (rnnkernels.LSTM, rnnkernels.GRU, rnnkernels.IndRNN)):
        return "torch.nn"
    return rnnkernels.explain(module, x).backend


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    """Where and how a run ran: the numbers only mean something with these."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def write_json(path: Path, record: dict) -> None:
    record["load_average_at_end"] = os.getloadavg()
    path.write_text(json.dumps(record, indent=2) + "\n")
