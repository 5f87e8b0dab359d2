"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2019).

While the variance of the adaptive step is intractable (``rho_t <= 5``, the first few steps),
RAdam takes a plain momentum step; afterwards a rectified Adam step. Which one depends on the
step count alone, so it is decided outside the rule: the rule always computes
``p += m * (rect_step / (sqrt(v) + eps) + plain_step)`` and one of the two sizes is zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._elementwise import ElementwiseOptimizer, Scalars, are_numbers, distinct, new_step, to_float
from ._torch_paths import torch_takes_foreach
from ._validation import add_fused_flag, check_betas, check_lr, check_nonnegative


class RAdamConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    decoupled: bool  # decay the parameter instead of adding L2 to the gradient
    # "rectified" or "plain" when every row of a run is in that phase (set by _refine_config
    # from the step's scalars); "both" computes either from the scalars, as torch.optim's
    # foreach path does (where a zero denominator then gives NaN even in the plain phase)
    phase: str = "both"
    torch_foreach: bool = False  # torch.optim would take its foreach path: keep "both"


def radam_rule(ops, cfg: RAdamConfig, s: Scalars, p, g, exp_avg, exp_avg_sq):
    """One RAdam update of a parameter and its moments."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        if cfg.decoupled:
            p = p * s.param_decay
        else:
            g = ops.add(g, p, s.weight_decay)  # torch: add(param, alpha=weight_decay)
    exp_avg = ops.lerp(exp_avg, g, 1 - s.beta1)
    exp_avg_sq = ops.addcmul(exp_avg_sq * s.beta2, g, g, 1 - s.beta2)
    if cfg.phase == "plain":  # the early steps: no adaptive denominator at all, as in torch.optim
        p = p + exp_avg * s.plain_step
    elif cfg.phase == "rectified":
        p = p + exp_avg * (s.rect_step / (ops.sqrt(exp_avg_sq) + s.eps))
    elif cfg.torch_foreach:  # one of the two step sizes is 0; torch's foreach form
        p = p + exp_avg * (1 / ((ops.sqrt(exp_avg_sq) + s.eps) / s.rect_step) + s.plain_step)
    else:
        p = p + exp_avg * (s.rect_step / (ops.sqrt(exp_avg_sq) + s.eps) + s.plain_step)
    return p, exp_avg, exp_avg_sq


def _rectification(rho_t, rho_inf):
    return (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)


class RAdam(ElementwiseOptimizer):
    """Implements RAdam; same arguments, defaults, state and numbers as ``torch.optim.RAdam``."""

    rule = staticmethod(radam_rule)

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(eps, "epsilon value")
        check_betas((betas[0], betas[1]))
        check_nonnegative(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay,
            differentiable=differentiable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        return RAdamConfig(
            maximize=group["maximize"],
            weight_decay=group["weight_decay"] != 0,
            decoupled=group["decoupled_weight_decay"],
            torch_foreach=torch_takes_foreach(group, group["params"][0]),
        )

    def _refine_config(self, cfg, scalars):
        """One phase for the whole run when every row is in it (the usual case), as torch.optim's
        for-loop computes it."""
        ss = distinct(scalars)
        if cfg.torch_foreach or not are_numbers(ss, "plain_step"):
            return cfg
        if all(s.rect_step == 0 for s in ss):  # (with lr == 0 both are 0: no denominator then)
            return cfg._replace(phase="plain")
        if all(s.plain_step == 0 for s in ss):
            return cfg._replace(phase="rectified")
        return cfg

    def _scalars(self, group, step, state):
        beta1, beta2 = group["betas"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        capturable = group["capturable"]
        if not capturable:
            beta1, beta2 = to_float(beta1), to_float(beta2)
        param_decay = 1 - lr * weight_decay  # from a tensor lr: float32, as in torch.optim
        # torch's foreach path keeps a tensor lr in the step sizes; with differentiable=True,
        # autograd reaches it through them
        keep_tensors = capturable or group["differentiable"]
        if not keep_tensors and not torch_takes_foreach(group, state["exp_avg"]):
            lr = to_float(lr)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
        if capturable:
            rectified = rho_t > 5.0
            rect = torch.where(rectified, _rectification(rho_t, rho_inf).clamp(min=0).sqrt(), 0.0)
            if torch_takes_foreach(group, state["exp_avg"]):  # rounded as torch's foreach path
                rect_step = -(bias_correction2.sqrt() * lr * rect) / bias_correction1
                plain_step = -(torch.where(rectified, 0.0, 1.0) * lr / bias_correction1)
            else:
                rect_step = bias_correction2.sqrt() * (lr * rect / bias_correction1) * -1
                plain_step = torch.where(rectified, 0.0, (lr / bias_correction1) * -1)
        elif rho_t > 5.0:
            rect = _rectification(rho_t, rho_inf) ** 0.5
            rect_step = bias_correction2**0.5 * (lr * rect / bias_correction1) * -1
            plain_step = 0.0
        else:
            rect_step, plain_step = 0.0, (lr / bias_correction1) * -1
        s = Scalars(
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=weight_decay,
            param_decay=param_decay,
            rect_step=rect_step,
            plain_step=plain_step,
        )
        if not keep_tensors:
            s = Scalars(**{k: to_float(v) for k, v in vars(s).items()})
        return s
