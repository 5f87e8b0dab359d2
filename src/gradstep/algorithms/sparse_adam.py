"""SparseAdam: Adam masked to the entries a sparse gradient materializes.

Dense parameters, sparse (COO) gradients, e.g. from ``nn.Embedding(sparse=True)``. Only the
gathered rows of the moments and the parameter are read and written, so the work is
proportional to the gradient's nonzeros. Not elementwise over the parameter, so it is written
with torch ops on the sparse gradient's values. Same arguments, errors, state and numbers as
``torch.optim.SparseAdam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..optimizer import Optimizer
from ._validation import check_betas, check_lr

__all__ = ["SparseAdam"]


def _number(x: Any) -> Any:
    return x.item() if isinstance(x, torch.Tensor) else x


class SparseAdam(Optimizer):
    """Implements the masked Adam variant for sparse gradients.

    Args:
        params: dense parameters (or named parameters, or groups) to optimize.
        lr: learning rate (default: 1e-3).
        betas: coefficients of the running averages of the gradient and its square.
        eps: term added to the denominator, > 0 (default: 1e-8).
        maximize: maximize the objective instead of minimizing (default: False).
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {_number(eps)}")
        check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        self._check_dense_real_params()

    def _check_dense_real_params(self) -> None:
        """Sparse or complex parameters are rejected, listed as [group index, param index]."""
        sparse, complex_ = [], []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.is_sparse:
                    sparse.append([gi, pi])
                if p.is_complex():
                    complex_.append([gi, pi])
        if sparse:
            raise ValueError(
                f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors"
            )
        if complex_:
            raise ValueError(
                f"Complex params at indices {complex_}: SparseAdam does not support complex "
                "parameters"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def _param_shaped_state_keys(self) -> frozenset[str]:
        return frozenset({"exp_avg", "exp_avg_sq"})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure: a callable that re-evaluates the model and returns the loss (optional).
        """
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            params = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError(
                        "SparseAdam does not support dense gradients, please consider Adam instead"
                    )
                params.append(p)
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                _sparse_adam_update(p, p.grad, state, group)
        return loss


def _sparse_adam_update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
    """Adam on the gradient's entries only; the moments' other entries are left as they are.

    For each materialized entry: m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), and
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps).
    """
    grad = grad.coalesce()  # duplicate indices are summed, as the dense gradient would be
    indices, values = grad._indices(), grad._values()
    if group["maximize"]:
        values = -values
    beta1, beta2 = group["betas"]

    def scatter(v: torch.Tensor) -> torch.Tensor:
        # The invariant-check choice made explicit (the user's global one): left implicit, torch
        # warns once per process, which torch.optim's SparseAdam never does (-W error breaks).
        checks = torch.sparse.check_sparse_tensor_invariants.is_enabled()
        return torch.sparse_coo_tensor(indices, v, grad.size(), check_invariants=checks)

    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    old_avg = exp_avg.sparse_mask(grad)._values()
    avg_delta = values.sub(old_avg).mul_(1 - beta1)
    exp_avg.add_(scatter(avg_delta))
    old_sq = exp_avg_sq.sparse_mask(grad)._values()
    sq_delta = values.pow(2).sub_(old_sq).mul_(1 - beta2)
    exp_avg_sq.add_(scatter(sq_delta))

    numer = avg_delta.add_(old_avg)
    denom = sq_delta.add_(old_sq).sqrt_().add_(group["eps"])
    step = state["step"]
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
    p.add_(scatter(-step_size * numer.div_(denom)))
