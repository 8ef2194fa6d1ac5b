"""The CMake build for C++ users (issue 8): build and install the library, build the downstream
example against the installed package, run whole layers forward and backward in C++ against the
Python oracle (naive.py + autograd), and load the CMake library beside rnnkernels._C.

Skipped when cmake or a C++ compiler is missing. The build is shared by the module's tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkernels
from rnnkernels.ops.gru import naive as gru_naive
from rnnkernels.ops.indrnn import naive as indrnn_naive
from rnnkernels.ops.lstm import naive as lstm_naive
from rnnkernels.ops.rnn import naive as rnn_naive

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds per build step: generous, the CI machine may be loaded


def _tool(name: str) -> str | None:
    """A tool on PATH or beside this Python (a venv's ninja or cmake)."""
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


CMAKE = _tool("cmake")
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
NINJA = _tool("ninja")

pytestmark = [
    pytest.mark.skipif(CMAKE is None, reason="cmake is not installed"),
    pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++, clang++ or $CXX)"),
]


def _configure_args(source: Path, build: Path, prefix_path: list[str]) -> list[str]:
    args = [CMAKE, "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            # -O2 instead of Release's -O3: the same code paths, a faster build for the test
            "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -g0 -DNDEBUG", f"-DCMAKE_CXX_COMPILER={CXX}",
            "-DCMAKE_PREFIX_PATH=" + ";".join(prefix_path)]  # fmt: skip
    if NINJA:
        args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={NINJA}"]
    return args


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


def _build(source: Path, build: Path, prefix_path: list[str]) -> None:
    _run(_configure_args(source, build, prefix_path))
    _run([CMAKE, "--build", str(build), "--parallel", "2"])


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """The library built from this checkout (shared by the module's tests)."""
    build = tmp_path_factory.mktemp("cmake") / "build"
    _build(ROOT, build, [torch.utils.cmake_prefix_path])
    return build


@pytest.fixture(scope="module")
def prefix(build) -> Path:
    """`cmake --install` into a prefix of its own."""
    _run([CMAKE, "--install", str(build), "--prefix", str(build.parent / "prefix")])
    return build.parent / "prefix"


@pytest.fixture(scope="module")
def library(prefix) -> Path:
    (path,) = [p for p in (prefix / "lib").glob("librnnkernels.so*") if not p.is_symlink()]
    return path


@pytest.fixture(scope="module")
def site(build) -> Path:
    """A copy of the Python package with the library installed into it, as a wheel holds it:
    `cmake --install build --prefix <site-packages>/rnnkernels`."""
    site = build.parent / "site"
    package = Path(rnnkernels.__file__).parent
    shutil.copytree(package, site / "rnnkernels", ignore=shutil.ignore_patterns("__pycache__"))
    _run([CMAKE, "--install", str(build), "--prefix", str(site / "rnnkernels")])
    return site


