"""The Triton LSTM and GRU kernels compile for sm_90 (H100/H200) with the installed Triton,
streaming and with the weights on chip, on a machine without a GPU (tools/triton_sm90.py, in a
fresh interpreter without TRITON_INTERPRET). This catches what the interpreter lets through:
tl.dot's shape and layout rules, and shared memory beyond what a block may have."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[1]
SHARED_LIMIT_KB = 227  # per block on sm_90


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"this Triton has no NVIDIA backend ({ptxas} is missing)")
    shapes = ["lstm:16:64:32:float16", "lstm:16:128:float32", "gru:16:64:float64"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "triton_sm90.py"), "--shapes", *shapes],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if "registers" in line]
    for shape in shapes:
        cell, B, H, *P, dtype = shape.split(":")
        name = f"{cell} B{B} H{H}{f' P{P[0]}' if P else ''} {dtype} "
        kernels = [line for line in lines if line.startswith(name)]
        modes = sorted(re.search(r"(streaming|on chip)", line)[1] for line in kernels)
        assert modes == ["on chip"] * 2 + ["streaming"] * 2, (shape, kernels)
    for line in lines:
        shared = int(re.search(r"(\d+) KB shared", line)[1])
        assert shared <= SHARED_LIMIT_KB, line
