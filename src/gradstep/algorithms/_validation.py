"""Constructor checks shared by the algorithms, with torch.optim's error types and messages."""

from __future__ import annotations

from typing import Any

import torch

_FUSED_DEVICES = ["mps", "cuda", "xpu", "hpu", "cpu", "mtia", "privateuseone"]


def _shown(x: Any) -> Any:
    """A hyperparameter as torch's messages print it: one-element tensors as their number."""
    return x.item() if isinstance(x, torch.Tensor) and x.numel() == 1 else x


def check_lr(lr: Any, *, foreach: Any = None, capturable: bool = False) -> None:
    """A non-negative learning rate; a tensor lr must hold one element."""
    if isinstance(lr, torch.Tensor):
        if foreach and not capturable:
            raise ValueError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {_shown(lr)}")


def check_nonnegative(value: Any, what: str) -> None:
    """``what`` is the phrase of torch's message, e.g. 'epsilon value' or 'weight_decay value'."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {_shown(value)}")


def check_betas(betas: Any) -> None:
    """Each beta in [0, 1)."""
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def check_tensor_betas(betas: Any, *, foreach: Any, capturable: bool) -> None:
    """Adam-style betas: both floats or both one-element tensors."""
    b0, b1 = betas
    both_floats = isinstance(b0, float) and isinstance(b1, float)
    both_tensors = isinstance(b0, torch.Tensor) and isinstance(b1, torch.Tensor)
    if not (both_floats or both_tensors):
        raise ValueError("betas must be either both floats or both Tensors")
    if both_tensors:
        if not capturable and foreach:
            raise ValueError(
                "betas[0] as a Tensor is not supported for capturable=False and foreach=True"
            )
        if b0.numel() != 1:
            raise ValueError("Tensor betas[0] must be 1-element")
        if b1.numel() != 1:
            raise ValueError("Tensor betas[1] must be 1-element")


def check_backend_flags(*, foreach: Any, fused: Any, differentiable: bool) -> None:
    """``fused`` excludes ``differentiable`` and ``foreach``."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def add_fused_flag(defaults: dict, fused: Any, *, foreach: Any, differentiable: bool) -> None:
    """``fused=`` for an algorithm torch.optim has no fused kernel for (gradstep has one).

    Validated like torch's fused flags; put into the group defaults only when given, so an
    optimizer built without it has torch.optim's exact param_group keys and state_dict.
    """
    if fused is not None:
        check_backend_flags(foreach=foreach, fused=fused, differentiable=differentiable)
        defaults["fused"] = fused


def check_fused_params(params: list[torch.Tensor], dtypes: set[torch.dtype] | None = None) -> None:
    """The fused backends take real floating-point tensors on supported devices.

    ``dtypes``, the params' dtypes if known, lets the common case skip the per-tensor loop."""
    if dtypes is not None and all(d.is_floating_point for d in dtypes):
        if all(p.is_cuda or p.is_cpu for p in params):
            return
    for p in params:
        if not (p.device.type in _FUSED_DEVICES and torch.is_floating_point(p)):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of "
                f"supported devices: {_FUSED_DEVICES} but {p.dtype} and {p.device.type}"
            )
