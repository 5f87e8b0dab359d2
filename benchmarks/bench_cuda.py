"""GPU benchmark script; the logic is gradstep.benchmark_cuda (also ``gradstep bench --device cuda``)."""

import sys

from gradstep.benchmark_cuda import main

if __name__ == "__main__":
    sys.exit(main())
