"""Adam and AdamW (Kingma & Ba, 2014; Loshchilov & Hutter, 2019): one rule for both."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, new_step, to_float
from ._torch_paths import torch_takes_foreach
from ._validation import (
    check_backend_flags,
    check_betas,
    check_lr,
    check_nonnegative,
    check_tensor_betas,
)


class AdamConfig(NamedTuple):
    maximize: bool
    weight_decay: bool  # any weight decay at all
    decoupled: bool  # AdamW-style decay of the parameter instead of L2 on the gradient
    amsgrad: bool
    # differentiable=True: torch.optim's autograd-friendly form of the update (its scalars are
    # tensors computed from the step counter, the step size divides the denominator)
    differentiable: bool = False
    lerp_second: bool = False  # a beta2 that requires grad: the second moment as a lerp
    # capturable=True on torch.optim's foreach path: its form of the update (the denominator
    # divided by the negated step size, computed as 1 / ((beta1**t - 1) / lr))
    capturable_foreach: bool = False


def adam_rule(ops, cfg: AdamConfig, s: Scalars, p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None):
    """One Adam/AdamW update of a parameter and its moments."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        if cfg.decoupled:
            p = p * (1 - s.lr * s.weight_decay)
        else:
            g = ops.add(g, p, s.weight_decay)  # torch: add(param, alpha=weight_decay)
    exp_avg = ops.lerp(exp_avg, g, 1 - s.beta1)
    if cfg.lerp_second:
        exp_avg_sq = ops.lerp(exp_avg_sq, g * g, 1 - s.beta2)
    else:
        exp_avg_sq = ops.addcmul(exp_avg_sq * s.beta2, g, g, 1 - s.beta2)
    if cfg.amsgrad:
        max_exp_avg_sq = ops.maximum(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    if cfg.capturable_foreach:
        denom = (ops.sqrt(second) / s.bias_correction2_sqrt + s.eps) / -s.step_size
        p = ops.addcdiv(p, exp_avg, denom)
    elif cfg.differentiable:
        step_size_neg = -s.step_size
        denom = ops.sqrt(second) / (s.bias_correction2_sqrt * step_size_neg) + s.eps / step_size_neg
        p = ops.addcdiv(p, exp_avg, denom)
    else:
        denom = ops.sqrt(second) / s.bias_correction2_sqrt + s.eps
        p = ops.addcdiv(p, exp_avg, denom, -s.step_size)
    if cfg.amsgrad:
        return p, exp_avg, exp_avg_sq, max_exp_avg_sq
    return p, exp_avg, exp_avg_sq


def _requires_grad(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


class Adam(ElementwiseOptimizer):
    """Implements Adam; with ``decoupled_weight_decay=True`` it is AdamW.

    Same arguments, defaults, state and numbers as ``torch.optim.Adam``.
    """

    rule = staticmethod(adam_rule)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_lr(lr, foreach=foreach, capturable=capturable)
        check_nonnegative(eps, "epsilon value")
        check_betas(betas)
        check_nonnegative(weight_decay, "weight_decay value")
        check_tensor_betas(betas, foreach=foreach, capturable=capturable)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        check_backend_flags(foreach=foreach, fused=fused, differentiable=differentiable)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("decoupled_weight_decay", isinstance(self, AdamW))

    def _sparse_error(self):
        # torch.optim's AdamW says "Adam" too; regexes written for torch expect that text.
        return "Adam does not support sparse gradients, please consider SparseAdam instead"

    def _state_keys(self, group):
        keys = ("exp_avg", "exp_avg_sq")
        return keys + ("max_exp_avg_sq",) if group["amsgrad"] else keys

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        differentiable = bool(group["differentiable"]) and not group["capturable"]
        capturable_foreach = bool(group["capturable"]) and torch_takes_foreach(group, group["params"][0])
        return AdamConfig(
            maximize=group["maximize"],
            weight_decay=group["weight_decay"] != 0,
            decoupled=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            # torch's for-loop takes the same form when capturable
            differentiable=differentiable or (bool(group["capturable"]) and not capturable_foreach),
            lerp_second=differentiable and _requires_grad(group["betas"][1]),
            capturable_foreach=capturable_foreach,
        )

    def _scalars(self, group, step, state):
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and lr.dim() != 0:
            lr = lr.squeeze()
        if group["differentiable"] and not group["capturable"]:
            # as torch: from the counter's tensor (its dtype), a copy so autograd may keep it
            step = state["step"].clone()
        if not (group["capturable"] or group["differentiable"]):
            lr, beta1, beta2 = to_float(lr), to_float(beta1), to_float(beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        else:
            # Tensor lr/betas stay tensors: capture needs them, and with differentiable=True
            # autograd reaches them through the step (as torch.optim's does).
            bias_correction1 = 1 - beta1**step
            bias_correction2_sqrt = (1 - beta2**step).sqrt()
        if group["capturable"] and torch_takes_foreach(group, state["exp_avg"]):
            step_size = -(1 / ((beta1**step - 1) / lr))  # rounded as torch's foreach path
        else:
            step_size = lr / bias_correction1
        return Scalars(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step_size=step_size,
            bias_correction2_sqrt=bias_correction2_sqrt,
        )


class AdamW(Adam):
    """Implements AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )
