"""The one table of benchmark shapes (``PRESETS``), shared by ``python -m rnnkernels.bench`` and the
pytest-benchmark suite in ``benchmarks/``, and the FLOP count of a shape."""

from __future__ import annotations

from dataclasses import dataclass

CELLS = ("lstm", "gru", "indrnn", "rnn")
MODES = ("fwd", "fwdbwd")
GATES = {"lstm": 4, "gru": 3, "indrnn": 1, "rnn": 1}


@dataclass(frozen=True)
class Shape:
    """One benchmark row: cell and sizes (I defaults to H), plus the default repetitions."""

    cell: str
    T: int
    B: int
    H: int
    I: int = 0  # 0: same as H
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


def parse_shape(text: str) -> Shape:
    """A shape as its row reads, cell first: ``lstm T=100 B=32 H=256`` (T, B and H required;
    optionally I=, L= layers, proj=, reps=, and the words bi and packed). ValueError otherwise."""
    cell, *words = text.replace(",", " ").split() or [""]
    if cell not in CELLS:
        raise ValueError(f"a shape starts with its cell ({', '.join(CELLS)}), got {text!r}")
    fields = {"T": "T", "B": "B", "H": "H", "I": "I", "L": "layers", "proj": "proj", "reps": "reps"}
    given: dict = {}
    for word in words:
        name, _, value = word.partition("=")
        if word in ("bi", "packed"):
            given["bidirectional" if word == "bi" else word] = True
        elif name in fields and value.isdigit():
            given[fields[name]] = int(value)
        else:
            raise ValueError(f"unknown part {word!r} of the shape {text!r}")
    if not {"T", "B", "H"} <= set(given):
        raise ValueError(f"a shape needs T=, B= and H=, got {text!r}")
    if given.get("I") == given["H"]:
        del given["I"]  # I=0 means I=H: the same shape as a preset's
    return Shape(cell, **given)


@dataclass(frozen=True)
class Preset:
    """A named list of shapes and the device it is meant for (None: either)."""

    about: str
    device: str | None
    shapes: tuple[Shape, ...]


def _both(T: int, B: int, H: int, **kw) -> tuple[Shape, Shape]:
    return Shape("lstm", T, B, H, **kw), Shape("gru", T, B, H, **kw)


