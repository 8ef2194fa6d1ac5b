"""auto's dispatch table (rnnkernels/dispatch.py): routing against synthetic tables with faked
device classes (every key field), the rules that keep auto off the torch backend, the local table
written / read / ignored when stale, explain() and the debug log, auto under
torch.compile(fullgraph=True), the bench's --tune, --show-table, --reset-table and auto row.
(The torch backend's own parity with nn.LSTM / nn.GRU: test_torch_backend.py.)"""

import json
import logging

import pytest
import torch

import rnnkernels
from rnnkernels import backends, bench, dispatch
from rnnkernels.backends import LayerCall

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
BASE_CALL = LayerCall("lstm", CPU, torch.float32, B=32, H=256, R=256, T=100)
BASE_ENTRY = {
    "cell": "lstm", "dtype": "float32", "mode": "inference", "B": "32-63", "H": "256-511",
    "T": "64-255", "layers": 1, "bidirectional": False, "proj": False, "packed": False,
    "shape": "T=100 B=32 I=256 H=256",
}  # fmt: skip
CPP_FIRST = {"cpp": 1.0, "numba": 2.0, "torch": 3.0}
NUMBA_FIRST = {"numba": 1.0, "cpp": 2.0, "torch": 3.0}


def entry(ms: dict, **fields) -> dict:
    return {**BASE_ENTRY, **fields, "ms": ms}


def run(entries: list[dict], device: str = "cpu-avx512", threads: int | None = 1, **source):
    source = {"cpu": "Test CPU", "torch": torch.__version__, "date": "2026-01-01", **source}
    return {"device": device, "threads": threads, "source": {**source, "command": "test"},
            "entries": entries}  # fmt: skip


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """Synthetic tables: ``tables.write(runs, shipped=False)`` writes the local (or shipped) one.
    CPU is faked as "cpu-avx512" of the model "Test CPU", CUDA as "cuda-sm90"; auto is the
    selection; one thread."""
    monkeypatch.setattr(dispatch, "SHIPPED_TABLE", tmp_path / "shipped.json")
    monkeypatch.setenv(dispatch.TABLE_ENV, str(tmp_path / "local.json"))
    classes = {"cpu": "cpu-avx512", "cuda": "cuda-sm90"}
    monkeypatch.setattr(dispatch, "device_class", lambda device: classes[device.type])
    monkeypatch.setattr(dispatch, "cpu_model", lambda: "Test CPU")
    monkeypatch.setattr(backends, "_default", backends.AUTO)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton can run (faked) CUDA calls
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    class Tables:
        local = tmp_path / "local.json"
        shipped = tmp_path / "shipped.json"

        def write(self, runs: list[dict], shipped: bool = False) -> None:
            dispatch.write_table(self.shipped if shipped else self.local, runs)
            dispatch.reload()

    dispatch.reload()
    yield Tables()
    torch.set_num_threads(threads)
    dispatch.reload()


def pick(call: LayerCall) -> str:
    return dispatch.choose(call).backend


# --- the key --------------------------------------------------------------------------------------

# For each key field: the entry's value and a call that has it (BASE_CALL has the base entry's).
VARIANTS = {
    "cell": ({"cell": "gru"}, {"cell": "gru"}),
    "dtype": ({"dtype": "float64"}, {"dtype": torch.float64}),
    "mode": ({"mode": "training"}, {"grad": True}),
    "B": ({"B": "64-127"}, {"B": 100}),
    "H": ({"H": "512-1023"}, {"H": 600, "R": 600}),
    "T": ({"T": "256-1023"}, {"T": 300}),
    "layers": ({"layers": 2}, {"layers": 2}),
    "bidirectional": ({"bidirectional": True}, {"bidirectional": True}),
    "proj": ({"proj": True}, {"R": 128}),
    "packed": ({"packed": True}, {"packed": True}),
}


@pytest.mark.parametrize("field", VARIANTS)
def test_each_entry_field_selects_its_entry(tables, field):
    fields, call_fields = VARIANTS[field]
    tables.write([run([entry(CPP_FIRST), entry(NUMBA_FIRST, **fields)])])
    assert pick(BASE_CALL) == "cpp"
    assert pick(BASE_CALL._replace(**call_fields)) == "numba"


