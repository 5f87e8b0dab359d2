"""The scheduler base class and the small helpers every scheduler shares.

A scheduler owns one number per parameter group (its learning rate) and rewrites
``group["lr"]`` each time :meth:`LRScheduler.step` is called.  Two things make
this less trivial than it sounds, and both are handled here once:

* ``group["lr"]`` may be a float or a 0-dim tensor.  A tensor lr is updated in
  place (``fill_``) so that compiled / captured optimizer steps that hold a
  reference to it keep seeing the current value; anything handed *out* of a
  scheduler is a copy so it never aliases the optimizer's tensor.
* Several schedulers may drive one optimizer ("chaining").  The chainable
  schedulers therefore compute the next lr from the *current* ``group["lr"]``
  (a ratio applied to whatever the others left there), while the closed forms
  (used when ``step(epoch)`` is called) compute it from ``base_lrs``.

The class subclasses ``torch.optim.lr_scheduler.LRScheduler`` only so that
``isinstance`` checks in PyTorch code (Lightning, HF, torch's own
SequentialLR) accept gradstep schedulers.  Every method and attribute of that
class is redefined here; none of its code ever runs.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler as _TorchLRScheduler
from torch.optim.lr_scheduler import _LRScheduler as _TorchLegacyLRScheduler

__all__ = ["LRScheduler", "_LRScheduler", "EPOCH_DEPRECATION_WARNING"]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)

_ORDER_DOCS = "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
_STEP_OVERRIDDEN = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    f"`lr_scheduler.step()`. See more details at {_ORDER_DOCS}"
)
_STEP_ORDER = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    f"See more details at {_ORDER_DOCS}"
)
_GET_LR_OUTSIDE_STEP = (
    "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."
)


# --------------------------------------------------------------------------- helpers


def _copy(value: Any) -> Any:
    """A value safe to hand out: tensors are cloned, everything else is immutable."""
    return value.clone() if isinstance(value, torch.Tensor) else value


def _group_values(optimizer, key: str) -> list:
    """``[group[key] for group in optimizer.param_groups]``, tensors copied."""
    return [_copy(group[key]) for group in optimizer.param_groups]


def _set_group_value(group: dict, key: str, value: Any) -> None:
    """Write ``value`` into ``group[key]``; a tensor there is overwritten in place."""
    current = group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[key] = value


def _per_group(name: str, optimizer, value: Any) -> list:
    """Broadcast a scalar hyperparameter to one value per param group (or check a list)."""
    groups = optimizer.param_groups
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, param_groups has {len(groups)}."
            )
        values = list(value)
    else:
        values = [value] * len(groups)
    return [_copy(v) for v in values]


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _warn_if_outside_step(scheduler) -> None:
    """get_lr() is the *next* lr, computed as a side step; users want get_last_lr()."""
    if not scheduler._get_lr_called_within_step:
        warnings.warn(_GET_LR_OUTSIDE_STEP, UserWarning, stacklevel=3)


@contextmanager
def _flag(scheduler, name: str):
    """Set a boolean attribute of the scheduler for the duration of a block."""
    setattr(scheduler, name, True)
    try:
        yield scheduler
    finally:
        setattr(scheduler, name, False)


def _track_optimizer_step(optimizer) -> None:
    """Make ``optimizer.step`` record that it ran, so step() can warn on wrong order.

    The class's ``step`` is shadowed by an instance attribute that sets
    ``optimizer._opt_called`` and then calls the original.  The wrapper holds
    the optimizer weakly (no reference cycle) and is marked so that a second
    scheduler on the same optimizer does not wrap it again.
    """
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    func = optimizer.step.__func__
    cls = optimizer.__class__
    opt_ref = weakref.ref(optimizer)

    @functools.wraps(func)
    def step(*args, **kwargs):
        opt = opt_ref()
        opt._opt_called = True
        return func.__get__(opt, cls)(*args, **kwargs)

    step._wrapped_by_lr_sched = True
    optimizer.step = step


# --------------------------------------------------------------------------- base class


class LRScheduler(_TorchLRScheduler):
    """Base class: subclasses implement :meth:`get_lr` (and may override :meth:`step`).

    Args:
        optimizer (Optimizer): the optimizer whose ``param_groups`` lrs are scheduled
            (a ``torch.optim`` or a ``gradstep`` optimizer).
        last_epoch (int): index of the last epoch seen.  ``-1`` starts a fresh
            schedule; any other value resumes one and needs ``initial_lr`` in every
            param group (it is put there by the first scheduler of a fresh run).

    .. warning::
        Constructing a scheduler overwrites ``group["lr"]``.  When restoring a
        checkpoint, build the scheduler *before* loading the optimizer's state.
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", _copy(group["lr"]))
        else:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        "resuming scheduler with last_epoch >= 0.\n"
                        "This typically happens when:\n"
                        "1. You're trying to resume training from a checkpoint but haven't "
                        "properly loaded the optimizer state\n"
                        "2. You're using last_epoch >= 0 for a fresh training run (not recommended)"
                    )
        self.base_lrs = _group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _track_optimizer_step(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        """Take the first step, which sets the lrs for epoch ``last_epoch + 1``."""
        self._step_count = 0
        with _flag(self, "_is_initial"):
            self.step()

    def state_dict(self) -> dict[str, Any]:
        """Everything in ``__dict__`` except the optimizer."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a dict produced by :meth:`state_dict` (gradstep's or torch's)."""
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list:
        """The lrs set by the latest :meth:`step` (tensor lrs as copies)."""
        return self._last_lr

    def get_lr(self) -> list:
        """The next lr of every param group; each scheduler defines its own rule."""
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (call it after ``optimizer.step()``).

        ``epoch`` is deprecated: it jumps to that epoch and uses the closed form
        where the scheduler has one.
        """
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(_STEP_OVERRIDDEN, UserWarning, stacklevel=2)
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(_STEP_ORDER, UserWarning, stacklevel=2)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        """Move to ``epoch`` (default: the next one) and write the new lrs.

        Also used by SequentialLR to restart a scheduler at epoch 0 without the
        warnings and step counting of :meth:`step`.
        """
        with _flag(self, "_get_lr_called_within_step"):
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            _set_group_value(group, "lr", lr)
        self._last_lr = _group_values(self.optimizer, "lr")


class _LRScheduler(LRScheduler, _TorchLegacyLRScheduler):
    """Deprecated alias of :class:`LRScheduler`, kept because torch keeps it."""
