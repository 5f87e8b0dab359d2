"""CPU step-time benchmark: gradstep against torch.optim, every elementwise algorithm.

    python benchmarks/bench.py [--quick] [--json benchmarks/results/cpu.json]

The same as ``gradstep bench``; the logic is in ``gradstep.benchmark`` (inside the package, so
that the installed command has it too). Method and results: docs/performance.md.
"""

import sys

from gradstep.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