def test_the_device_class_and_thread_count_select_their_runs(tables, monkeypatch):
    tables.write([
        run([entry(CPP_FIRST)], device="cpu-avx512", threads=1),
        run([entry(NUMBA_FIRST)], device="cpu-avx512", threads=2),
        run([entry({"torch": 1.0, "cpp": 2.0})], device="cpu-avx2", threads=1),
    ])  # fmt: skip
    assert pick(BASE_CALL) == "cpp"
    torch.set_num_threads(2)
    assert pick(BASE_CALL) == "numba"
    torch.set_num_threads(3)
    assert pick(BASE_CALL) == "cpp"  # no run for 3 threads: the rule
    assert dispatch.choose(BASE_CALL).entry is None
    torch.set_num_threads(1)
    monkeypatch.setattr(dispatch, "device_class", lambda device: "cpu-avx2")
    dispatch.reload()
    assert pick(BASE_CALL) == "torch"


def test_a_gpu_run_applies_to_cuda_calls_whatever_the_thread_count(tables):
    tables.write([run([entry({"torch": 1.0, "triton": 2.0})], device="cuda-sm90", threads=None)])
    call = BASE_CALL._replace(device=CUDA)
    assert pick(call) == "torch"
    torch.set_num_threads(2)
    assert pick(call) == "torch"
    assert pick(BASE_CALL) == "cpp"  # the CPU call: no entry, the rule


def test_size_classes():
    labels = {n: dispatch.class_label("B", n) for n in (1, 2, 3, 4, 31, 32, 63, 64, 1000)}
    assert labels == {1: "1", 2: "2-3", 3: "2-3", 4: "4-7", 31: "16-31", 32: "32-63",
                      63: "32-63", 64: "64-127", 1000: "512-1023"}  # fmt: skip
    labels = {n: dispatch.class_label("T", n) for n in (1, 15, 16, 100, 255, 256, 1024, 5000)}
    assert labels == {1: "1-15", 15: "1-15", 16: "16-63", 100: "64-255", 255: "64-255",
                      256: "256-1023", 1024: "1024-4095", 5000: "4096+"}  # fmt: skip
    key = dispatch.table_key(BASE_CALL._replace(T=5000, B=1, H=64, R=32, grad=True))
    assert key[2:] == ("lstm", "float32", "training", 1, 64, 4096, 1, False, True, False)


def test_the_real_device_class_of_this_cpu():
    flags = dispatch._cpuinfo("flags").split()
    isa = torch.backends.cpu.get_cpu_capability().lower()
    expected = "avx512_bf16" if isa == "avx512" and "avx512_bf16" in flags else isa
    assert dispatch.device_class(CPU) == f"cpu-{expected}"


# --- the choice -----------------------------------------------------------------------------------


def test_no_entry_keeps_the_rule(tables):
    tables.write([run([entry(NUMBA_FIRST)])])
    call = BASE_CALL._replace(H=64, R=64)
    choice = dispatch.choose(call)
    assert choice.backend == backends.auto_rule(call) == "cpp" and choice.entry is None
    assert "no dispatch table entry for cpu-avx512 1 threads, lstm float32 inference" in str(choice)


def test_candidates_that_cannot_run_are_passed_over_saying_why(tables):
    ms = {"torch": 1.0, "future": 0.5, "numba": 2.0, "cpp": 3.0}  # "future": unknown here
    tables.write([run([entry(ms, cell="indrnn")])])
    choice = dispatch.choose(BASE_CALL._replace(cell="indrnn"))
    assert choice.backend == "numba" and choice.entry.ranking == ("torch", "numba", "cpp")
    assert choice.passed_over == (("torch", backends.why_not("torch", choice.call)),)
    assert "not torch: torch has no IndRNN" in str(choice)


