#!/usr/bin/env bash
# One device run for the CUDA backend: environment, GPU benchmark, GPU tests; logs under $OUT.
# Usage (on a machine with a GPU, torch and Triton; gradstep from this tree, no install):
#   OUT=/tmp/out bash scripts/gpu_check.sh
set -o pipefail
OUT=${OUT:-/tmp/gradstep-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GRADSTEP_CACHE_DIR=/tmp/gradstep-cache
PY=${PY:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"
# smoke: one fused step, so a broken build shows at once
timeout 120 $PY - <<'PY' 2>&1 | tee "$OUT/smoke.txt"
import time, torch, gradstep
p = torch.nn.Parameter(torch.randn(1 << 20, device="cuda")); p.grad = torch.randn_like(p)
t = time.perf_counter(); gradstep.AdamW([p], fused=True).step(); torch.cuda.synchronize()
print("first fused AdamW step (compile included): %.2f s" % (time.perf_counter() - t))
from gradstep import _native  # the steady path's C++ helpers: build them now, once
t = time.perf_counter(); built = _native.wait()
print("native helpers: %s (%.1f s)" % ("built" if built else "NOT built (Python checks run)", time.perf_counter() - t))
PY
timeout ${BENCH_TIMEOUT:-240} $PY benchmarks/bench_cuda.py --sweep --repeats ${REPEATS:-7} \
  --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
echo "bench exit $?"
timeout ${TEST_TIMEOUT:-240} $PY -m pytest tests/test_fused_cuda.py -k gpu -q -p no:cacheprovider \
  --durations=8 --junitxml="$OUT/tests.xml" ${TEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -40
echo "tests exit $?"
# the foreach backend on CUDA: in-place evaluation bitwise against out-of-place, and the step's
# peak memory over the parameters' bytes against torch.optim's foreach (torch's
# test_peak_memory_foreach allows about one parameter-sized intermediate over its for-loop)
timeout ${TEST_TIMEOUT:-240} $PY -m pytest tests/test_foreach_memory.py -k cuda -q -p no:cacheprovider \
  2>&1 | tee "$OUT/foreach_cuda.log" | tail -5
timeout 120 $PY - <<'PY' 2>&1 | tee "$OUT/foreach_peak.txt"
import torch, gradstep
for name in ("Adam", "AdamW", "SGD", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "Rprop"):
    row = []
    for lib in (torch.optim, gradstep):
        ps = [torch.nn.Parameter(torch.randn(1 << 22, device="cuda")) for _ in range(4)]
        kw = dict(momentum=0.9) if name == "SGD" else {}
        opt = getattr(lib, name)(ps, lr=1e-3, foreach=True, **kw)
        for p in ps: p.grad = torch.randn_like(p)
        opt.step(); torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        opt.step(); torch.cuda.synchronize()
        row.append((torch.cuda.max_memory_allocated() - base) / (4 * 4 * (1 << 22)))
        del opt, ps
    print("%-9s foreach peak / param bytes: torch %.2f gradstep %.2f" % (name, *row))
PY
