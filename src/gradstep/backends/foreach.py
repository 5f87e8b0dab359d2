"""Foreach backend: a rule applied to whole tensor lists with ``torch._foreach_*`` ops.

The rule is the same Python function the reference backend runs; here its values are
``TensorList`` objects whose operators dispatch to the multi-tensor kernels, so one
arithmetic operation of the rule is one foreach launch over every tensor of the group.

The operators record their op instead of running it. Once the rule has returned, every value's
last reader is known, and ``_evaluate`` runs an op in place (``torch._foreach_mul_`` rather than
``torch._foreach_mul``) when the operand it overwrites is nothing anyone reads later: a
temporary, or the old value of the parameter or state that the op's result is on its way to
replace. That keeps a step's temporary memory at torch.optim's foreach implementations' (see
docs/performance.md, "Foreach backend: temporary memory"). An op's in-place variant gives the
bits of its out-of-place one, so the numbers do not change.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from .foreach_values import (
    _ABS,
    _ADD_ALPHA,
    _ADDCDIV,
    _ADDCMUL,
    _CLAMP_MAX,
    _CLAMP_MIN,
    _EXP,
    _FULL,
    _INTO,
    _LERP,
    _LERP_TENSOR_WEIGHT,
    _MAXIMUM,
    _MINIMUM,
    _NEW,
    _SCALAR,
    _SIGN,
    _SQRT,
    _TEMP,
    _WHERE,
    TensorList,
    _record,
)
from .reference import as_real

#: Overwrite dead operands in place. Off only to compare against plain evaluation (tests).
REUSE_BUFFERS = True
#: Devices whose in-place foreach ops are known to round as the out-of-place ones.
REUSE_DEVICES = ("cpu", "cuda")


class ForeachOps:
    """The ``ops`` namespace a rule receives when its values are ``TensorList``s."""

    @staticmethod
    def sqrt(x):
        return _record(_SQRT, x)

    @staticmethod
    def detach(x):  # no autograd on this backend
        return x

    @staticmethod
    def abs(x):
        return _record(_ABS, x)

    @staticmethod
    def sign(x):
        return _record(_SIGN, x)

    @staticmethod
    def exp(x):
        return _record(_EXP, x)

    @staticmethod
    def maximum(a, b):
        return _record(_MAXIMUM, a, b)

    @staticmethod
    def minimum(a, b):
        return _record(_MINIMUM, a, b)

    @staticmethod
    def lerp(start, end, weight):
        if isinstance(weight, (TensorList, torch.Tensor)) or (
            isinstance(weight, list) and not isinstance(weight[0], Number)
        ):
            return _record(_LERP_TENSOR_WEIGHT, start, end, weight)
        return _record(_LERP, start, end, weight)

    @staticmethod
    def where(cond, a, b):
        return _record(_WHERE, cond, a, b)

    @staticmethod
    def clamp(x, lo=None, hi=None):
        if lo is not None:
            x = _record(_CLAMP_MIN, x, lo)
        if hi is not None:
            x = _record(_CLAMP_MAX, x, hi)
        return x

    @staticmethod
    def add(x, y, alpha=1.0):
        if isinstance(alpha, Number):
            return _record(_ADD_ALPHA, x, y, alpha=alpha)
        return x + y * alpha

    @staticmethod
    def addcmul(x, a, b, value=1.0):
        if isinstance(value, (Number, list)) and not isinstance(value, TensorList):
            if not isinstance(value, list) or isinstance(value[0], Number):
                return _record(_ADDCMUL, x, a, b, value)
        return x + a * b * value

    @staticmethod
    def addcdiv(x, a, b, value=1.0):
        if isinstance(value, (Number, list)) and not isinstance(value, TensorList):
            if not isinstance(value, list) or isinstance(value[0], Number):
                return _record(_ADDCDIV, x, a, b, value)
        return x + a * value / b


# evaluation -------------------------------------------------------------------------------
def _fits(node: TensorList, t: int) -> bool:
    """``node``'s result may overwrite its operand ``t``: nothing reads that operand later, and
    the result has its shape and dtype and rounds in place as out of place."""
    a = node.args[t]
    return (
        a.__class__ is TensorList
        and a.last == node.index
        and a.kind == _FULL
        and node.kind == _FULL
        and a.dtype == node.dtype
        and node.op.allows(t, node)
    )


def _plan(graph: list[TensorList], outs: list[TensorList], reuse: bool) -> None:
    """Set each needed op's mode: allocate its result, or write it over an operand that dies
    with the op and lives in a temporary or in a parameter's or state's own storage."""
    end = len(graph)
    for k, o in enumerate(outs):
        o.mode, o.last = _NEW, end
        o.outof.append(k)
    for node in reversed(graph):  # needed: an output, or read by a needed op
        if node.mode is not None:
            for a in node.args:
                if a.__class__ is TensorList and a.last < 0:
                    a.last = node.index  # the first reader seen backwards is the last
                    if a.op is not None:
                        a.mode = _NEW
    if not reuse:
        return
    for node in graph:
        if node.mode is not _NEW:
            continue
        for t in node.op.targets:
            a = node.args[t]
            # A slot's storage, once its old value is dead, may hold any value but the new
            # value of other slots only (the final copy into the slot would overwrite it).
            if (
                a.__class__ is TensorList
                and a.home is not None
                and (a.home is _TEMP or not node.outof or a.home in node.outof)
                and _fits(node, t)
            ):
                node.mode, node.target, node.home = _INTO, t, a.home
                break


def _evaluate(graph: list[TensorList], dsts: list[TensorList], outs: list[TensorList],
              reuse: bool = True) -> None:
    """Run the recorded ops in order, free each temporary after its last reader, and write the
    rule's outputs into the parameters and states they are the new values of."""
    _plan(graph, outs, reuse)
    try:
        for node in graph:
            if node.mode is None:
                continue
            args = [a.ts if a.__class__ is TensorList else a for a in node.args]
            if node.mode is _INTO:
                node.ts = node.op.into(node.target, args, node.kw)
            else:
                node.ts = node.op.out(args, node.kw)
            del args
            i = node.index
            for a in node.args:
                if a.__class__ is TensorList and a.last == i and a.op is not None:
                    a.ts = None  # nothing reads it again: free it now
        # An output that is another slot's unchanged input is copied before that slot changes.
        copies = [(dst, out) for dst, out in zip(dsts, outs) if out.ts is not dst.ts]
        copies.sort(key=lambda c: c[1].op is not None)
        for dst, out in copies:
            torch._foreach_copy_(dst.ts, out.ts)
    finally:
        for node in graph:
            node.ts, node.args = None, ()
        graph.clear()


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


