"""torch.export and AOTInductor of models with rnnkernels' layers (issue 18, item 3).

Default run: on the cpp backend the exported graph calls the C++ ops rnnkernels_cpp::<cell>_fwd;
the program saved with torch.export.save loads and runs in a fresh process with eager's outputs and
gradients (and, exported on another backend, still calls our Python ops). Slow (-m slow):
examples/aoti end to end: export_model.py compiles the model with AOTInductor, CMake builds
main.cpp against the installed package, and that program, which loads no Python, gives eager's
numbers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cmake import CMAKE, CXX, _build  # the downstream example's build helpers

import rnnkernels
from rnnkernels.testing import N_OUT, VARIANTS, assert_close, layer_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "aoti"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("rnnkernels._C") is None,
    reason="the C++ extension rnnkernels._C is not built",
)


def _example():
    """examples/aoti/export_model.py as a module: its model and its export."""
    spec = importlib.util.spec_from_file_location("export_model", EXAMPLE / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set_backend(model: torch.nn.Module, backend: str) -> None:
    for layer in model.modules():
        if isinstance(layer, (rnnkernels.LSTM, rnnkernels.GRU, rnnkernels.RNN, rnnkernels.IndRNN)):
            layer.backend = backend


def _layer_ops(program: torch.export.ExportedProgram) -> set[str]:
    return {str(node.target) for node in program.graph.nodes if "rnnkernels" in str(node.target)}


CPP_OPS = {f"rnnkernels_cpp.{cell}_fwd.default" for cell in ("lstm", "gru", "indrnn")}


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_export_on_cpp_calls_the_cpp_ops(strict):
    """Exported on the cpp backend (auto's choice on CPU), the graph names the C++ ops, which a
    process without Python can run; in the exporting process its module gives eager's numbers."""
    model = _example().build_model()
    program = torch.export.export(model, (torch.randn(2, 5, 8),), strict=strict)
    assert _layer_ops(program) == CPP_OPS
    x = torch.randn(2, 5, 8)
    for got, expected in zip(program.module()(x), model(x)):
        assert_close(got, expected)


def test_export_of_rnn_on_cpp_calls_its_cpp_op():
    """rnnkernels.RNN (not in the example's model) exported on cpp: the graph names
    rnnkernels_cpp::rnn_fwd, and the exported module gives eager's numbers and gradients."""
    torch.manual_seed(0)
    model = rnnkernels.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True,
                           backend="cpp")  # fmt: skip
    program = torch.export.export(model, (torch.randn(5, 2, 3),))
    assert _layer_ops(program) == {"rnnkernels_cpp.rnn_fwd.default"}
    x = torch.randn(5, 2, 3, requires_grad=True)  # other values, the exported shape
    got, expected = program.module()(x), model(x)
    for a, b in zip(got, expected):
        assert_close(a, b)
    grads = [torch.autograd.grad(out[0].sum(), x)[0] for out in (got, expected)]
    assert_close(grads[0], grads[1])


