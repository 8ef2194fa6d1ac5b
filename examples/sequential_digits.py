"""Sequential digits: classify images read one pixel per step (Li et al., CVPR 2018, "Independently
Recurrent Neural Network (IndRNN)", sec. 4.2, sequential MNIST), with ``rnnkernels.IndRNN``
(relu, batch norm after every layer) and ``rnnkernels.LSTM``.

By default the data is scikit-learn's bundled 8x8 digits (1797 images, no download): T=64 steps
of one input. ``--permute`` reads the pixels in a fixed random order (the paper's permuted
task). ``--mnist DIR`` reads MNIST from the standard IDX files in DIR (train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each gzipped or not):
T=784, the paper's benchmark.

    .venv/bin/python examples/sequential_digits.py --out examples/results
    .venv/bin/python examples/sequential_digits.py --permute --out examples/results

prints progress, and writes to --out ``{digits,mnist}[_permuted].png`` (training loss and test
accuracy per epoch) and ``.json`` (the results, the time per epoch of each module and of its torch
baseline, the machine and its load).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import math
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
from example_utils import (
    EagerIndRNN,
    chosen_backend,
    init_forget_bias_,
    init_recurrent_,
    machine_record,
    project_recurrent_,
    recurrent_bound,
    torch_baseline,
    write_json,
)
from torch import Tensor, nn

import rnnkernels

# IDX element types: the third byte of the magic number -> numpy's big-endian dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not, as a numpy array of its shape."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file: expected a magic number 00 00 <type> <dims> with type one "
            f"of {', '.join(f'{t:#04x}' for t in IDX_TYPES)}, got {raw[:4].hex(' ')}"
        )
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: the header of {ndim} dimensions is cut short")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: the header's shape {shape} needs {count * dtype.itemsize} bytes of data, "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, count, header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"--mnist {directory}: found neither {name} nor {name}.gz there")


def load_mnist(directory: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST from its four IDX files: train and test images as [N, 784] in [0, 1], labels."""
    arrays = []
    for images_name, labels_name in MNIST_FILES.values():
        images, labels = (
            read_idx(_find(directory, images_name)),
            read_idx(_find(directory, labels_name)),
        )
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"--mnist {directory}: expected images [N, rows, columns] and N labels, got "
                f"images {images.shape} and labels {labels.shape}"
            )
        arrays += [
            torch.from_numpy(images.reshape(len(images), -1) / 255.0).float(),
            torch.from_numpy(labels.astype(np.int64)),
        ]
    return tuple(arrays)


def load_digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8x8 digits, [N, 64] in [0, 1], split 80/20 stratified by class."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise SystemExit(
            "sequential_digits.py needs scikit-learn for the digits: "
            "pip install -e '.[examples]' (or pass --mnist DIR)"
        ) from error
    data = sklearn_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data / 16.0, data.target, test_size=0.2, stratify=data.target, random_state=seed
    )
    return (
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y_test),
    )


class IndRNNClassifier(nn.Module):
    """The paper's IndRNN for sequential MNIST: relu IndRNN layers, ``|u| <= 2^(1/T)``, each
    followed by batch norm over its hidden features (statistics over every time step and
    sequence), read at the last step by a linear layer."""

    def __init__(self, T: int, hidden: int, layers: int, classes: int, backend: str | None):
        super().__init__()
        self.rnns = nn.ModuleList()
        for k in range(layers):
            rnn = rnnkernels.IndRNN(
                1 if k == 0 else hidden,
                hidden,
                nonlinearity="relu",
                recurrent_max_abs=recurrent_bound(T),
                backend=backend,
            )
            init_recurrent_(rnn.weight_hh_l0, T, last_layer=k == layers - 1)
            self.rnns.append(rnn)
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        for rnn, norm in zip(self.rnns, self.norms):
            x, _ = rnn(x)
            x = norm(x.flatten(0, 1)).view_as(x)
        return self.head(x[-1])


