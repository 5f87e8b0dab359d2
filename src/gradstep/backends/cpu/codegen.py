"""Print C source for one traced rule: a multi-tensor, multi-threaded, vectorisable kernel.

The generated function walks every tensor of a parameter group in one call::

    void gs_step(void *const *ptrs, const int64_t *offsets, int64_t n,
                 const double *scalars, int64_t scalar_stride, int nthreads);

``ptrs`` holds one data pointer per tensor role and tensor, role-major (``ptrs[r * n + i]``:
role 0 is the parameter, 1 the gradient, then the states); ``offsets`` is the prefix sum of the
tensors' element counts (``n + 1`` entries); ``scalars`` are the rule's per-step scalars in
``graph.scalar_names`` order, one row shared by all tensors (``scalar_stride`` 0) or one row
per tensor (``scalar_stride`` = number of scalars) when tensors differ in step count. The flat element range ``[0, offsets[n])`` is split evenly over
the OpenMP threads; each thread walks the tensors its range covers with a loop gcc vectorises.
Every element's math is independent of that split, so results are bitwise identical for any
thread count.

The arithmetic mirrors torch's CPU kernels op for op (which is what the reference backend runs):
scalar-only values are computed once in double precision, as Python computes them, and cast to
the math type where they meet a tensor; ``lerp`` and ``addcmul`` use one fused multiply-add as
torch's vectorised kernels do; ``scalar / tensor`` is a reciprocal times the scalar as in
``Tensor.__rtruediv__``. Everything else is one correctly rounded op per node
(``-ffp-contract=off``). Storage dtypes bfloat16 and float16 are loaded and stored as they are,
with round-to-nearest-even, and the math runs in float32 (float64 params: in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..graph import COMPARE, Graph, Node

#: storage dtype name -> C type of one element
STORAGE = {"float32": "float", "float64": "double", "bfloat16": "uint16_t", "float16": "uint16_t"}

#: smallest number of elements worth giving each thread (smaller groups run on one thread)
GRAIN = 1 << 15
#: thread ranges start at multiples of this many elements (whole cache lines for float32)
ALIGN = 64

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline float gs_bf16_load(uint16_t x) {
    uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t gs_bf16_store(float f) {  /* round to nearest even; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    uint16_t r = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return f != f ? (uint16_t)0x7FC0 : r;
}
static inline float gs_f16_load(uint16_t h) {
    uint32_t o = (uint32_t)(h & 0x7FFF) << 13, e = o & 0x0F800000u, sub;
    float f, magic;
    uint32_t mu = 113u << 23;
    memcpy(&magic, &mu, 4);
    o += (127u - 15u) << 23;
    sub = o + (1u << 23);
    memcpy(&f, &sub, 4);
    f -= magic;                                   /* subnormal halves, renormalised exactly */
    memcpy(&sub, &f, 4);
    o = e == 0 ? sub : o;                         /* (one select per statement: vectorises) */
    o = e == 0x0F800000u ? o + ((128u - 16u) << 23) : o;
    o |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &o, 4);
    return f;
}
static inline uint16_t gs_f16_store(float x) {  /* round to nearest even, as F16C does */
    uint32_t u, sign, dn, nm;
    memcpy(&u, &x, 4);
    sign = u & 0x80000000u; u ^= sign;
    {
        float a, magic; uint32_t mu = ((127u - 15u) + (23u - 10u) + 1u) << 23;
        memcpy(&a, &u, 4); memcpy(&magic, &mu, 4);
        a += magic;                               /* aligns the subnormal mantissa, rounding */
        memcpy(&dn, &a, 4); dn -= mu;
    }
    nm = (u + ((uint32_t)(15 - 127) << 23) + 0xFFFu + ((u >> 13) & 1u)) >> 13;
    uint32_t r = u < (113u << 23) ? dn : nm;
    uint32_t special = u > (255u << 23) ? 0x7E00u : 0x7C00u;
    r = u >= (143u << 23) ? special : r;
    return (uint16_t)(r | (sign >> 16));
}
"""


@dataclass(frozen=True)
class _Types:
    """C spellings for one math type (float or double)."""

    name: str
    suffix: str  # libm suffix: 'f' for float, '' for double

    def fn(self, base: str) -> str:
        return base + self.suffix


_FLOAT, _DOUBLE = _Types("float", "f"), _Types("double", "")


def literal(value: float) -> str:
    """A C double literal that is exactly ``value``."""
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"({value.hex()})"


