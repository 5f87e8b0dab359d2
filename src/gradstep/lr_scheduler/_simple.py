"""Schedules given by a simple rule of the epoch number.

Each ``get_lr`` is *chainable*: it rescales the current ``group["lr"]`` by the
ratio between this epoch's factor and the previous one, so several schedulers
can act on one optimizer.  Where a closed form exists (``_get_closed_form_lr``)
it is used by the deprecated ``step(epoch)`` and by SequentialLR restarts.

On the scheduler's very first step (``_is_initial``) the rules that describe a
*change* between epochs leave the lr alone, except where epoch 0 itself has a
factor (ConstantLR, LinearLR).
"""

from __future__ import annotations

import types
from bisect import bisect_right
from collections import Counter
from typing import Any, Callable, Iterable

from ._base import LRScheduler, _group_values, _warn_if_outside_step

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
]


class _LambdaScheduler(LRScheduler):
    """Shared by LambdaLR and MultiplicativeLR: one user function per param group.

    Functions and lambdas cannot be saved, so the state dict stores ``None`` for
    them; callable objects have their ``__dict__`` saved and restored.
    """

    # MultiplicativeLR rejects non-callables up front, as torch's does; LambdaLR fails
    # later, when its first step calls the value (torch's TypeError, "not callable").
    _lambdas_must_be_callable = False

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1) -> None:
        self.optimizer = optimizer
        n_groups = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n_groups:
                raise ValueError(f"Expected {n_groups} lr_lambdas, but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n_groups
        if self._lambdas_must_be_callable:
            for fn in self.lr_lambdas:
                if not callable(fn):
                    raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The base state plus ``lr_lambdas``: ``__dict__`` of callable objects, else None."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state; saved callable-object attributes go back into our callables."""
        saved = state_dict["lr_lambdas"]
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "lr_lambdas"})
        for i, attrs in enumerate(saved):
            if attrs is not None:
                self.lr_lambdas[i].__dict__.update(attrs)


class LambdaLR(_LambdaScheduler):
    """lr = initial lr * ``lr_lambda(epoch)`` (one function, or one per group).

    Not chainable: it always starts from ``base_lrs``.
    """

    def __init__(
        self,
        optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        super().__init__(optimizer, lr_lambda, last_epoch)

    def get_lr(self) -> list:
        """``base_lr * lr_lambda(last_epoch)`` per group."""
        _warn_if_outside_step(self)
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaScheduler):
    """Each epoch, lr *= ``lr_lambda(epoch)`` (one function, or one per group)."""

    _lambdas_must_be_callable = True

    def __init__(
        self,
        optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        super().__init__(optimizer, lr_lambda, last_epoch)

    def get_lr(self) -> list:
        """The current lrs times ``lr_lambda(last_epoch)``; unchanged on the first step."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self._is_initial:
            return lrs
        return [lr * fn(self.last_epoch) for fn, lr in zip(self.lr_lambdas, lrs)]


class StepLR(LRScheduler):
    """lr *= ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """Multiply by gamma when ``last_epoch`` is a non-zero multiple of ``step_size``."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lrs
        return [lr * self.gamma for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        """``base_lr * gamma ** (last_epoch // step_size)``."""
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr *= ``gamma`` at each milestone epoch (a repeated milestone applies gamma again)."""

    def __init__(
        self, optimizer, milestones: Iterable[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """Multiply by ``gamma ** count`` when ``last_epoch`` is a milestone."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self.last_epoch not in self.milestones:
            return lrs
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        """``base_lr * gamma ** (number of milestones <= last_epoch)``."""
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma**passed for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """lr is scaled by ``factor`` until epoch ``total_iters``, then restored."""

    def __init__(
        self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1
    ) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """Scale by ``factor`` at epoch 0 and by ``1 / factor`` at ``total_iters``."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self.last_epoch == 0:
            return [lr * self.factor for lr in lrs]
        if self.last_epoch != self.total_iters:
            return lrs
        return [lr * (1.0 / self.factor) for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        """``base_lr * factor`` before ``total_iters``, ``base_lr`` from then on."""
        done = self.last_epoch >= self.total_iters
        return [base * (self.factor + done * (1 - self.factor)) for base in self.base_lrs]


class LinearLR(LRScheduler):
    """The lr factor moves linearly from ``start_factor`` to ``end_factor`` over ``total_iters``."""

    def __init__(
        self,
        optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """Apply ``start_factor`` at epoch 0, then the ratio of consecutive factors."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        span = self.end_factor - self.start_factor
        ratio = 1.0 + span / (self.total_iters * self.start_factor + (self.last_epoch - 1) * span)
        return [lr * ratio for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        """``base_lr * (start + (end - start) * min(total_iters, last_epoch) / total_iters)``."""
        span = self.end_factor - self.start_factor
        factor = self.start_factor + span * min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * factor for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """lr *= ``gamma`` every epoch."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current lrs times gamma (unchanged on the first step)."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self._is_initial:
            return lrs
        return [lr * self.gamma for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        """``base_lr * gamma ** last_epoch``."""
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class PolynomialLR(LRScheduler):
    """lr = initial lr * ``(1 - epoch / total_iters) ** power``, then constant."""

    def __init__(
        self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """Apply the ratio of this epoch's polynomial factor to the previous one."""
        _warn_if_outside_step(self)
        lrs = _group_values(self.optimizer, "lr")
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        now = 1.0 - self.last_epoch / self.total_iters
        before = 1.0 - (self.last_epoch - 1) / self.total_iters
        ratio = (now / before) ** self.power
        return [lr * ratio for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        """``base_lr * (1 - min(total_iters, last_epoch) / total_iters) ** power``."""
        left = 1.0 - min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * left**self.power for base in self.base_lrs]
