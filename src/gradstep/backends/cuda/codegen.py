"""Print a traced rule (a :class:`~gradstep.backends.graph.Graph`) as a Triton kernel.

The kernel updates many tensors in one launch. Its programs walk a work list of
``(tensor, chunk)`` pairs read from one int64 ``meta`` table laid out as::

    [ptr of role r, tensor t : r * n + t for each role] [numel of t : R * n + t] [(t, chunk) pairs]

where a chunk is ``PER_PROGRAM`` blocks of ``BLOCK`` elements (full blocks use unmasked, vector
accesses; the tail block is masked)

so a launch covers every tensor of a parameter group, whatever their number and sizes. Storage
may be float32, bfloat16, float16 or float64; values are loaded, upcast to the compute type
(float64 for float64 storage, else float32), updated, and stored back in their storage type.

Per-step scalars come in one of three modes, part of the kernel's specialisation:

- ``"f"``: a float64 kernel argument (a Python number; changing it does not recompile);
- ``"s"``: a pointer to one 0-d device tensor shared by all tensors (a tensor ``lr``);
- ``"v"``: a pointer to a device vector with one value per tensor (``capturable=True``).

Scalar-only arithmetic runs in the kernel with torch's promotion for Python numbers and 0-d
tensors (float64 for numbers, the tensor's dtype once a 0-d tensor is involved) and is cast to the
compute type where it meets tensor data, as torch casts a scalar operand. Division and square
root are IEEE-rounded (``div_rn``/``sqrt_rn``) as in torch's kernels; ``lerp`` uses torch's
two-sided formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..graph import Graph, Node

#: Triton names of the storage types the kernels accept.
STORAGE = {"float32": "tl.float32", "bfloat16": "tl.bfloat16", "float16": "tl.float16",
           "float64": "tl.float64"}


@dataclass(frozen=True)
class KernelSpec:
    """Everything besides the graph that the generated source depends on."""

    dtypes: tuple[str, ...]  # storage dtype name per tensor input (p, g, states...)
    scalar_modes: tuple[tuple[str, str, str], ...]  # (name, mode "f"/"s"/"v", dtype name)
    interpret: bool = False  # Triton's CPU interpreter lacks libdevice
    #: streaming cache hints: every element is read and written once, so loads may be evicted
    #: first and stores bypass the caches (``.cs``); a tuning choice (benchmarks/bench_cuda.py)
    stream: bool = False

    @property
    def compute(self) -> str:
        return "float64" if self.dtypes[0] == "float64" else "float32"


_HELPERS_GPU = '''
from triton.language.extra import libdevice


@triton.jit
def _exp(x):
    return libdevice.exp(x)


@triton.jit
def _pow(a, b):
    return libdevice.pow(a, b)
'''

# The interpreter runs on numpy and has no libdevice, and its float32 -> bfloat16 cast truncates
# where the GPU rounds to nearest even; these are its stand-ins (tests only).
_HELPERS_INTERPRET = '''

@triton.jit
def _exp(x):
    return tl.exp(x)


@triton.jit
def _pow(a, b):
    return tl.exp2(b * tl.log2(a))


@triton.jit
def _to_bf16(x):
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
'''


def _literal(x: float) -> str:
    if math.isnan(x):
        return 'float("nan")'
    if math.isinf(x):
        return 'float("inf")' if x > 0 else '-float("inf")'
    return repr(float(x))


class _Printer:
    """Assign each node a name and a type, and print the statements that compute it."""

    def __init__(self, graph: Graph, spec: KernelSpec):
        self.graph = graph
        self.spec = spec
        self.ct = spec.compute  # compute dtype name
        self.modes = {name: (mode, dt) for name, mode, dt in spec.scalar_modes}
        # per node index: kind ("tensor", "py", "t:<dtype>", "const", "bool") and expression
        self.kind: dict[int, str] = {}
        self.expr: dict[int, str] = {}
        self.scalar_lines: list[str] = []
        self.casts: dict[int, str] = {}

    # -- scalars -------------------------------------------------------------------------------
    def scalar_args(self) -> list[str]:
        args = []
        for name, mode, _ in self.spec.scalar_modes:
            args.append(f"s_{name}: tl.float64" if mode == "f" else f"s_{name}_ptr")
        return args

    def _tl(self, dtype: str) -> str:
        return STORAGE[dtype]

    def _scalar_dtype(self, kinds: list[str]) -> str:
        """Result kind of scalar arithmetic, following torch's scalar/0-d-tensor promotion."""
        tensor_kinds = [k for k in kinds if k.startswith("t:")]
        if tensor_kinds:
            return "t:float64" if "t:float64" in tensor_kinds else tensor_kinds[0]
        if "py" in kinds:
            return "py"
        return "const"

    def _scalar_operand(self, node: Node, kind: str) -> str:
        """A scalar operand converted to the result kind of a scalar op."""
        k = self.kind[node.index]
        e = self.expr[node.index]
        if kind.startswith("t:") and k == "py":
            return f"{e}.to({self._tl(kind[2:])})"
        return e

    def _tensor_operand(self, node: Node) -> str:
        """An operand of a tensor op: scalars are cast once to the compute type."""
        k = self.kind[node.index]
        if k in ("tensor", "const", "bool"):
            return self.expr[node.index]
        if node.index not in self.casts:
            name = f"c{node.index}"
            self.scalar_lines.append(f"{name} = {self.expr[node.index]}.to({self._tl(self.ct)})")
            self.casts[node.index] = name
        return self.casts[node.index]

    # -- ops -----------------------------------------------------------------------------------
    def _fp32(self, kind: str) -> bool:
        return kind in ("tensor",) and self.ct == "float32" or kind == "t:float32"

    def _apply(self, op: str, a: list[str], kind: str, lines: list[str], idx: int) -> str:
        """Expression of ``op`` over operand expressions ``a`` whose result has ``kind``."""
        fp32 = self._fp32(kind)
        if op == "add":
            return f"({a[0]} + {a[1]})"
        if op == "sub":
            return f"({a[0]} - {a[1]})"
        if op == "mul":
            return f"({a[0]} * {a[1]})"
        if op == "div":
            return f"tl.div_rn({a[0]}, {a[1]})" if fp32 else f"({a[0]} / {a[1]})"
        if op == "neg":
            return f"(-{a[0]})"
        if op == "sqrt":
            return f"tl.sqrt_rn({a[0]})" if fp32 else f"tl.sqrt({a[0]})"
        if op == "abs":
            return f"tl.abs({a[0]})"
        if op == "exp":
            return f"_exp({a[0]})"
        if op == "sign":
            dt = self._tl(self.ct) if kind == "tensor" else self._tl(self._dtype_of(kind))
            return f"tl.where({a[0]} > 0, 1.0, tl.where({a[0]} < 0, -1.0, 0.0)).to({dt})"
        if op in ("maximum", "minimum"):
            return f"tl.{op}({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)"
        if op in ("gt", "lt", "ge", "le", "eq", "ne"):
            sym = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}[op]
            return f"({a[0]} {sym} {a[1]})"
        if op == "where":
            if kind == "tensor":
                return f"tl.where({a[0]}, {a[1]}, {a[2]}).to({self._tl(self.ct)})"
            return f"tl.where({a[0]}, {a[1]}, {a[2]})"
        if op == "lerp":  # torch's formula: exact at both ends, stable for weights near 1
            start, end, w = a
            d = f"d{idx}"
            lines.append(f"{d} = {end} - {start}")
            return f"tl.where(tl.abs({w}) < 0.5, {start} + {w} * {d}, {end} - {d} * (1.0 - {w}))"
        if op in ("addcmul", "addcdiv"):  # x + value * (a*b) / x + value * (a/b), as traced
            return f"({a[0]} + {a[2]} * {a[1]})"
        if op == "pow":
            return f"_pow({a[0]}, {a[1]})"
        raise ValueError(f"the CUDA backend cannot print op {op!r}")

    def _dtype_of(self, kind: str) -> str:
        return kind[2:] if kind.startswith("t:") else "float64"

    def _pow_special(self, base: str, exponent: float, fp32: bool) -> str | None:
        """torch computes these exponents exactly; so do we."""
        if exponent == 1.0:
            return base
        if exponent == 2.0:
            return f"({base} * {base})"
        if exponent == 0.5:
            return f"tl.sqrt_rn({base})" if fp32 else f"tl.sqrt({base})"
        if exponent == -1.0:
            return f"tl.div_rn(1.0, {base})" if fp32 else f"(1.0 / {base})"
        return None

    def _const_fold(self, n: Node) -> float | None:
        vals = [self.expr_value[a.index] for a in n.args if isinstance(a, Node)]
        f = _FOLD.get(n.op)
        return None if f is None else f(*vals)

    # -- statements ----------------------------------------------------------------------------
    def scalar_statements(self) -> None:
        """Name every input and scalar node; print scalar-only computations."""
        self.expr_value: dict[int, float] = {}
        lines = self.scalar_lines
        for n in self.graph.nodes:
            i = n.index
            if n.op == "input":
                self.kind[i] = "tensor"
                self.expr[i] = f"x{n.args[0]}"
            elif n.op == "scalar":
                name = n.args[0]
                mode, dt = self.modes[name]
                if mode == "f":
                    self.kind[i], self.expr[i] = "py", f"s_{name}"
                else:
                    index = "" if mode == "s" else " + t"
                    lines.append(f"v{i} = tl.load(s_{name}_ptr{index})")
                    self.kind[i], self.expr[i] = f"t:{dt}", f"v{i}"
            elif n.op == "const":
                self.kind[i], self.expr[i] = "const", _literal(n.args[0])
                self.expr_value[i] = float(n.args[0])
            elif not n.is_tensor:
                args = [a for a in n.args if isinstance(a, Node)]
                kinds = [self.kind[a.index] for a in args]
                if all(k == "const" for k in kinds) and n.op in _FOLD:
                    value = self._const_fold(n)
                    self.kind[i], self.expr[i] = "const", _literal(value)
                    self.expr_value[i] = value
                    continue
                kind = self._scalar_dtype([k for k in kinds if k != "bool"])
                if kind == "const":
                    kind = "py"
                ops = [self._scalar_operand(a, kind) for a in args]
                e = self._pow_expr(n, ops, kind, lines) if n.op == "pow" else self._apply(
                    n.op, ops, kind, lines, i)
                lines.append(f"v{i} = {e}")
                self.kind[i] = "bool" if n.is_bool else kind
                self.expr[i] = f"v{i}"

    def _pow_expr(self, n: Node, ops: list[str], kind: str, lines: list[str]) -> str:
        base_node, exp_node = n.args
        if exp_node.op == "const":
            special = self._pow_special(ops[0], exp_node.args[0], self._fp32(kind))
            if special is not None:
                return special
        # libdevice.pow takes two values of one floating type
        dt = self._tl(self.ct if kind == "tensor" else self._dtype_of(kind))
        base, exponent = ops
        if base_node.op == "const":
            base = f"tl.full([], {base}, {dt})"
        if exp_node.op == "const":
            exponent = f"tl.full([], {exponent}, {dt})"
        return f"_pow({base}, {exponent})"

    def tensor_statements(self, mask: str) -> list[str]:
        """Loads, the tensor computations, and stores, for one (masked or unmasked) block."""
        lines: list[str] = []
        used = self._used_inputs()
        for pos in sorted(used):
            dt = self._tl(self.ct)
            lines.append(f"x{pos} = tl.load(p{pos} + offs{mask}{self._load_hint}).to({dt})")
        for n in self.graph.nodes:
            if not n.is_tensor or n.op == "input":
                continue
            args = [a for a in n.args if isinstance(a, Node)]
            ops = [self._tensor_operand(a) for a in args]
            if n.op == "pow":
                e = self._pow_expr(n, ops, "tensor", lines)
            else:
                e = self._apply(n.op, ops, "tensor", lines, n.index)
            lines.append(f"v{n.index} = {e}")
            self.kind[n.index] = "tensor"
            self.expr[n.index] = f"v{n.index}"
        for i, out in enumerate(self.graph.outputs):
            if not self.graph.output_changes(i):
                continue
            pos = 0 if i == 0 else i + 1
            value = self.expr[out.index]
            if not out.is_tensor:
                value = f"(tl.zeros([BLOCK], {self._tl(self.ct)}) + {self._tensor_operand(out)})"
            lines.append(f"tl.store(p{pos} + offs, {self._store_cast(value, pos)}{mask}{self._store_hint})")
        # rename per-block values of input nodes back for the next printing
        for n in self.graph.nodes:
            if n.is_tensor and n.op != "input":
                self.expr[n.index] = f"v{n.index}"
        return lines

    @property
    def _load_hint(self) -> str:
        return ', eviction_policy="evict_first"' if self.spec.stream else ""

    @property
    def _store_hint(self) -> str:
        return ', cache_modifier=".cs"' if self.spec.stream else ""

    def _store_cast(self, value: str, pos: int) -> str:
        dtype = self.spec.dtypes[pos]
        if dtype == self.ct:
            return value
        if dtype == "bfloat16" and self.spec.interpret:
            return f"_to_bf16({value})"
        return f"{value}.to({self._tl(dtype)})"

    def _used_inputs(self) -> set[int]:
        used = set()
        for n in self.graph.nodes:
            if n.op != "input":
                used.update(a.args[0] for a in n.args if isinstance(a, Node) and a.op == "input")
        for i, out in enumerate(self.graph.outputs):
            if self.graph.output_changes(i) and out.op == "input":
                used.add(out.args[0])
        return used

    def stored_inputs(self) -> set[int]:
        return {0 if i == 0 else i + 1 for i in range(len(self.graph.outputs))
                if self.graph.output_changes(i)}


