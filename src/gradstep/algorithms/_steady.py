"""Steady-state steps on the fused CPU backend: a few C-level calls of Python work per tensor.

A generic step of an elementwise group (``ElementwiseOptimizer._update_group``) looks up each
parameter's state several times, advances step counters with torch ops, picks a backend and
splits the group by device and dtype. On the CPU, where the update itself is one native call,
that Python work dominates a step over many small tensors. After a generic step, this module
keeps a *plan* of what stays the same between steps (the parameters, options, state keys,
kernel, tensor layouts and element offsets). The next step only

- checks that the plan still holds: the same parameter objects, options, config and state keys;
  every parameter has a dense, contiguous gradient; the parameters' and states' data pointers,
  the parameters' element counts and the state tensors' identities are those the plan was
  built for (so a replaced state, a ``p.data`` swap or a resized tensor is noticed);
- then advances the step counters in one native call, computes the per-step scalars as the
  generic path does (once per distinct step value, or per tensor where the algorithm's scalars
  read its state), and makes the kernel call.

Any check that fails sends the group down the generic path, which rebuilds the plan. All checks
run before anything is changed, so an error still leaves every group untouched.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from itertools import chain, repeat
from operator import is_, itemgetter
from typing import Any

import torch

from ..backends.cpu import runner, steps

_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_is_contiguous = torch.Tensor.is_contiguous
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_GENERIC = ("step", "_update_group", "_advance", "_ensure_state", "_amp_unscale", "_check_capturable")
_MAX_BACKOFF = 1024


class _Plan:
    __slots__ = ("group", "params", "flags", "cfg", "keys", "dtypes", "key", "ptrs", "offsets",
                 "step_ptrs", "step_fn", "failures", "skip")

    def __init__(self, group):
        self.group = group
        self.failures = 0
        self.skip = 0
        self.params = None  # None: no usable plan (see ``remember``)


def _flags(group: dict) -> tuple:
    return (group.get("foreach"), group.get("fused"), group.get("differentiable"), group.get("capturable"))


def _eligible_class(opt) -> bool:
    from ._elementwise import ElementwiseOptimizer

    for cls in type(opt).__mro__:
        if cls is ElementwiseOptimizer:
            return True
        if any(name in vars(cls) for name in _GENERIC):
            return False
    return False


def _gather(opt, group, plan_keys):
    """Per-step inputs of a group, or None when the steady state does not hold."""
    params = group["params"]
    grads = [p.grad for p in params]
    if any(map(is_, grads, repeat(None))) or not all(map(_is_contiguous, grads)):
        return None
    if plan_keys or opt.counts_steps:
        sts = list(map(opt.state.get, params))
        if any(map(is_, sts, repeat(None))):
            return None
    else:  # e.g. SGD without momentum keeps no state at all
        sts = [{}] * len(params)
    try:
        cols = [list(map(itemgetter(k), sts)) for k in plan_keys]
        counters = list(map(itemgetter("step"), sts)) if opt.counts_steps else []
    except KeyError:
        return None
    flat = list(chain(*cols))
    key = (
        list(map(_data_ptr, params)),
        list(map(_numel, params)),
        list(map(_data_ptr, flat)),
        list(map(id, flat)),
        list(map(_data_ptr, counters)),
        list(map(id, counters)),
    )
    return params, grads, sts, cols, counters, key


def prepare(opt, group: dict) -> Callable[[], None] | None:
    """A callable performing this group's step from its plan, or None (take the generic path).

    Only checks; changes nothing.
    """
    plans = opt.__dict__.get("_gradstep_plans")
    plan = plans.get(id(group)) if plans else None
    if plan is None or plan.params is None or plan.group is not group:
        return None
    params = group["params"]
    if len(params) != len(plan.params) or not all(map(is_, params, plan.params)):
        return None
    if _flags(group) != plan.flags or opt._config(group) != plan.cfg or tuple(opt._state_keys(group)) != plan.keys:
        return None
    if group.get("fused") and (getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None):
        return None
    gathered = _gather(opt, group, plan.keys)
    if gathered is None or gathered[5] != plan.key:
        return None
    _, grads, sts, cols, _, _ = gathered
    try:
        gptrs = array("Q", map(_data_ptr, grads))
    except RuntimeError:  # no storage
        return None
    return lambda: _execute(opt, group, plan, grads, gptrs, sts, cols)


def _execute(opt, group, plan: _Plan, grads, gptrs, sts, cols) -> None:
    n = len(plan.params)
    if opt.counts_steps:
        values = steps.increment_ptrs(plan.step_fn, plan.step_ptrs)
        if opt.scalars_use_state:
            scalars = opt._stateful_scalars(group, values, sts)
        elif min(values) == max(values):
            scalars = [opt._scalars(group, values[0], sts[0])] * n
        else:
            cache: dict[float, Any] = {}
            scalars = []
            for v, st in zip(values, sts):
                if v not in cache:
                    cache[v] = opt._scalars(group, v, st)
                scalars.append(cache[v])
    else:
        scalars = [opt._scalars(group, None, sts[0])] * n
    names = tuple(vars(scalars[0]))
    rule = type(opt).rule
    try:
        fn = runner.get_kernel(rule, plan.cfg, names, len(plan.keys), plan.dtypes)
    except Exception:  # the generic path warned already; stay correct
        runner.run_fused_cpu(rule, plan.cfg, scalars, [plan.params, grads, *cols])
        return
    ptrs = plan.ptrs
    ptrs[n:2 * n] = gptrs
    runner._call(fn, ptrs, plan.offsets, n, *runner._pack_scalars(scalars, names))


def remember(opt, group: dict, params: list) -> None:
    """After a generic step of ``group``: build its plan if the group qualifies (with a growing
    back-off between attempts when it does not, so the generic path stays cheap)."""
    plans = opt.__dict__.setdefault("_gradstep_plans", {})
    plan = plans.get(id(group))
    if plan is None or plan.group is not group:
        plan = plans[id(group)] = _Plan(group)
    if plan.skip > 0:
        plan.skip -= 1
        return
    if _build(opt, group, params, plan):
        plan.failures = 0
        return
    plan.params = None
    plan.failures += 1
    plan.skip = min(2 ** plan.failures, _MAX_BACKOFF)


def _build(opt, group, params, plan: _Plan) -> bool:
    fused, foreach = group.get("fused"), group.get("foreach")
    if (
        group.get("differentiable") or group.get("capturable")
        or not (fused or (fused is None and foreach is None))
        or len(params) != len(group["params"]) or not params
        or not _eligible_class(opt)
    ):
        return False
    dtype = params[0].dtype
    if dtype not in runner.DTYPES or not all(type(p) in _PLAIN and p.is_cpu and p.dtype is dtype for p in params):
        return False
    keys = tuple(opt._state_keys(group))
    gathered = _gather(opt, group, keys)
    if gathered is None:
        return False
    _, grads, sts, cols, counters, key = gathered
    for lst in cols:
        d = lst[0].dtype
        if d not in runner.DTYPES or not all(t.dtype is d and t.is_cpu for t in lst):
            return False
    if not all(runner._row_layout([p, *(lst[i] for lst in cols)]) is True for i, p in enumerate(params)):
        return False
    if counters:
        sd = counters[0].dtype
        if not all(c.is_cpu and c.dtype is sd and c.numel() == 1 for c in counters):
            return False
        plan.step_fn = steps.function(sd)
        if plan.step_fn is None:
            return False
        plan.step_ptrs = array("Q", key[4])
    offsets = array("q", [0])
    for n in key[1]:
        offsets.append(offsets[-1] + n)
    plan.params = list(group["params"])
    plan.flags = _flags(group)
    plan.cfg = opt._config(group)
    plan.keys = keys
    plan.dtypes = tuple(runner.DTYPES[lst[0].dtype] for lst in [params, grads, *cols])
    plan.key = key
    plan.ptrs = array("Q", chain(key[0], [0] * len(params), key[2]))
    plan.offsets = offsets
    return True
