"""Muon (Jordan et al., 2024): momentum SGD whose 2-D update is orthogonalized by Newton-Schulz.

Not elementwise: the orthogonalization is a handful of small matrix products per parameter, so
it is written directly with torch ops. Same arguments, errors, state and numbers as
``torch.optim.Muon``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..optimizer import Optimizer

__all__ = ["Muon"]

_ADJUST_LR_FNS = ("original", "match_rms_adamw")


def _number(x: Any) -> Any:
    """A one-element tensor as a Python number, for error messages (torch prints numbers)."""
    return x.item() if isinstance(x, torch.Tensor) else x


def orthogonalize(G: torch.Tensor, coefficients: tuple, steps: int, eps: float) -> torch.Tensor:
    """Approximate the orthogonal factor U V^T of ``G = U S V^T`` with a quintic Newton-Schulz.

    Each iteration maps X to a X + (b A + c A^2) X with A = X X^T; the tuned coefficients push
    the singular values of the (Frobenius-normalized) input towards 1 quickly. It runs in
    bfloat16 like torch.optim, on the wide orientation so that A is the smaller Gram matrix.
    """
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = coefficients
    # .bfloat16() returns G itself when G is bfloat16 already; the in-place normalization then
    # rescales the caller's tensor too.  torch.optim 2.13 does the same (for bfloat16 params
    # without nesterov it rescales the momentum buffer), and parity keeps that behaviour.
    X = G.bfloat16()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X.div_(X.norm().clamp(min=eps))
    for _ in range(steps):
        gram = X @ X.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        X = torch.addmm(X, poly, X, beta=a)
    return X.T if tall else X


def adjusted_lr(lr: Any, adjust_lr_fn: str | None, shape: torch.Size) -> Any:
    """Scale lr so that orthogonalized updates of rectangular matrices have a consistent RMS.

    'original' (Keller Jordan): sqrt(max(1, rows / cols)); 'match_rms_adamw' (Moonshot):
    0.2 * sqrt(max(rows, cols)), which lets Muon reuse AdamW's lr and weight decay.
    """
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols)) * lr
    return lr


class Muon(Optimizer):
    """Implements Muon for 2-D parameters (hidden-layer weight matrices).

    Args:
        params: parameters (or named parameters, or groups) to optimize; all must be 2-D.
        lr: learning rate (default: 1e-3).
        weight_decay: decoupled weight decay (default: 0.1).
        momentum: momentum factor (default: 0.95).
        nesterov: use Nesterov momentum (default: True).
        ns_coefficients: (a, b, c) of the Newton-Schulz polynomial.
        eps: floor of the norm used to normalize the update (default: 1e-7).
        ns_steps: Newton-Schulz iterations (default: 5).
        adjust_lr_fn: None or 'original' (default) or 'match_rms_adamw'.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {_number(lr)}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {_number(momentum)}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {_number(weight_decay)}")
        if adjust_lr_fn is not None and adjust_lr_fn not in _ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        "Muon only supports 2D parameters whereas we found a parameter with "
                        f"size: {p.size()}"
                    )

    def _param_shaped_state_keys(self) -> frozenset[str]:
        return frozenset({"momentum_buffer"})

    def _params_with_grad(self, group: dict[str, Any]) -> list[torch.Tensor]:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p):
                raise RuntimeError("Muon does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            if p.grad.ndim != 2:
                raise ValueError("Param gradient must be a 2D matrix")
            params.append(p)
        return params

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure: a callable that re-evaluates the model and returns the loss (optional).
        """
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            lr, momentum = group["lr"], group["momentum"]
            for p in params:
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        grad, memory_format=torch.preserve_format
                    )
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                ortho = orthogonalize(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"]
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