# FlashRNN (Pöppel et al. 2024): B=16, T=1024, H=768; batch sweep 2..256; sequence sweep 256..2048.
_FLASHRNN = (
    *_both(1024, 16, 768),
    *(s for b in (2, 4, 8, 32, 64, 128, 256) for s in _both(1024, b, 768)),
    *(s for t in (256, 512, 2048) for s in _both(t, 16, 768, reps=5 if t < 2048 else 3)),
)
# torch's own RNN benchmark (benchmarks/fastrnns): seq 100, batch 64, input = hidden = 512.
_TORCH_RNN = _both(100, 64, 512, reps=20)
# DeepBench-style training shapes: T=25, (H, B) from (512, 16) to (2048, 128).
_DEEPBENCH = tuple(
    s for h, b in ((512, 16), (1024, 32), (2048, 64), (2048, 128)) for s in _both(25, b, h, reps=20)
)
# Small hidden size, long sequences (speech / sensor models): T=3000, B=6.
_SMALL_HIDDEN = tuple(s for h in (40, 64, 128) for s in _both(3000, 6, h, reps=3))
# IndRNN paper: sequential MNIST (T=784, B=32, H=128) and the adding problem (T=5000, B=50, I=2).
_INDRNN = (Shape("indrnn", 784, 32, 128, reps=10), Shape("indrnn", 5000, 50, 128, I=2, reps=3))
# The Elman RNN (nn.RNN, tanh) on CPU: issue 22's speed goals.
_RNN = (
    Shape("rnn", 100, 32, 256, reps=10),
    Shape("rnn", 200, 8, 64, reps=15),
    Shape("rnn", 100, 1, 256, reps=20),
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "one tiny shape per cell (smoke test)",
        None,
        (
            Shape("lstm", 5, 2, 8, reps=1),
            Shape("gru", 5, 2, 8, reps=1),
            Shape("indrnn", 5, 2, 8, reps=1),
            Shape("rnn", 5, 2, 8, reps=1),
        ),
    ),
    "default": Preset(
        "CPU default: a few minutes on 2 cores",
        "cpu",
        (
            Shape("lstm", 100, 32, 256, reps=10),
            Shape("lstm", 200, 8, 64, reps=15),
            Shape("gru", 100, 32, 256, reps=10),
            Shape("gru", 200, 8, 64, reps=15),
            Shape("indrnn", 784, 32, 128, reps=3),  # torch's eager-loop backward is slow
            *_RNN,
        ),
    ),
    "cpu-grid": Preset(
        "the full CPU grid",
        "cpu",
        (
            Shape("lstm", 100, 32, 256),
            Shape("lstm", 512, 16, 128),
            Shape("lstm", 50, 64, 512),
            Shape("lstm", 100, 4, 1024),
            Shape("lstm", 200, 8, 64, reps=10),
            Shape("lstm", 100, 32, 256, layers=2, bidirectional=True),
            Shape("lstm", 100, 32, 256, proj=128),
            Shape("lstm", 100, 32, 256, packed=True),
            Shape("gru", 100, 32, 256),
            Shape("gru", 512, 16, 128),
            Shape("gru", 50, 64, 512),
            Shape("gru", 200, 8, 64, reps=10),
            Shape("gru", 100, 32, 256, packed=True),
            Shape("indrnn", 784, 32, 128, reps=3),
        ),
    ),
    "small-batch": Preset(
        "CPU small batches (streaming inference): B=1..5, fewer rows than a register block",
        "cpu",
        (*_both(100, 1, 256, reps=20), *_both(100, 1, 1024, reps=5), *_both(100, 5, 512, reps=10)),
    ),
    "gpu": Preset(
        "GPU default: one shape from each GPU family",
        "cuda",
        (
            *_both(1024, 16, 768, reps=5),
            *_TORCH_RNN,
            *_both(25, 32, 1024, reps=20),
            *_both(3000, 6, 64, reps=3),
            *_INDRNN,
        ),
    ),
    "flashrnn": Preset("FlashRNN: B=16 T=1024 H=768, batch and sequence sweeps", "cuda", _FLASHRNN),
    "torch-rnn": Preset("torch's RNN benchmark: T=100 B=64 I=H=512", "cuda", _TORCH_RNN),
    "deepbench": Preset("DeepBench-style: T=25, B=16..128, H=512..2048", "cuda", _DEEPBENCH),
    "small-hidden": Preset("small hidden: T=3000 B=6 H=40..128", "cuda", _SMALL_HIDDEN),
    "indrnn": Preset("IndRNN: T=784 B=32 H=128; T=5000 B=50", "cuda", _INDRNN),
    "rnn": Preset("RNN (tanh): T=100 B=32 H=256; T=200 B=8 H=64; T=100 B=1 H=256", "cpu", _RNN),
    "gpu-goals": Preset(
        "the GPU goals: FlashRNN's, torch's, small hidden, IndRNN",
        "cuda",
        (
            *_both(1024, 16, 768, reps=5),
            *_TORCH_RNN,
            *_both(1000, 16, 128, reps=5),
            _INDRNN[0],
        ),
    ),
}
PRESETS["gpu-all"] = Preset(
    "every GPU shape above",
    "cuda",
    tuple(
        dict.fromkeys(
            s
            for name in ("flashrnn", "torch-rnn", "deepbench", "small-hidden", "indrnn")
            for s in PRESETS[name].shapes
        )
    ),
)

DEFAULT_PRESET = {"cpu": "default", "cuda": "gpu"}
# What --tune measures by default: the CPU grid (forward and forward+backward), the GPU default.
DEFAULT_TUNE_PRESETS = {"cpu": ("default", "small-batch", "cpu-grid"), "cuda": ("gpu",)}
# Names the presets had before they were named by workload; accepted, with a warning, until the
# next release.
RENAMED_PRESETS = {"issue3": "cpu-grid", "issue6": "gpu-goals"}


def cell_flops(shape: Shape, mode: str) -> int:
    """FLOPs of the recurrent cell's matrix products (pointwise gate math is not counted).

    With N = sum of sequence lengths (T*B unpadded), G gates (LSTM 4, GRU 3, IndRNN and RNN 1),
    hidden
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
