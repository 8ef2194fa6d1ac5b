"""Packaging: `pip wheel .` gives a wheel that installs into a fresh location and works; the sdist
holds everything a build needs. (Builds the extension and the C++ library once more: ~1 min.)"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import sys, torch, rnnkernels
assert rnnkernels.__file__.startswith(sys.argv[1]), rnnkernels.__file__
assert "cpp" in rnnkernels.available_backends()
from rnnkernels.testing import torch_twin
m = rnnkernels.LSTM(3, 5, 2, bidirectional=True, backend="cpp")
x = torch.randn(4, 2, 3)
torch.testing.assert_close(m(x)[0], torch_twin(m)(x)[0], atol=5e-5, rtol=0)
config = rnnkernels.cmake_prefix_path + "/rnnkernels/rnnkernelsConfig.cmake"
assert __import__("os").path.exists(config), config
"""


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=1800, **kwargs)
    assert result.returncode == 0, (
        f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
          "-w", str(out), str(ROOT)])  # fmt: skip
    (wheel,) = out.glob("rnnkernels-*.whl")
    return wheel


def test_wheel_holds_extension_library_headers_and_cmake_config(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    expected_files = [
        "rnnkernels/_C",
        "rnnkernels/lib/librnnkernels",
        "rnnkernels/lib/librnnkernels_ops",
        "rnnkernels/include/rnnkernels/lstm.h",
        "rnnkernels/include/rnnkernels/ops.h",
        "rnnkernels/share/cmake/rnnkernels/rnnkernelsConfig.cmake",
    ]
    for expected in expected_files:
        assert any(n.startswith(expected) for n in names), expected
    assert not any("/common.h" in n for n in names), "internal header shipped"


def test_wheel_installs_into_a_fresh_location_and_runs(wheel, tmp_path):
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
          str(wheel)])  # fmt: skip
    _run([sys.executable, "-c", SMOKE, str(site)], cwd=tmp_path, env={"PYTHONPATH": str(site)})


def test_sdist_holds_everything_a_build_needs(tmp_path):
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
         env={"RNNKERNELS_NO_EXTENSION": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    (sdist,) = tmp_path.glob("rnnkernels-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    expected_files = [
        "setup.py",
        "pyproject.toml",
        "CMakeLists.txt",
        "cmake/rnnkernelsConfig.cmake.in",
        "csrc/cpu/lstm.cpp",
        "csrc/cpu/common.h",
        "csrc/torch/ops.cpp",
        "csrc/include/rnnkernels/rnnkernels.h",
        "rnnkernels/ops/lstm/naive.py",
    ]
    for expected in expected_files:
        assert expected in names, expected
