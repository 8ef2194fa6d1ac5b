"""The command line of ``python -m rnnkernels.bench``: :func:`main` takes an argv list and returns
the exit code (2 with a message for a bad option). ``--tune``, ``--show-table`` and
``--reset-table`` are the dispatch table's commands (``bench/tune.py``, ``dispatch.py``)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict

from rnnkernels.bench import measure, report, tune
from rnnkernels.bench.shapes import (
    CELLS,
    DEFAULT_PRESET,
    DEFAULT_TUNE_PRESETS,
    MODES,
    PRESETS,
    RENAMED_PRESETS,
    Shape,
    cell_flops,
    parse_shape,
)

DTYPES = ("float32", "float64", "float16", "bfloat16")


def _choices(allowed, what: str, known=(), renamed=None):
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        for old, new in (renamed or {}).items():
            if old in items:
                warnings.warn(
                    f"{what} {old!r} is now called {new!r}; the old name goes in the next release",
                    FutureWarning,
                    stacklevel=2,
                )
                items = [new if t == old else t for t in items]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            kind = "unavailable here" if bad and all(t in known for t in bad) else "unknown"
            raise argparse.ArgumentTypeError(
                f"{kind} {what} {','.join(bad) or repr(text)}; choose from {','.join(allowed)}"
            )
        return list(dict.fromkeys(items))

    return parse


def _shape(text: str) -> Shape:
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _counts(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of counts >= 1, got {text!r}")
    return list(dict.fromkeys(counts))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def parser(available: list[str], known: list[str]) -> argparse.ArgumentParser:
    presets = "\n".join(
        f"  {name:13} {p.about} [{p.device or 'any device'}, {len(p.shapes)} shapes]"
        for name, p in PRESETS.items()
    )
    p = argparse.ArgumentParser(
        prog="python -m rnnkernels.bench",
        description="Time every available rnnkernels backend against torch (same weights), "
        "print a table and write JSON, CSV and a PNG plot.",
        epilog=f"shape presets (--shapes):\n{presets}\n\n"
        "speedup = torch ms / provider ms, both measured in this run (providers alternate, "
        "medians).\n1st ms = the provider's first call in the run (JIT compile or kernel-cache "
        "load, first-touch allocations), not part of ms.\n"
        "peak MiB = peak bytes held by tensors allocated during one call.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where to run (default: cuda when available, else cpu)",
    )
    p.add_argument(
        "--shapes",
        type=_choices(list(PRESETS), "shape preset", renamed=RENAMED_PRESETS),
        help="comma list of presets (default: 'default' on cpu, 'gpu' on cuda; with --tune: "
        "'default,small-batch,cpu-grid' on cpu, 'gpu' on cuda)",
    )
    p.add_argument(
        "--shape",
        type=_shape,
        action="append",
        metavar="SPEC",
        help="a shape of your own, as a row reads: 'lstm T=100 B=32 H=256' (optional I=, L=, "
        "proj=, reps=, bi, packed); repeatable; adds to --shapes (without --shapes, only these)",
    )
    p.add_argument(
        "--cells",
        type=_choices(CELLS, "cell"),
        default=list(CELLS),
        help="comma list of lstm,gru,indrnn,rnn (default: all)",
    )
    p.add_argument(
        "--backends",
        type=_choices(["auto", *available], "backend", known),
        help=f"comma list of backends to time against torch (available here: auto,"
        f"{','.join(available)}; default: auto and those that run on the device). The torch row "
        "(nn.LSTM / nn.GRU: the torch backend's numbers) is always there; with --tune, the "
        "candidates (default: those auto may choose among)",
    )
    p.add_argument(
        "--modes",
        type=_choices(MODES, "mode"),
        default=list(MODES),
        help="comma list of fwd,fwdbwd (default: both)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="float16/bfloat16 on CPU: models converted to that dtype, torch's in the same dtype "
        "(torch's float16 CPU LSTM/GRU is very slow: seconds a call)",
    )
    p.add_argument("--reps", type=int, help="timed repetitions per provider (default: per shape)")
    p.add_argument(
        "--warmup", type=int, help="untimed calls per provider (default: 1 on cpu, 3 on cuda)"
    )
    p.add_argument(
        "--threads",
        type=_counts,
        help="torch.set_num_threads(N) (default: torch's); --tune takes a comma list and "
        "measures each",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="bench-results",
        help="write <stem>.json, .csv and .png here (default: %(default)s)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="measure the candidates per shape and mode and write the dispatch table auto reads "
        "(the local one: $RNNKERNELS_DISPATCH_TABLE, else ~/.cache/rnnkernels/"
        "dispatch_table.json)",
    )
    p.add_argument(
        "--write-shipped-table",
        action="store_true",
        help="with --tune: write the table shipped in the package instead of the local one",
    )
    p.add_argument(
        "--show-table",
        action="store_true",
        help="print where the dispatch tables are and their entries for this machine",
    )
    p.add_argument("--reset-table", action="store_true", help="delete the local dispatch table")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="JSON",
        help="OLD.json: after the run, show old ms, new ms and new/old for the rows in both; "
        "OLD.json NEW.json: compare two saved runs without running anything",
    )
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import rnnkernels

    p = parser(rnnkernels.available_backends(), rnnkernels.backend_names())
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    if args.write_shipped_table and not args.tune:
        p.error("--write-shipped-table goes with --tune")
    if args.threads and not args.tune:
        if len(args.threads) > 1:
            p.error("--threads takes one count, or a comma list with --tune")
        args.threads = args.threads[0]
    if args.warmup is not None and args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.compare:
        if len(args.compare) > 2:
            p.error("--compare takes OLD.json, or OLD.json NEW.json")
        for path in args.compare:
            try:
                with open(path) as f:
                    data = json.load(f)
                if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
                    raise ValueError("no 'rows' list")
            except (OSError, ValueError) as e:
                p.error(f"--compare: cannot read {path} as a benchmark result: {e}")
        if len(args.compare) == 2:
            return args  # nothing runs: device, shapes and dtype do not matter
    if args.device is None:
        args.device = "cuda" if _cuda_available() else "cpu"
    elif args.device == "cuda" and not _cuda_available():
        p.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    defaults = DEFAULT_TUNE_PRESETS[args.device] if args.tune else [DEFAULT_PRESET[args.device]]
    args.shapes = args.shapes or ([] if args.shape else list(defaults))
    for name in args.shapes:
        want = PRESETS[name].device
        if want is not None and want != args.device:
            p.error(f"shape preset {name!r} is for --device {want}, not {args.device}")
    if args.warmup is None:
        args.warmup = 3 if args.device == "cuda" else 1
    if args.tune:
        listed = args.backends or tune.candidates(args.device, args.dtype)
        args.backends = [b for b in listed if b != "auto"]
    else:  # the torch row (nn.LSTM / nn.GRU) has the torch backend's numbers: no row of its own
        listed = args.backends or ["auto", *_runnable_backends(args.device, args.dtype)]
        args.backends = [b for b in listed if b != "torch"]
    return args


def _runnable_backends(device: str, dtype: str) -> list[str]:
    """The available backends that can run a call on ``device`` in ``dtype``."""
    import torch

    import rnnkernels

    call = rnnkernels.backends.LayerCall("lstm", torch.device(device), getattr(torch, dtype))
    return [
        b for b in rnnkernels.available_backends() if rnnkernels.backends.why_not(b, call) is None
    ]


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def shapes_of(args) -> list[Shape]:
    """The shapes of ``args.shapes`` (presets) and ``args.shape`` (one's own), of ``args.cells``,
    each once."""
    listed = [s for name in args.shapes for s in PRESETS[name].shapes] + (args.shape or [])
    return list(dict.fromkeys(s for s in listed if s.cell in args.cells))


def run(args) -> tuple[dict, list[dict]]:
    """Runs the benchmark described by ``args``; returns (machine description, rows)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, getattr(torch, args.dtype)
    shapes = shapes_of(args)
    machine = measure.machine_info(device)
    rate, rate_source = measure.peak_rate(dtype, device)
    machine.update(peak_gflops=rate / 1e9, peak_source=rate_source)
    where = f"{machine['gpu']}, CUDA {machine['cuda']}; " if device == "cuda" else ""
    print(
        f"{where}{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} threads; {args.dtype} peak: {rate / 1e9:.1f} GFLOP/s "
        f"({rate_source})",
        file=sys.stderr,
    )
    if (machine["loadavg"] or 0) > 1.0:
        print(
            f"warning: load average {machine['loadavg']:.1f} before the run; other work on "
            "this machine makes timings noisy",
            file=sys.stderr,
        )

    rows = []
    step, done = progress(len(shapes) * len(args.modes))
    try:
        for shape in shapes:
            modules, x = measure.build_case(shape, dtype, args.backends, device=device)
            for mode in args.modes:
                step(f"{shape.cell} {shape.label} {mode}")
                calls = {name: measure.make_call(m, x, mode) for name, m in modules.items()}
                reps = args.reps or shape.reps
                times, notes, first = measure.time_providers(calls, reps, args.warmup, device)
                ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
                flops = cell_flops(shape, mode)
                for name, module in modules.items():
                    row = dict(
                        device=device,
                        dtype=args.dtype,
                        cell=shape.cell,
                        shape=shape.label,
                        mode=mode,
                        provider=name,
                        params=asdict(shape),
                        flops=flops,
                        ms=ms.get(name),
                        first_ms=1e3 * first[name] if name in first else None,
                        times_ms=[1e3 * t for t in times.get(name, [])],
                        speedup=None,
                        gflops=None,
                        peak_fraction=None,
                        peak_bytes=None,
                        note=notes.get(name),
                    )
                    if name in ms:
                        row["speedup"] = ms["torch"] / ms[name] if "torch" in ms else None
                        row["gflops"] = flops / ms[name] / 1e6
                        row["peak_fraction"] = row["gflops"] * 1e9 / rate
                        # Once, outside the timed loop (the CPU measurement profiles the call).
                        before = functools.partial(measure.clear_grads, module, x)
                        row["peak_bytes"] = measure.peak_memory(calls[name], device, before)
                    rows.append(row)
            modules = x = calls = None  # free this shape's tensors before the next
    finally:
        done()
    return machine, rows


def progress(total: int):
    """``(step, close)`` showing progress on stderr: a rich bar if rich is importable."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        count = iter(range(1, total + 1))
        return (
            lambda what: print(f"[{next(count)}/{total}] {what}", file=sys.stderr, flush=True)
        ), (lambda: None)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("", total=total)
    bar.start()
    return (lambda what: bar.update(task, advance=1, description=what)), bar.stop


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse's message is already printed; return its code
        return int(e.code or 0)
    if args.compare and len(args.compare) == 2:
        old, new = args.compare
        report.print_compare(_load(old), _load(new), old, new)
        return 0
    if args.reset_table or args.show_table:
        from rnnkernels import dispatch

        if args.reset_table:
            path = dispatch.local_table_path()
            path.unlink(missing_ok=True)
            print(f"removed {path}")
        if args.show_table:
            tune.show(args.device)
        return 0
    if args.tune:
        tune.tune(args, shapes_of(args), sys.argv[1:] if argv is None else argv)
        return 0
    start = time.perf_counter()
    machine, rows = run(args)
    elapsed = time.perf_counter() - start

    shapes = ",".join(args.shapes + ["own"] * bool(args.shape))
    title = (
        f"rnnkernels.bench --device {args.device} --shapes {shapes} "
        f"({args.dtype}, {machine['gpu'] or str(machine['threads']) + ' threads'}, "
        f"peak {machine['peak_gflops']:.1f} GFLOP/s = {machine['peak_source']}; "
        "speedup = torch ms / provider ms)"
    )
    report.print_results(rows, title)
    print(f"ran in {elapsed:.1f} s", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(
        args.out, f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{args.device}-{args.dtype}"
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "compare", "shape")}
    settings["own_shapes"] = [f"{s.cell} {s.label}" for s in args.shape or []]
    report.write_json(stem + ".json", machine, settings, rows)
    report.write_csv(stem + ".csv", machine, rows)
    written = [stem + ".json", stem + ".csv"]
    if report.plot(stem + ".png", rows, title):
        written.append(stem + ".png")
    else:
        print(
            "note: matplotlib is not installed, no plot (pip install 'rnnkernels[bench]')",
            file=sys.stderr,
        )
    print("wrote " + ", ".join(written))
    if args.compare:
        print()
        report.print_compare(_load(args.compare[0]), _load(stem + ".json"), args.compare[0], stem)
    return 0
