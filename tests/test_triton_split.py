"""The split of a batch tile's hidden tiles across programs (triton_common.split_programs): the
policy, and that the LSTM and GRU launchers pass it on (grid, SPLIT, cooperative launch, zeroed
arrival counters); and when the launchers keep the weights on chip (triton_common.launch_split).
The split itself runs only on a GPU (tests/test_triton_gpu.py): the interpreter runs programs
one after another, so a barrier across them would never open."""

from types import SimpleNamespace

import pytest
import torch

from rnnkernels.testing import needs


@pytest.fixture(autouse=True)
def common():
    needs("triton", "lstm", device="cuda" if torch.cuda.is_available() else "cpu")
    from rnnkernels.ops import triton_common

    return triton_common


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda.get_device_properties of a 132-SM GPU; returns the CUDA device to ask about."""
    props = SimpleNamespace(multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    return torch.device("cuda", 0)


def test_no_split_off_the_gpu(common):
    assert common.split_programs(torch.device("cpu"), 1, 24, 1000) == 1


@pytest.mark.parametrize(
    "batch_programs,tiles,split",
    [(1, 24, 24), (4, 16, 16), (2, 100, 66), (132, 8, 1), (200, 10, 1), (1, 1, 1)],
)
def test_one_program_per_sm_at_most_and_no_more_than_the_tiles(
    common, fake_gpu, batch_programs, tiles, split
):
    assert common.split_programs(fake_gpu, batch_programs, tiles, 1000) == split


def test_no_split_when_the_arrival_counter_would_overflow(common, fake_gpu):
    assert common.split_programs(fake_gpu, 1, 24, (2**31 - 1) // 24) == 24
    assert common.split_programs(fake_gpu, 1, 24, (2**31 - 1) // 24 + 1) == 1


def test_max_split_caps_it(common, fake_gpu, monkeypatch):
    monkeypatch.setattr(common, "MAX_SPLIT", 1)
    assert common.split_programs(fake_gpu, 1, 24, 1000) == 1


def test_a_split_launch_is_cooperative(common):
    assert common.cooperative(1) == {}
    assert common.cooperative(8) == {"launch_cooperative_grid": True}


def run_launchers(cell, kernels, B, H, P=0):
    """The forward then the backward launcher of ``cell`` at T=3 on CPU tensors."""
    T = 3
    g = torch.Generator().manual_seed(0)
    gates, R = (4, P or H) if cell == "lstm" else (3, H)
    gx, w_hh = torch.randn(T, B, gates * H, generator=g), torch.randn(gates * H, R, generator=g)
    h0, c0 = torch.randn(B, R, generator=g), torch.randn(B, H, generator=g)
    w_hr = torch.randn(P, H, generator=g) if P else None
    if cell == "lstm":
        y, hT, cT, saved_gates, cells = kernels.lstm_fwd(gx, w_hh, w_hr, h0, c0, None, False)
        kernels.lstm_bwd(y, hT, cT, w_hh, w_hr, h0, c0, None, False, y, saved_gates, cells)
    else:
        y, hT, saved_gates, hn = kernels.gru_fwd(gx, w_hh, None, h0, None, False)
        kernels.gru_bwd(y, hT, w_hh, None, h0, None, False, y, saved_gates, hn)


class Capture:
    """Stands in for a @triton.jit kernel: records kernel[grid](*args, **kwargs)."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_launchers_pass_the_split_on(common, cell, monkeypatch):
    """B=40 (three batch tiles of 16) with the policy forced to 8 programs per batch tile: both
    kernels get the grid (3, 8), SPLIT=8, a cooperative launch and three zeroed counters."""
    if cell == "lstm":
        from rnnkernels.ops.lstm import triton as kernels

        names = ["_lstm_fwd_kernel", "_lstm_bwd_kernel"]
        monkeypatch.setattr(kernels, "MAX_BLOCK_B", 16)
    else:
        from rnnkernels.ops.gru import triton as kernels

        names = ["_gru_fwd_kernel", "_gru_bwd_kernel"]
    captures = {name: Capture() for name in names}
    for name, capture in captures.items():
        monkeypatch.setattr(kernels, name, capture)
    monkeypatch.setattr(common, "split_programs", lambda device, nb, tiles, phases: 8)
    run_launchers(cell, kernels, 40, 64)
    for name, capture in captures.items():
        [(grid, args, kwargs)] = capture.launches
        assert grid == (3, 8), name
        assert kwargs["SPLIT"] == 8 and kwargs["launch_cooperative_grid"] is True, name
        counters = [a for a in args if torch.is_tensor(a) and a.dtype == torch.int32]
        assert len(counters) == 1 and torch.equal(counters[0], torch.zeros(3, dtype=torch.int32))