def test_torch_ranks_first_unless_another_is_more_than_the_margin_faster(tables):
    within, beyond = 1 + 0.9 * dispatch.TORCH_MARGIN, 1 + 1.1 * dispatch.TORCH_MARGIN
    tables.write([run([entry({"cpp": 1.0, "torch": within}), entry({"cpp": 1.0, "torch": beyond},
                                                                   cell="gru")])])  # fmt: skip
    assert pick(BASE_CALL) == "torch" and pick(BASE_CALL._replace(cell="gru")) == "cpp"
    assert "torch ranks first unless 5% slower" in str(dispatch.choose(BASE_CALL))


def test_the_local_table_wins_over_the_shipped_one(tables):
    tables.write([run([entry(NUMBA_FIRST), entry(NUMBA_FIRST, cell="gru")])], shipped=True)
    tables.write([run([entry(CPP_FIRST)])])
    assert pick(BASE_CALL) == "cpp"  # the local entry
    assert pick(BASE_CALL._replace(cell="gru")) == "numba"  # the shipped one, not in the local
    assert "from the local table" in str(dispatch.choose(BASE_CALL))


# --- the rules that keep auto off the torch backend -----------------------------------------------

TORCH_FIRST = {"torch": 1.0, "triton": 2.0}


@pytest.fixture
def cuda_entry(tables):
    tables.write([run([entry(TORCH_FIRST)], device="cuda-sm90", threads=None)])
    return BASE_CALL._replace(device=CUDA)


def test_auto_takes_torch_on_cuda_where_nothing_rules_it_out(cuda_entry):
    assert pick(cuda_entry) == "torch"


def test_not_torch_with_cudnn_disabled(cuda_entry):
    with torch.backends.cudnn.flags(enabled=False):
        choice = dispatch.choose(cuda_entry)
    assert choice.backend == "triton"
    assert "torch.backends.cudnn.enabled is False" in choice.passed_over[0][1]
    assert pick(cuda_entry) == "torch"  # the flag back on: the memo keys on the rule's answer


def test_not_torch_on_cuda_under_deterministic_algorithms(cuda_entry):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        choice = dispatch.choose(cuda_entry)
        cpu_choice = dispatch.choose(BASE_CALL)
    finally:
        torch.use_deterministic_algorithms(before)
    assert choice.backend == "triton" and "not deterministic" in str(choice)
    with torch.backends.cudnn.flags(deterministic=True):
        assert pick(cuda_entry) == "triton"
    assert cpu_choice.backend == "cpp"  # no CPU entry; and torch's CPU RNN is deterministic


def test_torch_on_cpu_under_deterministic_algorithms(tables):
    tables.write([run([entry({"torch": 1.0, "cpp": 2.0})])])
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert pick(BASE_CALL) == "torch"
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.fixture
def torch_everywhere(tables):
    """An entry naming torch fastest for every call of ``torch_everywhere`` (B=3 H=5 T=6)."""
    sizes = {"B": "2-3", "H": "4-7", "T": "1-15", "shape": "T=6 B=3 I=4 H=5"}
    entries = [
        entry({"torch": 1.0, "cpp": 2.0}, cell=cell, mode=mode, **sizes)
        for cell in ("lstm", "gru")
        for mode in ("inference", "training")
    ]
    tables.write([run(entries)])


def test_auto_is_not_torch_under_torch_compile(torch_everywhere):
    """The entry picks torch eagerly; traced with fullgraph=True (torch's branch would break the
    graph, so tracing at all shows it was not taken), auto takes the rule and matches eager."""
    torch.manual_seed(0)
    model = rnnkernels.GRU(4, 5)
    x = torch.randn(6, 3, 4, requires_grad=True)
    assert rnnkernels.explain(model, x).backend == "torch"
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, h = compiled(x)
    expected, expected_h = model(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h, expected_h)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad, expected_grad)


