"""Trace an elementwise rule into a small expression graph, the input of the code generators.

The fused backends (C for the CPU, Triton for CUDA) never look at an algorithm: they call its
rule once per configuration with symbolic values, record what it computes, and print code from
the record. So every backend runs the same math, in the same operator order, as the rule.

A graph has tensor inputs (``p``, ``g``, then the state tensors, by position), scalar inputs
(named fields of the rule's scalars object), constants, and operation nodes in topological
order. Each output corresponds to a writable input (``p`` and the states); an output equal to
its own input node means "unchanged" and needs no store.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number
from typing import Any

UNARY = ("neg", "sqrt", "abs", "sign", "exp")
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
COMPARE = ("gt", "lt", "ge", "le", "eq", "ne")
TERNARY = ("lerp", "where", "addcmul", "addcdiv")


@dataclass(frozen=True, eq=False)
class Node:
    """One value of the traced rule.

    ``op`` is 'input' (args: position), 'scalar' (args: field name), 'const' (args: value) or
    an operation name from the tables above (args: operand nodes). ``is_tensor`` tells whether
    it varies per element; ``is_bool`` marks comparison results (masks).
    """

    op: str
    args: tuple
    is_tensor: bool
    is_bool: bool = False
    index: int = -1  # position in Graph.nodes

    # Operators mirror what a rule may write; each returns a new recorded node.
    def __add__(self, o):
        return _tracer().record("add", self, o)

    def __radd__(self, o):
        return _tracer().record("add", o, self)

    def __sub__(self, o):
        return _tracer().record("sub", self, o)

    def __rsub__(self, o):
        return _tracer().record("sub", o, self)

    def __mul__(self, o):
        return _tracer().record("mul", self, o)

    def __rmul__(self, o):
        return _tracer().record("mul", o, self)

    def __truediv__(self, o):
        return _tracer().record("div", self, o)

    def __rtruediv__(self, o):
        return _tracer().record("div", o, self)

    def __pow__(self, o):
        return _tracer().record("pow", self, o)

    def __rpow__(self, o):
        return _tracer().record("pow", o, self)

    def __neg__(self):
        return _tracer().record("neg", self)

    def __gt__(self, o):
        return _tracer().record("gt", self, o)

    def __lt__(self, o):
        return _tracer().record("lt", self, o)

    def __ge__(self, o):
        return _tracer().record("ge", self, o)

    def __le__(self, o):
        return _tracer().record("le", self, o)

    def __eq__(self, o):  # type: ignore[override]
        return _tracer().record("eq", self, o)

    def __ne__(self, o):  # type: ignore[override]
        return _tracer().record("ne", self, o)

    def __hash__(self):
        return id(self)

    def __bool__(self):
        raise TypeError(
            "a rule branched on a traced value; rules may only branch on cfg options"
        )


@dataclass
class Graph:
    """The record of one rule under one configuration."""

    nodes: list[Node]
    n_inputs: int  # tensor inputs: p, g, states...
    scalar_names: tuple[str, ...]
    outputs: tuple[Node, ...]  # new p, new states...; outputs[i] is input i+? when unchanged

    def output_changes(self, i: int) -> bool:
        """Whether writable input ``i`` (0 = p, 1.. = states) is written by the rule."""
        out = self.outputs[i]
        input_pos = 0 if i == 0 else i + 1  # skip g, which is read-only
        return not (out.op == "input" and out.args[0] == input_pos)

    def describe(self) -> str:
        """A readable listing, for debugging and docs."""
        lines = []
        for n in self.nodes:
            args = ", ".join(f"%{a.index}" if isinstance(a, Node) else repr(a) for a in n.args)
            lines.append(f"%{n.index} = {n.op}({args})" + (" : tensor" if n.is_tensor else ""))
        lines.append("outputs: " + ", ".join(f"%{o.index}" for o in self.outputs))
        return "\n".join(lines)


class _Tracer:
    def __init__(self):
        self.nodes: list[Node] = []
        self.memo: dict[tuple, Node] = {}

    def _node(self, op: str, args: tuple, is_tensor: bool, is_bool: bool = False) -> Node:
        key = (op, tuple(a.index if isinstance(a, Node) else ("c", a) for a in args))
        if key in self.memo:  # common-subexpression elimination
            return self.memo[key]
        node = Node(op, args, is_tensor, is_bool, len(self.nodes))
        self.nodes.append(node)
        self.memo[key] = node
        return node

    def const(self, value: Number) -> Node:
        return self._node("const", (float(value),), False)

    def lift(self, x: Any) -> Node:
        if isinstance(x, Node):
            return x
        if isinstance(x, bool) or not isinstance(x, Number):
            raise TypeError(f"unsupported value in a traced rule: {x!r}")
        return self.const(x)

    def record(self, op: str, *args: Any) -> Node:
        nodes = tuple(self.lift(a) for a in args)
        is_tensor = any(n.is_tensor for n in nodes)
        return self._node(op, nodes, is_tensor, op in COMPARE)


_ACTIVE: list[_Tracer] = []


def _tracer() -> _Tracer:
    if not _ACTIVE:
        raise RuntimeError("symbolic values can only be used while tracing a rule")
    return _ACTIVE[-1]


class SymbolicOps:
    """The ``ops`` namespace of a rule being traced."""

    @staticmethod
    def sqrt(x):
        return _tracer().record("sqrt", x)

    @staticmethod
    def detach(x):  # fused kernels run without autograd
        return x

    @staticmethod
    def abs(x):
        return _tracer().record("abs", x)

    @staticmethod
    def sign(x):
        return _tracer().record("sign", x)

    @staticmethod
    def exp(x):
        return _tracer().record("exp", x)

    @staticmethod
    def maximum(a, b):
        return _tracer().record("maximum", a, b)

    @staticmethod
    def minimum(a, b):
        return _tracer().record("minimum", a, b)

    @staticmethod
    def lerp(start, end, weight):
        return _tracer().record("lerp", start, end, weight)

    @staticmethod
    def where(cond, a, b):
        return _tracer().record("where", cond, a, b)

    @staticmethod
    def clamp(x, lo=None, hi=None):
        if lo is not None:
            x = _tracer().record("maximum", x, lo)
        if hi is not None:
            x = _tracer().record("minimum", x, hi)
        return x

    @staticmethod
    def add(x, y, alpha=1.0):
        # x + alpha * y is the addcmul node (x + value * t) with t = y.
        return _tracer().record("addcmul", x, y, alpha)

    @staticmethod
    def addcmul(x, a, b, value=1.0):
        return _tracer().record("addcmul", x, _tracer().record("mul", a, b), value)

    @staticmethod
    def addcdiv(x, a, b, value=1.0):
        return _tracer().record("addcdiv", x, _tracer().record("div", a, b), value)


class _SymbolicScalars:
    def __init__(self, tracer: _Tracer, names: tuple[str, ...]):
        self._names = names
        self._nodes = {name: tracer._node("scalar", (name,), False) for name in names}

    def __getattr__(self, name: str) -> Node:
        try:
            return self.__dict__["_nodes"][name]
        except KeyError:
            raise AttributeError(f"rule read scalar {name!r}, which _scalars did not provide") from None


def trace(rule, cfg: Any, scalar_names: tuple[str, ...], n_states: int) -> Graph:
    """Record ``rule`` under ``cfg`` for a parameter with ``n_states`` state tensors."""
    tracer = _Tracer()
    _ACTIVE.append(tracer)
    try:
        inputs = [tracer._node("input", (i,), True) for i in range(2 + n_states)]
        scalars = _SymbolicScalars(tracer, scalar_names)
        p, g, *states = inputs
        outs = rule(SymbolicOps, cfg, scalars, p, g, *states)
        outs = tuple(tracer.lift(o) for o in outs)
    finally:
        _ACTIVE.pop()
    if len(outs) != 1 + n_states:
        raise ValueError(f"rule returned {len(outs)} values, expected {1 + n_states}")
    live = _live_nodes(outs)
    nodes = [n for n in tracer.nodes if n.index in live or n.op in ("input", "scalar")]
    return Graph(nodes, 2 + n_states, scalar_names, outs)


def _live_nodes(outputs: tuple[Node, ...]) -> set[int]:
    live: set[int] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n.index in live:
            continue
        live.add(n.index)
        stack.extend(a for a in n.args if isinstance(a, Node))
    return live


def evaluate(graph: Graph, tensors: list, scalars: Any, ops: Any) -> list:
    """Run a graph with a concrete ``ops`` namespace (e.g. TorchOps): a check that tracing
    recorded exactly what the rule computes."""
    values: dict[int, Any] = {}
    binary = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "pow": lambda a, b: a**b,
        "gt": lambda a, b: a > b,
        "lt": lambda a, b: a < b,
        "ge": lambda a, b: a >= b,
        "le": lambda a, b: a <= b,
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "maximum": ops.maximum,
        "minimum": ops.minimum,
    }
    for n in graph.nodes:
        args = [values[a.index] if isinstance(a, Node) else a for a in n.args]
        if n.op == "input":
            v = tensors[n.args[0]]
        elif n.op == "scalar":
            v = getattr(scalars, n.args[0])
        elif n.op == "const":
            v = n.args[0]
        elif n.op == "neg":
            v = -args[0]
        elif n.op in UNARY:
            v = getattr(ops, n.op)(args[0])
        elif n.op in binary:
            v = binary[n.op](*args)
        elif n.op == "lerp":
            v = ops.lerp(*args)
        elif n.op == "where":
            v = ops.where(*args)
        elif n.op == "addcmul":
            v = args[0] + args[2] * args[1]
        elif n.op == "addcdiv":
            v = args[0] + args[2] * args[1]
        else:
            raise ValueError(f"unknown op {n.op}")
        values[n.index] = v
    return [values[o.index] for o in graph.outputs]
