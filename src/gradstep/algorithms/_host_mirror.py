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

_LISTS = 256
#: read and write CPU tensors natively instead of mirroring them (tests turn this off to
#: exercise the mirror, which device tensors use, on CPU tensors)
NATIVE_CPU = True
_version = operator.attrgetter("_version")
#: float32 holds every integer up to 2**24, float64 up to 2**53 (counting past that reads)
_EXACT = {torch.float32: 2.0**24, torch.float64: 2.0**53}


class _Entry:
    """What a list of tensors held after our last write: values, and version numbers."""

    __slots__ = ("tensors", "versions", "values", "exact")

    def __init__(self, tensors: list[torch.Tensor], versions: tuple, values: list[float]):
        self.tensors = list(tensors)  # held, so that their ids are not reused
        self.versions = versions
        self.values = list(values)
        self.exact = min(_EXACT.get(dtype, 0.0) for dtype in {t.dtype for t in tensors})


_MIRROR: OrderedDict[tuple, _Entry] = OrderedDict()


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


def _entry(tensors: list[torch.Tensor]) -> tuple[tuple, _Entry | None]:
    """The tensors' key and their entry, if nobody else wrote them since (else None)."""
    key = tuple(map(id, tensors))
    entry = _MIRROR.get(key)
    if entry is not None and entry.versions != _versions(tensors):
        entry = None
    return key, entry


def values(tensors: list[torch.Tensor]) -> list[float]:
    """The values of ``tensors``: from the mirror if nobody else wrote them, else read.

    CPU tensors are read directly (one native call): that costs less than the mirror's checks.
    """
    found = load_cpu(tensors) if NATIVE_CPU else None
    if found is not None:
        return found
    _, entry = _entry(tensors)
    if entry is not None:
        return list(entry.values)
    found = read_device(tensors)
    record(tensors, found)
    return found


def record(tensors: list[torch.Tensor], new_values: list[float]) -> None:
    """Note that ``tensors`` now hold ``new_values`` (exactly, in their own dtype)."""
    versions = _versions(tensors)
    if versions is None:
        return
    _remember(tuple(map(id, tensors)), _Entry(tensors, versions, new_values))


def _remember(key: tuple, entry: _Entry) -> None:
    _MIRROR[key] = entry
    _MIRROR.move_to_end(key)
    if len(_MIRROR) > _LISTS:
        _MIRROR.popitem(last=False)


def add_one(tensors: list[torch.Tensor]) -> list[float]:
    """Add one to every tensor (one multi-tensor op) and return the new values, from the mirror
    while they stay exact in the tensors' dtype (else read back).

    A steady loop reads the tensors' ids and versions once: the add bumps every version by one,
    so the entry is advanced without reading them again (were a tensor listed twice, its version
    would not match at the next call, which then reads)."""
    key, entry = _entry(tensors)
    if entry is None:
        versions = _versions(tensors)
        entry = _Entry(tensors, versions, read_device(tensors)) if versions is not None else None
    torch._foreach_add_(tensors, 1)
    if entry is None or max(entry.values) + 1 >= entry.exact:
        found = read_device(tensors)
        record(tensors, found)
        return found
    entry.values = [v + 1 for v in entry.values]
    entry.versions = tuple(map((1).__add__, entry.versions))
    _remember(key, entry)
    return list(entry.values)


def store(tensors: list[torch.Tensor], new_values: list[float]) -> list[float]:
    """Write ``new_values`` into ``tensors`` (rounded to their dtype) and mirror them; returns
    the stored values. CPU tensors are written by one native call (which, like the step
    counters' increment, bumps no version counter: so CPU tensors are never mirrored, see
    ``values``); device tensors by two multi-tensor ops when the values are equal, else one
    host-to-device and one multi-tensor copy."""
    dtype = tensors[0].dtype
    host = torch.tensor(new_values, dtype=torch.float64).to(dtype)
    stored = host.tolist()
    if NATIVE_CPU and store_cpu(tensors, stored):  # CPU tensors of one dtype: one native call
        return stored
    if any(t.device != tensors[0].device or t.dtype != dtype for t in tensors):
        stored = []
        for t, v in zip(tensors, new_values):
            t.copy_(torch.tensor(v, dtype=torch.float64))
            stored.append(t.item())
        return stored
    if min(stored) == max(stored) and math.isfinite(stored[0]):  # one value: no copy needed
        torch._foreach_zero_(tensors)
        torch._foreach_add_(tensors, stored[0])  # 0 + v is v, exactly
    else:
        src = host.to(tensors[0].device, non_blocking=True) if not tensors[0].is_cpu else host
        torch._foreach_copy_(tensors, list(src.unbind()))
    record(tensors, stored)
    return stored
