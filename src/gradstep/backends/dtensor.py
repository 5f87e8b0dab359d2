"""DTensor parameters (FSDP2, tensor parallel): run elementwise rules on the local shards.

An elementwise update of tensors that share one sharding is the same update of each rank's
local shard, so every backend (reference, foreach, fused) is handed plain local tensors. That
needs no sharding strategy for each op (DTensor has none for several out-of-place foreach ops)
and skips DTensor's per-op dispatch. Rows whose tensors don't share a mesh and placements, or
hold a ``Partial`` placement, keep their DTensors and run on the reference backend, where
DTensor's own dispatch redistributes as needed.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

from .reference import run_reference


def _dtensor_type() -> type | None:
    """DTensor's class if it has been imported (no DTensor can exist before that)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def _same_sharding(row: list[Any], dtensor: type) -> bool:
    """Whether every tensor of a row is a DTensor laid out exactly like the parameter."""
    p = row[0]
    if any(pl.is_partial() for pl in p.placements):
        return False
    return all(
        isinstance(t, dtensor) and t.device_mesh == p.device_mesh and t.placements == p.placements
        for t in row[1:]
    )


def on_local_shards(runner: Callable) -> Callable:
    """Wrap a runner so that DTensor rows reach it as their local shards (in place)."""

    def run(rule, cfg, scalars, tensors):
        dtensor = _dtensor_type()
        local, other = [], []
        for i, p in enumerate(tensors[0]):
            row = [lst[i] for lst in tensors]
            if dtensor is None or not any(isinstance(t, dtensor) for t in row):
                local.append(i)
            elif isinstance(p, dtensor) and _same_sharding(row, dtensor):
                local.append(i)
            else:
                other.append(i)
        if local:
            runner(
                rule,
                cfg,
                [scalars[i] for i in local],
                [[_local(lst[i], dtensor) for i in local] for lst in tensors],
            )
        if other:
            run_reference(
                rule, cfg, [scalars[i] for i in other], [[lst[i] for i in other] for lst in tensors]
            )

    return run


def _local(t: torch.Tensor, dtensor: type | None) -> torch.Tensor:
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def dtensor_aware(select: Callable) -> Callable:
    """Decorate ``select_backend``: groups holding DTensors get runners on local shards.

    ``differentiable=True`` keeps DTensors as they are, so autograd sees the real tensors.
    """

    @functools.wraps(select)
    def wrapped(group: dict[str, Any], params: list[torch.Tensor]) -> Callable:
        runner = select(group, params)
        dtensor = _dtensor_type()
        if dtensor is None or group.get("differentiable"):
            return runner
        if not any(isinstance(p, dtensor) for p in params):
            return runner
        return on_local_shards(runner)

    return wrapped