def _load(dtype: str, expr: str, m: _Types) -> str:
    if dtype == "bfloat16":
        return f"({m.name})gs_bf16_load({expr})"
    if dtype == "float16":
        return f"({m.name})gs_f16_load({expr})"
    return f"({m.name}){expr}"


def _store(dtype: str, expr: str) -> str:
    if dtype == "bfloat16":
        return f"gs_bf16_store((float)({expr}))"
    if dtype == "float16":
        return f"gs_f16_store((float)({expr}))"
    return f"({STORAGE[dtype]})({expr})"


class _Printer:
    """Turns the nodes of a graph into C statements (scalar prologue and loop body)."""

    def __init__(self, graph: Graph, m: _Types):
        self.g, self.m = graph, m
        self.scalar_index = {name: k for k, name in enumerate(graph.scalar_names)}
        self.params: list[Node] = []  # scalar nodes the loop body reads (passed as arguments)
        self._param_ids: set[int] = set()  # Node overloads ==, so track membership by index
        self.lerp_weights: list[Node] = []  # scalar lerp weights: coefficient and side set once

    # names -------------------------------------------------------------------------------
    def ref(self, n: Node, *, as_bool: bool = False) -> str:
        """The C expression of node ``n`` inside the loop body, in math type (or as a bool)."""
        if n.is_tensor:
            name = f"t{n.index}"
        else:
            if n.index not in self._param_ids:
                self._param_ids.add(n.index)
                self.params.append(n)
            name = f"s{n.index}"
        if n.is_bool and not as_bool:
            return f"(({self.m.name}){name})"
        return name

    def dref(self, n: Node) -> str:
        """The C expression of scalar node ``n`` in the double-precision prologue."""
        return f"d{n.index}"

    # statements --------------------------------------------------------------------------
    def prologue(self) -> list[str]:
        """Scalar-only nodes, computed once per call in double precision."""
        out = []
        for n in self.g.nodes:
            if n.is_tensor:
                continue
            if n.op == "scalar":
                expr = f"scalars[{self.scalar_index[n.args[0]]}]"
            elif n.op == "const":
                expr = literal(n.args[0])
            elif n.op == "input":
                raise AssertionError("inputs are tensors")
            else:
                expr = self.expr(n, [self.dref(a) for a in n.args], _DOUBLE, scalar=True)
            ctype = "int" if n.is_bool else "double"
            out.append(f"const {ctype} d{n.index} = {expr};")
        return out

    def body(self, loads: dict[int, str]) -> list[str]:
        """Tensor nodes, computed per element in the math type."""
        out = []
        for n in self.g.nodes:
            if not n.is_tensor:
                continue
            if n.op == "input":
                if n.index in loads:
                    out.append(f"const {self.m.name} t{n.index} = {loads[n.index]};")
                continue
            ctype = "int" if n.is_bool else self.m.name
            if n.op == "sign":  # two selects (no int arithmetic): +1, -1, or 0 for 0 and NaN
                x, one = self.ref(n.args[0]), "1.0" if self.m is _DOUBLE else "1.0f"
                out.append(f"const {ctype} t{n.index}_ = ({x} < 0) ? -{one} : 0;")
                out.append(f"const {ctype} t{n.index} = ({x} > 0) ? {one} : t{n.index}_;")
                continue
            if n.op in ("maximum", "minimum"):
                # Two statements: gcc if-converts (vectorises) these where one nested ternary
                # is not; the larger (smaller) value, the second on ties, NaN if either is.
                x, y = self.ref(n.args[0]), self.ref(n.args[1])
                sym = ">" if n.op == "maximum" else "<"
                out.append(f"const {ctype} t{n.index}_ = ({x} {sym} {y}) ? {x} : {y};")
                out.append(f"const {ctype} t{n.index} = ({x} != {x}) ? {x} : t{n.index}_;")
                continue
            expr = self.expr(n, None, self.m, scalar=False)
            out.append(f"const {ctype} t{n.index} = {expr};")
        return out

    def expr(self, n: Node, args: list[str] | None, m: _Types, *, scalar: bool) -> str:
        """C expression for operation node ``n``; ``args`` given for the scalar prologue."""
        op = n.op

        def a(i: int, as_bool: bool = False) -> str:
            if args is not None:
                return args[i]
            return self.ref(n.args[i], as_bool=as_bool)

        one = "1.0" if m is _DOUBLE else "1.0f"
        if op == "neg":
            return f"(-{a(0)})"
        if op in ("add", "sub", "mul"):
            sym = {"add": "+", "sub": "-", "mul": "*"}[op]
            return f"({a(0)} {sym} {a(1)})"
        if op == "div":
            if not scalar and not n.args[0].is_tensor:  # scalar / tensor = reciprocal * scalar
                return f"(({one} / {a(1)}) * {a(0)})"
            return f"({a(0)} / {a(1)})"
        if op in COMPARE:
            sym = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}[op]
            return f"({a(0)} {sym} {a(1)})"
        if op == "sqrt":
            return f"{m.fn('sqrt')}({a(0)})"
        if op == "abs":
            return f"{m.fn('fabs')}({a(0)})"
        if op == "exp":
            return f"{m.fn('exp')}({a(0)})"
        if op == "sign":
            return f"(({m.name})(({a(0)} > 0) - ({a(0)} < 0)))"
        if op == "maximum":
            x, y = a(0), a(1)
            return f"({x} != {x} ? {x} : ({x} > {y} ? {x} : {y}))"
        if op == "minimum":
            x, y = a(0), a(1)
            return f"({x} != {x} ? {x} : ({x} < {y} ? {x} : {y}))"
        if op == "pow":
            return self._pow(n, a(0), a(1), m, scalar)
        if op == "where":
            return f"({a(0, as_bool=True)} ? {a(1)} : {a(2)})"
        if op == "lerp":
            # torch's vectorised lerp: |w| < 0.5 ? fma(w, e - s, s) : fma(w - 1, e - s, e)
            if args is None and not n.args[2].is_tensor:  # weight fixed per call: choose once
                w = n.args[2]
                self.ref(w)
                if w.index not in {x.index for x in self.lerp_weights}:
                    self.lerp_weights.append(w)
                s, e = a(0), a(1)
                return f"{m.fn('fma')}(s{w.index}_c, {e} - {s}, s{w.index}_k ? {s} : {e})"
            s, e, w = a(0), a(1), a(2)
            return (
                f"({m.fn('fabs')}({w}) < 0.5 ? {m.fn('fma')}({w}, {e} - {s}, {s})"
                f" : {m.fn('fma')}({w} - {one}, {e} - {s}, {e}))"
            )
        if op == "addcmul":
            # x + value * a * b, contracted as torch's vectorised kernel: fma(value * a, b, x)
            # (ops.add(x, y, alpha) records addcmul(x, y, alpha): torch's add is fma(alpha, y, x))
            x, prod, v = n.args
            if args is None and not v.is_tensor:
                if prod.op == "mul":
                    va, b = f"{self.ref(v)} * {self.ref(prod.args[0])}", self.ref(prod.args[1])
                    return f"{m.fn('fma')}({va}, {b}, {self.ref(x)})"
                return f"{m.fn('fma')}({self.ref(v)}, {self.ref(prod)}, {self.ref(x)})"
            return f"({a(0)} + {a(2)} * {a(1)})"
        if op == "addcdiv":
            x, quot, v = n.args
            if args is None and quot.op == "div":
                return f"({self.ref(x)} + ({self.ref(v)} * {self.ref(quot.args[0])}) / {self.ref(quot.args[1])})"
            return f"({a(0)} + {a(2)} * {a(1)})"
        raise ValueError(f"the CPU code generator has no rule for op {op!r}")

    def _pow(self, n: Node, base: str, exp: str, m: _Types, scalar: bool) -> str:
        """``base ** exp``; a constant exponent gets torch's special cases (x*x, sqrt, ...)."""
        e_node = n.args[1]
        if not scalar and n.args[0].is_tensor and e_node.op == "const":
            e = e_node.args[0]
            one = "1.0" if m is _DOUBLE else "1.0f"
            special = {
                1.0: f"{base}",
                2.0: f"({base} * {base})",
                3.0: f"({base} * {base} * {base})",
                0.5: f"{m.fn('sqrt')}({base})",
                -0.5: f"({one} / {m.fn('sqrt')}({base}))",
                -1.0: f"({one} / {base})",
                -2.0: f"({one} / ({base} * {base}))",
            }
            if e in special:
                return special[e]
        return f"{m.fn('pow')}({base}, {exp})"


