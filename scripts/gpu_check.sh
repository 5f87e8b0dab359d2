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
PY
timeout ${BENCH_TIMEOUT:-200} $PY benchmarks/bench_cuda.py --sweep --repeats ${REPEATS:-7} \
  --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
echo "bench exit $?"
timeout ${TEST_TIMEOUT:-240} $PY -m pytest tests/test_fused_cuda.py -k gpu -q -p no:cacheprovider \
  --durations=8 --junitxml="$OUT/tests.xml" ${TEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -40
echo "tests exit $?"
