"""Host time of a fused CUDA step, measured without a GPU.

On many small tensors a fused GPU step is bound by the Python work on the host, not by the
kernel. This script measures that host work on the CPU: CPU tensors are sent down the CUDA
path (the steady plan and the Triton runner, with its work-list caches), and the kernel launch
is replaced by a no-op. It prints the median time per step and per tensor, for the steady path
(the default) and, with ``--generic``, for the generic path every step takes before a plan exists.

    python benchmarks/host_overhead.py                 # Adam SGD ASGD NAdam, 5000 tensors
    python benchmarks/host_overhead.py AdamW -n 2000 --generic

Step counters of CPU tensors live on the CPU, as those of CUDA parameters do by default. With
``--device-counters`` they are treated as device counters (``fused=True`` on CUDA: mirrored on the
host, advanced by one ``torch._foreach_add_``); the time of that multi-tensor add, one launch on
CUDA but a slow per-tensor loop here, is measured separately and left out.

The steady path's per-step check runs in C++ (``gradstep._native``, built first if need be);
``--python-check`` measures the Python versions instead.

With ``--torch``, torch.optim's fused optimizers (Adam, AdamW, SGD, Adagrad) are measured the
same way in the same run: their kernels (``torch._fused_adam_`` and kin) and their step-counter
increment (``torch._foreach_add_``, a multi-tensor launch on CUDA but a slow per-tensor loop on
the CPU) are replaced by no-ops, so what remains is their Python and C++ host work per step.
The ratio estimates the small-set target of the CUDA backend (fused at least as fast as torch's
fused) where the step is bound by host work.

The numbers are for this machine's CPU: compare them with each other (before/after a change,
gradstep against torch), not with GPU timings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gradstep
import gradstep.backends as backends
from gradstep import _native
from gradstep.algorithms import _host_mirror, _steady, _steps
from gradstep.backends import cuda as cuda_backend
from gradstep.backends.cuda import runner

SHAPES = [(64,), (64, 64), (256,), (128, 32)]
FUSED_FLAG = {"Adam", "AdamW", "SGD", "Adagrad"}
#: torch's fused kernels and counter increment, stubbed out for ``--torch`` (see the docstring)
TORCH_HOST_ONLY = ("_fused_adam_", "_fused_adamw_", "_fused_sgd_", "_fused_adagrad_", "_foreach_add_")


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def route_cpu_tensors_to_the_cuda_path(generic: bool) -> None:
    runner._kernel = lambda *args, **kwargs: _NoLaunch()
    cuda_backend._runner = runner.run_triton
    backends._fused = backends._by_device_and_dtype(runner.run_triton)
    _steady._runs_triton = lambda params: True
    if generic:
        _steady.prepare = lambda opt, group: None
        _steady.remember = lambda *args: None


class _TimedAdd:
    """``torch._foreach_add_`` with its time accumulated (``--device-counters``)."""

    def __init__(self):
        self.real, self.seconds = torch._foreach_add_, 0.0
        self.__name__ = self.real.__name__  # torch._dynamo looks torch's functions up by name

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.real(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def treat_counters_as_device_counters() -> _TimedAdd:
    _steps._reads_are_cheap = lambda steps: False
    _host_mirror.NATIVE_CPU = False
    _steady.steps.incrementer = lambda counters: None
    timed = torch._foreach_add_ = _TimedAdd()
    return timed


def measure(name: str, n: int, repeats: int = 15, package=gradstep) -> float:
    """Median seconds per step of ``package.name`` over ``n`` small tensors (less the time in
    ``torch._foreach_add_`` when that is timed, see ``--device-counters``)."""
    params = [torch.zeros(SHAPES[i % len(SHAPES)], requires_grad=True) for i in range(n)]
    kwargs = dict(fused=True) if name in FUSED_FLAG else {}
    if name == "SGD":
        kwargs["momentum"] = 0.9
    opt = getattr(package, name)(params, lr=1e-3, **kwargs)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.step()
    times = []
    timed = torch._foreach_add_ if isinstance(torch._foreach_add_, _TimedAdd) else None
    for _ in range(repeats):
        excluded = timed.seconds if timed else 0.0
        start = time.perf_counter()
        opt.step()
        elapsed = time.perf_counter() - start
        times.append(elapsed - (timed.seconds - excluded if timed else 0.0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=["Adam", "SGD", "ASGD", "NAdam"])
    parser.add_argument("-n", type=int, default=5000, help="tensors per group")
    parser.add_argument("--generic", action="store_true", help="disable the steady path")
    parser.add_argument("--device-counters", action="store_true",
                        help="treat step counters as device counters (fused=True on CUDA)")
    parser.add_argument("--python-check", action="store_true",
                        help="the steady path's per-step check in Python, not the C++ helper")
    parser.add_argument("--torch", action="store_true",
                        help="also measure torch.optim's fused host work (kernels stubbed out)")
    args = parser.parse_args()
    route_cpu_tensors_to_the_cuda_path(args.generic)
    if args.python_check:
        _native.ready = lambda n_tensors=0: None
    elif _native.wait() is None:
        print("note: the native helpers could not be built; their Python versions run")
    if args.device_counters:
        treat_counters_as_device_counters()
    for name in args.names:
        t = measure(name, args.n)
        line = f"{name:8s} n={args.n}: {t * 1e3:7.2f} ms/step  {t / args.n * 1e6:5.2f} us/tensor"
        if args.torch and name in FUSED_FLAG:
            ref = measure_torch_fused(name, args.n)
            line += f"   torch fused {ref / args.n * 1e6:5.2f} us/tensor  (gradstep/torch {t / ref:4.2f})"
        print(line)


def measure_torch_fused(name: str, n: int) -> float:
    """``measure`` of torch.optim's fused ``name`` with its kernels stubbed out."""
    saved = {attr: getattr(torch, attr) for attr in TORCH_HOST_ONLY}  # (a _TimedAdd too)
    try:
        for attr in TORCH_HOST_ONLY:
            setattr(torch, attr, lambda *args, **kwargs: None)
        return measure(name, n, package=torch.optim)
    finally:
        for attr, fn in saved.items():
            setattr(torch, attr, fn)


if __name__ == "__main__":
    main()
