"""Exports a model holding rnnkernels' LSTM, GRU and IndRNN with torch.export and compiles it with
AOTInductor into one package, which main.cpp runs from C++ without Python.

    python examples/aoti/export_model.py OUT_DIR

writes OUT_DIR/model.pt2 (the AOTInductor package: code and weights), OUT_DIR/inputs.pt (an input
of another batch size and length than the one exported with: both are dynamic) and
OUT_DIR/expected.pt (the eager model's outputs for it), each a tuple saved with torch.save.

The model runs on the cpp backend (``auto`` picks it on CPU when the extension is built, or name
it: ``backend="cpp"``): its exported graph then calls the C++ ops
``torch.ops.rnnkernels_cpp.<cell>_fwd`` (torch >= 2.7), which the library rnnkernels_ops
registers in any process that loads it. Compiling took 20 s on two cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import rnnkernels


class Tagger(nn.Module):
    """A sequence tagger: a 2-layer bidirectional LSTM, a GRU, an IndRNN and a linear head."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.encoder = nn.LSTM(features, hidden, 2, batch_first=True, bidirectional=True)
        self.decoder = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.refine = rnnkernels.IndRNN(hidden, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, features] -> (scores [B, T, classes], the GRU's final state [1, B, hidden])."""
        y, _ = self.encoder(x)
        y, h = self.decoder(y)
        y, _ = self.refine(y)
        return self.head(y), h


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return rnnkernels.convert(Tagger()).eval()  # nn.LSTM / nn.GRU -> rnnkernels' modules


def export(model: nn.Module) -> torch.export.ExportedProgram:
    """Batch size and length dynamic: one program serves every shape within the bounds."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    time = torch.export.Dim("time", min=1, max=10_000)
    example = (torch.randn(2, 5, 8),)
    return torch.export.export(model, example, dynamic_shapes=({0: batch, 1: time},))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = build_model()
    program = export(model)
    torch._inductor.aoti_compile_and_package(program, package_path=str(out / "model.pt2"))
    inputs = (torch.randn(3, 9, 8),)
    with torch.no_grad():
        expected = model(*inputs)
    torch.save(inputs, out / "inputs.pt")
    torch.save(expected, out / "expected.pt")
    print(f"wrote {out / 'model.pt2'}, {out / 'inputs.pt'}, {out / 'expected.pt'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(Path(sys.argv[1]))
