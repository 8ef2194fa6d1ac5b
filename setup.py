"""Builds rnnkernels._C, the C++ CPU kernels, against the torch already installed.

    pip install --no-build-isolation -e .

Registration is through the torch dispatcher (TORCH_LIBRARY in csrc/torch/ops.cpp), not pybind11:
it compiles fast and torch.compile can trace the ops. Set RNNKERNELS_NATIVE=1 to build with
-march=native for this machine only (the default build runs on any x86-64), and
RNNKERNELS_NO_EXTENSION=1 to install the pure-Python package without compiling.
"""

import glob
import os
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("RNNKERNELS_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    class BuildExtensionAndCMakePackage(BuildExtension):
        """Also builds the C++ library for C++ users (CMakeLists.txt: the kernels without the op
        registration) and installs it into the package the way torch ships libtorch: lib/,
        include/, share/cmake/ = rnnkernels.cmake_prefix_path. Skipped without cmake or with
        RNNKERNELS_NO_CMAKE_PACKAGE=1."""

        def run(self):
            super().run()
            cmake = shutil.which("cmake")
            if cmake is None or os.environ.get("RNNKERNELS_NO_CMAKE_PACKAGE") == "1":
                print("rnnkernels: no cmake, so no CMake package for C++ users in this install")
                return
            in_source = self.inplace or getattr(self, "editable_mode", False)
            package = os.path.join(ROOT if in_source else self.build_lib, "rnnkernels")
            build = os.path.join(self.build_temp, "cmake")
            native = "ON" if os.environ.get("RNNKERNELS_NATIVE") == "1" else "OFF"
            subprocess.check_call([
                cmake, "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                "-DCMAKE_CXX_FLAGS_RELEASE=-O3 -g0 -DNDEBUG", f"-DRNNKERNELS_NATIVE={native}",
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                "-DRNNKERNELS_SOVERSION=OFF", "-DRNNKERNELS_INSTALL_RPATH=$ORIGIN/../../torch/lib",
            ])  # fmt: skip
            subprocess.check_call([cmake, "--build", build, "--parallel"])
            subprocess.check_call([cmake, "--install", build, "--prefix", package])

    # -O3: GCC 12 vectorises only trivially-counted loops at -O2. No -ffast-math: it breaks NaN
    # propagation. -fno-trapping-math lets selects if-convert (FP flags only, values unchanged);
    # -ffp-contract=off keeps a*b+c rounded as torch's eager ops round it. -fopenmp: ATen's
    # at::parallel_for is inline OpenMP, serial when compiled without it; compile-only, so its
    # GOMP calls bind to the OpenMP runtime torch loaded (one thread pool in the process).
    flags = ["-O3", "-g0"]
    flags += ["-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"]
    if os.environ.get("RNNKERNELS_NATIVE") == "1":
        flags.append("-march=native")
    sources = sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/torch/*.cpp"))
    ext = CppExtension(
        "rnnkernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_compile_args=flags,
    )
    return [ext], {"build_ext": BuildExtensionAndCMakePackage.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
