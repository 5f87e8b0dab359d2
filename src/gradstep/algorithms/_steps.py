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

# float32 counts integers exactly up to 2**24, float64 up to 2**53; beyond, read the device.
_EXACT = {torch.float32: 2.0**24, torch.float64: 2.0**53}


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
    values = _host_mirror.values(steps)
    torch._foreach_add_(steps, 1)
    exact = min(_EXACT.get(dtype, 0.0) for dtype in {s.dtype for s in steps})
    if max(values) + 1 < exact:
        values = [v + 1 for v in values]
        _host_mirror.record(steps, values)
    else:
        values = _host_mirror.read_device(steps)
    return values
