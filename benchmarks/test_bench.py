"""Benchmarks of each provider (torch + every available backend) on one tiny shape per cell.

Plain ``pytest`` skips the timed tests (``--benchmark-skip`` in pyproject); run them with
``pytest benchmarks --benchmark-enable``. ``test_bench_main_smoke`` always runs: it checks that
``python -m rnnkernels.bench`` works end to end on the ``tiny`` preset.
"""

import json

import pytest
import torch

import rnnkernels
from rnnkernels import bench

PROVIDERS = ["torch", *rnnkernels.available_backends()]
TINY = {s.cell: s for s in bench.PRESETS["tiny"]}


@pytest.mark.parametrize("cell", sorted(TINY))
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider(benchmark, provider, mode, cell):
    shape = TINY[cell]
    backends = [] if provider == "torch" else [provider]
    modules, x = bench.build_case(shape, torch.float32, backends)
    call = bench.make_call(modules[provider], x, mode)
    try:
        call()
    except rnnkernels.BackendError as e:
        pytest.skip(f"{provider} cannot run {cell}: {e}")
    benchmark.group = f"{cell} {shape.label} {mode}"
    benchmark(call)


def test_bench_main_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--shapes", "tiny", "--reps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "threads", "gemm_gflops"} <= set(result["machine"])
    rows = result["rows"]
    expected = {
        (s.cell, s.label, m, p)
        for s in bench.PRESETS["tiny"]
        for m in bench.MODES
        for p in PROVIDERS
    }
    assert {(r["cell"], r["shape"], r["mode"], r["provider"]) for r in rows} == expected
    for r in rows:
        if r["note"] is None:  # skipped (BackendError) rows carry a note instead of times
            assert r["ms"] > 0 and len(r["times_ms"]) == 1 and r["gflops"] > 0
        if r["provider"] == "torch":
            assert r["ms"] is not None and r["speedup"] == pytest.approx(1.0)
    assert "speedup" in capsys.readouterr().out


def test_bench_bad_option(capsys):
    assert bench.main(["--cells", "lstm,nope"]) == 2
    assert "unknown cell nope" in capsys.readouterr().err


def test_flops_formula():
    # LSTM, T=2 B=3 I=5 H=7: fwd 2*6*5*28 + 2*6*7*28; fwdbwd 3x.
    s = bench.Shape("lstm", 2, 3, 7, I=5)
    assert bench.cell_flops(s, "fwd") == 2 * 6 * 5 * 28 + 2 * 6 * 7 * 28
    assert bench.cell_flops(s, "fwdbwd") == 3 * bench.cell_flops(s, "fwd")
    p = bench.Shape("lstm", 4, 2, 8, proj=3, packed=True)  # lengths 2, 4 -> N = 6
    assert p.lengths() == [2, 4]
    assert bench.cell_flops(p, "fwd") == 2 * 6 * 8 * 32 + 2 * 6 * 3 * 32 + 2 * 6 * 8 * 3


def test_backend_error_becomes_a_note():
    def refuses():
        raise rnnkernels.BackendError("cannot run this")

    times, notes = bench.time_providers({"torch": lambda: None, "x": refuses}, reps=2, warmup=1)
    assert len(times["torch"]) == 2 and "x" not in times and "cannot run" in notes["x"]