class LSTMClassifier(nn.Module):
    """One LSTM layer (the authors' baseline, forget-gate bias 1) read at the last step."""

    def __init__(self, hidden: int, classes: int, backend: str | None):
        super().__init__()
        self.rnn = rnnkernels.LSTM(1, hidden, backend=backend)
        init_forget_bias_(self.rnn, 1.0)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.rnn(x)
        return self.head(output[-1])


def as_sequences(images: Tensor, order: Tensor | None) -> Tensor:
    """[N, pixels] -> time-major [T, N, 1], pixels in ``order`` when given."""
    if order is not None:
        images = images[:, order]
    return images.t().unsqueeze(-1).contiguous()


def train_epoch(model, optimizer, x: Tensor, y: Tensor, batch: int, generator) -> list[float]:
    """One pass over the training set in a random order; returns each batch's loss."""
    model.train()
    losses = []
    for index in torch.randperm(y.numel(), generator=generator).split(batch):
        loss = nn.functional.cross_entropy(model(x[:, index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        project_recurrent_(model)
        losses.append(loss.item())
    return losses


def accuracy(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(
            (model(x[:, i : i + chunk]).argmax(-1) == y[i : i + chunk]).sum().item()
            for i in range(0, y.numel(), chunk)
        )
    return right / y.numel()


def build_model(kind: str, T: int, args) -> nn.Module:
    if kind == "indrnn":
        return IndRNNClassifier(T, args.hidden, args.layers, 10, args.backend)
    if kind == "lstm":
        return LSTMClassifier(args.hidden, 10, args.backend)
    raise ValueError(f"model kind must be 'indrnn' or 'lstm', got {kind!r}")


def time_epochs(model: nn.Module, data, args) -> dict:
    """Seconds per training epoch of ``model`` and of its torch twin (``nn.LSTM``, or the eager
    IndRNN loop), each on its own copy from the same initial weights, epoch by epoch in turn
    (--timing-epochs of each, median) so that both see the same load; one untimed batch first."""
    x_train, y_train = data[0], data[1]
    runs = {}
    for name, twin in (("ours", copy.deepcopy(model)), ("baseline", torch_baseline(model))):
        optimizer = torch.optim.Adam(twin.parameters(), lr=args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        first = slice(0, args.batch)
        train_epoch(twin, optimizer, x_train[:, first], y_train[first], args.batch, generator)
        runs[name] = (twin, optimizer, generator, [])
    for _ in range(args.timing_epochs):
        for twin, optimizer, generator, times in runs.values():
            wall, cpu = time.perf_counter(), time.process_time()
            train_epoch(twin, optimizer, x_train, y_train, args.batch, generator)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: {
            "seconds_per_epoch": statistics.median(wall for wall, _ in times),
            "cpu_seconds_per_epoch": statistics.median(cpu for _, cpu in times),
            **describe(twin, x_train, args.batch),
        }
        for name, (twin, _, _, times) in runs.items()
    }


def describe(model: nn.Module, x: Tensor, batch: int) -> dict:
    """``model``'s first recurrent module and the backend it runs for a training batch."""
    kinds = (EagerIndRNN, nn.LSTM, rnnkernels.LSTM, rnnkernels.IndRNN)
    first = next(m for m in model.modules() if isinstance(m, kinds))
    return {
        "module": type(first).__module__ + "." + type(first).__name__,
        "backend": chosen_backend(first, x[:, :batch]),
    }


def run(kind: str, data, T: int, args) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(kind, T, args)
    x_train, y_train, x_test, y_test = data
    entry = {
        "parameters": sum(p.numel() for p in model.parameters()),
        **describe(model, x_train, args.batch),
    }
    if args.timing_epochs:
        entry["timing"] = timing = time_epochs(model, data, args)
        for name, row in timing.items():
            print(
                f"{kind}: {name:8s} {row['module']} ({row['backend']}): "
                f"{row['seconds_per_epoch']:.2f} s per epoch, {row['cpu_seconds_per_epoch']:.2f} s "
                f"of CPU (median of {args.timing_epochs})"
            )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    history = entry["history"] = {
        "epoch": [],
        "train_loss": [],
        "test_accuracy": [],
        "seconds": [],
        "batch_losses": [],
    }
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        losses = train_epoch(model, optimizer, x_train, y_train, args.batch, generator)
        seconds = time.perf_counter() - start
        test_accuracy = accuracy(model, x_test, y_test)
        for name, value in (
            ("epoch", epoch),
            ("train_loss", statistics.fmean(losses)),
            ("test_accuracy", test_accuracy),
            ("seconds", seconds),
        ):
            history[name].append(value)
        history["batch_losses"] += losses
        print(
            f"  {kind} epoch {epoch:3d}  train loss {history['train_loss'][-1]:.4f}  "
            f"test accuracy {test_accuracy:.4f}  ({seconds:.2f} s)",
            flush=True,
        )
    entry["final_test_accuracy"] = history["test_accuracy"][-1]
    entry["best_test_accuracy"] = max(history["test_accuracy"])
    entry["seconds_per_epoch"] = statistics.median(history["seconds"])
    return entry


def plot(models: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for kind, entry in models.items():
        history = entry["history"]
        label = "IndRNN" if kind == "indrnn" else "LSTM"
        loss_ax.plot(history["epoch"], history["train_loss"], label=label)
        acc_ax.plot(history["epoch"], history["test_accuracy"], label=label)
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1))
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("indrnn", "lstm", "both"), default="both")
    parser.add_argument("--permute", action="store_true", help="a fixed random pixel order")
    parser.add_argument("--mnist", type=Path, default=None, help="directory of MNIST's IDX files")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6, help="IndRNN layers (LSTM: 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--limit", type=int, default=None, help="train on the first N sequences only (quick runs)"
    )
    parser.add_argument(
        "--timing-epochs", type=int, default=2,
        help="epochs timed of each module and its torch twin, in turn (0: no timing)",
    )  # fmt: skip
    parser.add_argument("--backend", default=None, help="rnnkernels backend (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG and JSON")
    args = parser.parse_args(argv)
    for name in ("hidden", "layers", "batch", "epochs", "limit"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.timing_epochs < 0:
        parser.error(f"--timing-epochs must be 0 or more, got {args.timing_epochs}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = load_mnist(args.mnist) if args.mnist else load_digits(args.seed)
    if args.limit is not None:
        images = (images[0][: args.limit], images[1][: args.limit], *images[2:])
    T = images[0].shape[1]
    # the paper's permuted task: one fixed order of the pixels, the same for every image
    order = (
        torch.randperm(T, generator=torch.Generator().manual_seed(1234)) if args.permute else None
    )
    data = (as_sequences(images[0], order), images[1], as_sequences(images[2], order), images[3])
    name = ("mnist" if args.mnist else "digits") + ("_permuted" if args.permute else "")
    print(f"{name}: {images[1].numel()} training and {images[3].numel()} test sequences, T={T}")
    record = {
        **machine_record(),
        "config": {k: str(v) for k, v in vars(args).items()},
        "dataset": name,
        "T": T,
        "models": {},
    }
    kinds = ("indrnn", "lstm") if args.model == "both" else (args.model,)
    for kind in kinds:
        entry = record["models"][kind] = run(kind, data, T, args)
        print(
            f"{kind}: test accuracy {entry['final_test_accuracy']:.4f} after {args.epochs} "
            f"epochs, {entry['seconds_per_epoch']:.2f} s per epoch ({entry['backend']})"
        )
    title = f"Sequential {'MNIST' if args.mnist else '8x8 digits'}, T={T}" + (
        ", permuted" if args.permute else ""
    )
    plot(record["models"], title, args.out / f"{name}.png")
    write_json(args.out / f"{name}.json", record)
    print(f"wrote {args.out / name}.png and .json")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
