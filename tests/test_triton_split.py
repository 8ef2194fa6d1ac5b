"""The split of a batch tile's hidden tiles across programs (triton_common.split_programs): the
policy, and that the LSTM and GRU launchers pass it on (grid, SPLIT, cooperative launch, zeroed
arrival counters). The split itself runs only on a GPU (tests/test_triton_gpu.py): the
interpreter runs programs one after another, so a barrier across them would never open."""

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
    T, B, H = 3, 40, 64
    g = torch.Generator().manual_seed(0)
    gates = 4 if cell == "lstm" else 3
    gx, w_hh = torch.randn(T, B, gates * H, generator=g), torch.randn(gates * H, H, generator=g)
    h0 = torch.randn(B, H, generator=g)
    if cell == "lstm":
        y, hT, cT, saved_gates, cells = kernels.lstm_fwd(gx, w_hh, None, h0, h0, None, False)
        kernels.lstm_bwd(y, hT, cT, w_hh, None, h0, h0, None, False, y, saved_gates, cells)
    else:
        y, hT, saved_gates, hn = kernels.gru_fwd(gx, w_hh, None, h0, None, False)
        kernels.gru_bwd(y, hT, w_hh, None, h0, None, False, y, saved_gates, hn)
    for name, capture in captures.items():
        [(grid, args, kwargs)] = capture.launches
        assert grid == (3, 8), name
        assert kwargs["SPLIT"] == 8 and kwargs["launch_cooperative_grid"] is True, name
        counters = [a for a in args if torch.is_tensor(a) and a.dtype == torch.int32]
        assert len(counters) == 1 and torch.equal(counters[0], torch.zeros(3, dtype=torch.int32))
