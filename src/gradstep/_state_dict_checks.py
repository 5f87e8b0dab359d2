"""Checks that a state dict can be loaded into an optimizer, run before anything is changed.

torch.optim loads many corrupted or mismatched checkpoints silently and fails at a later
step (or never, losing the state). gradstep refuses them at ``load_state_dict`` with an error
that says what is wrong and where: ``KeyError`` for a missing entry and ``ValueError`` for groups,
ids, shapes or steps that don't fit (torch's types where it raises at load time), ``TypeError``
for a container or value of the wrong kind (where torch fails with whatever error the first
operation on it happens to raise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import torch


def check_layout(state_dict: Any, groups: list[dict[str, Any]]) -> None:
    """The dict's own structure, and that its groups match the optimizer's groups one to one."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "optimizer state_dict must be a dict with 'state' and 'param_groups', but got "
            f"{type(state_dict).__name__}"
        )
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise KeyError(f"loaded state dict has no '{key}' entry")
    saved_groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(state, Mapping):
        raise TypeError(f"loaded state dict's 'state' must be a dict, but got {type(state).__name__}")
    if isinstance(saved_groups, (str, bytes)) or not isinstance(saved_groups, Sequence):
        raise TypeError(
            "loaded state dict's 'param_groups' must be a list of dicts, but got "
            f"{type(saved_groups).__name__}"
        )
    if len(groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")  # torch's words
    owner: dict[Any, torch.Tensor] = {}
    for index, (group, saved) in enumerate(zip(groups, saved_groups)):
        if not isinstance(saved, Mapping):
            raise TypeError(
                f"loaded parameter group {index} must be a dict, but got {type(saved).__name__}"
            )
        if "params" not in saved:
            raise KeyError(f"loaded state dict contains a parameter group without 'params' (group {index})")
        ids = saved["params"]
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(
                f"'params' of loaded parameter group {index} must be a list of parameter ids, "
                f"but got {type(ids).__name__}"
            )
        if len(group["params"]) != len(ids):
            raise ValueError(  # torch's exact words
                "loaded state dict contains a parameter group that doesn't match the size "
                "of optimizer's group"
            )
        for pid, param in zip(ids, group["params"]):
            try:
                if owner.setdefault(pid, param) is not param:
                    raise ValueError(
                        f"loaded state dict lists parameter id {pid!r} for two different "
                        f"parameters (group {index})"
                    )
            except TypeError:
                raise TypeError(
                    f"loaded parameter group {index} holds a parameter id of type "
                    f"{type(pid).__name__}; ids are integers"
                ) from None
    stray = [key for key in state if isinstance(key, int) and key not in owner]
    if stray:
        raise ValueError(
            f"loaded state dict has state for parameter id(s) {sorted(stray)} that no parameter "
            "group lists: it was saved from a different optimizer"
        )


def check_param_state(
    pid: Any,
    param: torch.Tensor,
    value: Any,
    shaped_keys: frozenset[str],
    required_keys: tuple[str, ...],
) -> None:
    """One parameter's saved state: a dict whose entries can belong to ``param``."""
    where = f"parameter {pid!r}"
    if not isinstance(value, Mapping):
        raise TypeError(f"loaded state of {where} must be a dict, but got {type(value).__name__}")
    if not value:
        return
    missing = [key for key in required_keys if key not in value]
    if missing:
        raise KeyError(f"loaded state of {where} lacks {missing}, which the optimizer needs")
    if "step" in value:
        _check_step(where, value["step"])
    for key in shaped_keys:
        if key not in value:
            continue
        tensor = value[key]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"loaded state '{key}' of {where} must be a Tensor, but got {type(tensor).__name__}"
            )
        if tensor.dim() > 0 and tensor.shape != param.shape:
            raise ValueError(
                f"loaded state '{key}' of {where} has shape {tuple(tensor.shape)}, but its "
                f"parameter has shape {tuple(param.shape)}"
            )
        if tensor.dim() > 0 and tensor.is_complex() != param.is_complex():
            raise TypeError(
                f"loaded state '{key}' of {where} has dtype {tensor.dtype}, which can't hold the "
                f"state of a {param.dtype} parameter"
            )


def _check_step(where: str, step: Any) -> None:
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or step.is_complex():
            raise ValueError(
                f"loaded state 'step' of {where} must hold one real number, but has shape "
                f"{tuple(step.shape)} and dtype {step.dtype}"
            )
    elif isinstance(step, bool) or not isinstance(step, Real):
        raise ValueError(  # torch.optim fails converting such a step with a ValueError too
            f"loaded state 'step' of {where} must be a number or a one-element Tensor, "
            f"but got {type(step).__name__}"
        )
