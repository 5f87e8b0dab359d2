"""NAdam: Adam with Nesterov momentum (Dozat, 2016), with torch.optim's momentum schedule.

The momentum coefficient ``mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))`` changes
every step; the running product of the ``mu_t`` is per-parameter state (``mu_product``, a 0-d
tensor as in torch.optim), updated outside the rule together with the other per-step scalars.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import _host_mirror
from ._elementwise import ElementwiseOptimizer, Scalars, new_step, scalar_dtype, to_float
from ._torch_paths import torch_takes_foreach
from ._validation import add_fused_flag, check_betas, check_lr, check_nonnegative


class NAdamConfig(NamedTuple):
    maximize: bool
    weight_decay: bool
    decoupled: bool  # decay the parameter (NAdamW) instead of adding L2 to the gradient
    # capturable=True on torch.optim's foreach path: its form of the update (one numerator over
    # sqrt(exp_avg_sq) / sqrt(bias_correction2) + eps), with its scalars' roundings
    capturable_foreach: bool = False


def nadam_rule(ops, cfg: NAdamConfig, s: Scalars, p, g, exp_avg, exp_avg_sq):
    """One NAdam update: a step along the gradient and one along the momentum."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay:
        if cfg.decoupled:
            p = p * s.param_decay
        else:
            g = ops.add(g, p, s.weight_decay)  # torch's add(..., alpha=weight_decay)
    exp_avg = ops.lerp(exp_avg, g, 1 - s.beta1)
    exp_avg_sq = ops.addcmul(exp_avg_sq * s.beta2, g, g, 1 - s.beta2)
    if cfg.capturable_foreach:
        denom = ops.sqrt(exp_avg_sq) / s.bias_correction2_sqrt + s.eps
        numerator = g * s.grad_step + exp_avg * s.momentum_step
        return ops.addcdiv(p, numerator, denom), exp_avg, exp_avg_sq
    denom = ops.sqrt(exp_avg_sq / s.bias_correction2) + s.eps
    p = ops.addcdiv(p, g, denom, s.grad_step)
    p = ops.addcdiv(p, exp_avg, denom, s.momentum_step)
    return p, exp_avg, exp_avg_sq


class NAdam(ElementwiseOptimizer):
    """Implements NAdam; same arguments, defaults, state and numbers as ``torch.optim.NAdam``."""

    rule = staticmethod(nadam_rule)
    scalars_use_state = True
    capturable_tensors = "params, mu_products and state_steps"

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
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
        check_nonnegative(momentum_decay, "momentum_decay value")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
        )
        add_fused_flag(defaults, fused, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Old checkpoints may hold mu_product as a Python number.
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and "mu_product" in st and not torch.is_tensor(st["mu_product"]):
                    st["mu_product"] = torch.tensor(float(st["mu_product"]), dtype=scalar_dtype())

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _init_state(self, p, state, group):
        state["step"] = new_step(p, group)
        device = p.device if group["capturable"] else None
        state["mu_product"] = torch.ones((), dtype=scalar_dtype(), device=device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _config(self, group):
        return NAdamConfig(
            maximize=group["maximize"],
            weight_decay=group["weight_decay"] != 0,
            decoupled=group["decoupled_weight_decay"],
            capturable_foreach=bool(group["capturable"])
            and torch_takes_foreach(group, group["params"][0]),
        )

    def _stateful_scalars(self, group, steps, states):
        """Without capturable or differentiable, the whole group at once: the ``mu_product``
        values are read in one go (from the host mirror on a device), multiplied on the host
        with the same rounding as ``mu_product.mul_(mu)``, and written back in one go."""
        mps = [st["mu_product"] for st in states]
        dtype = mps[0].dtype
        if group["capturable"] or group["differentiable"] or any(t.dtype != dtype for t in mps):
            return super()._stateful_scalars(group, steps, states)
        beta1, decay = to_float(group["betas"][0]), group["momentum_decay"]
        mus = {v: beta1 * (1.0 - 0.5 * 0.96 ** (v * decay)) for v in set(steps)}
        olds = torch.tensor(_host_mirror.values(mps), dtype=dtype)
        factors = torch.tensor([mus[v] for v in steps], dtype=torch.float64).to(dtype)
        news = _host_mirror.store(mps, (olds * factors).tolist())
        tensor_lr = isinstance(group["lr"], torch.Tensor)  # then the device matters too
        made: dict[tuple, Scalars] = {}
        out = []
        for v, st, mp in zip(steps, states, news):
            key = (v, mp, st["exp_avg"].device.type if tensor_lr else None)
            s = made.get(key)
            if s is None:
                s = made[key] = self._step_scalars(group, v, mp, st)
            out.append(s)
        return out

    def _scalars(self, group, step, state):
        """Advance ``mu_product`` and derive the two step sizes of this step."""
        if group["capturable"] and torch_takes_foreach(group, state["exp_avg"]):
            return self._capturable_foreach_scalars(group, step, state)
        beta1 = group["betas"][0]
        decay = group["momentum_decay"]
        if not group["capturable"]:
            beta1 = to_float(beta1)
        mu_product = state["mu_product"]
        mu_product.mul_(beta1 * (1.0 - 0.5 * 0.96 ** (step * decay)))
        if not (group["capturable"] or group["differentiable"]):
            mu_product = mu_product.item()
        return self._step_scalars(group, step, mu_product, state)

    def _capturable_foreach_scalars(self, group, step, state):
        """The scalars as torch.optim's foreach path computes them from device counters
        (the same values as ``_step_scalars``, rounded in its order of operations)."""
        (beta1, beta2), lr = group["betas"], group["lr"]
        decay = group["momentum_decay"]
        exponent = step * decay
        mu = (0.96**exponent * -0.5 + 1.0) * beta1
        mu_next = (0.96 ** (exponent + decay) * -0.5 + 1.0) * beta1
        mu_product = state["mu_product"]
        mu_product.mul_(mu)
        return Scalars(
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            param_decay=1 - lr * group["weight_decay"],
            bias_correction2_sqrt=(1 - beta2**step).sqrt(),
            grad_step=(mu - 1.0) * lr / -(mu_product - 1.0),
            momentum_step=mu_next * lr / (mu_product * mu_next - 1.0),
        )

    def _step_scalars(self, group, step, mu_product, state):
        """This step's scalars, given the advanced ``mu_product`` (a number, or a tensor when
        capturable or differentiable)."""
        beta1, beta2 = group["betas"]
        lr, decay, weight_decay = group["lr"], group["momentum_decay"], group["weight_decay"]
        # Tensors stay tensors when capturable, and with differentiable=True (the step is
        # differentiable through mu_product); else Python numbers.
        as_tensors = group["capturable"] or group["differentiable"]
        if not group["capturable"]:
            beta1, beta2 = to_float(beta1), to_float(beta2)
        param_decay = 1 - lr * weight_decay  # from a tensor lr: float32, as in torch.optim
        if not as_tensors and torch_takes_foreach(group, state["exp_avg"]):
            lr = to_float(lr)  # torch's for-loop path keeps a tensor lr in the step sizes
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
        s = Scalars(
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=weight_decay,
            param_decay=param_decay,
            bias_correction2=1 - beta2**step,
            grad_step=-lr * (1.0 - mu) / (1.0 - mu_product),
            momentum_step=-lr * mu_next / (1.0 - mu_product * mu_next),
        )
        if not as_tensors:
            s = Scalars(**{k: to_float(v) for k, v in vars(s).items()})
        return s
