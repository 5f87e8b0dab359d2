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

import functools
from numbers import Number
from typing import Any

import torch

from .reference import as_real

#: Overwrite dead operands in place. Off only to compare against plain evaluation (tests).
REUSE_BUFFERS = True
#: Devices whose in-place foreach ops are known to round as the out-of-place ones.
REUSE_DEVICES = ("cpu", "cuda")

_FULL, _SCALAR = "full", "scalar"  # one tensor per parameter of its shape, or one 0-d tensor
_NEW, _INTO = "new", "into"  # an op allocates its result, or writes it over an operand
_TEMP = "temp"  # home of a value in storage an op allocated (else a slot's index, or None)


class TensorList:
    """One list value of a rule: given tensors (an input), or the pending result of an op."""

    __slots__ = ("ts", "graph", "op", "args", "kw", "kind", "dtype",
                 "index", "last", "mode", "target", "home", "outof")

    def __init__(self, ts, graph: list, kind: str | None, dtype: torch.dtype | None,
                 home: int | str | None, op=None, args: tuple = (), kw: dict | None = None):
        self.ts = ts
        self.graph = graph
        self.op, self.args, self.kw = op, args, kw
        self.kind, self.dtype = kind, dtype  # None, None: unknown, never written over
        self.index = len(graph) if op is not None else -1
        self.last = -1  # index of the last op that reads it
        self.mode = None  # _NEW or _INTO once it is known to be needed
        self.target = 0  # the operand _INTO writes over
        self.home = home  # where its storage comes from: None if it must not be written
        self.outof: list[int] = []  # the slots (parameter, states) it is the new value of

    @classmethod
    def given(cls, ts: list[torch.Tensor], graph: list, home: int | None, kind: str = _FULL):
        """An input: tensors of one dtype (else of unknown kind)."""
        dtype = ts[0].dtype
        if any(t.dtype is not dtype for t in ts):
            return cls(ts, graph, None, None, home)
        return cls(ts, graph, kind, dtype, home)

    # arithmetic ---------------------------------------------------------------------------
    def __add__(self, o):
        return _record(_ADD, self, o)

    __radd__ = __add__

    def __sub__(self, o):
        return _record(_SUB, self, o)

    def __rsub__(self, o):
        return _record(_ADD, _record(_NEG, self), o)

    def __mul__(self, o):
        return _record(_MUL, self, o)

    __rmul__ = __mul__

    def __truediv__(self, o):
        return _record(_DIV, self, o)

    def __rtruediv__(self, o):
        return _record(_MUL, _record(_RECIPROCAL, self), o)

    def __neg__(self):
        return _record(_NEG, self)

    def __pow__(self, o):
        return _record(_POW, self, o)

    # comparisons have no foreach kernels: map them tensor by tensor -----------------------
    def __gt__(self, o):
        return _record(_GT, self, o)

    def __lt__(self, o):
        return _record(_LT, self, o)

    def __ge__(self, o):
        return _record(_GE, self, o)

    def __le__(self, o):
        return _record(_LE, self, o)

    def __eq__(self, o):  # type: ignore[override]
        return _record(_EQ, self, o)

    def __ne__(self, o):  # type: ignore[override]
        return _record(_NE, self, o)

    __hash__ = None  # type: ignore[assignment]


def _record(op, *args, **kw) -> TensorList:
    """A pending op: a new value in the graph of its list operands."""
    for a in args:
        if a.__class__ is TensorList:
            graph = a.graph
            break
    node = TensorList(None, graph, *op.meta(args), _TEMP, op, args, kw)
    graph.append(node)
    return node


# what a value is: decides whether an op's result can be written over an operand ----------
def _kind(x) -> tuple[str | None, torch.dtype | None]:
    if x.__class__ is TensorList:
        return x.kind, x.dtype
    if isinstance(x, (bool, int, float)):
        return _SCALAR, None
    if isinstance(x, torch.Tensor):
        return (_SCALAR, None) if x.dim() == 0 else (None, None)
    if isinstance(x, list) and all(isinstance(v, (bool, int, float)) for v in x):
        return _SCALAR, None
    return None, None


def _arith_meta(args) -> tuple[str | None, torch.dtype | None]:
    """The result of elementwise math: full lists of one floating dtype keep it (0-d tensors,
    Python numbers and bool masks do not promote it); anything else is left unknown."""
    floating, full = None, False
    for a in args:
        kind, dtype = (a.kind, a.dtype) if a.__class__ is TensorList else _kind(a)
        if kind is None:
            return None, None
        if kind is _FULL:
            full = True
            if dtype.is_floating_point and floating in (None, dtype):
                floating = dtype
            elif dtype is not torch.bool:
                return None, None
    if floating is not None:
        return _FULL, floating
    return (None, None) if full else (_SCALAR, None)


def _per_tensor(values, n):
    """Broadcast a scalar (or per-tensor list) argument to one value per tensor."""
    if isinstance(values, (list, tuple)):
        return values
    return [values] * n


