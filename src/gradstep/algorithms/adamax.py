"""Adamax (Kingma & Ba, 2014): Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, hyper, new_step
from ._validation import add_fused_flag, check_betas, check_lr, check_nonnegative


class AdamaxConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    capturable: bool  # the step size is a tensor, applied to the norm (torch.optim's order)


def adamax_rule(ops, cfg: AdamaxConfig, s: Scalars, p, g, exp_avg, exp_inf):
    """One Adamax update of a parameter, its first moment and its infinity norm."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        g = ops.add(g, p, s.weight_decay)
    exp_avg = ops.lerp(exp_avg, g, 1 - s.beta1)
    exp_inf = ops.maximum(exp_inf * s.beta2, ops.abs(g) + s.eps)
    if cfg.capturable:
        p = ops.addcdiv(p, exp_avg, exp_inf * s.neg_inv_step_size)
    else:
        p = ops.addcdiv(p, exp_avg, exp_inf, -s.step_size)
    return p, exp_avg, exp_inf


class Adamax(ElementwiseOptimizer):
    """Implements Adamax; same arguments, defaults, state and numbers as ``torch.optim.Adamax``."""

    rule = staticmethod(adamax_rule)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(eps, "epsilon value")
        check_betas(betas)
        check_nonnegative(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def _state_keys(self, group):
        return ("exp_avg", "exp_inf")

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        return AdamaxConfig(
            maximize=bool(group["maximize"]),
            weight_decay=bool(group["weight_decay"] != 0),
            capturable=bool(group["capturable"]),
        )

    def _scalars(self, group, step, state):
        beta1, beta2 = (hyper(group, b) for b in group["betas"])
        lr = hyper(group, group["lr"])
        s = Scalars(beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=hyper(group, group["weight_decay"]))
        if group["capturable"]:
            s.neg_inv_step_size = (beta1**step - 1) / lr  # a tensor: step is one
        else:
            s.step_size = lr / (1 - beta1**step)
        return s
