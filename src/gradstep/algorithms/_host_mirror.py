"""Host copies of per-parameter 0-d state tensors, so a step need not wait for the device.

Some algorithms keep per-parameter scalars in their state as 0-d tensors on the parameter's
device: step counters (``fused=True``/``capturable=True``), ASGD's ``eta`` and ``mu``, NAdam's
``mu_product``. Reading them with ``.item()`` waits for the device once per parameter per step.
Instead, the values a group's tensors hold are kept on the host next to the tensors' version
numbers (``Tensor._version``, bumped by every in-place write): while the only writes since are
our own, recorded with :func:`record`, the values are known without a read. Any other write
(``load_state_dict`` makes new tensors; ``fill_``/``copy_`` bump versions) costs one batched
read of the group. Writes through ``.data`` bypass version counters and are not seen.

The mirror holds the tensors it describes (so their ids cannot be reused), for the 256 tensor
lists used most recently.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict

import torch

from ..backends.cpu.steps import load_cpu, store_cpu

_MIRROR: OrderedDict[tuple, tuple[list[torch.Tensor], tuple, list[float]]] = OrderedDict()
_LISTS = 256
#: read and write CPU tensors natively instead of mirroring them (tests turn this off to
#: exercise the mirror, which device tensors use, on CPU tensors)
NATIVE_CPU = True
_version = operator.attrgetter("_version")


def read_device(tensors: list[torch.Tensor]) -> list[float]:
    """Read 0-d tensors: one copy and one sync (per device, if several)."""
    if any(t.device != tensors[0].device for t in tensors):
        return [t.item() for t in tensors]
    return torch.stack([t.reshape(()).double() for t in tensors]).tolist()


def _versions(tensors: list[torch.Tensor]) -> tuple | None:
    try:
        return tuple(map(_version, tensors))
    except RuntimeError:  # inference tensors have no version counter
        return None


def values(tensors: list[torch.Tensor]) -> list[float]:
    """The values of ``tensors``: from the mirror if nobody else wrote them, else read.

    CPU tensors are read directly (one native call): that costs less than the mirror's checks.
    """
    found = load_cpu(tensors) if NATIVE_CPU else None
    if found is not None:
        return found
    entry = _MIRROR.get(tuple(map(id, tensors)))
    if entry is not None and entry[1] == _versions(tensors):
        return list(entry[2])
    found = read_device(tensors)
    record(tensors, found)
    return found


def record(tensors: list[torch.Tensor], new_values: list[float]) -> None:
    """Note that ``tensors`` now hold ``new_values`` (exactly, in their own dtype)."""
    versions = _versions(tensors)
    if versions is None:
        return
    key = tuple(map(id, tensors))
    _MIRROR[key] = (list(tensors), versions, list(new_values))
    _MIRROR.move_to_end(key)
    if len(_MIRROR) > _LISTS:
        _MIRROR.popitem(last=False)


def store(tensors: list[torch.Tensor], new_values: list[float]) -> list[float]:
    """Write ``new_values`` into ``tensors`` (rounded to their dtype) and mirror them; returns
    the stored values. CPU tensors are written by one native call (which, like the step
    counters' increment, bumps no version counter: so CPU tensors are never mirrored, see
    ``values``); device tensors by two multi-tensor ops when the values are equal, else one
    host-to-device and one multi-tensor copy."""
    dtype = tensors[0].dtype
    if any(t.device != tensors[0].device or t.dtype != dtype for t in tensors):
        stored = []
        for t, v in zip(tensors, new_values):
            t.copy_(torch.tensor(v, dtype=torch.float64))
            stored.append(t.item())
        return stored
    host = torch.tensor(new_values, dtype=torch.float64).to(dtype)
    stored = host.tolist()
    if NATIVE_CPU and store_cpu(tensors, stored):  # CPU tensors: one native call, read back the same way
        return stored
    if min(stored) == max(stored) and math.isfinite(stored[0]):  # one value: no copy needed
        torch._foreach_zero_(tensors)
        torch._foreach_add_(tensors, stored[0])  # 0 + v is v, exactly
    else:
        src = host.to(tensors[0].device, non_blocking=True) if not tensors[0].is_cpu else host
        torch._foreach_copy_(tensors, list(src.unbind()))
    record(tensors, stored)
    return stored