def test_the_choice_under_compile_says_why(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    choice = dispatch.choose(BASE_CALL)
    assert choice.backend == "cpp" and choice.key is None
    assert "under torch.compile the dispatch table is not read" in str(choice)


# --- the local table ------------------------------------------------------------------------------


def test_stale_local_runs_are_ignored_and_say_why(tables):
    tables.write([
        run([entry(NUMBA_FIRST)], torch="1.0.0"),
        run([entry(NUMBA_FIRST, cell="gru")], cpu="Other CPU"),
        run([entry(NUMBA_FIRST, mode="training")]),
    ])  # fmt: skip
    assert pick(BASE_CALL) == "cpp" and pick(BASE_CALL._replace(cell="gru")) == "cpp"
    assert pick(BASE_CALL._replace(grad=True)) == "numba"  # the run for this machine
    notes = dispatch.ignored()
    assert len(notes) == 2
    assert f"measured with torch 1.0.0, this is torch {torch.__version__}" in notes[0]
    assert "measured on 'Other CPU', this is 'Test CPU'" in notes[1]


def test_the_shipped_table_applies_whatever_its_cpu_model_and_torch_version(tables):
    tables.write([run([entry(NUMBA_FIRST)], torch="1.0.0", cpu="Other CPU")], shipped=True)
    assert pick(BASE_CALL) == "numba" and dispatch.ignored() == []


def test_add_run_replaces_entries_and_drops_stale_runs(tables):
    tables.write([
        run([entry(NUMBA_FIRST), entry(NUMBA_FIRST, cell="gru")]),
        run([entry(NUMBA_FIRST, mode="training")], torch="1.0.0"),
    ])  # fmt: skip
    dispatch.add_run(tables.local, run([entry(CPP_FIRST)], date="2026-02-02"), drop_stale=True)
    runs = dispatch.read_table(tables.local)
    assert [[e["cell"] for e in r["entries"]] for r in runs] == [["gru"], ["lstm"]]
    assert runs[1]["source"]["date"] == "2026-02-02"
    assert pick(BASE_CALL) == "cpp"  # add_run reloads


def test_an_unreadable_local_table_is_ignored_with_a_warning(tables):
    tables.local.write_text(json.dumps({"format": 1, "runs": [run([entry(CPP_FIRST, B="30-60")])]}))
    dispatch.reload()
    with pytest.warns(UserWarning, match="B class '30-60' is not one of this version's classes"):
        assert pick(BASE_CALL) == "cpp"
    assert "local table" in dispatch.ignored()[0]


def test_the_table_file_has_one_entry_per_line(tables):
    tables.write([run([entry(CPP_FIRST), entry(NUMBA_FIRST, cell="gru")])])
    lines = tables.local.read_text().splitlines()
    assert sum(line.strip().startswith('{"cell"') for line in lines) == 2
    assert dispatch.read_table(tables.local)[0]["entries"][1]["cell"] == "gru"


def test_the_shipped_table_reads_and_says_where_it_came_from():
    runs = dispatch.read_table(dispatch.SHIPPED_TABLE)
    assert runs
    for r in runs:
        assert {"cpu", "torch", "date", "command"} <= set(r["source"])
        assert r["source"]["command"].startswith("python -m rnnkernels.bench")
        assert r["entries"]


@pytest.mark.parametrize(
    "cell, T, B, H, dtype, grad, expected",
    [
        ("lstm", 1024, 16, 768, torch.float16, False, "torch"),  # cuDNN's persistent kernel
        ("lstm", 1024, 16, 768, torch.float16, True, "torch"),
        ("lstm", 1000, 16, 128, torch.float32, True, "torch"),
        ("gru", 1000, 16, 128, torch.float32, False, "torch"),
        ("lstm", 3000, 6, 64, torch.float32, False, "torch"),
        ("lstm", 1024, 16, 768, torch.bfloat16, True, "triton"),
        ("gru", 1024, 16, 768, torch.float16, False, "triton"),
        ("lstm", 1024, 16, 768, torch.float32, False, "triton"),
    ],
)
def test_the_shipped_table_routes_the_h200_rows(monkeypatch, cell, T, B, H, dtype, grad, expected):
    """The H200 rows of the issue (benchmarks/gpu-h200.md) run cuDNN under auto, the rows where
    Triton is faster run Triton: the shipped table's cuda-sm90 run, on a faked sm_90 device."""
    monkeypatch.setattr(dispatch, "device_class", lambda device: "cuda-sm90")
    monkeypatch.setenv(dispatch.TABLE_ENV, "/nonexistent/local.json")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton can run (faked) CUDA calls
    dispatch.reload()
    try:
        call = LayerCall(cell, CUDA, dtype, B=B, H=H, R=H, T=T, grad=grad)
        choice = dispatch.choose(call)
    finally:
        dispatch.reload()
    assert choice.backend == expected, str(choice)
    assert "relative times, cuDNN = 1" in str(choice) and "NVIDIA H200" in str(choice)


# --- explain and the log --------------------------------------------------------------------------


def test_explain_says_which_backend_and_why(tables, caplog):
    tables.write([run([entry({"torch": 1.0, "cpp": 2.0})])])
    model = rnnkernels.LSTM(256, 256)
    x = torch.randn(100, 32, 256)
    with torch.no_grad():
        explanation = rnnkernels.explain(model, x)
        assert explanation.backend == "torch"
        assert "auto picks 'torch' from the local table" in str(explanation)
        assert "measured T=100 B=32 I=256 H=256: torch 1 ms, cpp 2 ms" in str(explanation)
        with caplog.at_level(logging.DEBUG, logger="rnnkernels"):
            model(x)
    assert [r.getMessage() for r in caplog.records] == [explanation.reason]
    with torch.no_grad():  # outside the table: the rule; named: the name, and auto's pick
        assert "by the rule for cpu" in str(rnnkernels.explain(model, x[:, :4]))
        model.backend = "cpp"
        explanation = rnnkernels.explain(model, x)
        assert explanation.backend == "cpp"
        assert "named by backend= on the module" in str(explanation)
        assert "auto would pick 'torch' from the local table" in str(explanation)
        model.backend = None
        with rnnkernels.set_backend("numba"):
            explanation = rnnkernels.explain(model, x)
    assert explanation.backend == "numba" and "named by the selection in force" in str(explanation)


def test_explain_checks_the_call_and_the_module():
    model = rnnkernels.GRU(4, 5)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        rnnkernels.explain(model, torch.randn(6, 3, 7))
    with pytest.raises(TypeError, match="explain takes an rnnkernels LSTM, GRU, RNN or IndRNN"):
        rnnkernels.explain(torch.nn.GRU(4, 5), torch.randn(6, 3, 4))
    with pytest.raises(rnnkernels.BackendError, match="torch has no IndRNN"):
        rnnkernels.explain(rnnkernels.IndRNN(4, 5, backend="torch"), torch.randn(6, 3, 4))


def test_training_is_grad_mode_with_the_input_or_weights_requiring_grad():
    model = rnnkernels.LSTM(4, 5)
    x = torch.randn(6, 3, 4)
    assert "training" in str(rnnkernels.explain(model, x))
    with torch.no_grad():
        assert "inference" in str(rnnkernels.explain(model, x))
    model.requires_grad_(False)
    assert "inference" in str(rnnkernels.explain(model, x))
    assert "training" in str(rnnkernels.explain(model, x.requires_grad_()))


# --- the bench: --tune, --show-table, --reset-table, the auto row ---------------------------------


def test_tune_writes_the_local_table_show_prints_it_reset_removes_it(tables, capsys):
    argv = ["--tune", "--device", "cpu", "--shapes", "tiny", "--cells", "gru", "--modes", "fwd"]
    argv += ["--reps", "1", "--threads", "1", "--backends", "cpp,numba"]
    assert bench.main(argv) == 0
    (written,) = dispatch.read_table(tables.local)
    assert written["device"] == "cpu-avx512" and written["threads"] == 1
    assert written["source"]["command"] == "python -m rnnkernels.bench " + " ".join(argv)
    (e,) = written["entries"]
    assert (e["cell"], e["mode"], e["shape"], set(e["ms"])) == (
        "gru", "inference", "T=5 B=2 I=8 H=8", {"cpp", "numba"}
    )  # fmt: skip
    call = LayerCall("gru", CPU, torch.float32, B=2, H=8, R=8, T=5)
    assert pick(call) == dispatch.rank(e["ms"])[0] == min(e["ms"], key=e["ms"].get)

    capsys.readouterr()
    assert bench.main(["--show-table"]) == 0
    out = capsys.readouterr().out
    assert str(tables.local) in out and "T=5 B=2 I=8 H=8" in out
    assert bench.main(["--reset-table"]) == 0
    assert not tables.local.exists()


def test_the_bench_shows_auto_beside_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.measure, "peak_rate", lambda *args, **kwargs: (1e11, "test"))
    threads = torch.get_num_threads()
    argv = ["--device", "cpu", "--shapes", "tiny", "--cells", "gru", "--modes", "fwd"]
    argv += ["--backends", "auto,cpp", "--reps", "1", "--threads", "1", "--out", str(tmp_path)]
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    (result,) = tmp_path.glob("*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [r["provider"] for r in rows] == ["torch", "auto", "cpp"]
    assert all(r["ms"] > 0 for r in rows)


def test_default_bench_providers_have_auto_and_no_torch_backend_row():
    args = bench.parse_args(["--device", "cpu"])
    assert args.backends[0] == "auto" and "torch" not in args.backends
    tune = bench.parse_args(["--tune", "--device", "cpu", "--threads", "1,2"])
    assert (
        "torch" in tune.backends and "auto" not in tune.backends and "triton" not in tune.backends
    )
    assert tune.threads == [1, 2] and tune.shapes == ["default", "small-batch", "cpu-grid"]
    own = bench.parse_args(["--device", "cpu", "--shape", "gru T=50 B=4 H=32 L=2 bi packed"])
    assert own.shapes == [] and own.shape == [
        bench.Shape("gru", 50, 4, 32, layers=2, bidirectional=True, packed=True)
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "elman T=5 B=2 H=8"], "a shape starts with its cell"),
        (["--shape", "lstm T=5 B=2"], "a shape needs T=, B= and H="),
        (["--shape", "lstm T=5 B=2 H=8 wide"], "unknown part 'wide'"),
        (["--threads", "1,2"], "--threads takes one count, or a comma list with --tune"),
        (["--write-shipped-table"], "--write-shipped-table goes with --tune"),
    ],
)
def test_bad_tuning_options_exit_2(argv, message, capsys):
    assert bench.main(argv) == 2
    assert message in capsys.readouterr().err


