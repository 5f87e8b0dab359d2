"""Rprop: resilient backpropagation (Riedmiller & Braun, 1993).

Each element has its own step size, grown by ``etaplus`` while the gradient keeps its sign and
shrunk by ``etaminus`` when it flips; the update uses only the gradient's sign. After a flip the
gradient is treated as zero for one step (no move, and no growth or shrink next time).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, new_step, to_float
from ._validation import add_fused_flag, check_lr


class RpropConfig(NamedTuple):
    maximize: bool


def rprop_rule(ops, cfg: RpropConfig, s: Scalars, p, g, prev, step_size):
    """One Rprop update of a parameter, its previous gradient and its step sizes."""
    if cfg.maximize:
        g = -g
    sign = ops.sign(g * prev)
    # Each factor is written into the sign tensor's dtype, as torch.optim does (it matters
    # for bf16, where etaplus=1.2 rounds to 1.203125).
    factor = ops.where(sign > 0, s.etaplus, sign)
    factor = ops.where(factor < 0, s.etaminus, factor)
    factor = ops.where(factor == 0, 1.0, factor)
    step_size = ops.clamp(step_size * factor, s.step_size_min, s.step_size_max)
    g = ops.where(sign < 0, 0.0, g)
    p = ops.addcmul(p, ops.sign(g), step_size, -1.0)
    return p, g, step_size


class Rprop(ElementwiseOptimizer):
    """Implements Rprop; same arguments, defaults, state and numbers as ``torch.optim.Rprop``."""

    rule = staticmethod(rprop_rule)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        defaults = dict(
            lr=lr,
            etas=etas,
            step_sizes=step_sizes,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def _state_keys(self, group):
        return ("prev", "step_size")

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        state["prev"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        lr = to_float(group["lr"])
        # A complex step size holds one step size for the real and one for the imaginary part.
        fill = complex(lr, lr) if p.is_complex() else lr
        state["step_size"] = torch.full_like(p.grad, fill)

    def _config(self, group):
        return RpropConfig(maximize=group["maximize"])

    def _scalars(self, group, step, state):
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        return Scalars(
            etaminus=etaminus,
            etaplus=etaplus,
            step_size_min=step_size_min,
            step_size_max=step_size_max,
        )
