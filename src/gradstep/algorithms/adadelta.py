"""Adadelta (Zeiler, 2012): steps scaled by the ratio of running RMS of updates and gradients."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, hyper, new_step
from ._validation import add_fused_flag, check_lr, check_nonnegative


class AdadeltaConfig(NamedTuple):
    maximize: bool
    weight_decay: bool


def adadelta_rule(ops, cfg: AdadeltaConfig, s: Scalars, p, g, square_avg, acc_delta):
    """One Adadelta update of a parameter, its squared-gradient and squared-update averages."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        g = ops.add(g, p, s.weight_decay)
    square_avg = ops.addcmul(square_avg * s.rho, g, g, 1 - s.rho)
    std = ops.sqrt(square_avg + s.eps)
    delta = ops.sqrt(acc_delta + s.eps) / std * g
    acc_delta = ops.addcmul(acc_delta * s.rho, delta, delta, 1 - s.rho)
    p = ops.add(p, delta, -s.lr)
    return p, square_avg, acc_delta


class Adadelta(ElementwiseOptimizer):
    """Implements Adadelta; same arguments, defaults, state and numbers as ``torch.optim.Adadelta``."""

    rule = staticmethod(adadelta_rule)
    capturable_devices_listed = ("cuda", "xpu", "hpu", "privateuseone")

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative(eps, "epsilon value")
        check_nonnegative(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def _state_keys(self, group):
        return ("square_avg", "acc_delta")

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        return AdadeltaConfig(
            maximize=bool(group["maximize"]),
            weight_decay=bool(group["weight_decay"] != 0),
        )

    def _scalars(self, group, step, state):
        return Scalars(
            lr=hyper(group, group["lr"]),
            rho=group["rho"],
            eps=group["eps"],
            weight_decay=hyper(group, group["weight_decay"]),
        )
