"""Builds rnnkernels._C, the C++ CPU kernels, against the torch already installed.

    pip install --no-build-isolation -e .

Registration is through the torch dispatcher (csrc/torch/ops.cpp), not pybind11:
it compiles fast and torch.compile can trace the ops. Set RNNKERNELS_NATIVE=1 to build with
-march=native for this machine only (the default build runs on any x86-64), and
RNNKERNELS_NO_EXTENSION=1 to install the pure-Python package without compiling. The compiler
flags are those of csrc/flags.txt, which CMakeLists.txt reads too.
"""

import glob
import os
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.environ.get("RNNKERNELS_NATIVE") == "1"
OPT = "-O3 -g0"  # GCC 12 vectorises only trivially-counted loops at -O2
KERNELS = sorted(glob.glob("csrc/cpu/*.cpp"))  # the library for C++ users (CMakeLists.txt)
OPS = "csrc/torch/ops.cpp"  # the dispatcher registration: the library rnnkernels_ops
MODULE = "csrc/torch/module.cpp"  # PyInit__C: the extension only


def flags() -> list[str]:
    """-O3 -g0, then the flags of csrc/flags.txt (its "native:" ones with RNNKERNELS_NATIVE=1)."""
    with open(os.path.join(ROOT, "csrc", "flags.txt")) as f:
        lines = [line.strip() for line in f]
    if NATIVE:
        lines = [line.removeprefix("native:").strip() for line in lines]
    return OPT.split() + [line for line in lines if line.startswith("-")]


def extensions():
    if os.environ.get("RNNKERNELS_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    class BuildExtensionAndCMakePackage(BuildExtension):
        """First builds the C++ libraries for C++ users with CMake (CMakeLists.txt: the kernels,
        librnnkernels, and their op registration, librnnkernels_ops) and installs them into the
        package the way torch ships libtorch: lib/, include/, share/cmake/ =
        rnnkernels.cmake_prefix_path. The extension then compiles only csrc/torch/module.cpp and
        links librnnkernels_ops (RUNPATH $ORIGIN/lib), so each kernel is compiled once and a
        process holds one registration. Without cmake, or with RNNKERNELS_NO_CMAKE_PACKAGE=1, the
        extension compiles the kernels and the registration itself and the install has no CMake
        package."""

        def run(self):
            cmake = shutil.which("cmake")
            if cmake is None or os.environ.get("RNNKERNELS_NO_CMAKE_PACKAGE") == "1":
                print("rnnkernels: no cmake, so no CMake package for C++ users in this install")
                return super().run()
            in_source = self.inplace or getattr(self, "editable_mode", False)
            package = os.path.join(ROOT if in_source else self.build_lib, "rnnkernels")
            build = os.path.join(self.build_temp, "cmake")
            subprocess.check_call([
                cmake, "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_CXX_FLAGS_RELEASE={OPT} -DNDEBUG", f"-DRNNKERNELS_NATIVE={int(NATIVE)}",
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                "-DRNNKERNELS_SOVERSION=OFF", "-DRNNKERNELS_INSTALL_RPATH=$ORIGIN/../../torch/lib",
            ])  # fmt: skip
            subprocess.check_call([cmake, "--build", build, "--parallel"])
            subprocess.check_call([cmake, "--install", build, "--prefix", package])
            for ext in self.extensions:
                ext.sources = [MODULE]
                ext.library_dirs.append(os.path.join(package, "lib"))
                ext.libraries.append("rnnkernels_ops")
                ext.extra_link_args.append("-Wl,-rpath,$ORIGIN/lib")
            super().run()

    ext = CppExtension(
        "rnnkernels._C",
        [*KERNELS, OPS, MODULE],
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_compile_args=flags(),
    )
    return [ext], {"build_ext": BuildExtensionAndCMakePackage.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