def _gather_scalars(scalars: list[Any], graph: list) -> Any:
    """One scalars object for a partition: numbers as they are, tensors as ``TensorList``s."""
    first = scalars[0]
    fields = {}
    for name, v in vars(first).items():
        if isinstance(v, torch.Tensor):
            ts = [getattr(s, name) for s in scalars]
            kind = _SCALAR if all(t.dim() == 0 for t in ts) else None
            v = TensorList.given(ts, graph, None, kind)
        fields[name] = v
    return type(first)(**fields)


def run_foreach(rule, cfg: Any, scalars: list[Any], tensors: list[list[torch.Tensor]]) -> None:
    """Apply ``rule`` to all tensors at once (they must share device and dtype)."""
    reuse = REUSE_BUFFERS and tensors[0][0].device.type in REUSE_DEVICES
    for idx in _partition_by_scalars(scalars):
        graph: list[TensorList] = []
        # homes: the parameter is slot 0, the states 1, 2, ...; the gradient is never written
        p, g, *states = (
            TensorList.given([as_real(lst[i]) for i in idx], graph, home)
            for home, lst in zip([0, None, *range(1, len(tensors) - 1)], tensors)
        )
        s = _gather_scalars([scalars[i] for i in idx], graph)
        outs = list(rule(ForeachOps, cfg, s, p, g, *states))
        _evaluate(graph, [p, *states], outs, reuse)