class _Packed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = rnnkernels.LSTM(3, 4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return self.lstm(packed)[1][0]


def test_packed_input_does_not_export_and_says_why():
    """torch.export cannot trace pack_padded_sequence (nn.LSTM neither): our error says so,
    not a check of the fake PackedSequence it makes."""
    with pytest.raises(Exception, match="packed input .* cannot be exported with torch.export"):
        torch.export.export(_Packed(), (torch.randn(5, 2, 3), torch.tensor([5, 3])))


@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn", "rnn"])
def test_cpp_ops_are_differentiable(cell):
    """rnnkernels.ops.cpp gives the C++ forward ops, which exported graphs call, our ops' autograd
    formula: fp64 gradcheck with projection / b_hh / relu, mixed lengths, reverse."""
    importlib.import_module("rnnkernels.ops.cpp")
    args = layer_args(cell, variant=VARIANTS[cell][-1], lengths="mixed", reverse=True,
                      requires_grad=True)  # fmt: skip
    op = getattr(torch.ops.rnnkernels_cpp, f"{cell}_fwd")
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def forward(*tensors):
        given = iter(tensors)
        full = [next(given) if any(a is leaf for leaf in leaves) else a for a in args]
        return op(*full)[: N_OUT[cell]]

    assert torch.autograd.gradcheck(forward, leaves)


# In a fresh interpreter: loads each saved program (argv: backend, program, ...), runs it forward
# and backward on the saved input, and saves outputs and gradients. The reference program first,
# with only rnnkernels imported; rnnkernels.ops.cpp loads the C++ ops (and their autograd) that
# the cpp program calls.
_LOAD_AND_RUN = """
import sys
import torch
import rnnkernels
(x,) = torch.load(sys.argv[1])
results = {}
for backend, path in zip(sys.argv[2::2], sys.argv[3::2]):
    if backend == "cpp":
        import rnnkernels.ops.cpp
    module = torch.export.load(path).module()
    x_ = x.clone().requires_grad_()
    outputs = module(x_)
    sum(o.sum() for o in outputs).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    results[backend] = {"outputs": outputs, "d_x": x_.grad, "grads": grads}
torch.save(results, "results.pt")
"""
BACKENDS = ("reference", "cpp")


def test_saved_programs_run_in_a_fresh_process(tmp_path):
    """torch.export (batch and length dynamic) -> torch.export.save -> torch.export.load in a
    new interpreter: eager's outputs and gradients, at another shape than exported. On cpp the
    graph holds the C++ ops; on another backend our Python ops, with the backend named in them."""
    example = _example()
    model = example.build_model()
    args = []
    for backend in BACKENDS:
        _set_backend(model, backend)
        program = example.export(model)
        assert (_layer_ops(program) == CPP_OPS) == (backend == "cpp"), _layer_ops(program)
        torch.export.save(program, tmp_path / f"{backend}.pt2")
        args += [backend, str(tmp_path / f"{backend}.pt2")]
    x = torch.randn(3, 9, 8)
    torch.save((x,), tmp_path / "inputs.pt")

    run = subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, "inputs.pt", *args],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = torch.load(tmp_path / "results.pt")

    x.requires_grad_()
    outputs = model(x)
    sum(o.sum() for o in outputs).backward()
    expected = dict(model.named_parameters())
    for backend in BACKENDS:
        got = results[backend]
        assert len(got["outputs"]) == len(outputs)
        for g, e in zip(got["outputs"], outputs):
            assert_close(g, e)
        assert_close(got["d_x"], x.grad)
        assert set(got["grads"]) == set(expected)
        for name, grad in got["grads"].items():
            assert_close(grad, expected[name].grad)


# ---- AOTInductor: examples/aoti from C++


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """export_model.py run as a user runs it: model.pt2, inputs.pt, expected.pt."""
    out = tmp_path_factory.mktemp("aoti")
    run = subprocess.run([sys.executable, str(EXAMPLE / "export_model.py"), str(out)],
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    return out


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """examples/aoti built against the installed package, as its CMakeLists.txt says."""
    if CMAKE is None or CXX is None:
        pytest.skip("cmake or a C++ compiler is missing")
    prefix = rnnkernels.cmake_prefix_path
    if not Path(prefix, "rnnkernels", "rnnkernelsConfig.cmake").is_file():
        pytest.skip("this rnnkernels install holds no CMake package (built without cmake)")
    build = tmp_path_factory.mktemp("aoti-build")
    _build(EXAMPLE, build, [prefix, torch.utils.cmake_prefix_path])
    return build / "rnnkernels_aoti"


@pytest.mark.slow
def test_aoti_package_runs_from_cpp_without_python(package, program, tmp_path):
    """The C++ program runs the AOTInductor package (batch and length dynamic, run at another
    shape than exported) with eager's numbers; the libraries it loads hold no Python, and
    include rnnkernels' op library (LD_DEBUG=files lists each one the loader opens)."""
    outputs = tmp_path / "outputs.pt"
    env = {**os.environ, "LD_DEBUG": "files"}
    run = subprocess.run([str(program), str(package / "model.pt2"), str(package / "inputs.pt"),
                          str(outputs)], capture_output=True, text=True, timeout=600,
                         env=env)  # fmt: skip
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-5000:]}"
    loaded = {line.split("file=")[1].split()[0] for line in run.stderr.splitlines()
              if "file=" in line}  # fmt: skip
    assert any("librnnkernels_ops" in name for name in loaded), loaded
    assert any(name.endswith(".wrapper.so") for name in loaded), loaded  # the compiled model
    assert not any("python" in name for name in loaded), loaded  # libpython, libtorch_python

    got, expected = torch.load(outputs), torch.load(package / "expected.pt")
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_close(g, e)
