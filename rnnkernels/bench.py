"""``python -m rnnkernels.bench``: time every available backend against torch, same weights.

For each shape of a preset, each mode (``fwd`` under ``torch.no_grad``; ``fwdbwd`` = forward, then
``loss = output.sum() + final states sum`` backward into the input and every parameter) and each
provider (``torch`` = ``rnnkernels.testing.torch_twin`` of the module, plus each backend), the
providers are warmed up, then called in turn (torch, backend, ..., torch, backend, ...) and the
median wall time is reported with the speedup ``torch_ms / backend_ms`` from the same run, the
GFLOP/s of the recurrent cell (see :func:`cell_flops`) and that rate as a fraction of this
machine's GEMM rate, measured at the start with a large ``torch.matmul``.

Nothing is done at import time; :func:`main` takes an argv list and returns the exit code.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

CELLS = ("lstm", "gru", "indrnn")
MODES = ("fwd", "fwdbwd")
GATES = {"lstm": 4, "gru": 3, "indrnn": 1}


@dataclass(frozen=True)
class Shape:
    """One benchmark row: cell and sizes (I defaults to H), plus the default repetitions."""

    cell: str
    T: int
    B: int
    H: int
    I: int = 0  # noqa: E741  (0: same as H)
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    packed: bool = False  # lengths evenly spaced from T/2 to T, pack_padded_sequence(unsorted)
    reps: int = 5

    @property
    def input_size(self) -> int:
        return self.I or self.H

    @property
    def label(self) -> str:
        s = f"T={self.T} B={self.B} I={self.input_size} H={self.H}"
        s += f" L={self.layers}" if self.layers > 1 else ""
        s += " bi" if self.bidirectional else ""
        s += f" proj={self.proj}" if self.proj else ""
        return s + (" packed" if self.packed else "")

    def lengths(self) -> list[int]:
        if not self.packed:
            return [self.T] * self.B
        if self.B == 1:
            return [self.T]
        lo = self.T // 2
        return [round(lo + (self.T - lo) * i / (self.B - 1)) for i in range(self.B)]


PRESETS: dict[str, list[Shape]] = {
    "tiny": [
        Shape("lstm", 5, 2, 8, reps=1),
        Shape("gru", 5, 2, 8, reps=1),
        Shape("indrnn", 5, 2, 8, reps=1),
    ],
    "default": [
        Shape("lstm", 100, 32, 256, reps=10),
        Shape("lstm", 200, 8, 64, reps=15),
        Shape("gru", 100, 32, 256, reps=10),
        Shape("gru", 200, 8, 64, reps=15),
        Shape("indrnn", 784, 32, 128, reps=3),  # torch's eager-loop backward is slow
    ],
    "issue3": [
        Shape("lstm", 100, 32, 256),
        Shape("lstm", 200, 8, 64, reps=10),
        Shape("lstm", 100, 32, 256, layers=2, bidirectional=True),
        Shape("lstm", 100, 32, 256, proj=128),
        Shape("lstm", 100, 32, 256, packed=True),
        Shape("gru", 100, 32, 256),
        Shape("gru", 512, 16, 128),
        Shape("gru", 200, 8, 64, reps=10),
        Shape("gru", 100, 32, 256, packed=True),
        Shape("indrnn", 784, 32, 128, reps=3),
    ],
}


def cell_flops(shape: Shape, mode: str) -> int:
    """FLOPs of the recurrent cell's matrix products (pointwise gate math is not counted).

    With N = sum of sequence lengths (T*B unpadded), G gates (LSTM 4, GRU 3, IndRNN 1), hidden
    size H, recurrent width R (proj_size if set, else H), layer input width I_l (I for layer 0,
    D*R above) and D directions, the forward is, summed over layers::

        D * (2*N*I_l*G*H          input projection GEMM
             + 2*N*R*G*H          recurrent GEMM (IndRNN: elementwise, 2*N*H)
             + 2*N*H*R)           output projection, only with proj_size

    and forward+backward counts 3x that (backward ~2x forward: grads of inputs and weights).
    """
    g, h, d = GATES[shape.cell], shape.H, 2 if shape.bidirectional else 1
    r = shape.proj or h
    n = sum(shape.lengths())
    total = 0
    for layer in range(shape.layers):
        i_l = shape.input_size if layer == 0 else d * r
        rec = 2 * n * h if shape.cell == "indrnn" else 2 * n * r * g * h
        total += d * (2 * n * i_l * g * h + rec + (2 * n * h * r if shape.proj else 0))
    return total * (3 if mode == "fwdbwd" else 1)


def gemm_rate(dtype, n: int = 2048, reps: int = 5) -> float:
    """This machine's measured matmul rate in FLOP/s: the best of ``reps`` n x n products (the
    machine's attainable rate; the best, not the median, so background load distorts it less)."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def build_case(shape: Shape, dtype, backends: list[str], seed: int = 0):
    """The providers' modules (torch twin first) sharing one set of weights, and the input."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    import rnnkernels
    from rnnkernels.testing import torch_twin

    torch.manual_seed(seed)
    common = dict(num_layers=shape.layers, bidirectional=shape.bidirectional, dtype=dtype)
    if shape.cell == "lstm":
        ours = rnnkernels.LSTM(shape.input_size, shape.H, proj_size=shape.proj, **common)
    elif shape.cell == "gru":
        ours = rnnkernels.GRU(shape.input_size, shape.H, **common)
    else:
        ours = rnnkernels.IndRNN(shape.input_size, shape.H, **common)
    modules = {"torch": torch_twin(ours)}
    for name in backends:
        modules[name] = copy.deepcopy(ours)
        modules[name].backend = name
    x = torch.randn(shape.T, shape.B, shape.input_size, dtype=dtype)
    if shape.packed:
        p = pack_padded_sequence(x, torch.tensor(shape.lengths()), enforce_sorted=False)
        # Rebuilt around a leaf so backward ends at the packed data (no graph kept between reps).
        x = PackedSequence(
            p.data.requires_grad_(), p.batch_sizes, p.sorted_indices, p.unsorted_indices
        )
    else:
        x.requires_grad_()
    return modules, x


def make_call(module, x, mode: str):
    """A no-argument callable running one timed step of ``mode`` on ``module``."""
    import torch
    from torch.nn.utils.rnn import PackedSequence

    leaf = x.data if isinstance(x, PackedSequence) else x
    params = list(module.parameters())

    def fwd() -> None:
        with torch.no_grad():
            module(x)

    def fwdbwd() -> None:
        leaf.grad = None
        for p in params:
            p.grad = None
        out, state = module(x)
        out = out.data if isinstance(out, PackedSequence) else out
        states = state if isinstance(state, tuple) else (state,)
        (out.sum() + sum(s.sum() for s in states)).backward()

    return fwd if mode == "fwd" else fwdbwd


def time_providers(calls: dict, reps: int, warmup: int) -> tuple[dict, dict]:
    """Warm up, then alternate providers for ``reps`` rounds. Returns (times_s, notes): a
    provider whose backend raises BackendError gets a note instead of times."""
    from rnnkernels import BackendError

    notes = {}
    for name, fn in list(calls.items()):
        try:
            for _ in range(warmup):
                fn()
        except BackendError as e:
            notes[name] = str(e)
    live = [n for n in calls if n not in notes]
    times = {n: [] for n in live}
    for _ in range(reps):
        for name in live:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return times, notes


def progress(total: int):
    """``(step, close)`` showing progress on stderr: a rich bar if rich is importable."""
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:
        count = iter(range(1, total + 1))
        return (
            lambda what: print(f"[{next(count)}/{total}] {what}", file=sys.stderr, flush=True)
        ), (lambda: None)
    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task("", total=total)
    bar.start()
    return (lambda what: bar.update(task, advance=1, description=what)), bar.stop


COLUMNS = ("cell", "shape", "mode", "provider", "ms", "speedup", "GFLOP/s", "% GEMM")


def _fmt(row: dict) -> list[str]:
    head = [row["cell"], row["shape"], row["mode"], row["provider"]]
    if row["ms"] is None:
        return [*head, "-", "-", "-", "skipped"]
    speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
    return [
        *head,
        f"{row['ms']:.2f}",
        speedup,
        _sig(row["gflops"]),
        _sig(100 * row["gemm_fraction"]),
    ]


def _sig(v: float) -> str:
    return (
        f"{v:.0f}"
        if v >= 100
        else f"{v:.1f}"
        if v >= 10
        else f"{v:.2f}"
        if v >= 0.01
        else (f"{v:.1e}")
    )


def print_table(rows: list[dict], title: str) -> None:
    cells = [_fmt(r) for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for i, col in enumerate(COLUMNS):
            table.add_column(col, justify="right" if i >= 4 else "left")
        for c in cells:
            table.add_row(*c)
        Console(width=None if sys.stdout.isatty() else 160).print(table)
    except ImportError:
        widths = [max(len(x) for x in col) for col in zip(COLUMNS, *cells, strict=True)]
        print(title)
        for line in [list(COLUMNS), *cells]:
            print(
                "  ".join(
                    x.rjust(w) if i >= 4 else x.ljust(w)
                    for i, (x, w) in enumerate(zip(line, widths, strict=True))
                )
            )
    for r in rows:
        if r["note"]:
            print(f"note: {r['cell']} {r['shape']} {r['mode']} {r['provider']}: {r['note']}")


def _choices(allowed, what: str, known=()):
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            kind = "unavailable here" if bad and all(t in known for t in bad) else "unknown"
            raise argparse.ArgumentTypeError(
                f"{kind} {what} {','.join(bad) or repr(text)}; choose from {','.join(allowed)}"
            )
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import rnnkernels

    available = rnnkernels.available_backends()
    p = argparse.ArgumentParser(
        prog="python -m rnnkernels.bench",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shapes",
        default="default",
        choices=sorted(PRESETS),
        help="shape preset (default: %(default)s; issue3 = the full CPU grid)",
    )
    p.add_argument(
        "--cells",
        type=_choices(CELLS, "cell"),
        default=list(CELLS),
        help="comma list of lstm,gru,indrnn (default: all)",
    )
    known = rnnkernels.backend_names()
    p.add_argument(
        "--backends",
        type=_choices(available, "backend", known),
        default=available,
        help=f"comma list of backends to time against torch (available here: "
        f"{','.join(available)}; default: all)",
    )
    p.add_argument(
        "--modes",
        type=_choices(MODES, "mode"),
        default=list(MODES),
        help="comma list of fwd,fwdbwd (default: both)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--reps", type=int, help="timed repetitions per provider (default: per shape)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per provider (default 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: torch's)")
    p.add_argument("--json", metavar="PATH", help="write results and machine description here")
    args = p.parse_args(argv)
    for name in ("reps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse's message is already printed; return its code
        return int(e.code or 0)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    shapes = [s for s in PRESETS[args.shapes] if s.cell in args.cells]
    machine = machine_info()
    rate = gemm_rate(dtype)
    machine["gemm_gflops"] = rate / 1e9
    machine["gemm_dtype"] = args.dtype
    print(
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} threads; 2048^3 {args.dtype} matmul: {rate / 1e9:.1f} GFLOP/s",
        file=sys.stderr,
    )
    if (machine["loadavg"] or 0) > 1.0:
        print(
            f"warning: load average {machine['loadavg']:.1f} before the run; other work on "
            "this machine makes timings noisy",
            file=sys.stderr,
        )

    rows, start = [], time.perf_counter()
    step, done = progress(len(shapes) * len(args.modes))
    for shape in shapes:
        modules, x = build_case(shape, dtype, args.backends)
        for mode in args.modes:
            step(f"{shape.cell} {shape.label} {mode}")
            calls = {name: make_call(m, x, mode) for name, m in modules.items()}
            times, notes = time_providers(calls, args.reps or shape.reps, args.warmup)
            ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
            flops = cell_flops(shape, mode)
            for name in modules:
                row = dict(
                    cell=shape.cell,
                    shape=shape.label,
                    mode=mode,
                    provider=name,
                    params=asdict(shape),
                    flops=flops,
                    ms=ms.get(name),
                    times_ms=[1e3 * t for t in times.get(name, [])],
                    speedup=None,
                    gflops=None,
                    gemm_fraction=None,
                    note=notes.get(name),
                )
                if name in ms:
                    row["speedup"] = ms["torch"] / ms[name] if "torch" in ms else None
                    row["gflops"] = flops / ms[name] / 1e6
                    row["gemm_fraction"] = row["gflops"] * 1e9 / rate
                rows.append(row)
    done()
    elapsed = time.perf_counter() - start

    print_table(
        rows,
        f"rnnkernels.bench --shapes {args.shapes} ({args.dtype}, "
        f"{machine['threads']} threads, GEMM {rate / 1e9:.1f} GFLOP/s; "
        f"speedup = torch ms / provider ms)",
    )
    print(f"timed in {elapsed:.1f} s", file=sys.stderr)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "settings": settings, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
