"""Compile every kernel the interpreter tests generate for a GPU target, without a GPU.

Runs tests/test_fused_cuda.py's interpreter cases to collect the kernel specs, then prints each
one's GPU source and compiles it with Triton for sm_90 (Hopper), reporting compile errors and
whether global memory access is vectorised. Usage: python scripts/compile_check.py [arch]
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collect() -> None:
    """Run the interpreter tests in a child that pickles the kernel specs it used."""
    code = (
        "import pickle, sys, pytest\n"
        "sys.path.insert(0, 'tests')\n"
        "rc = pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_fused_cuda.py', '-k', 'interpreted'])\n"
        "from gradstep.backends.cuda import runner\n"
        "pickle.dump([k for k in runner._KERNELS], open(sys.argv[1], 'wb'))\n"
    )
    subprocess.run([sys.executable, "-c", code, "/tmp/gradstep_specs.pkl"], cwd=ROOT, check=True)


def main() -> int:
    import pickle

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gradstep.backends.cuda import runner

    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    collect()
    keys = pickle.load(open("/tmp/gradstep_specs.pkl", "rb"))
    print(f"triton {triton.__version__}: compiling {len(keys)} kernels for sm_{arch}")
    failures = 0
    for rule, cfg, names, n_states, spec in keys:
        spec = dataclasses.replace(spec, interpret=False)
        fn = runner._kernel(rule, cfg, names, n_states, spec)
        sig = {"meta": "*i64", "n_tensors": "i64"}
        for name, mode, dt in spec.scalar_modes:
            tl_dt = {"float32": "fp32", "float64": "fp64", "bfloat16": "bf16", "float16": "fp16"}[dt]
            sig[f"s_{name}" if mode == "f" else f"s_{name}_ptr"] = "fp64" if mode == "f" else f"*{tl_dt}"
        sig.update(BLOCK="constexpr", PER_PROGRAM="constexpr", ALIGNED="constexpr")
        t0 = time.perf_counter()
        try:
            c = triton.compile(
                ASTSource(fn, sig, constexprs={"BLOCK": runner.BLOCK, "PER_PROGRAM": 2, "ALIGNED": True}),
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=runner.NUM_WARPS, enable_fp_fusion=True),
            )
        except Exception as exc:  # noqa: BLE001 - report and go on
            failures += 1
            print(f"FAIL {rule.__name__} {cfg} {spec.dtypes[0]}: {exc}")
            continue
        vec = sorted(set(re.findall(r"(?:ld|st)\.global\.v\d\.\w+", c.asm["ptx"])))
        print(f"ok {time.perf_counter() - t0:5.2f}s {rule.__name__} {spec.dtypes[0]} {cfg} {vec}")
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
