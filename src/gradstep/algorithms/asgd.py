"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, 1992).

The parameter follows SGD with a decaying step size ``eta`` and a shrinkage ``lambd * eta``;
``ax`` keeps a running average of the parameter, which starts averaging once ``step > t0``.
``eta`` and ``mu`` are per-parameter 0-d state tensors (as in torch.optim): each step uses the
values stored by the previous step and then stores the next ones, computed from the step count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, scalar_dtype
from ._torch_paths import torch_takes_foreach
from ._validation import add_fused_flag, check_lr, check_nonnegative


class ASGDConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    # torch's foreach path computes p - eta * (g + lambd * p), its for-loop
    # p * (1 - lambd * eta) - eta * g; in bf16 the two round differently.
    folded: bool


def asgd_rule(ops, cfg: ASGDConfig, s: Scalars, p, g, ax):
    """One ASGD update of a parameter and its average ``ax``."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        g = ops.add(g, p, s.weight_decay)
    if cfg.folded:
        p = ops.add(p, ops.add(g, p, s.lambd), -s.eta)
    else:
        p = ops.add(p * (1 - s.lambd * s.eta), g, -s.eta)
    # lerp with weight mu is exactly p when mu == 1 (before averaging starts), else
    # ax + mu * (p - ax): no branch on values is needed.
    ax = ops.lerp(ax, p, s.mu)
    return p, ax


class ASGD(ElementwiseOptimizer):
    """Implements averaged SGD; same arguments, defaults, state and numbers as ``torch.optim.ASGD``."""

    rule = staticmethod(asgd_rule)
    scalars_use_state = True
    capturable_tensors = "params, mus, etas, and state_steps"

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr,
            lambd=lambd,
            alpha=alpha,
            t0=t0,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Old checkpoints may hold eta and mu as Python numbers.
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                for key in ("eta", "mu"):
                    if st and key in st and not torch.is_tensor(st[key]):
                        st[key] = torch.tensor(st[key], dtype=scalar_dtype(), device=p.device)

    def _state_keys(self, group):
        return ("ax",)

    def _init_state(self, p, state, group):
        state["step"] = torch.zeros((), device=p.device, dtype=scalar_dtype())
        state["eta"] = (
            torch.as_tensor(group["lr"], device=p.device, dtype=scalar_dtype()).clone().detach()
        )
        state["mu"] = torch.ones((), device=p.device, dtype=scalar_dtype())
        state["ax"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        return ASGDConfig(
            maximize=group["maximize"],
            weight_decay=group["weight_decay"] != 0,
            folded=torch_takes_foreach(group, group["params"][0]),
        )

    def _scalars(self, group, step, state):
        """This step's eta and mu are the stored ones; then store the next step's.

        torch.optim computes the next ones with tensor ops on the step counter (float32) when
        capturable or on its foreach path, and in Python floats on its for-loop path; the
        difference shows in float64 runs, so it is reproduced here.
        """
        lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]
        eta, mu = state["eta"], state["mu"]
        if group["capturable"]:
            s = Scalars(eta=eta.clone(), mu=mu.clone())
        else:
            s = Scalars(eta=eta.item(), mu=mu.item())
        if group["capturable"] or torch_takes_foreach(group, state["ax"]):
            step_t = state["step"]
            eta.copy_(lr / ((1 + lambd * lr * step_t) ** alpha))
            mu.copy_(1 / torch.maximum(step_t - t0, torch.ones_like(step_t)))
        else:  # (a tensor lr makes eta a tensor expression here too, as in torch.optim)
            eta.copy_(torch.as_tensor(lr / ((1 + lambd * lr * step) ** alpha)))
            mu.copy_(torch.as_tensor(1 / max(1, step - t0)))
        s.lambd = lambd
        s.weight_decay = group["weight_decay"]
        return s

