"""``python -m rnnkernels.bench`` end to end (tiny preset), ``--compare``, option errors, and the
pieces it is built from: the FLOP formula, the CPU peak-memory measurement, the shape table."""

import csv
import json

import pytest
import torch

import rnnkernels
from rnnkernels import bench
from rnnkernels.bench import report

PROVIDERS = ["torch", "auto", *(b for b in rnnkernels.available_backends() if b != "torch")]


@pytest.fixture
def keep_threads():
    """main(--threads N) sets torch's thread count for the process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_peak_rate_is_the_fma_rate_on_cpu_else_the_best_matmul(keep_threads):
    """The "% peak" column divides by the cores' FMA rate (float32, the extension built), else by
    the best of MKL's and oneDNN's matmul, and says which."""
    from rnnkernels import backends

    torch.set_num_threads(1)
    if backends.why_unavailable("cpp") is None:
        rate, source = bench.measure.peak_rate(torch.float32, "cpu", reps=2)
        assert source == "FMA peak on 1 thread(s)" and rate > 1e9
    rate, source = bench.measure.peak_rate(torch.float64, "cpu", reps=1)
    assert source.endswith("2048x2048") and rate > 1e8


def test_main_writes_json_csv_png(tmp_path, capsys, monkeypatch, keep_threads):
    # The peak rate is measured in test_peak_rate (a 2048^3 fp64 product takes a second).
    monkeypatch.setattr(bench.measure, "peak_rate", lambda *args, **kwargs: (1e11, "test"))
    # One thread: tiny tensors, and OpenMP threads spinning on a loaded machine are slow.
    argv = ["--device", "cpu", "--shapes", "tiny", "--reps", "1", "--threads", "1"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (js,) = tmp_path.glob("bench-*-cpu-float32.json")
    (cs,) = tmp_path.glob("bench-*-cpu-float32.csv")
    (png,) = tmp_path.glob("bench-*-cpu-float32.png")
    assert str(js) in out and str(cs) in out and str(png) in out
    assert "speedup" in out and "peak MiB" in out and "1st ms" in out

    result = json.loads(js.read_text())
    machine = result["machine"]
    assert {"cpu", "cores", "threads", "torch", "python", "peak_gflops", "device"} <= set(machine)
    assert machine["device"] == "cpu" and machine["peak_gflops"] > 0
    rows = result["rows"]
    expected = {
        (s.cell, s.label, m, p)
        for s in bench.PRESETS["tiny"].shapes
        for m in bench.MODES
        for p in PROVIDERS
    }
    assert {(r["cell"], r["shape"], r["mode"], r["provider"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        assert r["device"] == "cpu" and r["dtype"] == "float32"
        if r["note"] is None:  # a provider that cannot run a cell carries a note instead
            assert r["ms"] > 0 and len(r["times_ms"]) == 1 and r["gflops"] > 0
            assert r["first_ms"] > 0  # the warmup call, timed apart from the median
            assert r["peak_bytes"] > 0 and r["peak_fraction"] > 0
        else:
            assert r["ms"] is None and r["first_ms"] is None and r["note"].startswith("skipped:")
        if r["provider"] == "torch":
            assert r["ms"] is not None and r["speedup"] == pytest.approx(1.0)

    with open(cs, newline="") as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == [*report.CSV_FIELDS, *report.CSV_MACHINE]
    assert len(table) == len(rows)
    assert {(r["cell"], r["shape"], r["mode"], r["provider"]) for r in table} == expected
    assert all(r["torch"] == torch.__version__ and r["cpu"] == machine["cpu"] for r in table)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _row(cell, mode, provider, ms, shape="T=5 B=2 I=8 H=8"):
    return dict(cell=cell, shape=shape, mode=mode, provider=provider, ms=ms)


def _saved(path, rows, cpu="cpu A", **settings):
    path.write_text(json.dumps({"machine": {"cpu": cpu}, "settings": settings, "rows": rows}))
    return str(path)


def test_compare_two_saved_runs(tmp_path, capsys):
    old = _saved(
        tmp_path / "old.json",
        [
            _row("lstm", "fwd", "torch", 2.0),
            _row("lstm", "fwd", "cpp", 4.0),
            _row("gru", "fwd", "cpp", None),  # skipped in the old run
            _row("indrnn", "fwd", "torch", 1.0),  # not in the new run
        ],
        dtype="float32",  # an old file: device and dtype only in settings
    )
    new_rows = [
        _row("lstm", "fwd", "torch", 3.0),
        _row("lstm", "fwd", "cpp", 1.0),
        _row("gru", "fwd", "cpp", 5.0),
        _row("lstm", "fwdbwd", "torch", 9.0),  # not in the old run
    ]
    for r in new_rows:
        r.update(device="cpu", dtype="float32")
    new = _saved(tmp_path / "new.json", new_rows, cpu="cpu B")
    assert bench.main(["--compare", old, new]) == 0
    out = capsys.readouterr().out
    assert "warning: cpu differs" in out
    lines = {ln for ln in out.splitlines() if "T=5" in ln}
    assert len(lines) == 3  # rows present in both runs only
    text = " ".join(" ".join(ln.replace("│", " ").split()) for ln in lines)
    assert "lstm T=5 B=2 I=8 H=8 fwd torch 2.00 3.00 1.50" in text
    assert "lstm T=5 B=2 I=8 H=8 fwd cpp 4.00 1.00 0.25" in text
    assert "gru T=5 B=2 I=8 H=8 fwd cpp - 5.00 -" in text

    rows = bench.compare(json.loads(open(old).read()), json.loads(open(new).read()))
    assert [(r["provider"], r["ratio"]) for r in rows] == [
        ("torch", 1.5),
        ("cpp", 0.25),
        ("cpp", None),
    ]


def test_compare_after_a_run(tmp_path, capsys, monkeypatch, keep_threads):
    monkeypatch.setattr(bench.measure, "peak_rate", lambda *args, **kwargs: (1e11, "test"))
    shape = bench.PRESETS["tiny"].shapes[2].label  # indrnn
    old = _saved(tmp_path / "old.json", [_row("indrnn", "fwd", "torch", 1e6, shape)], device="cpu")
    argv = ["--device", "cpu", "--shapes", "tiny", "--cells", "indrnn", "--modes", "fwd"]
    argv += ["--backends", "reference", "--reps", "1", "--threads", "1", "--out", str(tmp_path)]
    assert bench.main([*argv, "--compare", old]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "1000000.00" in ln]
    assert "indrnn" in line and "torch" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cells", "lstm,nope"], "unknown cell nope"),
        (["--modes", "bwd"], "unknown mode bwd"),
        (["--shapes", "huge"], "unknown shape preset huge"),
        (["--device", "cpu", "--shapes", "flashrnn"], "'flashrnn' is for --device cuda"),
        (["--reps", "0"], "--reps must be >= 1"),
        (["--compare", "missing.json"], "--compare: cannot read missing.json"),
        (["--compare", "a.json", "b.json", "c.json"], "--compare takes OLD.json"),
    ],
)
def test_bad_option_exits_2(argv, message, capsys):
    assert bench.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_types_on_cpu(dtype, tmp_path, capsys, monkeypatch, keep_threads):
    """--dtype bfloat16 / float16 on CPU: our backends and torch's module in that dtype."""
    monkeypatch.setattr(bench.measure, "peak_rate", lambda *args, **kwargs: (1e11, "test"))
    argv = ["--device", "cpu", "--shapes", "tiny", "--cells", "gru", "--modes", "fwd"]
    argv += ["--backends", "cpp", "--reps", "1", "--threads", "1", "--dtype", dtype]
    if rnnkernels.backends.why_unavailable("cpp") is not None:
        pytest.skip(rnnkernels.backends.why_unavailable("cpp"))
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    (js,) = tmp_path.glob(f"bench-*-cpu-{dtype}.json")
    rows = json.loads(js.read_text())["rows"]
    assert {row["provider"] for row in rows} == {"torch", "cpp"}
    assert all(row["ms"] > 0 for row in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_without_cuda(capsys):
    assert bench.main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize(("old", "new"), [("issue3", "cpu-grid"), ("issue6", "gpu-goals")])
def test_former_preset_names_still_work_with_a_warning(old, new):
    with pytest.warns(FutureWarning, match=f"shape preset '{old}' is now called '{new}'"):
        args = bench.cli.parser([], []).parse_args(["--shapes", f"tiny,{old}"])
    assert args.shapes == ["tiny", new]


def test_default_backends_are_those_that_run_on_the_device(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter runs CPU tensors
    assert bench.cli.parse_args(["--device", "cpu"]).backends == PROVIDERS[1:]
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton then runs CUDA tensors only
    expected = [b for b in PROVIDERS[1:] if b != "triton"]
    assert bench.cli.parse_args(["--device", "cpu"]).backends == expected


def test_flops_formula():
    # LSTM, T=2 B=3 I=5 H=7: fwd 2*6*5*28 + 2*6*7*28; fwdbwd 3x.
    s = bench.Shape("lstm", 2, 3, 7, I=5)
    assert bench.cell_flops(s, "fwd") == 2 * 6 * 5 * 28 + 2 * 6 * 7 * 28
    assert bench.cell_flops(s, "fwdbwd") == 3 * bench.cell_flops(s, "fwd")
    p = bench.Shape("lstm", 4, 2, 8, proj=3, packed=True)  # lengths 2, 4 -> N = 6
    assert p.lengths() == [2, 4]
    assert bench.cell_flops(p, "fwd") == 2 * 6 * 8 * 32 + 2 * 6 * 3 * 32 + 2 * 6 * 8 * 3


def test_provider_errors_become_notes():
    def refuses():
        raise rnnkernels.BackendError("cannot run this")

    def breaks():
        raise RuntimeError("out of something\nmore")

    calls = {"torch": lambda: None, "x": refuses, "y": breaks}
    times, notes, first = bench.time_providers(calls, reps=2, warmup=1)
    assert len(times["torch"]) == 2 and set(times) == {"torch"} and set(first) == {"torch"}
    assert notes == {
        "x": "skipped: cannot run this",
        "y": "failed: RuntimeError: out of something",
    }


def test_cpu_peak_memory_counts_tensors_allocated_in_the_call():
    keep = torch.ones(3_000_000)  # allocated before: not counted, nor is freeing it

    def call():
        nonlocal keep
        keep = None
        a = torch.empty(1_000_000)  # 4 MB, freed before the peak
        del a
        b = torch.empty(2_000_000)  # 8 MB ...
        c = torch.empty(500_000)  # ... + 2 MB held together: the peak
        return b, c

    assert bench.peak_memory(call, "cpu") == 10_000_000


def test_shape_table():
    presets = bench.PRESETS
    assert {p.device for p in presets.values()} <= {None, "cpu", "cuda"}
    assert presets["default"].device == "cpu" and presets["gpu"].device == "cuda"
    for p in presets.values():
        assert p.shapes and all(s.cell in bench.CELLS for s in p.shapes)
    flash = {(s.T, s.B, s.H) for s in presets["flashrnn"].shapes}
    assert {(1024, b, 768) for b in (2, 4, 8, 16, 32, 64, 128, 256)} <= flash
    assert {(t, 16, 768) for t in (256, 512, 1024, 2048)} <= flash
    assert {(s.T, s.B, s.input_size, s.H) for s in presets["torch-rnn"].shapes} == {
        (100, 64, 512, 512)
    }
    assert {(s.T, s.B, s.H) for s in presets["indrnn"].shapes} == {(784, 32, 128), (5000, 50, 128)}
    all_gpu = set(presets["gpu-all"].shapes)
    assert all(set(presets[n].shapes) <= all_gpu for n in ("flashrnn", "deepbench", "gpu"))


def test_cuda_timing_and_memory_order(monkeypatch):
    """The CUDA paths, on a fake torch.cuda (no GPU here): synchronize before the start event,
    the call between the events, wait for the end event; peak memory relative to the start."""
    log = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing
            self.name = "start" if not any(e.startswith("event") for e in log) else "end"
            log.append(f"event {self.name}")

        def record(self):
            log.append(f"record {self.name}")

        def synchronize(self):
            log.append(f"wait {self.name}")

        def elapsed_time(self, end):
            return 2.5  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: log.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: log.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5000)
    times, notes, first = bench.time_providers({"p": lambda: log.append("call")}, 1, 0, "cuda")
    assert times == {"p": [2.5e-3]} and notes == {}
    assert first == {"p": 2.5e-3}  # without warmup, the first timed call
    assert log == [
        *("event start", "event end", "synchronize", "record start"),
        *("call", "record end", "wait end"),
    ]
    log.clear()
    peak = bench.peak_memory(lambda: log.append("call"), "cuda", lambda: log.append("before"))
    assert peak == 4000
    assert log == ["before", "synchronize", "reset", "call", "synchronize"]


def test_first_call_is_timed_apart_from_the_steady_state(monkeypatch):
    """The first call (where a JIT compiles) is reported as first_s, outside the times."""
    clock = iter([0.0, 0.5, 0.5, 0.51, 0.51, 0.52])  # perf_counter around each timed call
    monkeypatch.setattr(bench.measure.time, "perf_counter", lambda: next(clock))
    calls = []
    times, notes, first = bench.time_providers({"jit": lambda: calls.append(1)}, reps=2, warmup=2)
    assert len(calls) == 4 and notes == {}
    assert first == {"jit": pytest.approx(0.5)}
    assert times == {"jit": [pytest.approx(0.01), pytest.approx(0.01)]}