@pytest.fixture(scope="module")
def downstream(site) -> Path:
    """examples/downstream built against the package the way a user does it:
    CMAKE_PREFIX_PATH="$(python -m rnnkernels --cmake-prefix-path);<torch's>"."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = _run([sys.executable, "-m", "rnnkernels", "--cmake-prefix-path"], env=env, cwd=site)
    assert found.stdout.strip() == str(site / "rnnkernels" / "share" / "cmake")
    assert "warning" not in found.stderr
    build = site.parent / "downstream"
    _build(ROOT / "examples" / "downstream", build,
           [found.stdout.strip(), torch.utils.cmake_prefix_path])  # fmt: skip
    return build / "rnnkernels_downstream"


def test_installed_package(prefix, library):
    headers = {p.name for p in (prefix / "include" / "rnnkernels").iterdir()}
    assert {"rnnkernels.h", "lstm.h", "gru.h", "indrnn.h", "rnn.h", "layer.h", "ops.h"} <= headers
    assert list((prefix / "lib").glob("librnnkernels_ops.so*")), "no registration library"
    config = prefix / "share" / "cmake" / "rnnkernels"
    for name in ("rnnkernelsConfig.cmake", "rnnkernelsConfigVersion.cmake",
                 "rnnkernelsTargets.cmake"):  # fmt: skip
        assert (config / name).is_file(), name
    assert "find_dependency(Torch)" in (config / "rnnkernelsConfig.cmake").read_text()
    assert not (prefix / "include" / "rnnkernels" / "common.h").exists()  # internal header


def test_installed_prefix_is_found(prefix, tmp_path):
    """A plain `cmake --install --prefix P` is found with P itself in CMAKE_PREFIX_PATH."""
    _run(_configure_args(ROOT / "examples" / "downstream", tmp_path / "build",
                         [str(prefix), torch.utils.cmake_prefix_path]))  # fmt: skip
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert f"rnnkernels_DIR:PATH={prefix / 'share' / 'cmake' / 'rnnkernels'}" in cache


# ---- the downstream example against the Python oracle


def _write_case(path: Path, cell: str, reverse: bool, tensors: dict, nonlinearity=None) -> None:
    """The plain-text format main.cpp reads (fp64 values, repr round-trips exactly)."""
    lines = [f"cell {cell}", f"reverse {int(reverse)}"]
    if nonlinearity:
        lines.append(f"nonlinearity {nonlinearity}")
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        tensor = tensor.detach().to(torch.float64).contiguous()
        lines.append(f"tensor {name} {tensor.dim()} " + " ".join(map(str, tensor.shape)))
        lines.append(" ".join(repr(v) for v in tensor.flatten().tolist()))
    path.write_text("\n".join(lines) + "\n")


def _random(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _oracle(forward, inputs: dict, grads_out: dict, outputs: list[str]) -> dict:
    """Runs forward(**leaves) in fp64, then autograd for every differentiable input; returns the
    expected outputs and gradients named as main.cpp names them (d_<input>)."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()
              if v is not None and k != "lengths"}  # fmt: skip
    results = forward(**{**inputs, **leaves})
    expected = dict(zip(outputs, results))
    grad_outputs = [grads_out.get(f"grad_{name}") for name in outputs]
    grad_outputs = [torch.zeros_like(r) if g is None else g for r, g in zip(results, grad_outputs)]
    grads = torch.autograd.grad(results, list(leaves.values()), grad_outputs)
    expected.update({f"d_{k}": g for k, g in zip(leaves, grads)})
    return expected


def lstm_case(T=5, B=3, I=4, H=6, P=None, b_ih=True, b_hh=True, lengths=None, reverse=False,
              grad_cT=True, seed=0):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    R = P or H
    inputs = dict(
        x=_random(g, T, B, I), w_ih=_random(g, 4 * H, I, scale=0.4),
        w_hh=_random(g, 4 * H, R, scale=0.4), b_ih=_random(g, 4 * H) if b_ih else None,
        b_hh=_random(g, 4 * H) if b_hh else None, w_hr=_random(g, P, H, scale=0.5) if P else None,
        h0=_random(g, B, R), c0=_random(g, B, H),
        lengths=None if lengths is None else torch.tensor(lengths),
    )  # fmt: skip
    grads_out = dict(grad_y=_random(g, T, B, R), grad_hT=_random(g, B, R),
                     grad_cT=_random(g, B, H) if grad_cT else None)  # fmt: skip

    def forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths):
        gx = x @ w_ih.T
        gx = gx + b_ih if b_ih is not None else gx
        gx = gx + b_hh if b_hh is not None else gx
        return lstm_naive.lstm_fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse)[:3]

    expected = _oracle(forward, inputs, grads_out, ["y", "hT", "cT"])
    return "lstm", reverse, {**inputs, **grads_out, **expected}, None


