"""`import rnnkernels` stays light: it imports nothing the first call does not need."""

import os
import subprocess
import sys

# Run in a fresh interpreter: what `import rnnkernels` adds to what `import torch` imported.
IMPORT = """
import sys
import torch
before = set(sys.modules)
import rnnkernels
heavy = ["torch._dynamo", "torch._inductor", "numba", "triton", "rnnkernels._C"]
print("IMPORTED", [name for name in heavy if name in sys.modules])
print("SELECTED", rnnkernels.get_backend())
"""


def test_import_is_light_and_reads_the_environment_variable():
    """Dynamo (which torch.compiler.assume_constant_result imported: 1 s, 150 MB), the Numba and
    Triton backends and the C++ extension load on first use, not at import. In the same fresh
    interpreter, RNNKERNELS_BACKEND sets the process-wide default."""
    env = dict(os.environ, RNNKERNELS_BACKEND="reference")
    run = subprocess.run(
        [sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "IMPORTED []" in run.stdout, run.stdout
    assert "SELECTED reference" in run.stdout, run.stdout
