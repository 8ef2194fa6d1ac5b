"""Smoke tests of the IndRNN paper examples (examples/adding_problem.py,
examples/sequential_digits.py): each script's main() on a tiny configuration for a few dozen
steps, asserting that the training loss falls and that the results and plot are written; the
data, the eager IndRNN baseline and the MNIST IDX reader on their own. Not timed: the full runs'
numbers are in the README."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import statistics
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkernels

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))  # the scripts import example_utils from their own folder

import adding_problem  # noqa: E402
import example_utils  # noqa: E402
import sequential_digits  # noqa: E402

pytest.importorskip("matplotlib", reason="the examples' plots need matplotlib (the bench extra)")
needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="scikit-learn is not installed (the examples extra: pip install -e '.[examples]')",
)


def test_adding_problem_batch():
    x, y = adding_problem.make_batch(10, 64, torch.Generator().manual_seed(0))
    assert x.shape == (10, 64, 2) and y.shape == (64,)
    markers = x[..., 1]
    assert torch.equal(markers.sum(0), torch.full((64,), 2.0))
    assert torch.equal(markers[:5].sum(0), torch.ones(64))  # one marker in each half
    assert torch.allclose(y, (x[..., 0] * markers).sum(0))


def test_adding_problem_loss_falls(tmp_path):
    record = adding_problem.main(
        "--T 10 --hidden 16 --steps 40 --eval-every 10 --lr 1e-2 --test-size 100 "
        f"--time-steps 1 --stop-mse -1 --model both --out {tmp_path}".split()
    )
    assert set(record["models"]) == {"indrnn", "lstm"}
    for kind, entry in record["models"].items():
        history = entry["history"]
        assert history["steps_run"] == 40, kind  # the LSTM gets the IndRNN's budget
        assert history["train_mse"][-1] < 0.8 * history["train_mse"][0], (kind, history)
        assert math.isfinite(history["final_test_mse"]), kind
        timing = entry["timing"]
        for row in timing.values():
            assert row["seconds_per_step"] > 0 and row["cpu_seconds_per_step"] > 0, row
    baselines = {kind: e["timing"]["baseline"]["backend"] for kind, e in record["models"].items()}
    assert baselines == {"indrnn": "eager loop", "lstm": "torch.nn"}
    assert json.loads((tmp_path / "adding_T10.json").read_text())["models"].keys() == {
        "indrnn",
        "lstm",
    }
    assert (tmp_path / "adding_T10.png").stat().st_size > 0


def test_eager_indrnn_matches_module():
    """The eager baseline computes what the module does, the clamp of u included."""
    torch.manual_seed(0)
    module = rnnkernels.IndRNN(3, 8, num_layers=2, recurrent_max_abs=0.9, backend="reference")
    with torch.no_grad():
        module.weight_hh_l0.uniform_(-1.5, 1.5)  # some beyond the bound: clamped in both
    x = torch.randn(7, 4, 3)
    expected, expected_h = module(x)
    got, got_h = example_utils.EagerIndRNN(module)(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_h, expected_h)
    example_utils.project_recurrent_(module)
    assert module.weight_hh_l0.abs().max().item() <= 0.9


def test_recurrent_init():
    u = torch.empty(1000)
    example_utils.init_recurrent_(u, 100, last_layer=False)
    assert 0 <= u.min() and u.max() <= 2 ** (1 / 100)
    example_utils.init_recurrent_(u, 100, last_layer=True)
    assert 2 ** (-1 / 100) <= u.min() and u.max() <= 2 ** (1 / 100)


@needs_sklearn
def test_sequential_digits_loss_falls(tmp_path):
    record = sequential_digits.main(
        f"--hidden 16 --layers 2 --epochs 5 --batch 32 --limit 256 --lr 3e-2 --permute "
        f"--timing-epochs 1 --out {tmp_path}".split()
    )
    assert record["dataset"] == "digits_permuted" and record["T"] == 64
    for kind, entry in record["models"].items():
        losses = entry["history"]["batch_losses"]  # 8 batches an epoch
        assert len(losses) == 40, kind
        assert statistics.fmean(losses[-8:]) < 0.95 * statistics.fmean(losses[:8]), (kind, losses)
        assert 0 <= entry["final_test_accuracy"] <= 1
        assert entry["timing"]["ours"]["seconds_per_epoch"] > 0
        assert entry["timing"]["baseline"]["seconds_per_epoch"] > 0
    assert record["models"]["indrnn"]["timing"]["baseline"]["backend"] == "eager loop"
    assert record["models"]["lstm"]["timing"]["baseline"]["backend"] == "torch.nn"
    assert (tmp_path / "digits_permuted.png").stat().st_size > 0


def write_idx(path: Path, array: np.ndarray, gzipped: bool = False) -> None:
    """An IDX file as the format defines it: 0, 0, the type byte, the number of dimensions, each
    dimension as a big-endian int32, then the data big-endian."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gzipped else raw)


def test_read_idx(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "images", images)
    np.testing.assert_array_equal(sequential_digits.read_idx(tmp_path / "images"), images)
    values = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "values.gz", values, gzipped=True)
    np.testing.assert_array_equal(sequential_digits.read_idx(tmp_path / "values.gz"), values)

    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        sequential_digits.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "images").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"shape \(3, 4, 5\) needs 60 bytes"):
        sequential_digits.read_idx(tmp_path / "short")


def test_mnist_option(tmp_path):
    """--mnist reads the four standard files (here gzipped and not) and trains on them: a fake
    MNIST of 4x4 images, so T=16."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images, gzipped=True)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    x_train, y_train, x_test, y_test = sequential_digits.load_mnist(tmp_path)
    assert x_train.shape == (40, 16) and x_test.shape == (10, 16) and 0 <= x_train.min()
    assert y_train.dtype == torch.int64 and y_test.tolist() == list(range(10))
    record = sequential_digits.main(
        f"--mnist {tmp_path} --hidden 8 --layers 1 --epochs 1 --batch 20 --timing-epochs 0 "
        f"--out {tmp_path / 'out'}".split()
    )
    assert record["dataset"] == "mnist" and record["T"] == 16
    assert (tmp_path / "out" / "mnist.json").is_file()
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        sequential_digits.load_mnist(tmp_path)
