"""The Optimizer base class: param groups, state, checkpoints and hooks; no algorithm math.

gradstep's base class derives from ``torch.optim.Optimizer`` only so that
``isinstance(opt, torch.optim.Optimizer)`` holds for the ecosystem (LR schedulers, Lightning,
HF, torch.distributed).  Every public method and attribute is implemented here; torch's
``__init__`` is never called and none of its methods run (tests/test_optimizer_base.py proves it).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from copy import deepcopy
from itertools import chain
from typing import Any

import torch
import torch.optim as _torch_optim
from torch.utils.hooks import RemovableHandle

from ._state_dict_checks import check_layout, check_param_state

__all__ = [
    "Optimizer",
    "register_optimizer_step_pre_hook",
    "register_optimizer_step_post_hook",
    "required",
]


class _Required:
    """Marker for a hyperparameter without a default (kept for API compatibility)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()

_TORCH_OPTIMIZER_MODULE = importlib.import_module("torch.optim.optimizer")

_global_step_pre_hooks: dict[int, Callable] = OrderedDict()
_global_step_post_hooks: dict[int, Callable] = OrderedDict()


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """Register a pre-hook ``hook(optimizer, args, kwargs)`` run before every optimizer's step."""
    handle = RemovableHandle(_global_step_pre_hooks)
    _global_step_pre_hooks[handle.id] = hook
    return handle


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """Register a post-hook ``hook(optimizer, args, kwargs)`` run after every optimizer's step."""
    handle = RemovableHandle(_global_step_post_hooks)
    _global_step_post_hooks[handle.id] = hook
    return handle


def _torch_global_hooks(kind: str) -> Iterable[Callable]:
    """Hooks registered through torch.optim.optimizer's global registry.

    Profilers and other tools register there; honouring it (by reading the dict, never by
    calling torch.optim code) makes gradstep optimizers visible to them too.
    """
    registry = getattr(_TORCH_OPTIMIZER_MODULE, f"_global_optimizer_{kind}_hooks", None)
    return tuple(registry.values()) if registry else ()


def _run_step_with_hooks(step: Callable) -> Callable:
    """Wrap a subclass's ``step`` with the global and instance step hooks and a profiler range."""

    @functools.wraps(step)
    def hooked_step(self, *args, **kwargs):
        if id(self) in _stepping:
            # A subclass's step calling super().step(): hooks and profiler range run once, around
            # the outermost call (as torch.optim, which wraps only the instantiated class's step).
            return step(self, *args, **kwargs)
        _stepping.add(id(self))
        try:
            return _step_with_hooks(step, self, args, kwargs)
        finally:
            _stepping.discard(id(self))

    hooked_step.hooked = True  # type: ignore[attr-defined]
    # torch.compile: the step runs eagerly behind a graph break. Its per-step Python scalars
    # (step counts, bias corrections) would otherwise recompile the graph at every step.
    return torch._disable_dynamo(hooked_step)


#: ids of the optimizers whose hooked step is running (see _run_step_with_hooks)
_stepping: set[int] = set()


def _step_with_hooks(step: Callable, self: Any, args: tuple, kwargs: dict) -> Any:
    for hook in chain(
        _torch_global_hooks("pre"),
        _global_step_pre_hooks.values(),
        self._optimizer_step_pre_hooks.values(),
    ):
        result = hook(self, args, kwargs)
        if result is not None:
            if isinstance(result, tuple) and len(result) == 2:
                args, kwargs = result
            else:
                raise RuntimeError(
                    f"{hook} must return None or a tuple of (new_args, new_kwargs), "
                    f"but got {result}."
                )
    with torch.autograd.profiler.record_function(self._step_profile_name):
        out = step(self, *args, **kwargs)
        self._optimizer_step_code()
    for hook in chain(
        self._optimizer_step_post_hooks.values(),
        _global_step_post_hooks.values(),
        _torch_global_hooks("post"),
    ):
        hook(self, args, kwargs)
    return out


def _register_hook(registry: OrderedDict, hook: Callable, prepend: bool = False) -> RemovableHandle:
    handle = RemovableHandle(registry)
    registry[handle.id] = hook
    if prepend:
        registry.move_to_end(handle.id, last=False)
    return handle


