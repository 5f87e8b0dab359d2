"""Shared machinery of elementwise algorithms: state setup, step counting, backend dispatch.

An elementwise algorithm subclasses :class:`ElementwiseOptimizer` and supplies four things:

- ``_state_keys(group)``: the per-parameter state tensors its rule reads and writes, in order;
- ``_init_state(p, state, group)``: creates that state (torch.optim's names, dtypes and devices);
- ``_config(group)``: a hashable record of the options that change the math (Python branches);
- ``_scalars(group, step, state)``: the per-step scalars (bias corrections, lr, ...), as Python
  numbers or, with ``capturable=True``, 0-d tensors;

and its ``rule(ops, cfg, s, p, g, *state) -> (p, *state)``, written once, which every backend runs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from ..backends import select_backend
from ..optimizer import Optimizer, _use_grad_for_differentiable
from . import _steady
from ._steps import increment as increment_steps
from ._validation import check_fused_params

Scalars = SimpleNamespace

_grad = operator.attrgetter("grad")
_dtype = operator.attrgetter("dtype")
_is_sparse = operator.attrgetter("is_sparse")

_CAPTURABLE_DEVICES = ("cuda", "xpu", "hpu", "privateuseone", "xla", "mtia")


def distinct(scalars: list[Scalars]) -> list[Scalars]:
    """The distinct scalars objects of a run (usually one, shared by every row)."""
    first = scalars[0]
    if all(s is first for s in scalars):
        return [first]
    return list({id(s): s for s in scalars}.values())


def are_numbers(scalars: list[Scalars], name: str) -> bool:
    """Whether ``name`` is a plain number in every one of ``scalars`` (not a tensor)."""
    return not any(isinstance(getattr(s, name), torch.Tensor) for s in scalars)


def scalar_dtype() -> torch.dtype:
    """dtype of step counters: float64 when that is the default dtype, else float32 (as torch)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step(p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    """A zero step counter; on the parameter's device when fused or capturable, else on the CPU.

    Fused groups count in float32; the others in the scalar dtype (float64 under a float64
    default dtype), capturable ones included, as torch.optim does.
    """
    if group.get("capturable") or group.get("fused"):
        dtype = torch.float32 if group.get("fused") else scalar_dtype()
        return torch.zeros((), dtype=dtype, device=p.device)
    return torch.tensor(0.0, dtype=scalar_dtype())


def to_float(x: Any) -> Any:
    """A Python number from a number or a one-element tensor."""
    return x.item() if isinstance(x, torch.Tensor) else x


def hyper(group: dict[str, Any], x: Any) -> Any:
    """A hyperparameter as the rule gets it: tensors stay tensors where autograd
    (``differentiable``) or graph capture (``capturable``) needs them, else Python numbers."""
    if group.get("differentiable") or group.get("capturable"):
        return x
    return to_float(x)


class ElementwiseOptimizer(Optimizer):
    """Base for algorithms whose update is elementwise; see the module docstring."""

    rule: Callable
    #: whether the algorithm keeps a per-parameter ``step`` counter in its state
    counts_steps = True
    #: whether ``_scalars`` reads or updates per-parameter state (ASGD's eta/mu, NAdam's
    #: mu_product); then ``_stateful_scalars`` runs rather than one call per distinct step
    scalars_use_state = False
    #: the tensors named by the capturable-device error (torch's wording differs per algorithm)
    capturable_tensors = "params and state_steps"
    #: the devices that error lists (torch's Adadelta leaves out xla)
    capturable_devices_listed = _CAPTURABLE_DEVICES[:-1]
    #: the runner for groups holding sparse gradients; None rejects them. SGD runs its rule on
    #: the sparse tensors as they are (reference backend), Adagrad on the gradient's support.
    sparse_runner: Callable | None = None

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _init_state(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _config(self, group: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _scalars(self, group: dict[str, Any], step: Any, state: dict[str, Any]) -> Scalars:
        raise NotImplementedError

    def _stateful_scalars(
        self, group: dict[str, Any], steps: list[float], states: list[dict[str, Any]]
    ) -> list[Scalars]:
        """Each parameter's scalars, when they read or update its state (``scalars_use_state``).

        One ``_scalars`` call per parameter, unless an algorithm does the whole group at once
        (ASGD's eta/mu and NAdam's mu_product: one read and one write per group, no per-tensor
        ops or device syncs).
        """
        return [self._scalars(group, step, st) for step, st in zip(steps, states)]

    def _refine_config(self, cfg: Any, scalars: list[Scalars]) -> Any:
        """The config for one run of the rule, given its rows' scalars.

        The same as ``cfg`` unless the step's scalar values make a branch static that
        ``_config`` must leave open (RAdam's rectified or plain phase, ASGD's copy of the
        parameter before averaging starts): then the rule computes only what torch.optim
        computes, and a branch that is not taken cannot turn an inf or a 0/0 into NaN. Scalars
        that are tensors (``capturable=True``) are never read here.
        """
        return cfg

    def _first_step_config(self, group: dict[str, Any]) -> Any:
        """The config for parameters whose state was created in this step.

        The same as ``_config`` unless an algorithm's first update differs (SGD's momentum
        buffer starts as the gradient itself).
        """
        return self._config(group)

    def _sparse_error(self) -> str:
        return f"{type(self).__name__} does not support sparse gradients"

    def _param_shaped_state_keys(self) -> frozenset[str]:
        keys: set[str] = set()
        for group in self.param_groups:
            keys.update(self._state_keys(group))
        return frozenset(keys)

    def _expected_state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (("step",) if self.counts_steps else ()) + tuple(self._state_keys(group))

    # ------------------------------------------------------------------ the step

    def _params_with_grad(self, group: dict[str, Any]) -> list[torch.Tensor]:
        """The group's parameters that have a gradient, checked before any group is updated.

        The checks look at each distinct dtype and layout once (a group holds thousands of
        parameters, but few of those).
        """
        params = [p for p in group["params"] if p.grad is not None]
        if self.sparse_runner is None and any(map(_is_sparse, map(_grad, params))):
            raise RuntimeError(self._sparse_error())
        dtypes = set(map(_dtype, params))
        if not all(d.is_floating_point or d.is_complex for d in dtypes):
            for p in params:
                self._check_param_dtype(group, p)
        if group.get("fused"):  # torch's check for its fused kernels, for every fused group
            check_fused_params(params, dtypes)
        return params

    def _check_capturable(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        if not group.get("capturable") or torch.compiler.is_compiling():
            return
        for p in params:
            step = self.state[p].get("step")
            if p.device.type not in _CAPTURABLE_DEVICES or (
                step is not None and step.device.type != p.device.type
            ):
                raise AssertionError(
                    f"If capturable=True, {self.capturable_tensors} must be on supported "
                    f"devices: {list(self.capturable_devices_listed)}."
                )

    def _advance(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[Scalars]:
        """Increment step counters and compute each parameter's per-step scalars."""
        states = [self.state.get(p, {}) for p in params]
        if not self.counts_steps:
            return self._scalars_for_steps(group, None, states)
        steps = [st["step"] for st in states]
        if group.get("capturable"):
            torch._foreach_add_(steps, 1)
            return [self._scalars(group, step, st) for step, st in zip(steps, states)]
        values = increment_steps(steps)  # device counters (fused=True) are read without a sync
        return self._scalars_for_steps(group, values, states)

    def _scalars_for_steps(
        self, group: dict[str, Any], values: list[float] | None, states: list[dict[str, Any]]
    ) -> list[Scalars]:
        """Each parameter's scalars given its counter's new value (``None``: no counters),
        computed once per distinct value unless they read state (``_stateful_scalars``).
        The generic step and the steady-state path (_steady.py) both use this."""
        if values is None:
            return [self._scalars(group, None, states[0])] * len(states)
        if self.scalars_use_state:
            return self._stateful_scalars(group, values, states)
        if min(values) == max(values):
            return [self._scalars(group, values[0], states[0])] * len(states)
        cache: dict[float, Scalars] = {}
        out = []
        for value, st in zip(values, states):
            if value not in cache:
                cache[value] = self._scalars(group, value, st)
            out.append(cache[value])
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.counts_steps:
            # Older checkpoints (and torch's test-suite) store steps as Python numbers.
            for group in self.param_groups:
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "step" in st and not torch.is_tensor(st["step"]):
                        step = new_step(p, group)
                        step.fill_(float(st["step"]))
                        st["step"] = step

    def _amp_unscale(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        """GradScaler's protocol for fused optimizers; False when the step must be skipped.

        With ``_step_supports_amp_scaling``, GradScaler hands the scale and the inf flag to the
        optimizer (``grad_scale``, ``found_inf``) instead of unscaling the gradients itself.
        """
        if not group.get("fused"):
            return True
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.item()):
            return False
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            grads = [p.grad for p in params]
            torch._foreach_div_(grads, grad_scale.to(grads[0].device).reshape(()))
        return True

    def _update_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        if not params:
            return
        fresh = self._ensure_state(group, params)
        if group.get("foreach") and group.get("differentiable"):
            raise AssertionError("_foreach ops don't support autograd")
        self._check_capturable(group, params)
        if not self._amp_unscale(group, params):
            return
        cfg = self._config(group)
        scalars = self._advance(group, params)
        keys = self._state_keys(group)
        run = select_backend(group, params)
        if self.sparse_runner is not None and any(p.grad.is_sparse for p in params):
            run = self.sparse_runner
        first_cfg = self._first_step_config(group) if fresh else cfg
        batches = [(cfg, range(len(params)))]
        if first_cfg != cfg:
            is_fresh = [id(p) in fresh for p in params]
            batches = [(first_cfg, [i for i, f in enumerate(is_fresh) if f]),
                       (cfg, [i for i, f in enumerate(is_fresh) if not f])]
        for c, idx in batches:
            ps = [params[i] for i in idx]
            if ps:
                tensors = [ps, [p.grad for p in ps]] + [[self.state[p][k] for p in ps] for k in keys]
                sub = [scalars[i] for i in idx]
                run(type(self).rule, self._refine_config(c, sub), sub, tensors)

    def _ensure_state(self, group: dict[str, Any], params: list[torch.Tensor]) -> set[int]:
        """Create missing state; the ids of the parameters whose state was just created.

        An algorithm whose ``_init_state`` adds nothing leaves no entry at all, as torch's SGD
        without momentum does.
        """
        fresh = set()
        for p in params:
            state = self.state.get(p)
            if not state:
                state = {} if state is None else state
                self._init_state(p, state, group)
                if state:
                    self.state[p] = state
                fresh.add(id(p))
        return fresh

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure: a callable that re-evaluates the model and returns the loss (optional).
        """
        self._cuda_graph_capture_health_check()
        loss = self._evaluate_closure(closure)
        # Check every group before touching any, so a foreseeable error updates nothing.
        # Groups in a steady state on the fused CPU backend take the short path (_steady.py).
        plan = []
        for group in self.param_groups:
            fast = _steady.prepare(self, group)
            plan.append((group, fast, None if fast else self._params_with_grad(group)))
        for group, fast, params in plan:
            if fast is not None:
                fast()
            else:
                self._update_group(group, params)
                _steady.remember(self, group, params)
        return loss
