"""Weight averaging (SWA and EMA) with the API and behaviour of ``torch.optim.swa_utils``.

* :class:`AveragedModel` keeps a copy of a module whose parameters (and, with
  ``use_buffers``, buffers) are a running average of the model's: an equal
  average (SWA) by default, or any ``avg_fn`` / ``multi_avg_fn`` such as EMA.
* :func:`get_ema_multi_avg_fn` & co. build those averaging functions.
* :class:`SWALR` anneals each group's lr to a constant SWA lr.
* :func:`update_bn` recomputes BatchNorm statistics for the averaged weights.

Checkpoints cross-load with torch's: an AveragedModel's state dict is
``n_averaged`` plus ``module.*``, and SWALR's state dict has torch's keys.
"""

from __future__ import annotations

import itertools
import math
from copy import deepcopy
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.nn import Module

from .lr_scheduler import LRScheduler
from .lr_scheduler._base import _per_group, _warn_if_outside_step

__all__ = [
    "AveragedModel",
    "update_bn",
    "SWALR",
    "get_ema_multi_avg_fn",
    "get_swa_multi_avg_fn",
    "get_ema_avg_fn",
    "get_swa_avg_fn",
]

PARAM_LIST = "tuple[Tensor, ...] | list[Tensor]"



def _has_foreach_kernels(device: torch.device) -> bool:
    """Devices with multi-tensor (foreach) kernels use the list form of the default SWA
    average; elsewhere (CPU) it runs tensor by tensor -- the same choice, and therefore
    the same rounding, as torch."""
    return device.type in ("cuda", "xpu", torch._C._get_privateuse1_backend_name())


# --------------------------------------------------------------------------- averaging functions


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range."
        )


