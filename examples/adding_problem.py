"""The adding problem (Li et al., CVPR 2018, "Independently Recurrent Neural Network (IndRNN)",
sec. 4.1), with ``rnnkernels.IndRNN`` and, at the same budget, ``rnnkernels.LSTM``.

Each input is T steps of two channels: a value uniform in [0, 1), and a marker that is 1 at two
steps (one in each half of the sequence) and 0 elsewhere. The target is the sum of the two marked
values. Always answering 1 scores an MSE of 1/6 = 0.167 (the variance of the sum): a model has
solved the task when its test MSE is well under that.

    .venv/bin/python examples/adding_problem.py --T 1000 --model both --out examples/results

prints progress, and writes to --out ``adding_T{T}.png`` (the loss curves) and
``adding_T{T}.json`` (the results, the step times, the machine and its load).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from example_utils import (
    chosen_backend,
    init_forget_bias_,
    init_recurrent_,
    machine_record,
    median_seconds,
    project_recurrent_,
    recurrent_bound,
    torch_baseline,
    write_json,
)
from torch import Tensor, nn

import rnnkernels

BASELINE_MSE = 1.0 / 6.0  # always answering 1: the variance of the sum of two U(0, 1)


def make_batch(T: int, B: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``B`` adding-problem sequences, time-major: inputs [T, B, 2] and targets [B]."""
    values = torch.rand(T, B, generator=generator)
    half = T // 2
    first = torch.randint(0, half, (B,), generator=generator)
    second = torch.randint(half, T, (B,), generator=generator)
    markers = torch.zeros(T, B)
    columns = torch.arange(B)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(dim=0)


class Regressor(nn.Module):
    """A recurrent stack read at its last step by a linear layer: one number per sequence."""

    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.rnn(x)
        return self.head(output[-1]).squeeze(-1)


def build_model(kind: str, T: int, hidden: int, layers: int, backend: str | None) -> Regressor:
    """``indrnn``: the paper's relu IndRNN, ``|u| <= 2^(1/T)``, the authors' initialisation (u
    per ``init_recurrent_``, input weights N(0, 0.001^2), biases 0). ``lstm``: one LSTM layer
    (the authors' baseline) with the forget-gate bias at 1."""
    if kind == "indrnn":
        rnn = rnnkernels.IndRNN(
            2,
            hidden,
            layers,
            nonlinearity="relu",
            recurrent_max_abs=recurrent_bound(T),
            backend=backend,
        )
        for k in range(layers):
            init_recurrent_(getattr(rnn, f"weight_hh_l{k}"), T, last_layer=k == layers - 1)
            nn.init.normal_(getattr(rnn, f"weight_ih_l{k}"), std=0.001)
            nn.init.zeros_(getattr(rnn, f"bias_ih_l{k}"))
            nn.init.zeros_(getattr(rnn, f"bias_hh_l{k}"))
    elif kind == "lstm":
        rnn = rnnkernels.LSTM(2, hidden, backend=backend)
        init_forget_bias_(rnn, 1.0)
    else:
        raise ValueError(f"model kind must be 'indrnn' or 'lstm', got {kind!r}")
    return Regressor(rnn, hidden)


def evaluate(model: Regressor, x: Tensor, y: Tensor, chunk: int = 250) -> float:
    """Test MSE, in chunks of sequences to bound the memory of a long T."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, y.numel(), chunk):
            pred = model(x[:, start : start + chunk])
            total += (pred - y[start : start + chunk]).pow(2).sum().item()
    model.train()
    return total / y.numel()


def make_step(model: Regressor, optimizer, scheduler=None):
    """One training step on a batch; returns the batch's MSE. Keeps ``|u|`` in range."""

    def step(x: Tensor, y: Tensor) -> float:
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        project_recurrent_(model)
        return loss.item()

    return step


