"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, 1992).

The parameter follows SGD with a decaying step size ``eta`` and a shrinkage ``lambd * eta``;
``ax`` keeps a running average of the parameter, which starts averaging once ``step > t0``.
``eta`` and ``mu`` are per-parameter 0-d state tensors (as in torch.optim): each step uses the
values stored by the previous step and then stores the next ones, computed from the step count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import _host_mirror
from ._elementwise import ElementwiseOptimizer, Scalars, are_numbers, distinct, scalar_dtype
from ._torch_paths import torch_takes_foreach
from ._validation import add_fused_flag, check_lr, check_nonnegative


class ASGDConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    # torch's foreach path computes p - eta * (g + lambd * p), its for-loop
    # p * (1 - lambd * eta) - eta * g; in bf16 the two round differently.
    folded: bool
    # every mu is 1 (averaging has not started) on a path where torch.optim then copies p;
    # set by _refine_config from this step's scalars
    copy_average: bool = False


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
    if cfg.copy_average:
        ax = p  # torch.optim's for-loop copies the parameter until averaging starts (mu == 1)
    else:
        ax = ax + (p - ax) * s.mu
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

    def _refine_config(self, cfg, scalars):
        """torch.optim's for-loop copies the parameter into ``ax`` while mu is 1."""
        if cfg.folded:
            return cfg
        ss = distinct(scalars)
        return cfg._replace(copy_average=are_numbers(ss, "mu") and all(s.mu == 1 for s in ss))

    def _scalars(self, group, step, state):
        """With ``capturable=True``: this step's eta and mu are the stored ones (device
        tensors, cloned); then store the next step's, with tensor ops on the device counter."""
        eta, mu = state["eta"], state["mu"]
        s = Scalars(eta=eta.clone(), mu=mu.clone(), lambd=group["lambd"],
                    weight_decay=group["weight_decay"])
        next_eta, next_mu = _eta_mu_of_counter(group, state["step"])
        eta.copy_(next_eta)
        mu.copy_(next_mu)
        return s

    def _stateful_scalars(self, group, steps, states):
        """This step's eta and mu are the stored ones; then store the next step's.

        Without ``capturable``, the stored values are known on the host (``_host_mirror``) and
        the next ones are computed there, once per distinct step count, and written with one
        copy per state key: no read of the device, no per-parameter kernels.
        """
        if group["capturable"]:
            return super()._stateful_scalars(group, steps, states)
        etas = [st["eta"] for st in states]
        mus = [st["mu"] for st in states]
        now = list(zip(_host_mirror.values(etas), _host_mirror.values(mus)))
        tensor_math = torch_takes_foreach(group, states[0]["ax"])
        nexts = {v: _next_eta_mu(group, v, states[0]["step"].dtype, tensor_math) for v in set(steps)}
        _host_mirror.store(etas, [nexts[v][0] for v in steps])
        _host_mirror.store(mus, [nexts[v][1] for v in steps])
        lambd, weight_decay = group["lambd"], group["weight_decay"]
        made: dict[tuple[float, float], Scalars] = {}
        for key in set(now):
            made[key] = Scalars(eta=key[0], mu=key[1], lambd=lambd, weight_decay=weight_decay)
        return [made[key] for key in now]


def _next_eta_mu(group, step: float, step_dtype: torch.dtype, tensor_math: bool) -> tuple[float, float]:
    """eta and mu for the step after ``step``, rounded as torch.optim rounds them.

    torch.optim computes them with tensor ops on the step counter (its dtype) on its foreach
    path, and in Python floats on its for-loop path; the difference shows in float64 runs.
    (A tensor lr makes eta a tensor expression on both, as in torch.optim.)
    """
    if tensor_math:
        eta, mu = _eta_mu_of_counter(group, torch.tensor(step, dtype=step_dtype))
    else:
        lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]
        # (as tensors of the default dtype, rounded before being stored in any state dtype)
        eta = torch.as_tensor(lr / ((1 + lambd * lr * step) ** alpha))
        mu = torch.as_tensor(1 / max(1, step - t0))
    return eta.item(), mu.item()


def _eta_mu_of_counter(group, step_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eta and mu from a step counter tensor, with tensor ops in its dtype (torch's foreach
    and capturable arithmetic)."""
    lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]
    eta = lr / ((1 + lambd * lr * step_t) ** alpha)
    mu = 1 / torch.maximum(step_t - t0, torch.ones_like(step_t))
    return eta, mu
