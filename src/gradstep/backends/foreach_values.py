"""The values of the foreach backend and the ops they record.

A rule run by the foreach backend computes with ``TensorList`` values: given tensor lists (the
parameters, gradients, states, per-tensor scalars) or the pending results of ops. Each op kind
here knows how to run out of place, whether its result may be written over one of its operands
(``targets``, ``allows``: only where the in-place foreach kernel rounds as the out-of-place
one), and how to do that (``into``). ``foreach.py`` decides which ops run in place and runs
them.
"""

from __future__ import annotations

import functools

import torch

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
