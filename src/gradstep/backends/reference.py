"""Reference backend: a rule applied to one tensor at a time with plain torch ops (``foreach=False``).

It is the readable oracle the faster backends are checked against, and the backend that
``differentiable=True`` uses, since every op here is an ordinary autograd-tracked torch op.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch


class TorchOps:
    """The ``ops`` namespace a rule receives when it runs on plain tensors.

    Scalars may be Python numbers or 0-d tensors (``capturable=True`` and tensor ``lr``).
    """

    sqrt = staticmethod(torch.sqrt)
    abs = staticmethod(torch.abs)
    sign = staticmethod(torch.sign)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)
    exp = staticmethod(torch.exp)
    #: a value autograd does not differentiate through (only this backend runs under autograd)
    detach = staticmethod(torch.Tensor.detach)

    @staticmethod
    def lerp(start, end, weight):
        return torch.lerp(start, end, weight)

    @staticmethod
    def where(cond, a, b):
        return torch.where(cond, a, b)

    @staticmethod
    def clamp(x, lo=None, hi=None):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def add(x, y, alpha=1.0):
        """``x + alpha * y``, rounded once as torch's ``add(alpha=)`` (it matters for bf16)."""
        if isinstance(alpha, Number):
            return torch.add(x, y, alpha=alpha)
        return x + alpha * y

    @staticmethod
    def addcmul(x, a, b, value=1.0):
        """``x + value * a * b`` (one rounding per op as torch's addcmul)."""
        if isinstance(value, Number):
            return torch.addcmul(x, a, b, value=value)
        return x + value * a * b

    @staticmethod
    def addcdiv(x, a, b, value=1.0):
        """``x + value * a / b``."""
        if isinstance(value, Number):
            return torch.addcdiv(x, a, b, value=value)
        return x + value * a / b


def as_real(t: torch.Tensor | None) -> torch.Tensor | None:
    """Complex tensors are updated as pairs of reals, as torch.optim does."""
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def run_reference(rule, cfg: Any, scalars: list[Any], tensors: list[list[torch.Tensor]]) -> None:
    """Apply ``rule`` tensor by tensor.

    ``tensors`` is ``[params, grads, state_1, ...]``; outputs of the rule overwrite params and
    states (in place, so optimizer state and parameters keep their identity).
    """
    # Under autograd (differentiable=True) the rule reads copies: the graph may have saved the
    # old values, which writing the new ones back in place would otherwise invalidate.
    copy_inputs = torch.is_grad_enabled()
    for i, s in enumerate(scalars):
        row = [as_real(lst[i]) for lst in tensors]
        p, g, *states = row
        dsts = [p, *states]
        ins = [t.clone() for t in dsts] if copy_inputs else dsts
        outs = rule(TorchOps, cfg, s, ins[0], g, *ins[1:])
        for dst, src, new in zip(dsts, ins, outs):
            if new is not src:
                dst.copy_(new)