_FOLD = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "neg": lambda a: -a,
    "sqrt": math.sqrt,
    "abs": abs,
    "exp": math.exp,
    "maximum": max,
    "minimum": min,
}


def generate(graph: Graph, spec: KernelSpec) -> str:
    """Triton source of a module whose ``step_kernel`` applies ``graph`` to a work list."""
    pr = _Printer(graph, spec)
    pr.scalar_statements()
    full = pr.tensor_statements("")
    tail = pr.tensor_statements(", mask=mask")
    roles = graph.n_inputs
    pointers = sorted(pr._used_inputs() | pr.stored_inputs())
    out = [
        "# Generated by gradstep.backends.cuda.codegen from a traced optimizer rule. Do not edit.",
        "import triton",
        "import triton.language as tl",
        _HELPERS_INTERPRET if spec.interpret else _HELPERS_GPU,
        "",
        "# graph:",
        *("# " + line for line in graph.describe().splitlines()),
        "",
        '@triton.jit(do_not_specialize=["n_tensors"])',
        "def step_kernel(meta, n_tensors, "
        + "".join(a + ", " for a in pr.scalar_args())
        + "BLOCK: tl.constexpr, PER_PROGRAM: tl.constexpr, ALIGNED: tl.constexpr):",
        "    pid = tl.program_id(0).to(tl.int64)",
        f"    work = meta + {roles + 1} * n_tensors + 2 * pid",
        "    t = tl.load(work)",
        "    first = tl.load(work + 1) * (BLOCK * PER_PROGRAM)",
        f"    numel = tl.load(meta + {roles} * n_tensors + t)",
    ]
    for pos in pointers:
        out.append(
            f"    p{pos} = tl.load(meta + {pos} * n_tensors + t)"
            f".to(tl.pointer_type({pr._tl(spec.dtypes[pos])}))"
        )
    out.append("    if ALIGNED:  # every pointer of this launch is 16-byte aligned: vector access")
    out.extend(f"        p{pos} = tl.multiple_of(p{pos}, 16)" for pos in pointers)
    # float64 values in both the compiler and the interpreter (which would pass Python floats)
    out.extend(f"    s_{name} = tl.full([], s_{name}, tl.float64)"
               for name, mode, _ in spec.scalar_modes if mode == "f")
    out.extend("    " + line for line in pr.scalar_lines)
    out.append("    for i in tl.static_range(PER_PROGRAM):  # PER_PROGRAM blocks of one tensor")
    out.append("        start = first + i * BLOCK")
    out.append("        offs = start + tl.arange(0, BLOCK)")
    out.append("        if start + BLOCK <= numel:")
    out.extend("            " + line for line in full)
    out.append("        elif start < numel:")
    out.append("            mask = offs < numel")
    out.extend("            " + line for line in tail)
    return "\n".join(out) + "\n"
