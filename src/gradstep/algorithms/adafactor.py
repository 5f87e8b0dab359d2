"""Adafactor (Shazeer & Stern, 2018) as torch.optim defines it: factored second moments.

For a parameter with two or more dims the second moment of its last two dims is kept as a row
factor and a column factor (means of g^2 over the other dim), so the optimizer state is sublinear
in the parameter's size; smaller parameters keep a full ``variance``. Not elementwise (row/column
reductions, a rank-1 product and two RMS norms per tensor), so it is written with torch ops: a
for-loop path and a foreach path that give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..optimizer import Optimizer

__all__ = ["Adafactor"]


def _number(x: Any) -> Any:
    return x.item() if isinstance(x, torch.Tensor) else x


def _epsilons(group: dict[str, Any], dtype: torch.dtype) -> tuple[float, float]:
    """(eps1, eps2), eps1=None meaning the machine epsilon of the parameter's dtype."""
    eps1, eps2 = group["eps"]
    return (torch.finfo(dtype).eps if eps1 is None else eps1), eps2


def _schedule(group: dict[str, Any], t: float) -> tuple[float, Any]:
    """Per-step scalars: the moment weight 1 - beta2_t = t^decay and the relative step size rho_t."""
    weight = t ** group["beta2_decay"]
    rho = min(group["lr"], 1 / math.sqrt(t))
    return weight, rho


def _step_dtype() -> torch.dtype:
    """Step counters are float32 unless the default dtype is float64 (as in torch)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _item(x: torch.Tensor) -> float:
    """The value of a 0-d tensor; a DTensor's (e.g. a norm over FSDP2 shards) reduced first."""
    full = getattr(x, "full_tensor", None)
    return (full() if full is not None else x).item()


def _rms_scale(norm: torch.Tensor, numel: int, d: float = 1.0) -> float:
    """RMS of a tensor from its 2-norm, divided by ``d``."""
    return _item(norm) / ((numel**0.5) * d)


