"""Host values of per-parameter step counters, without a device sync per step.

``fused=True`` and ``capturable=True`` keep ``state['step']`` on the parameter's device, as torch
does. Reading such counters with ``.item()`` waits for the device, once per parameter per step.
Instead, the values of a group's counters are mirrored on the host next to the counters' version
numbers (``Tensor._version``, bumped by every in-place write): while the only writes since the
last step are our own increments, the new values are known without reading. Any other write
(``load_state_dict`` makes new tensors; ``fill_``/``copy_`` bump versions) sends the group back to
one batched read. Writes through ``.data`` bypass version counters and are not seen.

The mirror holds the counters it describes (so their ids cannot be reused), for the 64 groups
stepped most recently.
"""

from __future__ import annotations

import operator
from collections import OrderedDict

import torch

from ..backends.cpu.steps import increment_cpu

_MIRROR: OrderedDict[tuple, tuple[list[torch.Tensor], tuple, list[float]]] = OrderedDict()
_GROUPS = 64
# float32 counts integers exactly up to 2**24, float64 up to 2**53; beyond, read the device.
_EXACT = {torch.float32: 2.0**24, torch.float64: 2.0**53}
_version = operator.attrgetter("_version")
_dtype = operator.attrgetter("dtype")


def _reads_are_cheap(steps: list[torch.Tensor]) -> bool:
    return steps[0].device.type == "cpu"


def _read(steps: list[torch.Tensor]) -> list[float]:
    """Read counters from their device: one copy, one sync (per device, if several)."""
    if any(s.device != steps[0].device for s in steps):
        return [s.item() for s in steps]
    return torch.stack([s.reshape(()).double() for s in steps]).tolist()


def _versions(steps: list[torch.Tensor]) -> tuple | None:
    try:
        return tuple(map(_version, steps))
    except RuntimeError:  # inference tensors have no version counter
        return None


def increment(steps: list[torch.Tensor]) -> list[float]:
    """Add one to every counter (one foreach op) and return their new values as floats."""
    if not steps or _reads_are_cheap(steps):
        values = increment_cpu(steps) if steps else None  # one native call, no per-tensor ops
        if values is not None:
            return values
        torch._foreach_add_(steps, 1)
        return [s.item() for s in steps]
    key = tuple(map(id, steps))
    entry = _MIRROR.get(key)
    before = _versions(steps)
    torch._foreach_add_(steps, 1)
    if (entry is not None and before is not None and entry[1] == before
            and max(entry[2]) + 1 < min(_EXACT.get(d, 0.0) for d in set(map(_dtype, steps)))):
        values = [v + 1 for v in entry[2]]
    else:
        values = _read(steps)
    after = _versions(steps)
    if after is not None:
        _MIRROR[key] = (list(steps), after, values)
        _MIRROR.move_to_end(key)
        if len(_MIRROR) > _GROUPS:
            _MIRROR.popitem(last=False)
    return values
