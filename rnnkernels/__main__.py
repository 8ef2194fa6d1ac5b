"""``python -m rnnkernels --cmake-prefix-path``: where CMake finds rnnkernels' package config.

    cmake -DCMAKE_PREFIX_PATH="$(python -m rnnkernels --cmake-prefix-path);$(python -c \\
        'import torch;print(torch.utils.cmake_prefix_path)')" ...

then ``find_package(rnnkernels REQUIRED)`` and link ``rnnkernels::rnnkernels``.
"""

from __future__ import annotations

import argparse
import os
import sys

import rnnkernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnnkernels", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cmake-prefix-path", action="store_true",
                        help="print the directory to add to CMAKE_PREFIX_PATH")  # fmt: skip
    parser.add_argument("--version", action="version", version=rnnkernels.__version__)
    args = parser.parse_args(argv)
    if not args.cmake_prefix_path:
        parser.print_help()
        return 0
    path = rnnkernels.cmake_prefix_path
    if not os.path.isfile(os.path.join(path, "rnnkernels", "rnnkernelsConfig.cmake")):
        package = os.path.dirname(os.path.dirname(path))
        print(
            f"warning: this rnnkernels ({package}) holds no CMake package. Build and install the "
            f"C++ library into it from a source checkout:\n"
            f"  cmake -S <rnnkernels source> -B build -DCMAKE_PREFIX_PATH=<torch's "
            f"cmake_prefix_path>\n  cmake --build build && cmake --install build --prefix "
            f"{package}\nor install it anywhere and put that prefix in CMAKE_PREFIX_PATH.",
            file=sys.stderr,
        )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
