"""Steady-state steps on the fused backends: a few C-level calls of Python work per tensor.

A generic step of an elementwise group (``ElementwiseOptimizer._update_group``) looks up each
parameter's state several times, advances step counters with torch ops, picks a backend and
splits the group by device and dtype. Where the update itself is one native call (the fused CPU
kernel) or one launch (the Triton kernel on CUDA), that Python work dominates a step over many
small tensors. After a generic step, this module
keeps a *plan* of what stays the same between steps (the parameters, options, state keys,
kernel, tensor layouts and element offsets). The next step only

- checks that the plan still holds: the same parameter objects, options, config and state keys;
  the same parameters as at the last step have a gradient, dense and contiguous (parameters
  without one, frozen ones say, are skipped as the generic step skips them, while they stay
  without); the parameters' and states' data pointers,
  the parameters' element counts and the state tensors' identities are those the plan was
  built for (so a replaced state, a ``p.data`` swap or a resized tensor is noticed);
- then advances the step counters (one native call on the CPU; on CUDA one foreach op, with
  their values known on the host, see ``_steps``), computes the per-step scalars as the generic
  path does (once per distinct step value, or through the algorithm's ``_stateful_scalars``),
  and makes the kernel call (on CUDA: the Triton runner, which caches its work lists).

The per-step check runs as one C++ call where ``gradstep._native`` could be built (it reads each
tensor once and creates no Python object per gradient), else in Python, with the same result.

Any check that fails sends the group down the generic path, which rebuilds the plan. All checks
run before anything is changed, so an error still leaves every group untouched. Not noticed: a
``.data`` assignment that keeps a tensor's address and size but changes its strides or dtype
(``t.data = t.data.t()``): checking strides and dtypes too would cost as much again per tensor.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from itertools import chain, repeat
from operator import is_, itemgetter

import torch

from .. import _native
from ..backends import defaults_to_fused
from ..backends.cpu import runner, steps
from ._steps import increment as increment_steps

_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_is_contiguous = torch.Tensor.is_contiguous
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_GENERIC = ("step", "_update_group", "_advance", "_ensure_state", "_amp_unscale", "_check_capturable")
_MAX_BACKOFF = 1024


class _Plan:
    __slots__ = ("group", "group_params", "stepped", "params", "flags", "cfg", "keys", "dtypes",
                 "key", "ptrs", "offsets", "step_ptrs", "step_fn", "launch", "rows", "state_ptrs",
                 "expect", "gptrs", "failures", "skip")

    def __init__(self, group):
        self.group = group
        self.failures = 0
        self.skip = 0
        self.params = None  # None: no usable plan (see ``remember``)
        self.launch = None  # the CUDA runner module, for a group of CUDA tensors
        self.rows = None  # the runner's checked rows (None: the runner checks every step)
        self.step_fn = None  # the native incrementer of CPU step counters (else torch ops)


def _runs_triton(params: list) -> bool:
    """Whether a group's plan launches the Triton runner (tests point this at CPU tensors)."""
    return params[0].is_cuda


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


def _gather(opt, params, plan_keys):
    """Per-step inputs of a group's ``params`` (those that step), or None when the steady
    state does not hold.

    The last item is what a plan must find unchanged: the data pointers and element counts
    its kernel calls (and the runner's cached work lists) were built for, and the identities
    of the state tensors (so a replaced state is noticed even at a reused address).
    """
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
    if len(group["params"]) != len(plan.group_params):
        return None
    if _flags(group) != plan.flags or opt._config(group) != plan.cfg or tuple(opt._state_keys(group)) != plan.keys:
        return None
    if group.get("fused") and (getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None):
        return None
    found = _check(opt, group, plan)
    if found is None:
        return None
    sts, counters, gptrs = found
    if plan.launch is not None:
        return lambda: _execute_triton(opt, group, plan, gptrs, sts, counters)
    return lambda: _execute(opt, group, plan, gptrs, sts, counters)


def _check(opt, group, plan: _Plan):
    """``(state dicts, step counters, gradients' addresses)`` if the group's tensors are those
    ``plan`` was built for, else None: in one C++ call where ``_native`` could be built,
    else in Python (the same checks)."""
    params = group["params"]
    if params.__class__ is not list:  # (torch's add_param_group makes a list; keep to that)
        return None
    native = _native.ready(len(plan.params))
    if native is not None:
        found = native.gather(params, plan.group_params, plan.stepped, opt.state, plan.keys,
                              "step" if opt.counts_steps else None, plan.expect, plan.gptrs)
        return None if found is None else (*found, plan.gptrs)
    if not all(map(is_, params, plan.group_params)):
        return None
    if len(plan.params) != len(params) and bytes(p.grad is not None for p in params) != plan.stepped:
        return None
    gathered = _gather(opt, plan.params, plan.keys)
    if gathered is None or gathered[5] != plan.key:
        return None
    _, grads, sts, _, counters, _ = gathered
    try:
        return sts, counters, array("Q", map(_data_ptr, grads))
    except RuntimeError:  # no storage
        return None


