"""SGD: stochastic gradient descent, optionally with (Nesterov) momentum.

As in torch.optim, the momentum buffer starts as the first (decayed) gradient itself, so
dampening applies from the second step on; without momentum there is no state at all.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..backends.reference import run_reference
from ._elementwise import ElementwiseOptimizer, Scalars, hyper
from ._validation import check_backend_flags, check_fused_params, check_lr, check_nonnegative


class SGDConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    momentum: bool
    nesterov: bool
    first: bool  # the momentum buffer is created from this step's gradient


def sgd_rule(ops, cfg: SGDConfig, s: Scalars, p, g, buf=None):
    """One SGD update of a parameter (and its momentum buffer)."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        g = ops.add(g, p, s.weight_decay)
    if cfg.momentum:
        # The buffer starts as a detached copy of the gradient, as in torch.optim: with
        # differentiable=True, the first step is not differentiated through the buffer.
        buf = ops.detach(g) if cfg.first else ops.add(buf * s.momentum, g, s.one_minus_dampening)
        g = ops.add(g, buf, s.momentum) if cfg.nesterov else buf
    p = ops.add(p, g, -s.lr)
    return (p, buf) if cfg.momentum else (p,)


class SGD(ElementwiseOptimizer):
    """Implements stochastic gradient descent (optionally with momentum).

    Same arguments, defaults, state and numbers as ``torch.optim.SGD``. Sparse gradients run
    the same rule on the sparse tensors (the momentum buffer is then sparse too, as in torch).
    """

    rule = staticmethod(sgd_rule)
    counts_steps = False
    sparse_runner = staticmethod(run_reference)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | torch.Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(momentum, "momentum value")
        check_nonnegative(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)
        check_backend_flags(foreach=foreach, fused=fused, differentiable=differentiable)

    def _params_with_grad(self, group):
        params = super()._params_with_grad(group)
        if group.get("fused"):
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("`_fused_sgd` does not support sparse gradients")
            check_fused_params(params)
        return params

    def _state_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _init_state(self, p, state, group):
        if group["momentum"] != 0:
            # Filled with the first gradient by the first-step rule.
            state["momentum_buffer"] = torch.empty_like(p.grad)

    def _config(self, group):
        return SGDConfig(
            maximize=bool(group["maximize"]),
            weight_decay=bool(group["weight_decay"] != 0),
            momentum=bool(group["momentum"] != 0),
            nesterov=bool(group["nesterov"]),
            first=False,
        )

    def _first_step_config(self, group):
        cfg = self._config(group)
        return cfg._replace(first=cfg.momentum)

    def _scalars(self, group, step, state):
        return Scalars(
            lr=hyper(group, group["lr"]),
            weight_decay=hyper(group, group["weight_decay"]),
            momentum=hyper(group, group["momentum"]),
            one_minus_dampening=1 - hyper(group, group["dampening"]),
        )