class Adafactor(Optimizer):
    """Implements Adafactor with torch.optim's arguments, defaults, state and numbers.

    Args:
        params: parameters (or named parameters, or groups) to optimize.
        lr: bound of the relative step size and coefficient of weight decay (default: 1e-2).
        beta2_decay: decay exponent of beta2_t = 1 - t^beta2_decay (default: -0.8).
        eps: (eps1, eps2): eps1 stabilizes the denominators (None: dtype's machine epsilon),
            eps2 floors the parameter RMS that scales the step (default: (None, 1e-3)).
        d: clipping threshold of the update's RMS (default: 1.0).
        weight_decay: decoupled weight decay coefficient (default: 0.0).
        foreach: use the foreach implementation; None means the for-loop (as torch.optim).
        maximize: maximize the objective instead of minimizing (default: False).
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {_number(lr)}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=eps,
            d=d,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            # Checkpoints may store steps as Python numbers: back to tensors, as torch does.
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st and not torch.is_tensor(st["step"]):
                    st["step"] = torch.tensor(float(st["step"]), dtype=_step_dtype())

    def _param_shaped_state_keys(self) -> frozenset[str]:
        return frozenset({"variance"})

    # ------------------------------------------------------------------ state

    def _params_with_grad(self, group: dict[str, Any]) -> list[torch.Tensor]:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p):
                raise RuntimeError("Adafactor does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                self._init_state(p.grad, state)
            params.append(p)
        return params

    @staticmethod
    def _init_state(grad: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=_step_dtype())
        if grad.dim() > 1:
            row_shape = list(grad.shape)
            row_shape[-1] = 1
            col_shape = list(grad.shape)
            col_shape[-2] = 1
            state["row_var"] = grad.new_zeros(row_shape)
            state["col_var"] = grad.new_zeros(col_shape)
        else:
            state["variance"] = torch.zeros_like(grad, memory_format=torch.preserve_format)

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure: a callable that re-evaluates the model and returns the loss (optional).
        """
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            if group["foreach"]:
                self._update_foreach(group, params)
            else:
                for p in params:
                    self._update_one(group, p)
        return loss

    def _update_one(self, group: dict[str, Any], p: torch.Tensor) -> None:
        """The for-loop path: one parameter at a time."""
        state = self.state[p]
        grad = -p.grad if group["maximize"] else p.grad
        state["step"] += 1
        weight, rho = _schedule(group, state["step"].item())
        alpha = max(group["eps"][1], _rms_scale(p.norm(2), p.numel())) * rho
        eps1, _ = _epsilons(group, p.dtype)  # after the norm: torch's error for integer params
        if group["weight_decay"] != 0:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        if grad.dim() > 1:
            row_var, col_var = state["row_var"], state["col_var"]
            # Reductions stay out of place: on sharded (DTensor) params they are partial sums.
            row_var.lerp_(grad.norm(dim=-1, keepdim=True).square().div(grad.size(-1)), weight)
            col_var.lerp_(grad.norm(dim=-2, keepdim=True).square().div(grad.size(-2)), weight)
            var_estimate = row_var @ col_var
            var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp(min=eps1))
        else:
            variance = state["variance"]
            variance.lerp_(grad.square(), weight)
            var_estimate = variance.clone()
        update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_()
        update.mul_(grad)
        denom = max(1.0, _rms_scale(update.norm(2), update.numel(), group["d"]))
        p.add_(update, alpha=-alpha / denom)

    def _update_foreach(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """The foreach path: the same math, elementwise parts batched per (device, dtype)."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            buckets.setdefault((p.device, p.dtype), []).append(p)
        # every dtype's epsilon first: an integer param fails (as in torch) before any update
        eps = {dtype: _epsilons(group, dtype) for _, dtype in buckets}
        for (_, dtype), ps in buckets.items():
            self._update_bucket(group, ps, *eps[dtype])

    def _update_bucket(self, group: dict[str, Any], ps: list[torch.Tensor], eps1, eps2) -> None:
        states = [self.state[p] for p in ps]
        grads = [p.grad for p in ps]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1)
        schedules = [_schedule(group, s.item()) for s in steps]
        weights = [w for w, _ in schedules]
        alphas = [
            max(eps2, _rms_scale(n, p.numel())) * rho
            for n, p, (_, rho) in zip(torch._foreach_norm(ps), ps, schedules)
        ]
        if group["weight_decay"] != 0:
            torch._foreach_mul_(ps, 1 - group["lr"] * group["weight_decay"])

        factored = [i for i, g in enumerate(grads) if g.dim() > 1]
        vectors = [i for i, g in enumerate(grads) if g.dim() <= 1]
        estimates: list[torch.Tensor | None] = [None] * len(ps)
        if factored:
            fg = [grads[i] for i in factored]
            fw = [weights[i] for i in factored]
            rows = [states[i]["row_var"] for i in factored]
            cols = [states[i]["col_var"] for i in factored]
            for dim, factors in ((-1, rows), (-2, cols)):
                norms = [g.norm(dim=dim, keepdim=True) for g in fg]
                means = torch._foreach_div(torch._foreach_mul(norms, norms), [float(g.size(dim)) for g in fg])
                torch._foreach_lerp_(factors, means, fw)
            products = [r @ c for r, c in zip(rows, cols)]
            row_means = torch._foreach_clamp_min([r.mean(dim=-2, keepdim=True) for r in rows], eps1)
            torch._foreach_div_(products, row_means)
            for i, v in zip(factored, products):
                estimates[i] = v
        if vectors:
            variances = [states[i]["variance"] for i in vectors]
            vg = [grads[i] for i in vectors]
            torch._foreach_lerp_(variances, torch._foreach_mul(vg, vg), [weights[i] for i in vectors])
            for i, v in zip(vectors, variances):
                estimates[i] = v.clone()

        updates: list[torch.Tensor] = estimates  # type: ignore[assignment]
        torch._foreach_clamp_min_(updates, eps1 * eps1)
        torch._foreach_rsqrt_(updates)
        torch._foreach_mul_(updates, grads)
        scales = [
            -alpha / max(1.0, _rms_scale(n, u.numel(), group["d"]))
            for alpha, n, u in zip(alphas, torch._foreach_norm(updates), updates)
        ]
        _scale_(updates, scales)
        torch._foreach_add_(ps, updates)


def _scale_(tensors: list[torch.Tensor], scalars: list[Any]) -> None:
    """Multiply each tensor in place by its scalar: Python numbers, or 0-d tensors (tensor lr)."""
    kinds = {isinstance(s, torch.Tensor) for s in scalars}
    if len(kinds) == 1:
        torch._foreach_mul_(tensors, scalars)
    else:  # a tensor lr gives tensors until 1/sqrt(t) < lr, then numbers; steps may differ
        for t, s in zip(tensors, scalars):
            t.mul_(s)