def _tensors(plan: _Plan, sts) -> list[list]:
    """The group's ``[params, grads, *states]`` lists (where a runner needs the tensors)."""
    return [plan.params, [p.grad for p in plan.params], *([st[k] for st in sts] for k in plan.keys)]


def _advance(opt, group, plan: _Plan, sts, counters) -> list:
    """Increment the group's step counters; its per-step scalars."""
    if not opt.counts_steps:
        values = None
    elif plan.step_fn is not None:
        values = steps.increment_ptrs(plan.step_fn, plan.step_ptrs)
    else:
        values = increment_steps(counters)
    return opt._scalars_for_steps(group, values, sts)


def _execute_triton(opt, group, plan: _Plan, gptrs, sts, counters) -> None:
    scalars = _advance(opt, group, plan, sts, counters)
    cfg = opt._refine_config(plan.cfg, scalars)
    if plan.rows is None:
        plan.launch.run_triton(type(opt).rule, cfg, scalars, _tensors(plan, sts))
        return
    plan.launch.run_planned(type(opt).rule, cfg, scalars, plan.rows, [plan.key[0], gptrs, *plan.state_ptrs])


def _execute(opt, group, plan: _Plan, gptrs, sts, counters) -> None:
    n = len(plan.params)
    scalars = _advance(opt, group, plan, sts, counters)
    names = tuple(vars(scalars[0]))
    rule = type(opt).rule
    cfg = opt._refine_config(plan.cfg, scalars)
    try:
        fn = runner.get_kernel(rule, cfg, names, len(plan.keys), plan.dtypes)
    except Exception:  # the generic path warned already; stay correct
        runner.run_fused_cpu(rule, cfg, scalars, _tensors(plan, sts))
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
        or not params or not _eligible_class(opt)
    ):
        return False
    dtype = params[0].dtype
    if not all(type(p) in _PLAIN and p.dtype is dtype for p in params):
        return False
    if not fused and not defaults_to_fused(params[0]):
        return False
    keys = tuple(opt._state_keys(group))
    plan.launch = plan.rows = plan.step_fn = None
    gathered = _gather(opt, params, keys)
    if gathered is None:
        return False
    _, grads, sts, cols, counters, key = gathered
    native_counters = steps.incrementer(counters) if counters else None
    if native_counters is not None:
        plan.step_fn, plan.step_ptrs = native_counters
    if _runs_triton(params):
        return _build_triton(opt, group, params, plan, keys, gathered)
    if dtype not in runner.DTYPES or not all(p.is_cpu for p in params):
        return False
    for lst in cols:
        d = lst[0].dtype
        if d not in runner.DTYPES or not all(t.dtype is d and t.is_cpu for t in lst):
            return False
    if not all(runner._row_layout([p, *(lst[i] for lst in cols)]) is True for i, p in enumerate(params)):
        return False
    if counters and plan.step_fn is None:
        return False
    offsets = array("q", [0])
    for n in key[1]:
        offsets.append(offsets[-1] + n)
    _settle(opt, group, plan, params, keys, key)
    plan.dtypes = tuple(runner.DTYPES[lst[0].dtype] for lst in [params, grads, *cols])
    plan.ptrs = array("Q", chain(key[0], [0] * len(params), key[2]))
    plan.offsets = offsets
    return True


def _build_triton(opt, group, params, plan: _Plan, keys, gathered) -> bool:
    """A plan for a group of CUDA tensors on one device. Where every row runs in the kernel,
    the runner's checks are done once here (``plan.rows``) and each step hands it the pointers
    ``prepare`` read; otherwise the runner checks the rows itself every step."""
    from ..backends.cuda import cuda_runner

    device = params[0].device
    if not all(p.device == device for p in params):
        return False
    if cuda_runner() is None:
        return False
    from ..backends.cuda import runner as triton_runner

    _, grads, _, cols, _, key = gathered
    _settle(opt, group, plan, params, keys, key)
    plan.launch = triton_runner
    plan.rows = triton_runner.plan_rows([params, grads, *cols])
    return True


def _settle(opt, group, plan: _Plan, params, keys, key) -> None:
    """Record what every plan holds; from here ``prepare`` can take the group's next step.

    ``params`` are the group's parameters that stepped (had a gradient); the plan holds while
    exactly those have one (frozen parameters, say, never do)."""
    n = len(params)
    plan.group_params = list(group["params"])
    plan.stepped = bytes(p.grad is not None for p in plan.group_params)
    plan.params = list(params)
    plan.flags = _flags(group)
    plan.cfg = opt._config(group)
    plan.keys = keys
    plan.key = key
    plan.state_ptrs = [key[2][i * n:(i + 1) * n] for i in range(len(keys))]
    plan.expect = array("Q", chain(*key))
    plan.gptrs = array("Q", bytes(8 * n))