def optimizer_for(model: nn.Module, args):
    """Adam at --lr, divided by 10 every --lr-decay-steps (the authors' schedule)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, args.lr_decay_steps, 0.1)


def time_steps(model: Regressor, args, repeats: int) -> dict:
    """Wall and CPU time of one training step (forward, backward, Adam) of ``model`` and of its
    torch baseline, each on a copy (the trained model is not touched), median of ``repeats``."""
    x, y = make_batch(args.T, args.batch, torch.Generator().manual_seed(args.seed + 2))
    result = {}
    for name, candidate in (("ours", copy.deepcopy(model)), ("baseline", torch_baseline(model))):
        optimizer = torch.optim.Adam(candidate.parameters(), lr=args.lr)
        step = make_step(candidate, optimizer)
        wall, cpu = median_seconds(lambda: step(x, y), repeats)  # noqa: B023 (called here)
        rnn = candidate.rnn
        result[name] = {
            "module": type(rnn).__module__ + "." + type(rnn).__name__,
            "backend": chosen_backend(rnn, x),
            "seconds_per_step": wall,
            "cpu_seconds_per_step": cpu,
        }
        print(
            f"  {name:8s} {result[name]['module']:22s} ({result[name]['backend']}): "
            f"{wall * 1000:.1f} ms/step, {cpu * 1000:.1f} ms of CPU (median of {repeats})"
        )
    return result


def train(model: Regressor, args, steps: int, history: dict, on_eval=None) -> dict:
    """Train for at most ``steps`` steps, evaluating on a fixed test set every --eval-every
    steps; stops early once the test MSE is under --stop-mse. Fills ``history`` as it goes and
    calls ``on_eval()`` after each evaluation (to save it: an interrupted run keeps its curves)."""
    generator = torch.Generator().manual_seed(args.seed)
    test_x, test_y = make_batch(
        args.T, args.test_size, torch.Generator().manual_seed(args.seed + 1)
    )
    optimizer, scheduler = optimizer_for(model, args)
    step = make_step(model, optimizer, scheduler)
    history.update(step=[], train_mse=[], test_mse=[])  # one entry per evaluation
    interval = []  # the training losses since the last evaluation
    start = time.perf_counter()
    for i in range(1, steps + 1):
        loss = step(*make_batch(args.T, args.batch, generator))
        interval.append(loss)
        if not math.isfinite(loss):
            print(f"  step {i}: the training loss is {loss}; stopping")
            break
        if i % args.eval_every == 0 or i == steps:
            test_mse = evaluate(model, test_x, test_y)
            history["step"].append(i)
            history["train_mse"].append(sum(interval) / len(interval))
            history["test_mse"].append(test_mse)
            interval = []
            history["seconds"] = time.perf_counter() - start
            history["steps_run"] = i
            history["final_test_mse"] = test_mse
            history["best_test_mse"] = min(history["test_mse"])
            print(
                f"  step {i:6d}  train MSE {history['train_mse'][-1]:.4f}  "
                f"test MSE {test_mse:.4f}  ({history['seconds']:.0f} s)",
                flush=True,
            )
            if on_eval is not None:
                on_eval()
            if args.stop_mse is not None and test_mse < args.stop_mse:
                break
    history["steps_run"] = i
    return history


def plot(models: dict, T: int, batch: int, path: Path) -> None:
    """Train MSE (the mean over each evaluation interval) and test MSE per model, log scale,
    with the always-answer-1 baseline. ``models``: kind -> the entry a run records."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    colours = {"indrnn": "tab:blue", "lstm": "tab:orange"}
    for kind, entry in models.items():
        history, label = entry["history"], entry["label"]
        ax.plot(
            history["step"], history["train_mse"], color=colours[kind], alpha=0.4,
            label=f"{label} train",
        )  # fmt: skip
        ax.plot(history["step"], history["test_mse"], color=colours[kind], label=f"{label} test")
    ax.axhline(BASELINE_MSE, color="grey", linestyle="--", label="always 1 (0.167)")
    ax.set_yscale("log")
    ax.set_xlabel(f"training step (batch of {batch})")
    ax.set_ylabel("MSE")
    ax.set_title(f"Adding problem, T={T}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_saved(paths: list[Path], out: Path) -> Path:
    """One plot of the runs saved in ``paths`` (JSON files this script wrote, same T), as
    ``adding_T{T}.png`` in ``out``: runs of each model made apart, shown together."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    shapes = {(r["T"], r["batch"]) for r in records}
    if len(shapes) != 1:
        raise SystemExit(f"--plot: the runs differ in (T, batch): {sorted(shapes)}")
    (T, batch), models = shapes.pop(), {}
    for path, record in zip(paths, records):
        for kind, entry in record["models"].items():
            if kind in models:
                raise SystemExit(f"--plot: {path} holds a second {kind} run")
            models[kind] = entry
    path = out / f"adding_T{T}.png"
    plot(models, T, batch, path)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=1000, help="sequence length (default 1000)")
    parser.add_argument("--model", choices=("indrnn", "lstm", "both"), default="indrnn")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2, help="IndRNN layers (LSTM: 1)")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lr-decay-steps", type=int, default=20000, help="lr / 10 every N")
    parser.add_argument("--steps", type=int, default=20000, help="at most this many steps")
    parser.add_argument(
        "--stop-mse",
        type=float,
        default=0.01,
        help="stop once the test MSE is under this (default 0.01; a negative value never stops)",
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument(
        "--time-steps",
        type=int,
        default=5,
        help="training steps timed per module and baseline (0: no timing)",
    )
    parser.add_argument("--backend", default=None, help="rnnkernels backend (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG and JSON")
    parser.add_argument(
        "--plot", type=Path, nargs="+", default=None, metavar="JSON",
        help="train nothing: plot these saved runs (e.g. an indrnn and an lstm run) together",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("T", "hidden", "layers", "batch", "steps", "eval_every", "test_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.T < 2:
        parser.error(f"--T must be at least 2 (one marker in each half), got {args.T}")
    if args.stop_mse is not None and args.stop_mse < 0:
        args.stop_mse = None
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot:
        print(f"wrote {plot_saved(args.plot, args.out)}")
        return {}
    kinds = ("indrnn", "lstm") if args.model == "both" else (args.model,)
    record = {
        **machine_record(),
        "config": {k: str(v) for k, v in vars(args).items()},
        "T": args.T,
        "batch": args.batch,
        "baseline_mse": BASELINE_MSE,
        "models": {},
    }
    stem = f"adding_T{args.T}" + ("" if args.model == "both" else f"_{args.model}")

    def save():
        plot(record["models"], args.T, args.batch, args.out / f"{stem}.png")
        write_json(args.out / f"{stem}.json", record)

    budget = args.steps
    for kind in kinds:
        torch.manual_seed(args.seed)
        model = build_model(kind, args.T, args.hidden, args.layers, args.backend)
        shape = f"{args.layers}x{args.hidden}" if kind == "indrnn" else f"1x{args.hidden}"
        entry = record["models"][kind] = {
            "label": f"{'IndRNN' if kind == 'indrnn' else 'LSTM'} ({shape})"
        }
        if args.time_steps:
            print(f"{kind}: timing {args.time_steps} training steps at T={args.T} B={args.batch}")
            entry["timing"] = time_steps(model, args, args.time_steps)
        print(f"{kind}: training at most {budget} steps")
        entry["history"] = history = {}
        train(model, args, budget, history, on_eval=save)
        # the same budget for the next model: as many steps as this one ran
        budget = history["steps_run"]
        print(
            f"{kind}: test MSE {history['final_test_mse']:.4f} after {history['steps_run']} "
            f"steps ({history['seconds']:.0f} s); always answering 1 scores {BASELINE_MSE:.3f}"
        )
    save()
    print(f"wrote {args.out / stem}.png and .json")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
