"""Foreach backend: a rule applied to whole tensor lists with ``torch._foreach_*`` ops.

The rule is the same Python function the reference backend runs; here its values are
``TensorList`` objects whose operators dispatch to the multi-tensor kernels, so one
arithmetic operation of the rule is one foreach launch over every tensor of the group.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from .reference import as_real


def _unwrap(x):
    return x.ts if isinstance(x, TensorList) else x


class TensorList:
    """A list of same-device, same-dtype tensors with elementwise arithmetic."""

    __slots__ = ("ts",)

    def __init__(self, ts: list[torch.Tensor]):
        self.ts = ts

    # arithmetic ---------------------------------------------------------------------------
    def __add__(self, o):
        return TensorList(torch._foreach_add(self.ts, _unwrap(o)))

    __radd__ = __add__

    def __sub__(self, o):
        return TensorList(torch._foreach_sub(self.ts, _unwrap(o)))

    def __rsub__(self, o):
        return TensorList(torch._foreach_add(torch._foreach_neg(self.ts), _unwrap(o)))

    def __mul__(self, o):
        return TensorList(torch._foreach_mul(self.ts, _unwrap(o)))

    __rmul__ = __mul__

    def __truediv__(self, o):
        return TensorList(torch._foreach_div(self.ts, _unwrap(o)))

    def __rtruediv__(self, o):
        return TensorList(torch._foreach_mul(torch._foreach_reciprocal(self.ts), _unwrap(o)))

    def __neg__(self):
        return TensorList(torch._foreach_neg(self.ts))

    def __pow__(self, o):
        return TensorList(torch._foreach_pow(self.ts, _unwrap(o)))

    # comparisons have no foreach kernels: map them tensor by tensor -----------------------
    def _map2(self, o, fn):
        if isinstance(o, TensorList):
            return TensorList([fn(a, b) for a, b in zip(self.ts, o.ts)])
        if isinstance(o, list):
            return TensorList([fn(a, b) for a, b in zip(self.ts, o)])
        return TensorList([fn(a, o) for a in self.ts])

    def __gt__(self, o):
        return self._map2(o, torch.gt)

    def __lt__(self, o):
        return self._map2(o, torch.lt)

    def __ge__(self, o):
        return self._map2(o, torch.ge)

    def __le__(self, o):
        return self._map2(o, torch.le)

    def __eq__(self, o):  # type: ignore[override]
        return self._map2(o, torch.eq)

    def __ne__(self, o):  # type: ignore[override]
        return self._map2(o, torch.ne)

    __hash__ = None  # type: ignore[assignment]


def _per_tensor(values, n):
    """Broadcast a scalar (or per-tensor list) argument to one value per tensor."""
    if isinstance(values, TensorList):
        return values.ts
    if isinstance(values, list):
        return values
    return [values] * n


class ForeachOps:
    """The ``ops`` namespace a rule receives when its values are ``TensorList``s."""

    @staticmethod
    def sqrt(x):
        return TensorList(torch._foreach_sqrt(x.ts))

    @staticmethod
    def detach(x):  # no autograd on this backend
        return x

    @staticmethod
    def abs(x):
        return TensorList(torch._foreach_abs(x.ts))

    @staticmethod
    def sign(x):
        return TensorList(torch._foreach_sign(x.ts))

    @staticmethod
    def exp(x):
        return TensorList(torch._foreach_exp(x.ts))

    @staticmethod
    def maximum(a, b):
        return TensorList(torch._foreach_maximum(a.ts, _unwrap(b)))

    @staticmethod
    def minimum(a, b):
        return TensorList(torch._foreach_minimum(a.ts, _unwrap(b)))

    @staticmethod
    def lerp(start, end, weight):
        if isinstance(weight, (TensorList, torch.Tensor)) or (
            isinstance(weight, list) and not isinstance(weight[0], Number)
        ):
            n = len(start.ts)
            return TensorList(
                [torch.lerp(a, b, w) for a, b, w in zip(start.ts, end.ts, _per_tensor(weight, n))]
            )
        return TensorList(torch._foreach_lerp(start.ts, end.ts, weight))

    @staticmethod
    def where(cond, a, b):
        n = len(cond.ts)
        return TensorList(
            [torch.where(c, x, y) for c, x, y in zip(cond.ts, _per_tensor(a, n), _per_tensor(b, n))]
        )

    @staticmethod
    def clamp(x, lo=None, hi=None):
        out = x.ts
        if lo is not None:
            out = torch._foreach_clamp_min(out, _unwrap(lo))
        if hi is not None:
            out = torch._foreach_clamp_max(out, _unwrap(hi))
        return TensorList(out)

    @staticmethod
    def add(x, y, alpha=1.0):
        if isinstance(alpha, Number):
            return TensorList(torch._foreach_add(x.ts, y.ts, alpha=alpha))
        return x + y * alpha

    @staticmethod
    def addcmul(x, a, b, value=1.0):
        if isinstance(value, (Number, list)) and not isinstance(value, TensorList):
            if not isinstance(value, list) or isinstance(value[0], Number):
                return TensorList(torch._foreach_addcmul(x.ts, a.ts, b.ts, value))
        return x + a * b * value

    @staticmethod
    def addcdiv(x, a, b, value=1.0):
        if isinstance(value, (Number, list)) and not isinstance(value, TensorList):
            if not isinstance(value, list) or isinstance(value[0], Number):
                return TensorList(torch._foreach_addcdiv(x.ts, a.ts, b.ts, value))
        return x + a * value / b


def _partition_by_scalars(scalars: list[Any]) -> list[list[int]]:
    """Indices of tensors whose numeric scalars agree (normally all of them: one partition).

    Tensors with different step counts get different bias corrections, so they run as separate
    foreach calls; within a call every numeric scalar is a single Python number.
    """
    parts: dict[tuple, list[int]] = {}
    for i, s in enumerate(scalars):
        key = tuple(
            (k, v) for k, v in vars(s).items() if not isinstance(v, torch.Tensor)
        )
        parts.setdefault(key, []).append(i)
    return list(parts.values())


def _gather_scalars(scalars: list[Any]) -> Any:
    """One scalars object for a partition: numbers as they are, tensors as ``TensorList``s."""
    first = scalars[0]
    fields = {
        name: TensorList([getattr(s, name) for s in scalars]) if isinstance(v, torch.Tensor) else v
        for name, v in vars(first).items()
    }
    return type(first)(**fields)


def run_foreach(rule, cfg: Any, scalars: list[Any], tensors: list[list[torch.Tensor]]) -> None:
    """Apply ``rule`` to all tensors at once (they must share device and dtype)."""
    for idx in _partition_by_scalars(scalars):
        lists = [[as_real(lst[i]) for i in idx] for lst in tensors]
        p, g, *states = (TensorList(lst) for lst in lists)
        outs = rule(ForeachOps, cfg, _gather_scalars([scalars[i] for i in idx]), p, g, *states)
        for dst, new in zip([p, *states], outs):
            if new is not dst:
                torch._foreach_copy_(dst.ts, new.ts)
