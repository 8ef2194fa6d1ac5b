import sys

from rnnkernels.bench.cli import main

sys.exit(main())
