"""RMSprop (Hinton's lecture notes; centered variant after Graves, 2013).

The root of the squared-gradient average is taken before eps is added (TensorFlow does the
reverse). ``grad_avg`` exists only when centered, ``momentum_buffer`` only with momentum.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, hyper, new_step
from ._validation import add_fused_flag, check_lr, check_nonnegative


class RMSpropConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    momentum: bool
    centered: bool


def rmsprop_rule(ops, cfg: RMSpropConfig, s: Scalars, p, g, square_avg, *extra):
    """One RMSprop update; ``extra`` is (momentum_buffer?, grad_avg?) as the options ask."""
    buf, grad_avg = None, None
    if cfg.momentum:
        buf, *extra = extra
    if cfg.centered:
        grad_avg, *extra = extra
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        g = ops.add(g, p, s.weight_decay)
    square_avg = ops.addcmul(square_avg * s.alpha, g, g, 1 - s.alpha)
    if cfg.centered:
        grad_avg = ops.lerp(grad_avg, g, 1 - s.alpha)
        avg = ops.sqrt(ops.addcmul(square_avg, grad_avg, grad_avg, -1.0))
    else:
        avg = ops.sqrt(square_avg)
    avg = avg + s.eps
    if cfg.momentum:
        buf = ops.addcdiv(buf * s.momentum, g, avg, 1.0)
        p = ops.add(p, buf, -s.lr)
    else:
        p = ops.addcdiv(p, g, avg, -s.lr)
    out = [p, square_avg]
    if cfg.momentum:
        out.append(buf)
    if cfg.centered:
        out.append(grad_avg)
    return tuple(out)


class RMSprop(ElementwiseOptimizer):
    """Implements RMSprop; same arguments, defaults, state and numbers as ``torch.optim.RMSprop``."""

    rule = staticmethod(rmsprop_rule)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(eps, "epsilon value")
        check_nonnegative(momentum, "momentum value")
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(alpha, "alpha value")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def _state_keys(self, group):
        keys = ("square_avg",)
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        for key in self._state_keys(group):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        return RMSpropConfig(
            maximize=bool(group["maximize"]),
            weight_decay=bool(group["weight_decay"] != 0),
            momentum=bool(group["momentum"] > 0),
            centered=bool(group["centered"]),
        )

    def _scalars(self, group, step, state):
        return Scalars(
            lr=hyper(group, group["lr"]),
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=hyper(group, group["weight_decay"]),
            momentum=hyper(group, group["momentum"]),
        )