def generate(graph: Graph, dtypes: tuple[str, ...], name: str = "gs_step") -> str:
    """C source of the kernel for ``graph`` with storage dtype ``dtypes[i]`` for tensor input i."""
    if len(dtypes) != graph.n_inputs:
        raise ValueError(f"expected {graph.n_inputs} dtypes, got {len(dtypes)}")
    m = _DOUBLE if dtypes[0] == "float64" else _FLOAT
    pr = _Printer(graph, m)

    inputs = {n.args[0]: n for n in graph.nodes if n.op == "input"}
    used = {a.index for n in graph.nodes for a in n.args if isinstance(a, Node)}
    used |= {o.index for o in graph.outputs}
    reads = [i for i in range(graph.n_inputs) if inputs[i].index in used]
    writable = [0] + list(range(2, graph.n_inputs))  # p and the states; g is read-only
    writes = [pos for k, pos in enumerate(writable) if graph.output_changes(k)]
    roles = sorted(set(reads) | set(writes))

    loads = {inputs[i].index: _load(dtypes[i], f"r{i}[j]", m) for i in reads}
    body = pr.body(loads)
    for k, pos in enumerate(writable):
        if pos in writes:
            out = graph.outputs[k]
            body.append(f"r{pos}[j] = {_store(dtypes[pos], pr.ref(out))};")
    prologue = pr.prologue()

    ptr_params = [
        f"{'' if i in writes else 'const '}{STORAGE[dtypes[i]]} *restrict r{i}" for i in roles
    ]
    fields = [f"{'int' if s.is_bool else m.name} s{s.index};" for s in pr.params]
    sets = [
        f"o->s{s.index} = {'' if s.is_bool else '(' + m.name + ')'}d{s.index};" for s in pr.params
    ]
    scalar_params = [f"const {'int' if s.is_bool else m.name} s{s.index}" for s in pr.params]
    ptr_args = [f"({STORAGE[dtypes[i]]} *)ptrs[{i} * n + t] + a" for i in roles]
    scalar_args = [f"sc.s{s.index}" for s in pr.params]
    one = "1.0" if m is _DOUBLE else "1.0f"
    for w in pr.lerp_weights:  # in the math type, as torch computes weight - 1
        k = w.index
        fields += [f"{m.name} s{k}_c;", f"int s{k}_k;"]
        sets += [f"o->s{k}_k = {m.fn('fabs')}(o->s{k}) < 0.5;",
                 f"o->s{k}_c = o->s{k}_k ? o->s{k} : o->s{k} - {one};"]
        scalar_params += [f"const {m.name} s{k}_c", f"const int s{k}_k"]
        scalar_args += [f"sc.s{k}_c", f"sc.s{k}_k"]

    lines = [_PRELUDE, "/* graph:", *("   " + ln for ln in graph.describe().splitlines()), "*/", ""]
    lines.append("typedef struct { int unused; " + " ".join(fields) + " } gs_scalars;")
    lines.append("")
    lines.append("static void gs_prologue(const double *scalars, gs_scalars *o) {")
    lines += ["    " + ln for ln in prologue + sets]
    lines += ["    (void)scalars; o->unused = 0;", "}", ""]
    lines.append(
        f"static void gs_body(const int64_t len, {', '.join(ptr_params + scalar_params)}) {{"
    )
    lines.append("    for (int64_t j = 0; j < len; ++j) {")
    lines += ["        " + ln for ln in body]
    lines += ["    }", "}", ""]
    lines.append(
        f"void {name}(void *const *ptrs, const int64_t *offsets, const int64_t n, "
        "const double *scalars, const int64_t scalar_stride, int nthreads) {"
    )
    lines.append(
        f"""    const int64_t total = offsets[n];
    int64_t most = total / {GRAIN};
    if (nthreads < 1) nthreads = 1;
    if (most < nthreads) nthreads = most < 1 ? 1 : (int)most;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {{
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num(); nt = omp_get_num_threads();
#endif
        int64_t share = (total + nt - 1) / nt;
        share = (share + {ALIGN - 1}) / {ALIGN} * {ALIGN};
        int64_t lo = share * tid, hi = lo + share;
        if (lo > total) lo = total;
        if (hi > total) hi = total;
        int64_t t = 0, top = n;  /* last tensor whose start is <= lo */
        while (top - t > 1) {{
            int64_t mid = t + (top - t) / 2;
            if (offsets[mid] <= lo) t = mid; else top = mid;
        }}
        gs_scalars sc;
        const double *row = 0;
        for (; t < n && offsets[t] < hi; ++t) {{
            int64_t a = offsets[t] > lo ? 0 : lo - offsets[t];
            int64_t b = (offsets[t + 1] < hi ? offsets[t + 1] : hi) - offsets[t];
            if (a >= b) continue;
            if (row != scalars + t * scalar_stride) {{  /* per-tensor scalars: recompute */
                row = scalars + t * scalar_stride;
                gs_prologue(row, &sc);
            }}
            gs_body({', '.join(['b - a'] + ptr_args + scalar_args)});
        }}
    }}
}}"""
    )
    return "\n".join(lines) + "\n"
