"""``swap_in_optimizer_params_and_state``: run an optimizer on other tensors for a while.

Used to trace or replay a step on stand-in tensors (e.g. FakeTensors for graph capture)
without touching the live optimizer, which is restored on exit whatever happens.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def swap_in_optimizer_params_and_state(
    optimizer: torch.optim.Optimizer,
    swapin_parameters: dict[str, torch.Tensor],
    swapin_optim_state: dict[str, Any],
) -> Iterator[None]:
    """Temporarily replace an optimizer's parameters and state, then restore them on exit.

    Args:
        optimizer: the live optimizer.
        swapin_parameters: tensors to use as parameters, in the order of the optimizer's own
            parameters (``model.named_parameters()`` order).
        swapin_optim_state: a ``state_dict()``-shaped dict whose ``state`` is keyed by packed
            parameter ids and whose ``param_groups`` carry the hyperparameters.

    In-place edits of the supplied state tensors are visible to the caller afterwards; other
    changes (new tensors assigned into the state) are discarded with the swap.
    """
    new_params = list(swapin_parameters.values())
    groups = optimizer.param_groups
    saved_groups = swapin_optim_state["param_groups"]
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"swapin_optim_state has {len(saved_groups)} param groups, the optimizer has {len(groups)}"
        )
    n_params = sum(len(g["params"]) for g in groups)
    if len(new_params) != n_params:
        raise ValueError(
            f"swapin_parameters has {len(new_params)} tensors, the optimizer has {n_params} parameters"
        )

    by_id: dict[int, torch.Tensor] = {}
    swapped_groups = []
    offset = 0
    for group, saved in zip(groups, saved_groups):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError("swapin_optim_state has a param group of a different size")
        tensors = new_params[offset : offset + len(group["params"])]
        offset += len(group["params"])
        by_id.update(zip(saved["params"], tensors))
        swapped = {k: v for k, v in saved.items() if k != "params"}
        swapped["params"] = tensors
        swapped_groups.append(swapped)

    swapped_state: defaultdict[Any, Any] = defaultdict(dict)
    for key, value in swapin_optim_state["state"].items():
        swapped_state[by_id.get(key, key)] = dict(value) if isinstance(value, dict) else value

    live_groups, live_state = optimizer.param_groups, optimizer.state
    optimizer.param_groups, optimizer.state = swapped_groups, swapped_state
    try:
        yield
    finally:
        optimizer.param_groups, optimizer.state = live_groups, live_state
