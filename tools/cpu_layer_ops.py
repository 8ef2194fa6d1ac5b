"""Median times of the `cpp` LSTM, GRU and IndRNN layer ops alone (no module layer, no input
GEMM), forward / backward in ms, for A/B runs of C++ kernel changes: run it with two builds of the
extension, alternating, on a quiet machine.

    python tools/cpu_layer_ops.py [THREADS]
"""

from __future__ import annotations

import sys
import time

import torch

from rnnkernels.backends import kernels

lstm = gru = indrnn = kernels("cpp", "lstm")  # torch.ops.rnnkernels_cpp: every cell's ops

SHAPES = [
    (100, 32, 256, 15),
    (200, 8, 64, 40),
    (512, 16, 128, 10),
    (20, 64, 512, 10),
    (784, 32, 128, 15),
]  # T, B, H, repetitions; the last is IndRNN's benchmark shape


def median_ms(f, reps: int) -> float:
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def time_shape(T: int, B: int, H: int, reps: int) -> str:
    g = torch.Generator().manual_seed(0)
    gx, w = torch.randn(T, B, 4 * H, generator=g), torch.randn(4 * H, H, generator=g) / H**0.5
    h0, c0 = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    y, hT, cT, gates, cells = lstm.lstm_fwd(gx, w, None, h0, c0, None, False)
    lstm_ms = (
        median_ms(lambda: lstm.lstm_fwd(gx, w, None, h0, c0, None, False), reps),
        median_ms(lambda: lstm.lstm_bwd(y, hT, cT, w, None, h0, c0, None, False, y, gates, cells),
                  reps),
    )  # fmt: skip
    gx3, w3 = gx[..., : 3 * H].contiguous(), w[: 3 * H].contiguous()
    yg, hg, gg, hn = gru.gru_fwd(gx3, w3, None, h0, None, False)
    gru_ms = (
        median_ms(lambda: gru.gru_fwd(gx3, w3, None, h0, None, False), reps),
        median_ms(lambda: gru.gru_bwd(yg, hg, w3, None, h0, None, False, yg, gg, hn), reps),
    )
    u = torch.rand(H, generator=g) * 0.5
    yi, hi = indrnn.indrnn_fwd(gx3[..., :H].contiguous(), u, h0, None, False, "relu")
    indrnn_ms = (
        median_ms(lambda: indrnn.indrnn_fwd(yi, u, h0, None, False, "relu"), reps),
        median_ms(lambda: indrnn.indrnn_bwd(yi, hi, u, h0, None, False, "relu", yi), reps),
    )
    texts = [f"{fwd:.2f}/{bwd:.2f}" for fwd, bwd in (lstm_ms, gru_ms, indrnn_ms)]
    return f"T{T} B{B} H{H}: LSTM {texts[0]} GRU {texts[1]} IndRNN {texts[2]}"


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    rows = [time_shape(*shape) for shape in SHAPES]
    print(f"{torch.get_num_threads()} threads | " + " | ".join(rows))


if __name__ == "__main__":
    main()