# --- a GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_routing_with_a_table_for_this_gpu(tmp_path, monkeypatch):
    """On a real GPU: an entry for its device class naming torch routes there (cuDNN); the rules
    send auto to triton."""
    monkeypatch.setenv(dispatch.TABLE_ENV, str(tmp_path / "local.json"))
    monkeypatch.setattr(dispatch, "SHIPPED_TABLE", tmp_path / "none.json")
    device = torch.device("cuda", torch.cuda.current_device())
    cls = dispatch.device_class(device)
    assert cls.startswith("cuda-sm")
    model = rnnkernels.LSTM(64, 128, device=device, dtype=torch.float16)
    x = torch.randn(50, 16, 64, device=device, dtype=torch.float16)
    sizes = {"B": "16-31", "H": "128-255", "T": "16-63", "shape": "T=50 B=16 I=64 H=128"}
    e = entry({"torch": 1.0, "triton": 2.0}, dtype="float16", mode="training", **sizes)
    src = {"cpu": dispatch.cpu_model()}
    dispatch.write_table(tmp_path / "local.json", [run([e], device=cls, threads=None, **src)])
    dispatch.reload()
    try:
        assert rnnkernels.explain(model, x).backend == "torch"
        with torch.backends.cudnn.flags(enabled=False):
            assert rnnkernels.explain(model, x).backend == "triton"
        with torch.backends.cudnn.flags(deterministic=True):
            assert rnnkernels.explain(model, x).backend == "triton"
        out, _ = model(x)
        expected, _ = rnnkernels.testing.torch_twin(model)(x)
        torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)
    finally:
        dispatch.reload()
