"""The fused CPU runner: one native call per parameter group per step.

For each (rule, config, scalar names, state count, storage dtypes) the rule is traced, printed
as C (codegen.py), compiled and loaded once (compiler.py); later steps only look the kernel up in
a dict. Per step, the runner gathers the tensors' data pointers and the per-step scalars into
flat arrays and makes one call that walks every tensor of the group.

The per-step Python work is a few C-level calls per tensor (its data pointers, the parameter's
element count, the gradient's contiguity). Everything else (offsets, the layout checks of
parameters and states) is cached per group and reused while the pointers and element counts
are exactly those it was computed for.

Rows the kernel cannot take (a tensor that is not dense, or laid out unlike its parameter) go
through the foreach backend instead; if no compiler is available or compilation fails, the
whole group does, after one warning.
"""

from __future__ import annotations

import warnings
from array import array
from collections import OrderedDict
from typing import Any

import torch

from ..foreach import run_foreach
from ..graph import trace
from .codegen import generate
from .compiler import CompileError, CompilerUnavailable, load

DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}

_kernels: dict[tuple, Any] = {}  # spec -> loaded function, or the exception that stopped it
_warned: set[str] = set()
_layouts: OrderedDict[tuple, tuple] = OrderedDict()  # group key -> cached layout (see _layout)
_MAX_LAYOUTS = 256

_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_is_contiguous = torch.Tensor.is_contiguous


def kernel_source(rule, cfg: Any, scalar_names: tuple[str, ...], n_states: int, dtypes: tuple[str, ...]) -> str:
    """The C source fused CPU steps run for this configuration (for inspection and tests)."""
    return generate(trace(rule, cfg, scalar_names, n_states), dtypes)


def get_kernel(rule, cfg: Any, scalar_names: tuple[str, ...], n_states: int, dtypes: tuple[str, ...]):
    """The compiled kernel for one configuration; raises if it cannot be built."""
    key = (rule, cfg, scalar_names, n_states, dtypes)
    fn = _kernels.get(key)
    if fn is None:
        try:
            fn = load(kernel_source(rule, cfg, scalar_names, n_states, dtypes))
        except Exception as e:  # remembered, so a failing build is not retried every step
            fn = e
        _kernels[key] = fn
    if isinstance(fn, Exception):
        raise fn
    return fn


def _warn_fallback(err: Exception) -> None:
    kind = type(err).__name__
    if kind in _warned:
        return
    _warned.add(kind)
    if isinstance(err, CompilerUnavailable):
        why = str(err)
    elif isinstance(err, CompileError):
        why = f"compiling a fused kernel failed: {err}"
    else:
        why = f"generating a fused kernel failed: {kind}: {err}"
    warnings.warn(
        f"gradstep: the fused CPU backend is unavailable ({why}); using the foreach backend "
        "instead (same results, slower).",
        UserWarning,
        stacklevel=4,
    )


def _non_overlapping_dense(t: torch.Tensor) -> bool:
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _row_layout(row: list[torch.Tensor]) -> Any:
    """How the kernel can walk one parameter and its states: ``True`` (all contiguous), the
    parameter's strides (all dense with those strides, e.g. channels_last), or ``None``."""
    p = row[0]
    if all(t.is_contiguous() and t.numel() == p.numel() for t in row):
        return True
    if _non_overlapping_dense(p) and all(
        t.stride() == p.stride() and t.shape == p.shape for t in row[1:]
    ):
        return p.stride()
    return None


