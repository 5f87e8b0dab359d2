"""Host values of per-parameter step counters, without a device sync per step.

``fused=True`` and ``capturable=True`` keep ``state['step']`` on the parameter's device, as torch
does. Reading such counters with ``.item()`` waits for the device, once per parameter per step.
Instead, their values are mirrored on the host (``_host_mirror``): while the only writes since
the last step are our own increments, the new values are known without reading.
"""

from __future__ import annotations

import torch

from ..backends.cpu.steps import increment_cpu
from . import _host_mirror


def _reads_are_cheap(steps: list[torch.Tensor]) -> bool:
    return steps[0].device.type == "cpu"


def increment(steps: list[torch.Tensor]) -> list[float]:
    """Add one to every counter (one foreach op) and return their new values as floats."""
    if not steps or _reads_are_cheap(steps):
        values = increment_cpu(steps) if steps else None  # one native call, no per-tensor ops
        if values is not None:
            return values
        torch._foreach_add_(steps, 1)
        return [s.item() for s in steps]
    return _host_mirror.add_one(steps)