def gru_case(T=5, B=3, I=4, H=6, bias=True, lengths=None, reverse=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        x=_random(g, T, B, I), w_ih=_random(g, 3 * H, I, scale=0.4),
        w_hh=_random(g, 3 * H, H, scale=0.4), b_ih=_random(g, 3 * H) if bias else None,
        b_hh=_random(g, 3 * H) if bias else None, h0=_random(g, B, H),
        lengths=None if lengths is None else torch.tensor(lengths),
    )  # fmt: skip
    grads_out = dict(grad_y=_random(g, T, B, H), grad_hT=_random(g, B, H))

    def forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths):
        gx = x @ w_ih.T + b_ih if b_ih is not None else x @ w_ih.T
        return gru_naive.gru_fwd(gx, w_hh, b_hh, h0, lengths, reverse)[:2]

    expected = _oracle(forward, inputs, grads_out, ["y", "hT"])
    return "gru", reverse, {**inputs, **grads_out, **expected}, None


def one_gate_case(cell, T=6, B=3, I=4, H=5, b_ih=True, b_hh=True, lengths=None, reverse=False,
                  nonlinearity="relu", grad_hT=True, seed=2):  # fmt: skip
    """IndRNN (recurrent weight u [H]) or RNN (w_hh [H, H]): one gate, both biases in gx."""
    g = torch.Generator().manual_seed(seed)
    if cell == "indrnn":
        recurrent = {"u": torch.empty(H, dtype=torch.float64).uniform_(-1.0, 1.0, generator=g)}
    else:
        recurrent = {"w_hh": _random(g, H, H, scale=0.4)}
    inputs = dict(
        x=_random(g, T, B, I), w_ih=_random(g, H, I, scale=0.5), **recurrent,
        b_ih=_random(g, H) if b_ih else None, b_hh=_random(g, H) if b_hh else None,
        h0=_random(g, B, H), lengths=None if lengths is None else torch.tensor(lengths),
    )  # fmt: skip
    grads_out = dict(grad_y=_random(g, T, B, H), grad_hT=_random(g, B, H) if grad_hT else None)
    naive = indrnn_naive.indrnn_fwd if cell == "indrnn" else rnn_naive.rnn_fwd

    def forward(x, w_ih, b_ih, b_hh, h0, lengths, **weight):
        gx = x @ w_ih.T
        gx = gx + b_ih if b_ih is not None else gx
        gx = gx + b_hh if b_hh is not None else gx
        return naive(gx, *weight.values(), h0, lengths, reverse, nonlinearity)

    expected = _oracle(forward, inputs, grads_out, ["y", "hT"])
    return cell, reverse, {**inputs, **grads_out, **expected}, nonlinearity