# ops: each runs out of place, or writes its result into one of ``targets`` ----------------
class _Foreach:
    """``torch._foreach_<name>``, in place ``torch._foreach_<name>_`` (into operand 0, or into
    operand 1 of ``a + b`` and ``a * b``, which round as ``b + a`` and ``b * a``)."""

    def __init__(self, name: str, commutative: bool = False):
        self.fn = getattr(torch, f"_foreach_{name}")
        self.fn_ = getattr(torch, f"_foreach_{name}_")
        self.targets = (0, 1) if commutative else (0,)

    meta = staticmethod(_arith_meta)

    @staticmethod
    def allows(t: int, node: TensorList) -> bool:
        """Whether the in-place op rounds as the out-of-place one when it writes into ``t``."""
        return t == 0 or _kind(node.args[0]) == (_FULL, node.dtype)  # swap full lists only

    def out(self, args, kw):
        return self.fn(*args, **kw)

    def into(self, t, args, kw):
        if t == 1:
            args = (args[1], args[0])
        self.fn_(*args, **kw)
        return args[0]


class _Mul(_Foreach):
    """``a * b``. On the CPU, ``torch._foreach_mul_`` by a Python number rounds the number to
    bfloat16/float16 first, ``torch._foreach_mul`` does not; as a float64 (int64) 0-d tensor
    the number is not rounded, which gives the out-of-place op's bits (float32 and float64
    too). A list of numbers has no such form: it is not multiplied in place in 16 bits."""

    def __init__(self):
        super().__init__("mul", commutative=True)

    @staticmethod
    def allows(t: int, node: TensorList) -> bool:
        if t == 0:
            return not (isinstance(node.args[1], list) and node.dtype in _HALF)
        return _kind(node.args[0]) == (_FULL, node.dtype)

    def into(self, t, args, kw):
        if t == 0 and _is_number(args[1]) and args[0] and args[0][0].is_cpu:
            args = (args[0], _wrapped(args[1], type(args[1])))
        return super().into(t, args, kw)


_HALF = (torch.bfloat16, torch.float16)
_ADD, _MUL = _Foreach("add", commutative=True), _Mul()
_ADD_ALPHA, _SUB, _DIV, _POW = (_Foreach(n) for n in ("add", "sub", "div", "pow"))
_NEG, _RECIPROCAL, _SQRT, _ABS, _SIGN, _EXP = (
    _Foreach(n) for n in ("neg", "reciprocal", "sqrt", "abs", "sign", "exp")
)
_MAXIMUM, _MINIMUM, _LERP, _CLAMP_MIN, _CLAMP_MAX, _ADDCMUL, _ADDCDIV = (
    _Foreach(n) for n in ("maximum", "minimum", "lerp", "clamp_min", "clamp_max", "addcmul",
                          "addcdiv")
)


class _Compare:
    """A comparison, tensor by tensor; its bool result never overwrites an operand."""

    targets = ()

    def __init__(self, fn):
        self.fn = fn

    @staticmethod
    def meta(args):
        kind, _ = _arith_meta(args)
        return (_FULL, torch.bool) if kind == _FULL else (kind, None)

    def out(self, args, kw):
        a, o = args
        return [self.fn(x, y) for x, y in zip(a, _per_tensor(o, len(a)))]


class _LerpTensorWeight:
    """``lerp`` with tensor weights (no foreach kernel takes them), in place ``lerp_``."""

    targets = (0,)
    meta = staticmethod(_arith_meta)

    @staticmethod
    def allows(t: int, node: TensorList) -> bool:
        return True

    @staticmethod
    def out(args, kw):
        a, b, w = args
        return [torch.lerp(x, y, v) for x, y, v in zip(a, b, _per_tensor(w, len(a)))]

    @staticmethod
    def into(t, args, kw):
        a, b, w = args
        for x, y, v in zip(a, b, _per_tensor(w, len(a))):
            x.lerp_(y, v)
        return a


@functools.lru_cache(maxsize=256)
def _wrapped(v, kind: type) -> torch.Tensor:  # the same few numbers every step; read only
    return torch.tensor(v, dtype=torch.float64 if kind is float else torch.int64)


def _is_number(v) -> bool:
    return isinstance(v, (bool, int, float))


class _Where:
    """``torch.where``, tensor by tensor. In place into a value operand: ``masked_fill_`` when
    the other value is a number (the same cast to the target's dtype; a number out of its range,
    which ``masked_fill_`` rejects, keeps the op out of place), else ``out=``."""

    targets = (1, 2)

    @staticmethod
    def allows(t: int, node: TensorList) -> bool:
        other = node.args[3 - t]
        if not _is_number(other) or other != other or abs(other) == float("inf"):
            return True
        return abs(other) <= torch.finfo(node.dtype).max

    @staticmethod
    def meta(args):
        cond_kind, _ = _kind(args[0])
        kind, dtype = _arith_meta(args[1:])
        if cond_kind is None or kind is None or (kind == _SCALAR and cond_kind == _FULL):
            return None, None
        return kind, dtype

    @staticmethod
    def out(args, kw):
        c, a, b = args
        n = len(c)
        return [torch.where(*x) for x in zip(c, _per_tensor(a, n), _per_tensor(b, n))]

    @staticmethod
    def into(t, args, kw):
        c, target, other = args[0], args[t], args[3 - t]
        if _is_number(other):
            for x, o in zip(c, target):
                o.masked_fill_(x if t == 2 else x.logical_not(), other)
            return target
        for x, o, v in zip(c, target, _per_tensor(other, len(c))):
            if t == 1:
                torch.where(x, o, v, out=o)
            else:
                torch.where(x, v, o, out=o)
        return target


_WHERE = _Where()
_GT, _LT, _GE, _LE, _EQ, _NE = (
    _Compare(f) for f in (torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne)
)
_LERP_TENSOR_WEIGHT = _LerpTensorWeight()


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
