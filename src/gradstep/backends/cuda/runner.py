"""The CUDA backend's entry point: ``run(rule, cfg, scalars, tensors)``, as the other backends.

Per call (one parameter group, one device, one parameter dtype): trace the rule once per
configuration, print and load its Triton kernel once per storage-dtype/scalar-mode combination,
look up the cached work list, and launch. In a steady loop that is one launch per group (two if
some tensors are not 16-byte aligned) and no host-device synchronisation.

Rows the kernel cannot take (non-contiguous tensors, a dtype mix inside one role, a dtype Triton
does not store) run through the foreach backend instead, so every input stays correct.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
import triton  # noqa: F401  (a broken install fails here, where the caller falls back)

from ..foreach import run_foreach
from ..graph import Graph, trace
from ..reference import as_real
from . import tables
from .codegen import STORAGE, KernelSpec, generate
from .loader import load_source

#: launch shape: elements per block, blocks per program, warps per program; measured on an H200
#: (docs/performance.md, benchmarks/bench_cuda.py --sweep).
BLOCK = int(os.environ.get("GRADSTEP_TRITON_BLOCK", "1024"))
PER_PROGRAM = int(os.environ.get("GRADSTEP_TRITON_PER_PROGRAM", "2"))
NUM_WARPS = int(os.environ.get("GRADSTEP_TRITON_WARPS", "4"))
#: streaming cache hints on the kernels' loads and stores (off until measured better on a GPU)
STREAM = os.environ.get("GRADSTEP_TRITON_STREAM", "0") == "1"

_GRAPHS: dict[tuple, Graph] = {}
_KERNELS: dict[tuple, Any] = {}


def _graph(rule, cfg, names: tuple[str, ...], n_states: int) -> Graph:
    key = (rule, cfg, names, n_states)
    graph = _GRAPHS.get(key)
    if graph is None:
        graph = _GRAPHS[key] = trace(rule, cfg, names, n_states)
    return graph


def kernel_source(rule, cfg, names, n_states, spec: KernelSpec) -> str:
    """The generated Triton module for one configuration (for tests and inspection)."""
    return generate(_graph(rule, cfg, names, n_states), spec)


def _kernel(rule, cfg, names, n_states, spec: KernelSpec):
    key = (rule, cfg, names, n_states, spec)
    fn = _KERNELS.get(key)
    if fn is None:
        fn = _KERNELS[key] = load_source(kernel_source(*key)).step_kernel
    return fn


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numel = torch.Tensor.numel


@dataclass
class _Layout:
    """What was checked about a group's params and states (see ``_check``)."""

    ok: list[int]  # rows the kernel can update
    bad: list[int]  # rows left to the foreach backend
    numels: list[int]  # per row


_LAYOUTS: OrderedDict[tables.HashedKey, _Layout] = OrderedDict()


def _check(lists: list[list[torch.Tensor]]) -> _Layout:
    """Rows the kernel can update: every tensor contiguous, one dtype per role that Triton
    stores, and the same numel across the row."""
    params = lists[0]
    numels = list(map(_numel, params))
    want = [lst[0].dtype for lst in lists]
    storable = all(_dtype_name(d) in STORAGE for d in want)
    if storable and all(
        all(map(_is_contiguous, lst)) and all(t.dtype == d for t in lst)
        and (lst is params or list(map(_numel, lst)) == numels)
        for lst, d in zip(lists, want)
    ):
        return _Layout(list(range(len(params))), [], numels)
    ok, bad = [], []
    for i, n in enumerate(numels):
        good = storable and all(
            lst[i].is_contiguous() and lst[i].dtype == d and lst[i].numel() == n
            for lst, d in zip(lists, want)
        )
        (ok if good else bad).append(i)
    return _Layout(ok, bad, numels)


def _placement(tensors, ptrs) -> tables.HashedKey:
    """The identities and addresses of the params and states (not the gradients), and the
    params' sizes (a view can shrink at the same address)."""
    return tables.HashedKey(tuple(chain(*(map(id, lst) for i, lst in enumerate(tensors) if i != 1),
                                        *(p for i, p in enumerate(ptrs) if i != 1),
                                        map(_numel, tensors[0]))))


def _layout(key: tables.HashedKey, lists) -> _Layout:
    """``_check`` of the params and states, cached under their identities and addresses (a
    steady loop checks them once); gradients, new objects every step, are checked each time
    for contiguity (autograd already guarantees their dtype and shape)."""
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _LAYOUTS[key] = _check(lists)
        if len(_LAYOUTS) > 16:
            _LAYOUTS.popitem(last=False)
    else:
        _LAYOUTS.move_to_end(key)
        grads = lists[1]
        if not (all(map(_is_contiguous, grads)) and grads[0].dtype == lists[0][0].dtype):
            return _check(lists)
    return layout


