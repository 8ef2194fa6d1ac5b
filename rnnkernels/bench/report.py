"""Output of a benchmark run: the printed table, JSON, CSV, the PNG plot and ``--compare``."""

from __future__ import annotations

import csv
import json
import sys

# "1st ms": the provider's first call in the run (JIT compile, kernel-cache load), not in "ms".
COLUMNS = ("cell", "shape", "mode", "provider", "ms", "1st ms", "speedup", "GFLOP/s", "% peak")
COLUMNS += ("peak MiB",)
# CSV: one flat row per (shape, mode, provider), the machine's description repeated on each.
CSV_FIELDS = (
    "device",
    "dtype",
    "cell",
    "shape",
    "mode",
    "provider",
    "T",
    "B",
    "I",
    "H",
    "layers",
    "bidirectional",
    "proj",
    "packed",
    "reps",
    "ms",
    "first_ms",
    "speedup",
    "gflops",
    "peak_fraction",
    "peak_bytes",
    "flops",
    "note",
)
CSV_MACHINE = ("timestamp", "cpu", "cores", "threads", "torch", "python", "rnnkernels", "commit")
CSV_MACHINE += ("gpu", "cuda", "peak_gflops", "peak_source")


def _sig(v: float | None) -> str:
    if v is None:
        return "-"
    return (
        f"{v:.0f}"
        if v >= 100
        else f"{v:.1f}"
        if v >= 10
        else f"{v:.2f}"
        if v >= 0.01
        else f"{v:.1e}"
    )


def _fmt(row: dict) -> list[str]:
    head = [row["cell"], row["shape"], row["mode"], row["provider"]]
    if row["ms"] is None:
        return [*head, "-", "-", "-", "-", (row["note"] or "-").split(":")[0], "-"]
    speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
    peak = None if row["peak_bytes"] is None else row["peak_bytes"] / 2**20
    return [
        *head,
        f"{row['ms']:.2f}",
        "-" if row["first_ms"] is None else f"{row['first_ms']:.2f}",
        speedup,
        _sig(row["gflops"]),
        _sig(100 * row["peak_fraction"]),
        "-" if peak is None else f"{peak:,.0f}" if peak >= 100 else f"{peak:.3g}",
    ]


def print_table(title: str, columns: tuple[str, ...], cells: list[list[str]], left: int) -> None:
    """A rich table on stdout (plain aligned text without rich); the first ``left`` columns are
    left-aligned, the rest right-aligned."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(x) for x in col) for col in zip(columns, *cells)]
        print(title)
        for line in [list(columns), *cells]:
            print(
                "  ".join(
                    x.rjust(w) if i >= left else x.ljust(w)
                    for i, (x, w) in enumerate(zip(line, widths))
                )
            )
        return
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i >= left else "left")
    for c in cells:
        table.add_row(*c)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def print_results(rows: list[dict], title: str) -> None:
    print_table(title, COLUMNS, [_fmt(r) for r in rows], left=4)
    for r in rows:
        if r["note"]:
            print(f"note: {r['cell']} {r['shape']} {r['mode']} {r['provider']}: {r['note']}")


def write_json(path, machine: dict, settings: dict, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"machine": machine, "settings": settings, "rows": rows}, f, indent=1)


def write_csv(path, machine: dict, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*CSV_FIELDS, *CSV_MACHINE], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            p = r["params"]
            flat = {**r, **{k: p[k] for k in ("T", "B", "H", "layers", "bidirectional", "proj")}}
            flat.update(I=p["I"] or p["H"], packed=p["packed"], reps=len(r["times_ms"]))
            w.writerow({**{k: machine.get(k) for k in CSV_MACHINE}, **flat})


def plot(path, rows: list[dict], title: str) -> bool:
    """Speedup (torch ms / provider ms) per shape, one bar per backend, one panel per mode: bars
    grow up (faster than torch) or down (slower) from the line at 1.0 on a log axis. Returns False
    (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return False
    import textwrap

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    shapes = list(dict.fromkeys(f"{r['cell']} {r['shape']}" for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows if r["provider"] != "torch"))
    width = 0.8 / max(1, len(providers))
    fig_w = min(40.0, max(7.0, 0.35 * len(shapes) * max(2, len(providers)) + 2))
    fig, axes = plt.subplots(len(modes), 1, figsize=(fig_w, 3.8 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        speed = {
            (f"{r['cell']} {r['shape']}", r["provider"]): r["speedup"]
            for r in rows
            if r["mode"] == mode and r["speedup"]
        }
        for k, prov in enumerate(providers):
            xs = [i for i, s in enumerate(shapes) if (s, prov) in speed]
            ys = [speed[shapes[i], prov] for i in xs]
            offset = (k - (len(providers) - 1) / 2) * width
            bars = ax.bar(
                [x + offset for x in xs], [y - 1 for y in ys], width, bottom=1, label=prov
            )
            ax.bar_label(bars, labels=[f"{y:.2g}" for y in ys], fontsize=6)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="torch")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(mode)
        ax.set_ylabel("speedup vs torch")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([s.replace(" ", "\n") for s in shapes], fontsize=7)  # one size a line
        ax.legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, int(fig_w * 12))), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _key(row: dict, settings: dict) -> tuple:
    return (
        row.get("device", settings.get("device", "cpu")),
        row.get("dtype", settings.get("dtype", "float32")),
        row["cell"],
        row["shape"],
        row["mode"],
        row["provider"],
    )


def compare(old: dict, new: dict) -> list[dict]:
    """The rows present in both runs (same device, dtype, cell, shape, mode, provider), in the new
    run's order, with old ms, new ms and new/old (None where either side has no time)."""
    olds = {_key(r, old.get("settings", {})): r for r in old["rows"]}
    out = []
    for r in new["rows"]:
        key = _key(r, new.get("settings", {}))
        if key in olds:
            a, b = olds[key]["ms"], r["ms"]
            ratio = b / a if a and b else None
            out.append(dict(zip(("device", "dtype", "cell", "shape", "mode", "provider"), key)))
            out[-1].update(old_ms=a, new_ms=b, ratio=ratio)
    return out


def print_compare(old: dict, new: dict, old_name: str, new_name: str) -> None:
    rows = compare(old, new)
    om, nm = old.get("machine", {}), new.get("machine", {})
    for k in ("cpu", "gpu", "threads", "torch"):
        if om.get(k) != nm.get(k):
            print(f"warning: {k} differs: {om.get(k)} (old) vs {nm.get(k)} (new)")
    if not rows:
        print(f"no rows in common between {old_name} and {new_name}")
        return
    cells = [
        [
            r["cell"],
            r["shape"],
            r["mode"],
            r["provider"],
            "-" if r["old_ms"] is None else f"{r['old_ms']:.2f}",
            "-" if r["new_ms"] is None else f"{r['new_ms']:.2f}",
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
        ]
        for r in rows
    ]
    title = f"{new_name} against {old_name} (new/old < 1: faster now)"
    print_table(
        title, ("cell", "shape", "mode", "provider", "old ms", "new ms", "new/old"), cells, 4
    )
