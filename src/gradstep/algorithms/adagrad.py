"""Adagrad (Duchi et al., 2011): steps scaled by the root of the summed squared gradients.

As in torch.optim the state (``step``, ``sum``) is created when the optimizer is built, and a
sparse gradient updates only the entries it holds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..backends.sparse import run_on_support
from ._elementwise import ElementwiseOptimizer, Scalars, hyper, new_step, to_float
from ._validation import check_backend_flags, check_fused_params, check_lr, check_nonnegative


class AdagradConfig(NamedTuple):
    maximize: bool
    weight_decay: bool


def adagrad_rule(ops, cfg: AdagradConfig, s: Scalars, p, g, state_sum):
    """One Adagrad update of a parameter and its sum of squared gradients."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        g = ops.add(g, p, s.weight_decay)
    state_sum = ops.addcmul(state_sum, g, g, 1.0)
    std = ops.sqrt(state_sum) + s.eps
    p = ops.addcdiv(p, g, std, -s.clr)
    return p, state_sum


class Adagrad(ElementwiseOptimizer):
    """Implements Adagrad; same arguments, defaults, state and numbers as ``torch.optim.Adagrad``."""

    rule = staticmethod(adagrad_rule)
    sparse_runner = staticmethod(run_on_support)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(lr_decay, "lr_decay value")
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(initial_accumulator_value, "initial_accumulator_value value")
        check_nonnegative(eps, "epsilon value")
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)
        check_backend_flags(foreach=foreach, fused=fused, differentiable=differentiable)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    def share_memory(self) -> None:
        """Move the accumulated sums to shared memory (for Hogwild-style multiprocessing)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _params_with_grad(self, group):
        params = super()._params_with_grad(group)
        if any(p.grad.is_sparse for p in params):
            if group.get("fused"):
                raise RuntimeError("`fused` does not support sparse grad or complex param")
            if group["weight_decay"] != 0:
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        if group.get("fused"):
            check_fused_params(params)
        return params

    def _state_keys(self, group):
        return ("sum",)

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        # torch.optim starts every sum at the constructor's value; a group's own is ignored.
        value = self.defaults["initial_accumulator_value"]
        # A complex sum holds the real and the imaginary part's sums, both starting at value.
        fill = complex(value, value) if p.is_complex() else value
        state["sum"] = torch.full_like(p, fill, memory_format=torch.preserve_format)

    def _config(self, group):
        return AdagradConfig(
            maximize=bool(group["maximize"]),
            weight_decay=bool(group["weight_decay"] != 0),
        )

    def _scalars(self, group, step, state):
        lr = hyper(group, group["lr"])
        return Scalars(
            clr=lr / (1 + (step - 1) * to_float(group["lr_decay"])),
            weight_decay=hyper(group, group["weight_decay"]),
            eps=group["eps"],
        )