CASES = {
    "lstm": lambda: lstm_case(lengths=[5, 2, 4]),
    "lstm-proj-reverse": lambda: lstm_case(
        P=3, b_hh=False, lengths=[4, 5, 1], reverse=True, grad_cT=False
    ),  # fmt: skip
    "lstm-nobias-reverse": lambda: lstm_case(b_ih=False, b_hh=False, reverse=True),
    "gru": lambda: gru_case(lengths=[5, 1, 3]),
    "gru-nobias-reverse": lambda: gru_case(bias=False, lengths=[2, 5, 4], reverse=True),
    "indrnn-relu": lambda: one_gate_case("indrnn", lengths=[6, 3, 0]),
    "indrnn-tanh-reverse": lambda: one_gate_case(
        "indrnn", nonlinearity="tanh", b_ih=False, reverse=True, lengths=[2, 6, 5], grad_hT=False
    ),  # fmt: skip
    "rnn-tanh": lambda: one_gate_case("rnn", nonlinearity="tanh", lengths=[6, 3, 0], seed=3),
    "rnn-relu-reverse": lambda: one_gate_case(
        "rnn", b_hh=False, reverse=True, lengths=[2, 6, 5], grad_hT=False, seed=4
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", CASES)
def test_downstream_layer_matches_python(case, downstream, tmp_path):
    """A C++ program linked through find_package(rnnkernels) runs a whole layer forward and
    backward (fp64 and fp32) and checks every output and gradient against the Python oracle."""
    cell, reverse, tensors, nonlinearity = CASES[case]()
    path = tmp_path / f"{case}.txt"
    _write_case(path, cell, reverse, tensors, nonlinearity)
    result = subprocess.run([str(downstream), str(path)], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "all ok" in result.stdout


# ---- the CMake library and the Python package in one process


def _python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip


_LOAD_CMAKE_LIBRARY = "ctypes.CDLL({library!r}, mode=ctypes.RTLD_GLOBAL)\n"
_NOTHING_REGISTERED = """
try:
    torch.ops.rnnkernels_cpp.indrnn_fwd
except (AttributeError, RuntimeError):
    pass
else:
    raise AssertionError("the CMake library registered rnnkernels_cpp ops")
"""
_RUN_CPP_INDRNN = """
import rnnkernels
assert "cpp" in rnnkernels.available_backends(), rnnkernels.available_backends()
x = torch.randn(7, 3, 4)
layer = rnnkernels.IndRNN(4, 5, backend="cpp")
y, h = layer(x)
layer.backend = "reference"
y_ref, h_ref = layer(x)
torch.testing.assert_close(y, y_ref, atol=5e-5, rtol=1e-5)
torch.testing.assert_close(h, h_ref, atol=5e-5, rtol=1e-5)
print("ok")
"""


@pytest.mark.parametrize("cmake_library_first", [True, False])
def test_cmake_library_and_python_extension_in_one_process(library, cmake_library_first):
    """Both libraries hold the kernels; only rnnkernels._C registers the rnnkernels_cpp ops, so
    loading both (in either order) must not abort the process."""
    pytest.importorskip("rnnkernels._C", reason="the C++ extension rnnkernels._C is not built")
    load = _LOAD_CMAKE_LIBRARY.format(library=str(library))
    script = "import ctypes\nimport torch\n"
    if cmake_library_first:  # the CMake library alone registers nothing
        script += load + _NOTHING_REGISTERED + "import rnnkernels._C\n" + _RUN_CPP_INDRNN
    else:
        script += "import rnnkernels._C\n" + _RUN_CPP_INDRNN + load + _RUN_CPP_INDRNN
    result = _python(script)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "ok" in result.stdout


_TWO_REGISTRATION_LIBRARIES = """
maps = open("/proc/self/maps").read().splitlines()
copies = {line.split()[-1] for line in maps if "librnnkernels_ops.so" in line}
assert len(copies) == 2, copies
"""


@pytest.mark.parametrize("cmake_library_first", [True, False])
def test_two_registration_libraries_in_one_process(prefix, cmake_library_first):
    """The installed librnnkernels_ops and the Python package's copy, both loaded in one process
    (in either order): the first registers the rnnkernels_cpp ops, the second finds them and
    registers nothing, instead of aborting the process, and the cpp backend runs."""
    pytest.importorskip("rnnkernels._C", reason="the C++ extension rnnkernels._C is not built")
    if not list((Path(rnnkernels.__file__).parent / "lib").glob("librnnkernels_ops.so*")):
        pytest.skip("the package was built without CMake: _C holds the registration itself")
    (library,) = [p for p in (prefix / "lib").glob("librnnkernels_ops.so*") if not p.is_symlink()]
    steps = [_LOAD_CMAKE_LIBRARY.format(library=str(library)), "import rnnkernels._C\n"]
    if not cmake_library_first:
        steps.reverse()
    script = "import ctypes\nimport torch\n" + "".join(steps) + _TWO_REGISTRATION_LIBRARIES
    result = _python(script + _RUN_CPP_INDRNN)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "ok" in result.stdout


# ---- where builds find the package


def test_cmake_prefix_path():
    expected = os.path.join(os.path.dirname(os.path.abspath(rnnkernels.__file__)), "share", "cmake")
    assert isinstance(rnnkernels.cmake_prefix_path, str)
    assert rnnkernels.cmake_prefix_path == expected
    result = subprocess.run([sys.executable, "-m", "rnnkernels", "--cmake-prefix-path"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
