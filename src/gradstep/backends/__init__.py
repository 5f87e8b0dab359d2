"""Backends that execute an elementwise rule, and the choice between them.

``foreach=False`` runs the reference backend, ``foreach=True`` the foreach backend, ``fused=True``
the fused backend (on the CPU: generated C, see cpu/; on CUDA: generated Triton, see cuda/); with
no flag the fastest available backend is used: fused for CPU and CUDA tensors, foreach
otherwise. ``differentiable=True`` always uses the reference backend, whose ops autograd can
differentiate.

One exception to "fused by default": float16 parameters take torch.optim's own default path
(for-loop on the CPU, foreach elsewhere). The fused kernels compute in float32, while torch's
default rounds every op to float16, where e.g. ``eps=1e-8`` underflows to 0 and a zero second
moment gives inf: the numbers would differ beyond rounding. ``fused=True`` still opts in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .cpu import run_fused_cpu
from .cuda import cuda_runner
from .dtensor import dtensor_aware
from .foreach import run_foreach
from .reference import run_reference

Runner = Callable[[Callable, Any, list, list], None]


def _by_device_and_dtype(runner: Runner) -> Runner:
    """Split the tensors of a group by (device, dtype) and run each part separately."""

    def run(rule, cfg, scalars, tensors):
        params = tensors[0]
        parts: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            parts.setdefault((p.device, p.dtype), []).append(i)
        if len(parts) == 1:
            runner(rule, cfg, scalars, tensors)
            return
        for idx in parts.values():
            runner(rule, cfg, [scalars[i] for i in idx], [[lst[i] for i in idx] for lst in tensors])

    return run


_foreach = _by_device_and_dtype(run_foreach)


def _run_fused(rule, cfg, scalars, tensors):
    """One (device, dtype) part: a Triton kernel on CUDA (foreach without Triton), else the CPU
    backend (which sends other devices to foreach)."""
    if tensors[0][0].device.type == "cuda":
        run = cuda_runner() or run_foreach
        run(rule, cfg, scalars, tensors)
        return
    run_fused_cpu(rule, cfg, scalars, tensors)


_fused = _by_device_and_dtype(_run_fused)


@dtensor_aware
def select_backend(group: dict[str, Any], params: list[torch.Tensor]) -> Runner:
    """The runner for one parameter group, from its ``foreach``/``fused``/``differentiable``."""
    if group.get("differentiable"):
        return run_reference
    foreach, fused = group.get("foreach"), group.get("fused")
    if fused:
        return _fused
    if foreach is False:
        return run_reference
    if foreach is None and fused is None and defaults_to_fused(params[0]):
        return _fused
    if foreach is None and fused is None and params[0].device.type == "cpu":
        return run_reference  # torch's CPU default (float16 parameters)
    return _foreach


def defaults_to_fused(p: torch.Tensor) -> bool:
    """Whether a group with neither ``foreach`` nor ``fused`` set runs fused (see above)."""
    return p.device.type in ("cpu", "cuda") and p.dtype is not torch.float16
