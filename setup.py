"""Builds rnnkernels._C, the C++ CPU kernels, against the torch already installed.

    pip install --no-build-isolation -e .

Registration is through the torch dispatcher (TORCH_LIBRARY in csrc/torch/ops.cpp), not pybind11:
it compiles fast and torch.compile can trace the ops. Set RNNKERNELS_NATIVE=1 to build with
-march=native for this machine only (the default build runs on any x86-64), and
RNNKERNELS_NO_EXTENSION=1 to install the pure-Python package without compiling.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("RNNKERNELS_NO_EXTENSION") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # -O3: GCC 12 vectorises only trivially-counted loops at -O2. No -ffast-math: it breaks NaN
    # propagation. -fno-trapping-math lets selects if-convert (FP flags only, values unchanged);
    # -ffp-contract=off keeps a*b+c rounded as torch's eager ops round it.
    flags = ["-O3", "-g0"]
    flags += ["-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
    if os.environ.get("RNNKERNELS_NATIVE") == "1":
        flags.append("-march=native")
    sources = sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/torch/*.cpp"))
    ext = CppExtension(
        "rnnkernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_compile_args=flags,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