def _modes(scalars: list[Any], names: tuple[str, ...], device: torch.device):
    """How each scalar reaches the kernel: a float argument, a pointer to one 0-d tensor shared
    by all rows (a tensor ``lr``), or a pointer to a per-row vector (``capturable=True``).

    Only tensors on the parameters' device are passed by pointer; numbers and tensors elsewhere
    (a CPU ``lr`` for CUDA parameters) become float arguments.
    """
    first = scalars[0]
    modes = []
    for name in names:
        v = getattr(first, name)
        if isinstance(v, torch.Tensor) and v.device == device:
            shared = all(getattr(s, name) is v for s in scalars)
            modes.append((name, "s" if shared else "v", _dtype_name(v.dtype)))
        else:
            modes.append((name, "f", "float64"))
    return tuple(modes)


def _partitions(scalars: list[Any], rows: list[int], f_names: list[str]) -> list[tuple[list[int], tuple]]:
    """Rows grouped by the values of their number-valued scalars (usually a single group)."""
    first = scalars[rows[0]]
    if all(s is first for s in scalars):  # the common case: one scalars object for the group
        return [(rows, tuple(float(getattr(first, f)) for f in f_names))]
    by_obj: dict[int, tuple] = {}
    parts: dict[tuple, list[int]] = {}
    for r in rows:
        s = scalars[r]
        key = by_obj.get(id(s))
        if key is None:
            key = by_obj[id(s)] = tuple(float(getattr(s, f)) for f in f_names)
        parts.setdefault(key, []).append(r)
    return [(part, key) for key, part in parts.items()]


def run_triton(rule, cfg: Any, scalars: list[Any], tensors: list[list[torch.Tensor]]) -> None:
    """Apply ``rule`` to all rows of ``tensors`` (``[params, grads, *states]``, one device)."""
    if not scalars:
        return
    lists = tensors
    if lists[0][0].is_complex():
        lists = [[as_real(t) for t in lst] for lst in lists]
    ptrs = [list(map(_data_ptr, lst)) for lst in lists]
    placement = _placement(tensors, ptrs)
    layout = _layout(placement, lists)
    rows, fallback = layout.ok, layout.bad
    if fallback:
        run_foreach(rule, cfg, [scalars[i] for i in fallback],
                    [[lst[i] for i in fallback] for lst in tensors])
    if rows:
        _launch(rule, cfg, scalars, _Rows.of(lists, rows, layout.numels, placement), ptrs)


@dataclass
class _Rows:
    """Rows of a group the kernel updates, and what a launch needs to know about them."""

    rows: list[int]
    numels: list[int]  # of every row of the group
    placement: tables.HashedKey
    dtypes: tuple[str, ...]  # storage dtype per role
    device: torch.device

    @classmethod
    def of(cls, lists, rows, numels, placement) -> _Rows:
        first = rows[0]
        return cls(rows, numels, placement, tuple(_dtype_name(lst[first].dtype) for lst in lists),
                   lists[0][first].device)


def plan_rows(tensors: list[list[torch.Tensor]]) -> _Rows | None:
    """The rows of ``tensors`` (``[params, grads, *states]``) checked once for the steady path
    (``_steady.py``), or None when some row needs the foreach backend or the parameters are
    complex (those keep to ``run_triton``). Valid while the caller sees the same tensors at
    the same addresses with the same sizes, and contiguous gradients."""
    if tensors[0][0].is_complex():
        return None
    layout = _check(tensors)
    if layout.bad:
        return None
    placement = _placement(tensors, [list(map(_data_ptr, lst)) for lst in tensors])
    return _Rows.of(tensors, layout.ok, layout.numels, placement)


def run_planned(rule, cfg: Any, scalars: list[Any], rows: _Rows, ptrs: list[list[int]]) -> None:
    """``run_triton`` for a steady group: the caller has checked that ``rows`` still holds and
    read every role's data pointers (``ptrs``: params, grads, states)."""
    _launch(rule, cfg, scalars, rows, ptrs)


def _launch(rule, cfg, scalars, checked: _Rows, ptrs) -> None:
    """Launch the kernel over the ``checked`` rows (see ``_check``), given every role's data
    pointers."""
    rows = checked.rows
    names = tuple(vars(scalars[0]))
    n_roles = len(checked.dtypes)
    sub = [scalars[r] for r in rows] if len(rows) != len(scalars) else scalars
    modes = _modes(sub, names, checked.device)
    spec = KernelSpec(checked.dtypes, modes, os.environ.get("TRITON_INTERPRET") == "1", STREAM)
    kernel = _kernel(rule, cfg, names, n_roles - 2, spec)
    f_names = [name for name, mode, _ in modes if mode == "f"]
    for part_rows, f_values in _partitions(scalars, rows, f_names):
        f_args = dict(zip(f_names, f_values))
        for launch in tables.launches(checked.device, n_roles, part_rows, BLOCK * PER_PROGRAM,
                                      ptrs, checked.numels, checked.placement):
            args = []
            for name, mode, _ in modes:
                if mode == "f":
                    args.append(f_args[name])
                elif mode == "s":
                    args.append(getattr(scalars[launch.rows[0]], name))
                else:
                    args.append(torch.stack([getattr(scalars[r], name) for r in launch.rows]))
            kernel[(launch.n_blocks,)](
                launch.meta, launch.n_tensors, *args,
                BLOCK=BLOCK, PER_PROGRAM=PER_PROGRAM, ALIGNED=launch.aligned,
                num_warps=NUM_WARPS, enable_fp_fusion=True,
            )