class Optimizer(_torch_optim.Optimizer):
    """Base class for all gradstep optimizers; same contract as ``torch.optim.Optimizer``.

    Args:
        params: an iterable of tensors, of dicts (parameter groups), or of ``(name, tensor)``
            pairs as produced by ``model.named_parameters()``.
        defaults: default values of the optimization options, used by groups that don't set them.
    """

    OptimizerPreHook = Callable
    OptimizerPostHook = Callable

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "hooked", False):
            cls.step = _run_step_with_hooks(step)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_gradstep_eager", False):
            # torch.compile: construction runs eagerly behind a graph break. Traced, a graph
            # break inside it (a check on a tensor lr) can leave the object half-built.
            cls.__init__ = torch._disable_dynamo(init)
            cls.__init__._gradstep_eager = True  # type: ignore[attr-defined]

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        torch._C._log_api_usage_once("gradstep.optimizer")
        self.defaults = defaults
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {torch.typename(params)}"
            )
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)
        self._warned_capturable_if_run_uncaptured = True
        if defaults.get("fused"):
            # Fused steps take GradScaler's scale and inf flag themselves (see _amp_unscale).
            self._step_supports_amp_scaling = True

    # ------------------------------------------------------------------ pickling and printing

    def __getstate__(self) -> dict[str, Any]:
        return {
            "defaults": self.defaults,
            "state": self.state,
            "param_groups": self.param_groups,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in (
            "_optimizer_step_pre_hooks",
            "_optimizer_step_post_hooks",
            "_optimizer_state_dict_pre_hooks",
            "_optimizer_state_dict_post_hooks",
            "_optimizer_load_state_dict_pre_hooks",
            "_optimizer_load_state_dict_post_hooks",
        ):
            if name not in self.__dict__:
                setattr(self, name, OrderedDict())
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        self.defaults.setdefault("differentiable", False)
        # Checkpoints from older versions may lack newer options: fill them from the defaults.
        # `differentiable` only where the algorithm has that option: torch.optim adds it to the
        # defaults of every optimizer, but to the groups of none that lacks it (LBFGS, Muon...).
        has_differentiable = "differentiable" in inspect.signature(type(self).__init__).parameters
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key != "differentiable" or has_differentiable:
                    group.setdefault(key, value)

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            if i:
                lines.append("")
            lines.append(f"Parameter Group {i}")
            for key in sorted(group.keys()):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    # ------------------------------------------------------------------ param groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; on any error the optimizer is left unchanged."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        param_group = dict(param_group)  # never mutate the caller's dict
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)

        tensors, names = [], []
        for entry in params:
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
                names.append(entry[0])
                tensors.append(entry[1])
            else:
                tensors.append(entry)
        if names:
            if len(names) != len(tensors):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param names are missing"
                )
            param_group["param_names"] = names
        param_group["params"] = tensors

        for param in tensors:
            if not isinstance(param, torch.Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + torch.typename(param)
                )
            if not self.defaults.get("differentiable", None) and not (
                param.is_leaf or param.retains_grad
            ):
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization parameter {name}"
                )
            param_group.setdefault(name, default)

        if len(tensors) != len(set(tensors)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error; "
                "see github.com/pytorch/pytorch/issues/40967 for more information",
                stacklevel=3,
            )

        param_set: set[torch.Tensor] = set()
        for group in self.param_groups:
            param_set.update(set(group["params"]))
            if ("param_names" in param_group) != ("param_names" in group):
                current = "with" if "param_names" in param_group else "without"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {current} names to the optimizer"
                )
        if not param_set.isdisjoint(set(tensors)):
            raise ValueError("some parameters appear in more than one parameter group")

        self._validate_group(param_group)
        self.param_groups.append(param_group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Hook for algorithms to check a group's options before it is added."""

    def _check_param_dtype(self, group: dict[str, Any], param: torch.Tensor) -> None:
        """Refuse, before any group is updated, a parameter whose dtype can't take an update.

        torch.optim fails on integer or bool parameters mid-step with whichever op meets them
        first (or, in some paths, rounds the update away); gradstep raises one RuntimeError
        that holds torch's in-place cast message and names the parameter.
        """
        if param.is_floating_point() or param.is_complex():
            return
        group_index = next(i for i, g in enumerate(self.param_groups) if g is group)
        index = next(i for i, q in enumerate(group["params"]) if q is param)
        where = (
            f"{type(self).__name__} updates floating-point and complex parameters only, but "
            f"parameter {index} of param group {group_index} has dtype {param.dtype}"
        )
        if group.get("fused"):
            from .algorithms._validation import check_fused_params

            try:
                check_fused_params([param])
            except RuntimeError as error:
                raise RuntimeError(f"{error} ({where})") from None
        raise RuntimeError(f"{_inplace_cast_message(param.dtype)} ({where})")

    # ------------------------------------------------------------------ gradients

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all optimized tensors (to None by default)."""
        foreach = self.defaults.get("foreach", False) or self.defaults.get("fused", False)
        per_device_and_dtype: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        with torch.autograd.profiler.record_function(self._zero_grad_profile_name):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                        continue
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    if not foreach or p.grad.is_sparse:
                        p.grad.zero_()
                    else:
                        per_device_and_dtype[(p.grad.device, p.grad.dtype)].append(p.grad)
            for grads in per_device_and_dtype.values():
                torch._foreach_zero_(grads)

    # ------------------------------------------------------------------ stepping

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # noqa: D401
        """Perform a single optimization step; implemented by each algorithm."""
        raise NotImplementedError

    @staticmethod
    def _evaluate_closure(closure: Callable[[], Any] | None) -> Any:
        """The closure's loss, computed with autograd on (it recomputes the gradients)."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @property
    def _step_profile_name(self) -> str:
        name = type(self).__name__
        return f"Optimizer.step#{name}.step"

    @staticmethod
    def _optimizer_step_code() -> None:
        """Entry point for profilers to mark the end of a step (as in torch.optim)."""

    def _patch_step_function(self) -> None:
        """Steps are wrapped with hooks when the class is created; kept for API compatibility."""
        cls = type(self)
        if not getattr(cls.step, "hooked", False):
            cls.step = _run_step_with_hooks(cls.step)

    @staticmethod
    def profile_hook_step(func: Callable) -> Callable:
        """Decorate a ``step`` function with the hooks and profiler range of gradstep optimizers."""
        return _run_step_with_hooks(func)

    @staticmethod
    def _group_tensors_by_device_and_dtype(tensorlistlist, with_indices: bool = False):
        """Group aligned tensor lists by (device, dtype) of the first list."""
        grouped: dict[tuple, tuple[list[list], list[int]]] = {}
        for i, first in enumerate(tensorlistlist[0]):
            key = (first.device, first.dtype)
            if key not in grouped:
                grouped[key] = ([[] for _ in tensorlistlist], [])
            lists, indices = grouped[key]
            for lst, src in zip(lists, tensorlistlist):
                lst.append(src[i])
            indices.append(i)
        return {k: (lists, indices) for k, (lists, indices) in grouped.items()}

    def _accelerator_graph_capture_health_check(self) -> None:
        self._cuda_graph_capture_health_check()

    def _cuda_graph_capture_health_check(self) -> None:
        """Warn or fail when a step is captured into a CUDA graph without ``capturable=True``."""
        if not torch.cuda.is_available() or torch.compiler.is_compiling():
            return
        capturing = torch.cuda.is_current_stream_capturing()
        if capturing and not all(group.get("capturable", False) for group in self.param_groups):
            raise RuntimeError(
                "Attempting CUDA graph capture of step() for an instance of "
                + type(self).__name__
                + " but param_groups' capturable is False."
            )
        if (
            not getattr(self, "_warned_capturable_if_run_uncaptured", True)
            and all(group.get("capturable", False) for group in self.param_groups)
            and not capturing
        ):
            warnings.warn(
                "This instance was constructed with capturable=True or some of all the "
                "param_groups came with capturable=True, but step() is running without "
                "CUDA graph capture. If you never intend to graph-capture this instance, "
                "capturable=True can impair performance, and you should set capturable=False.",
                stacklevel=2,
            )
            self._warned_capturable_if_run_uncaptured = True

    # ------------------------------------------------------------------ hooks

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` runs before ``step``; it may return new (args, kwargs)."""
        return _register_hook(self._optimizer_step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` runs after ``step``."""
        return _register_hook(self._optimizer_step_post_hooks, hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer)`` runs before ``state_dict`` builds the dict."""
        return _register_hook(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` runs after; a returned dict replaces the state dict."""
        return _register_hook(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(
        self, hook: Callable, prepend: bool = False
    ) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` runs before loading; a returned dict is loaded instead."""
        return _register_hook(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(
        self, hook: Callable, prepend: bool = False
    ) -> RemovableHandle:
        """``hook(optimizer)`` runs after ``load_state_dict`` has installed the state."""
        return _register_hook(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    # ------------------------------------------------------------------ checkpoints

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """Return the state as a dict in torch.optim's format (integer parameter ids).

        State tensors are returned by reference, as torch.optim does; hyperparameters are copied.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)

        ids: dict[int, int] = {}
        packed_groups = []
        next_index = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                if id(p) not in ids:
                    ids[id(p)] = next_index
                    next_index += 1
            packed["params"] = [ids[id(p)] for p in group["params"]]
            packed_groups.append(packed)

        packed_state = {
            (ids[id(k)] if isinstance(k, torch.Tensor) else k): v for k, v in self.state.items()
        }
        state_dict = {"state": packed_state, "param_groups": packed_groups}

        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    @staticmethod
    def _process_value_according_to_param_policy(
        param: torch.Tensor,
        value: torch.Tensor,
        param_id: int,
        param_groups: list[dict[Any, Any]],
        key: Any = None,
    ) -> torch.Tensor:
        """Move a loaded state tensor to its parameter's device (and float dtype).

        Step counters stay float32 on the CPU unless the group is fused or capturable, in which
        case they live on the parameter's device, as in torch.optim.
        """
        fused = capturable = False
        for group in param_groups:
            if param_id in group["params"]:
                fused = bool(group.get("fused", False))
                capturable = bool(group.get("capturable", False))
                break
        if key == "step":
            if capturable or fused:
                return value.to(dtype=torch.float32, device=param.device)
            return value
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict produced by ``state_dict`` (gradstep's or torch.optim's).

        Everything is validated before anything is changed: a failed load leaves the optimizer
        exactly as it was.
        """
        groups = self.param_groups
        check_layout(state_dict, groups)
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
                check_layout(state_dict, groups)

        saved_groups = deepcopy(state_dict["param_groups"])
        saved_state = state_dict["state"]

        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
            )
        )

        def cast(param, value, param_id, key=None):
            if isinstance(value, torch.Tensor):
                return self._process_value_according_to_param_policy(
                    param, value, param_id, state_dict["param_groups"], key
                )
            if isinstance(value, dict):
                return {k: cast(param, v, param_id, key=k) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(cast(param, v, param_id, key) for v in value)
            return value

        new_groups = []
        for group, saved in zip(groups, saved_groups):
            saved = dict(saved)
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            new_groups.append(saved)

        group_of = {id(p): g for g in new_groups for p in g["params"]}
        new_state: defaultdict[Any, Any] = defaultdict(dict)
        for key, value in saved_state.items():
            if key in id_map:
                param = id_map[key]
                group = {**self.defaults, **group_of[id(param)]}  # old checkpoints lack options
                check_param_state(
                    key,
                    param,
                    value,
                    self._param_shaped_state_keys(),
                    self._expected_state_keys(group),
                )
                new_state[param] = cast(param, value, key)
            else:
                new_state[key] = value
        self._check_loaded_state(new_state, groups)

        previous = {"state": self.state, "param_groups": self.param_groups}
        try:
            self.__setstate__({"state": new_state, "param_groups": new_groups})
        except BaseException:
            self.__dict__.update(previous)  # a failed load changes nothing
            raise

        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_loaded_state(self, state: dict, groups: list[dict[str, Any]]) -> None:
        """Raise ValueError when a loaded per-parameter state tensor can't belong to its param.

        Runs before anything is installed, so a bad checkpoint changes nothing.
        """
        for group in groups:
            for p in group["params"]:
                for key, value in state.get(p, {}).items():
                    if (
                        isinstance(value, torch.Tensor)
                        and value.dim() > 0
                        and key in self._param_shaped_state_keys()
                        and value.shape != p.shape
                    ):
                        raise ValueError(
                            f"loaded state '{key}' has shape {tuple(value.shape)}, but its "
                            f"parameter has shape {tuple(p.shape)}"
                        )

    def _param_shaped_state_keys(self) -> frozenset[str]:
        """State entries that must have their parameter's shape (algorithms override)."""
        return frozenset()

    def _expected_state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Entries every non-empty per-parameter state of ``group`` holds (algorithms override).

        ``load_state_dict`` refuses a checkpoint whose state lacks one of them.
        """
        return ()


def _inplace_cast_message(dtype: torch.dtype) -> str:
    """torch's own words for writing a float result into a tensor of ``dtype``."""
    try:
        torch.zeros(1, dtype=dtype).mul_(0.5)
    except RuntimeError as error:
        return str(error)
    return f"result type Float can't be cast to the desired output type {dtype}"


def _use_grad_for_differentiable(step: Callable) -> Callable:
    """Run ``step`` with autograd enabled only when the optimizer is ``differentiable``."""

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults.get("differentiable", False))
            return step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(prev)

    return wrapper
