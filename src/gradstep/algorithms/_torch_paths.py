"""Which of its implementations torch.optim would run, for algorithms whose for-loop and
foreach paths round per-step scalars differently.

Most algorithms compute their per-step scalars the same way on every path. A few (ASGD's eta,
NAdam's and RAdam's step sizes with a tensor lr) use tensor arithmetic on one path and Python
floats on the other; the results differ in float32's last bits, which is visible in float64
runs. Reproducing the path torch would take keeps gradstep's numbers equal to torch's there.
"""

from __future__ import annotations

from typing import Any

import torch

_FOREACH_DEVICES = ("cuda", "xpu")


def torch_takes_foreach(group: dict[str, Any], t: torch.Tensor) -> bool:
    """Whether torch.optim runs this group on its foreach path (its default on GPUs)."""
    if group["foreach"] is not None:
        return bool(group["foreach"])
    return not group["differentiable"] and t.device.type in _FOREACH_DEVICES