def _layout(key: tuple, tensors: list[list[torch.Tensor]], ptrs: list[list[int]], numels: list[int]):
    """``(offsets, all_contiguous, per-row layouts)`` for a group's params and states, cached
    while their data pointers and the params' element counts stay the same."""
    fixed = (numels, ptrs[0], ptrs[2:])
    hit = _layouts.get(key)
    if hit is not None and hit[0] == fixed:
        return hit[1]
    states = tensors[2:]
    layouts = []
    for i, p in enumerate(tensors[0]):
        row = [p] + [lst[i] for lst in states]
        ok = all(t.dtype == lst[0].dtype for t, lst in zip(row, tensors[:1] + states))
        layouts.append(_row_layout(row) if ok else None)
    offsets = array("q", [0])
    total = 0
    for n in numels:
        total += n
        offsets.append(total)
    value = (offsets, all(x is True for x in layouts), layouts)
    _layouts[key] = (fixed, value)
    _layouts.move_to_end(key)
    while len(_layouts) > _MAX_LAYOUTS:
        _layouts.popitem(last=False)
    return value


def _grad_ok(g: torch.Tensor, layout: Any) -> bool:
    if layout is None:
        return False
    if layout is True:
        return g.is_contiguous()
    return g.stride() == layout


def _pack_scalars(scalars: list[Any], names: tuple[str, ...]) -> tuple[array, int]:
    """Per-step scalars as doubles: one row shared by all tensors (stride 0) or one per tensor."""
    first = scalars[0]
    if all(s is first for s in scalars):
        return array("d", [float(getattr(first, k)) for k in names]), 0
    rows: dict[int, list[float]] = {}
    out = array("d")
    for s in scalars:
        row = rows.get(id(s))
        if row is None:
            row = rows[id(s)] = [float(getattr(s, k)) for k in names]
        out.extend(row)
    return out, len(names)


def run_fused_cpu(rule, cfg: Any, scalars: list[Any], tensors: list[list[torch.Tensor]]) -> None:
    """Apply ``rule`` to one group's tensors (one device and dtype) in one native call.

    Tensors that are not CPU float32/float64/bfloat16/float16 run on the foreach backend.
    """
    params = tensors[0]
    if not params[0].is_cpu or params[0].dtype not in DTYPES:
        run_foreach(rule, cfg, scalars, tensors)
        return
    names = tuple(vars(scalars[0]))
    dtypes = tuple(DTYPES.get(lst[0].dtype, "?") for lst in tensors)
    try:
        fn = get_kernel(rule, cfg, names, len(tensors) - 2, dtypes)
    except Exception as e:
        _warn_fallback(e)
        run_foreach(rule, cfg, scalars, tensors)
        return

    ptrs = [list(map(_data_ptr, lst)) for lst in tensors]
    numels = list(map(_numel, params))
    key = (rule, cfg, dtypes, ptrs[0][0], len(params))
    offsets, all_contiguous, layouts = _layout(key, tensors, ptrs, numels)
    grads = tensors[1]
    if not (all_contiguous and all(map(_is_contiguous, grads))):
        slow = [i for i, g in enumerate(grads) if not _grad_ok(g, layouts[i])]
        if slow:
            _run_split(fn, rule, cfg, scalars, tensors, names, slow)
            return
    flat = array("Q")
    for lst in ptrs:
        flat.extend(lst)
    _call(fn, flat, offsets, len(params), *_pack_scalars(scalars, names))


def _call(fn, ptrs: array, offsets: array, n: int, scalars: array, stride: int) -> None:
    fn(
        ptrs.buffer_info()[0],
        offsets.buffer_info()[0],
        n,
        scalars.buffer_info()[0],
        stride,
        torch.get_num_threads(),
    )


def _run_split(fn, rule, cfg, scalars, tensors, names, slow: list[int]) -> None:
    """Rows the kernel can walk through it, the others through foreach."""
    bad = set(slow)
    good = [i for i in range(len(tensors[0])) if i not in bad]
    if good:
        sub = [[lst[i] for i in good] for lst in tensors]
        offsets = array("q", [0])
        for p in sub[0]:
            offsets.append(offsets[-1] + p.numel())
        ptrs = array("Q", [t.data_ptr() for lst in sub for t in lst])
        _call(fn, ptrs, offsets, len(good), *_pack_scalars([scalars[i] for i in good], names))
    run_foreach(rule, cfg, [scalars[i] for i in slow], [[lst[i] for i in slow] for lst in tensors])
