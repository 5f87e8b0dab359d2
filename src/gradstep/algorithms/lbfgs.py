"""L-BFGS (Nocedal & Wright, Algorithm 7.5) over all parameters viewed as one flat vector.

Not elementwise: each iteration runs the two-loop recursion (N&W Algorithm 7.4) over a history
of curvature pairs, and optionally a strong Wolfe line search (see ``_line_search``). The
schedule of one ``step`` (iterations, evaluations, stopping tests) and the state it keeps follow
torch.optim.LBFGS, so numbers and checkpoints match it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..optimizer import Optimizer
from ._line_search import strong_wolfe
from ._validation import check_lr

__all__ = ["LBFGS"]


def _real(t: torch.Tensor) -> torch.Tensor:
    """Complex tensors are optimized as pairs of reals."""
    return torch.view_as_real(t) if torch.is_complex(t) else t


class LBFGS(Optimizer):
    """Implements L-BFGS; one parameter group only, and ``step`` needs a closure.

    Args:
        params: parameters to optimize (a single group).
        lr: learning rate (default: 1).
        max_iter: maximal number of iterations per ``step`` (default: 20).
        max_eval: maximal number of function evaluations per ``step`` (default: max_iter * 1.25).
        tolerance_grad: stop when the largest gradient entry is at most this (default: 1e-7).
        tolerance_change: stop when the loss or the parameters change less (default: 1e-9).
        history_size: number of curvature pairs kept (default: 100).
        line_search_fn: None (fixed step lr) or 'strong_wolfe'.
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_lr(lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(
                "LBFGS doesn't support per-parameter options (parameter groups)"
            )
        self._numel_cache: int | None = None

    @property
    def _params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    # ------------------------------------------------------------------ the flat vector

    def _numel(self) -> int:
        if getattr(self, "_numel_cache", None) is None:
            self._numel_cache = sum(_real(p).numel() for p in self._params)
        return self._numel_cache

    def _flat_grad(self) -> torch.Tensor:
        """All gradients as one vector (zeros for params without a gradient)."""
        views = []
        for p in self._params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.view(-1)
            views.append(_real(view).view(-1))
        return torch.cat(views, 0)

    def _move(self, t: Any, direction: torch.Tensor) -> None:
        """params += t * direction, the direction being a flat vector."""
        offset = 0
        for p in self._params:
            real = _real(p)
            numel = real.numel()
            real.add_(direction[offset : offset + numel].view_as(real), alpha=t)
            offset += numel
        assert offset == self._numel()

    def _snapshot(self) -> list[torch.Tensor]:
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def _restore(self, saved: list[torch.Tensor]) -> None:
        for p, value in zip(self._params, saved):
            p.copy_(value)

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:
        """Run up to ``max_iter`` L-BFGS iterations.

        Args:
            closure: re-evaluates the model and returns the loss (required; it is called
                several times per step).

        Returns the loss of the first evaluation.
        """
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)}"
            )
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = group["lr"]
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]

        # The whole state lives under the first parameter, as in torch.optim.
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        evals = 1
        state["func_evals"] += 1
        flat_grad = self._flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss  # already optimal

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        opt_cond = False
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # The search direction d = -H g, H the L-BFGS inverse Hessian approximation.
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # keep the pair only when the curvature is positive
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)  # scale of the initial Hessian (N&W eq. 7.20)
                if "al" not in state:
                    state["al"] = [None] * history_size
                d = _two_loop(flat_grad, old_dirs, old_stps, ro, H_diag, state["al"])

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # The first step of all is scaled down to at most unit length (in the L1 norm).
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr
            else:
                t = lr

            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break  # not a descent direction (to working precision)

            ls_evals = 0
            if line_search_fn is not None:
                if line_search_fn != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                start = self._snapshot()

                def evaluate(step_size, start=start, d=d):
                    self._move(step_size, d)
                    f = float(closure())
                    g = self._flat_grad()
                    self._restore(start)
                    return f, g

                # the search may spend what is left of this step's evaluation budget
                loss, flat_grad, t, ls_evals = strong_wolfe(
                    evaluate, t, d, loss, flat_grad, gtd, max_ls=max_eval - evals
                )
                self._move(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                self._move(t, d)
                if n_iter != max_iter:
                    # re-evaluate, unless this is the last iteration of the step
                    loss = float(closure())
                    flat_grad = self._flat_grad()
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_evals = 1

            evals += ls_evals
            state["func_evals"] += ls_evals

            if n_iter == max_iter or evals >= max_eval:
                break
            if opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break  # the parameters stopped moving
            if abs(loss - prev_loss) < tolerance_change:
                break  # the loss stopped changing

        state["d"] = d
        state["t"] = t
        state["old_dirs"] = old_dirs
        state["old_stps"] = old_stps
        state["ro"] = ro
        state["H_diag"] = H_diag
        state["prev_flat_grad"] = prev_flat_grad
        state["prev_loss"] = prev_loss
        return orig_loss


def _two_loop(flat_grad, old_dirs, old_stps, ro, H_diag, al):
    """-H g by the L-BFGS two-loop recursion (N&W Algorithm 7.4); ``al`` is scratch storage."""
    q = flat_grad.neg()
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    r = torch.mul(q, H_diag)
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r
