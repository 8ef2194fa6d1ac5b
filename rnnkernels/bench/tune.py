"""``python -m rnnkernels.bench --tune``: which backend is fastest, per class of calls, on this
machine; the result is a run of the dispatch table ``auto`` reads (``rnnkernels/dispatch.py``).

For each thread count, shape and mode, the candidates (every available backend but ``reference``
that runs on the device: on CPU ``torch``, ``cpp``, ``numba``; on CUDA ``torch``, ``triton``) are
built on the same weights, warmed up and called in turn, as the benchmark does; one entry per
(shape, mode) keeps each candidate's fastest repetition in ms: the time least disturbed by other
work on the machine, which on a shared machine slows OpenMP's spinning threads (torch's) far more
than others and would otherwise decide the entry. Shapes of one class share an entry: the last
measured wins. Every candidate is our module with its
``backend=``, so each pays the same per-call check and routing; ``torch`` is ours with
``backend="torch"``, not ``nn.LSTM``. A candidate that cannot run a shape (``torch`` for IndRNN)
is left out of its entry. Written to the local table, or with ``--write-shipped-table`` to the
shipped one; either way the entries replace those with the same keys.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import replace

from rnnkernels.bench import measure, report
from rnnkernels.bench.shapes import Shape


def candidates(device: str, dtype: str) -> list[str]:
    """The backends ``auto`` may choose among on ``device`` in ``dtype``: those available here
    that run there, less ``reference`` (the fallback, never the fastest) and, on CPU, less
    ``triton`` (Triton's interpreter: auto never picks it for CPU tensors)."""
    import torch

    import rnnkernels
    from rnnkernels.backends import LayerCall, why_not

    call = LayerCall("lstm", torch.device(device), getattr(torch, dtype))
    never = {"reference", "triton"} if device == "cpu" else {"reference"}
    return [
        b for b in rnnkernels.available_backends() if b not in never and why_not(b, call) is None
    ]


def tune(args, shapes: list[Shape], argv: list[str]) -> list[dict]:
    """Measures ``shapes`` x ``args.modes`` for each of ``args.threads``, writes one run per
    thread count to the table (local, or shipped with ``args.write_shipped_table``) and returns
    the runs."""
    import torch

    import rnnkernels
    from rnnkernels import dispatch

    device, dtype = args.device, getattr(torch, args.dtype)
    names = args.backends
    command = shlex.join(["python", "-m", "rnnkernels.bench", *argv])
    source = {
        "cpu": dispatch.cpu_model(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "rnnkernels": rnnkernels.__version__,
        "commit": measure._git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }
    path = dispatch.SHIPPED_TABLE if args.write_shipped_table else dispatch.local_table_path()
    unique: dict[Shape, Shape] = {}  # a shape in two presets, with their repetitions: once
    for shape in shapes:
        unique.setdefault(replace(shape, reps=0), shape)
    runs, cells = [], []
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        entries = {}
        for shape in unique.values():
            # build_case's "torch" is nn.LSTM's twin; a "torch" in names replaces it with ours.
            modules, x = measure.build_case(shape, dtype, names, device=device)
            if "torch" not in names:
                del modules["torch"]  # nn.LSTM's twin: only our modules are candidates
            for mode in args.modes:
                print(f"[{threads} threads] {shape.cell} {shape.label} {mode}", file=sys.stderr)
                calls = {n: measure.make_call(m, x, mode) for n, m in modules.items()}
                times, _, _ = measure.time_providers(
                    calls, args.reps or shape.reps, args.warmup, device
                )
                ms = {n: float(f"{1e3 * min(t):.4g}") for n, t in times.items()}
                if not ms:
                    continue
                entry = _entry(shape, args.dtype, mode, ms)
                entries[tuple(entry[f] for f in dispatch.KEY_FIELDS)] = entry
                pick = dispatch.rank(ms)[0]
                timings = ", ".join(f"{n} {v:.3g}" for n, v in ms.items())
                cells.append([str(threads), shape.cell, shape.label, mode, timings, pick])
            modules = x = calls = None
        run = {
            "device": dispatch.device_class(torch.device(device)),
            "threads": threads if device == "cpu" else None,
            "source": source,
            "entries": list(entries.values()),
        }
        dispatch.add_run(path, run, drop_stale=not args.write_shipped_table)
        runs.append(run)
    columns = ("threads", "cell", "shape", "mode", "ms (fastest repetition)", "auto picks")
    report.print_table(f"dispatch table entries written to {path}", columns, cells, left=4)
    return runs


def _entry(shape: Shape, dtype: str, mode: str, ms: dict[str, float]) -> dict:
    """One table entry (``rnnkernels.dispatch``'s format) for ``shape`` measured in ``mode``."""
    from rnnkernels.dispatch import class_label

    return {
        "cell": shape.cell,
        "dtype": dtype,
        "mode": "inference" if mode == "fwd" else "training",
        "B": class_label("B", shape.B),
        "H": class_label("H", shape.H),
        "T": class_label("T", shape.T),
        "layers": shape.layers,
        "bidirectional": shape.bidirectional,
        "proj": bool(shape.proj),
        "packed": shape.packed,
        "shape": shape.label,
        "ms": ms,
    }


def show(device: str) -> None:
    """Prints where the tables are, their entries for ``device``'s class (``auto`` reads those of
    the thread count in force), and what reading them ignored."""
    import torch

    from rnnkernels import dispatch

    local = dispatch.local_table_path()
    print(f"shipped table: {dispatch.SHIPPED_TABLE}")
    print(f"local table:   {local}{'' if local.exists() else ' (none)'}")
    here = dispatch.device_class(torch.device(device))
    cells = []
    for key, entry in dispatch.entries().items():
        if key[0] != here:
            continue
        fields = entry.fields
        ms = ", ".join(f"{n} {fields['ms'][n]:.3g}" for n in entry.ranking)
        head = [entry.origin.split()[0], str(key[1]), fields["cell"], fields["dtype"]]
        cells.append([*head, fields["mode"], fields["shape"], ms])
    threads = f"; auto reads those of {torch.get_num_threads()} threads now" * (device == "cpu")
    title = f"dispatch table entries for {here}{threads}"
    columns = ("table", "threads", "cell", "dtype", "mode", "shape measured", "ms, in auto's order")
    report.print_table(title, columns, cells, left=6)
    for note in dispatch.ignored():
        print(f"note: {note}")