@pytest.mark.parametrize(
    "cell,B,H,P,on,budget,expected",
    [
        ("lstm", 40, 64, 0, True, 2**20, (True, (3, 4), 64, 64)),  # 4 tiles of 16, 3 * 4 <= 132
        ("lstm", 40, 64, 32, True, 2**20, (True, (3, 4), 32, 64)),  # W_hh's K: P fwd, H bwd
        ("gru", 40, 64, 0, True, 2**20, (True, (3, 4), 64, 64)),
        ("lstm", 40, 64, 0, True, 4096, (True, (3, 4), 64, 64)),  # 4 slices of 64 x 16, fwd, bwd
        ("lstm", 40, 64, 0, True, 4095, (False,)),
        ("gru", 40, 64, 0, True, 3071, (False,)),  # 3 slices of 64 x 16
        ("lstm", 40, 64, 0, False, 2**20, (False,)),  # WEIGHTS_ON_CHIP off
        ("lstm", 40, 1024, 0, True, 2**40, (False,)),  # 64 tiles > 132 SMs // 3 batch tiles
    ],
)
def test_weights_on_chip_when_every_program_has_one_tile_and_its_slices_fit(
    common, monkeypatch, cell, B, H, P, on, budget, expected
):
    """On a 132-SM GPU (split_programs as there), with hidden tiles of 16 on chip and a budget
    of slice elements per program: the launchers choose STATIONARY, a program per tile and
    k-blocks that cover each dot's K (forward, backward), or else the streaming kernels with
    their own blocks."""
    if cell == "lstm":
        from rnnkernels.ops.lstm import triton as kernels
    else:
        from rnnkernels.ops.gru import triton as kernels
    names = [n for n in dir(kernels) if n.endswith("_kernel")]
    captures = {name: Capture() for name in names}
    for name, capture in captures.items():
        monkeypatch.setattr(kernels, name, capture)
    monkeypatch.setattr(kernels, "ON_CHIP_BLOCK_H", 16)
    if cell == "lstm":
        monkeypatch.setattr(kernels, "MAX_BLOCK_B", 16)  # the GPU's batch tiles
    monkeypatch.setattr(common, "WEIGHTS_ON_CHIP", on)
    monkeypatch.setattr(common, "ON_CHIP_ELEMENTS", dict.fromkeys(common.ON_CHIP_ELEMENTS, budget))
    monkeypatch.setattr(
        common, "split_programs", lambda device, nb, tiles, phases: max(1, min(tiles, 132 // nb))
    )
    run_launchers(cell, kernels, B, H, P)
    [(fwd_grid, _, fwd)] = captures[names[1]].launches  # sorted: _<cell>_bwd, _<cell>_fwd
    [(bwd_grid, _, bwd)] = captures[names[0]].launches
    assert (fwd["STATIONARY"], bwd["STATIONARY"]) == (expected[0], expected[0])
    if expected[0]:
        grid, fwd_k, bwd_k = expected[1:]
        assert fwd_grid == bwd_grid == grid and fwd["BLOCK_H"] == bwd["BLOCK_H"] == 16
        assert fwd["BLOCK_K"] == fwd_k and bwd["BLOCK_K"] == bwd_k
        if P:  # the W_hr dots: K is H forward, P backward
            assert fwd["BLOCK_KP"] == H and bwd["BLOCK_KP"] == P
    else:
        assert fwd["BLOCK_H"] == kernels.MAX_BLOCK_H or fwd["BLOCK_H"] >= H


def test_what_runs_the_dots_sets_the_budget(common):
    assert common.dot_units(torch.float16) == common.dot_units(torch.bfloat16) == "16-bit"
    with torch.backends.cudnn.flags(allow_tf32=True):  # fp32 dots in tf32, on tensor cores
        assert common.dot_units(torch.float32) == "tf32"
    with torch.backends.cudnn.flags(allow_tf32=False):
        assert common.dot_units(torch.float32) == "fma"
    assert common.dot_units(torch.float64) == "fma"


@pytest.mark.parametrize("capability,on", [((9, 0), True), ((8, 0), False), ((8, 9), False),
                                           ((10, 0), False)])  # fmt: skip
def test_weights_on_chip_only_on_the_gpu_the_budgets_were_measured_for(
    common, monkeypatch, capability, on
):
    """sm_90 (H100, H200) gets ON_CHIP_ELEMENTS, another GPU nothing (its shared memory may not
    hold the slices); CPU tensors, which only the interpreter runs, get ON_CHIP_ELEMENTS."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    budget = common.ON_CHIP_ELEMENTS["16-bit"]
    assert common.on_chip_budget(torch.device("cuda", 0), torch.float16) == (budget if on else 0)
    assert common.on_chip_budget(torch.device("cpu"), torch.float16) == budget


def test_weights_on_chip_from_the_environment():
    """RNNKERNELS_WEIGHTS_ON_CHIP=1 at import turns it on (a fresh interpreter)."""
    import os
    import subprocess
    import sys

    check = "from rnnkernels.ops import triton_common as c; assert c.WEIGHTS_ON_CHIP is True"
    env = dict(os.environ, RNNKERNELS_WEIGHTS_ON_CHIP="1")
    subprocess.run([sys.executable, "-c", check], env=env, check=True)