def get_ema_multi_avg_fn(decay=0.999):
    """Get the function applying exponential moving average (EMA) across multiple params.

    ``ema = decay * ema + (1 - decay) * model``, in place on lists of tensors.
    """
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param_list: PARAM_LIST, current_param_list: PARAM_LIST, _):
        # lerp kernels exist for floating and complex dtypes only.
        if torch.is_floating_point(ema_param_list[0]) or torch.is_complex(ema_param_list[0]):
            torch._foreach_lerp_(ema_param_list, current_param_list, 1 - decay)
        else:
            for p_ema, p_model in zip(ema_param_list, current_param_list):
                p_ema.copy_(p_ema * decay + p_model * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn():
    """Get the function applying stochastic weight average (SWA) across multiple params.

    ``avg += (model - avg) / (n + 1)``, in place on lists of tensors.
    """

    @torch.no_grad()
    def swa_update(averaged_param_list: PARAM_LIST, current_param_list: PARAM_LIST, num_averaged):
        if torch.is_floating_point(averaged_param_list[0]) or torch.is_complex(
            averaged_param_list[0]
        ):
            torch._foreach_lerp_(averaged_param_list, current_param_list, 1 / (num_averaged + 1))
        else:
            diffs = torch._foreach_sub(current_param_list, averaged_param_list)
            if isinstance(num_averaged, Tensor):
                torch._foreach_addcdiv_(
                    averaged_param_list, diffs, [num_averaged + 1] * len(averaged_param_list)
                )
            else:
                torch._foreach_add_(averaged_param_list, diffs, alpha=1.0 / (num_averaged + 1))

    return swa_update


def get_ema_avg_fn(decay=0.999):
    """Get the function applying exponential moving average (EMA) to a single param."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param: Tensor, current_param: Tensor, num_averaged):
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn():
    """Get the function applying stochastic weight average (SWA) to a single param."""

    @torch.no_grad()
    def swa_update(averaged_param: Tensor, current_param: Tensor, num_averaged):
        return averaged_param + (current_param - averaged_param) / (num_averaged + 1)

    return swa_update


# --------------------------------------------------------------------------- AveragedModel


def _by_device_and_dtype(averaged: list[Tensor], current: list[Tensor]) -> dict:
    """Pairs of tensor lists, one pair per (device, dtype) of the averaged tensors."""
    groups: dict = {}
    for a, c in zip(averaged, current):
        pair = groups.setdefault((a.device, a.dtype), ([], []))
        pair[0].append(a)
        pair[1].append(c)
    return groups


class AveragedModel(Module):
    """A copy of ``model`` whose parameters are a running average of ``model``'s.

    Args:
        model (Module): the module to average (deep-copied; the copy is ``.module``).
        device: where to keep the averaged copy (default: where ``model`` is).
        avg_fn: ``avg_fn(averaged, current, n_averaged) -> new averaged`` per tensor.
        multi_avg_fn: ``multi_avg_fn(averaged_list, current_list, n_averaged)``,
            updating the averaged tensors in place (e.g. :func:`get_ema_multi_avg_fn`).
        use_buffers (bool): average buffers as well; otherwise buffers are copied
            from ``model`` at every update.

    Without either function, an equal average (SWA) is kept.  The first
    :meth:`update_parameters` copies ``model``'s values.
    """

    n_averaged: Tensor

    def __init__(
        self,
        model: Module,
        device: int | torch.device | None = None,
        avg_fn: Callable[[Tensor, Tensor, Tensor | int], Tensor] | None = None,
        multi_avg_fn: Callable[[PARAM_LIST, PARAM_LIST, Tensor | int], None] | None = None,
        use_buffers=False,
    ) -> None:
        super().__init__()
        assert avg_fn is None or multi_avg_fn is None, (
            "Only one of avg_fn and multi_avg_fn should be provided"
        )
        self.module = deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args, **kwargs):
        """Forward pass."""
        return self.module(*args, **kwargs)

    def _pairs(self, model: Module) -> tuple[Iterable[Tensor], Iterable[Tensor]]:
        if self.use_buffers:
            return (
                itertools.chain(self.module.parameters(), self.module.buffers()),
                itertools.chain(model.parameters(), model.buffers()),
            )
        return self.parameters(), model.parameters()

    def update_parameters(self, model: Module) -> None:
        """Update model parameters."""
        ours_iter, theirs_iter = self._pairs(model)
        averaged: list[Tensor] = []
        current: list[Tensor] = []
        first = bool(self.n_averaged == 0)
        for mine, theirs in zip(ours_iter, theirs_iter):
            value = theirs.detach().to(mine.device)
            averaged.append(mine.detach())
            current.append(value)
            if first:
                mine.detach().copy_(value)

        if self.n_averaged > 0:
            self._average(averaged, current)

        if not self.use_buffers:
            # Buffers are not averaged: keep them in sync with the source model.
            for b_ours, b_model in zip(self.module.buffers(), model.buffers()):
                b_ours.detach().copy_(b_model.detach().to(b_ours.device))
        self.n_averaged += 1

    def _average(self, averaged: list[Tensor], current: list[Tensor]) -> None:
        """Fold ``current`` into ``averaged`` in place, with the configured function."""
        if self.avg_fn is not None and self.multi_avg_fn is None:
            for a, c in zip(averaged, current):
                a.copy_(self.avg_fn(a, c, self.n_averaged.to(a.device)))
            return
        for (device, _), (a_list, c_list) in _by_device_and_dtype(averaged, current).items():
            n = self.n_averaged.to(device)
            if self.multi_avg_fn is not None:
                self.multi_avg_fn(a_list, c_list, n)
            elif _has_foreach_kernels(device):
                get_swa_multi_avg_fn()(a_list, c_list, n)
            else:
                swa = get_swa_avg_fn()
                for a, c in zip(a_list, c_list):
                    a.copy_(swa(a, c, n))


# --------------------------------------------------------------------------- update_bn


@torch.no_grad()
def update_bn(
    loader: Iterable[Any],
    model: Module,
    device: int | torch.device | None = None,
) -> None:
    """Update BatchNorm running_mean, running_var buffers in the model.

    One pass over ``loader`` with the BatchNorm layers in cumulative-average mode
    (``momentum=None``) gives statistics of the whole data set for the current
    (e.g. averaged) weights.  Each batch is a tensor or a list/tuple whose first
    element is the input.  Momenta and train/eval mode are restored afterwards.
    """
    momenta = {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return

    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if device is not None:
            batch = batch.to(device)
        model(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


# --------------------------------------------------------------------------- SWALR


class SWALR(LRScheduler):
    """Anneal each group's lr to ``swa_lr`` over ``anneal_epochs`` epochs, then hold it.

    Args:
        optimizer: wrapped optimizer.
        swa_lr (float or list): the SWA lr, for all groups or one per group.
        anneal_epochs (int): epochs of annealing (default 10; 0 jumps at once).
        anneal_strategy (str): "cos" (default) or "linear".
        last_epoch (int): the index of the last epoch (default -1).

    Chainable: each step re-derives the lr the schedule started from out of the
    current ``group["lr"]``, then moves it one annealing step towards ``swa_lr``.
    """

    def __init__(
        self,
        optimizer,
        swa_lr: float,
        anneal_epochs=10,
        anneal_strategy: str = "cos",
        last_epoch=-1,
    ) -> None:
        for group, lr in zip(optimizer.param_groups, _per_group("swa_lr", optimizer, swa_lr)):
            group["swa_lr"] = lr
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t):
        return t

    @staticmethod
    def _cosine_anneal(t):
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr, swa_lr, alpha):
        """Invert one annealing step: the lr that ``alpha`` of the way to swa_lr gave ``lr``."""
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list:
        """Next lr: interpolate from the (recovered) starting lr towards ``swa_lr``."""
        _warn_if_outside_step(self)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        span = max(1, self.anneal_epochs)
        prev_alpha = self.anneal_func(max(0, min(1, (step - 1) / span)))
        alpha = self.anneal_func(max(0, min(1, step / span)))
        groups = self.optimizer.param_groups
        starts = [self._get_initial_lr(g["lr"], g["swa_lr"], prev_alpha) for g in groups]
        return [g["swa_lr"] * alpha + start * (1 - alpha) for g, start in zip(groups, starts)]

    def _set_anneal_func(self, anneal_strategy: str) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = self._cosine_anneal if anneal_strategy == "cos" else self._linear_anneal

    def state_dict(self) -> dict[str, Any]:
        """Everything in ``__dict__`` except the optimizer and ``anneal_func``."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state and the annealing function it names."""
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)
