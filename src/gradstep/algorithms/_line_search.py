"""Strong Wolfe line search with cubic interpolation (Nocedal & Wright, Algorithms 3.5 and 3.6).

Along a descent direction d, find a step t whose loss decreases enough (sufficient decrease,
c1) and whose directional derivative shrank enough in magnitude (curvature, c2). The first
phase extrapolates until a bracket of acceptable steps is found; the second ("zoom") shrinks
the bracket. Trial steps are minimizers of the cubic that interpolates the loss and slope at
two points, safeguarded as in minFunc (Schmidt), the reference torch.optim.LBFGS follows.

Loss values are Python floats; slopes (``g . d``) are 0-d tensors; steps start as Python numbers
and may become tensors through interpolation, exactly as in torch.optim, whose checkpoints
store the final step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Evaluate = Callable[[Any], tuple[float, torch.Tensor]]


def cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimizer of the cubic through (x1, f1) and (x2, f2) with slopes g1, g2, within bounds.

    With d1 = g1 + g2 - 3 (f1 - f2) / (x1 - x2) and d2 = sqrt(d1^2 - g1 g2), the minimizer is
    x_hi - (x_hi - x_lo) (g_hi + d2 - d1) / (g_hi - g_lo + 2 d2)   (N&W eq. 3.59), where
    "hi" is the point with the larger x. Without a real minimizer, the middle of the bounds.
    """
    if bounds is None:
        bounds = (x1, x2) if x1 <= x2 else (x2, x1)
    lower, upper = bounds
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:
        return (lower + upper) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        (x_lo, g_lo), (x_hi, g_hi) = (x1, g1), (x2, g2)
    else:
        (x_lo, g_lo), (x_hi, g_hi) = (x2, g2), (x1, g1)
    x_min = x_hi - (x_hi - x_lo) * ((g_hi + d2 - d1) / (g_hi - g_lo + 2 * d2))
    return min(max(x_min, lower), upper)


class _Point:
    """A trial step with its loss, flat gradient and slope along the search direction."""

    __slots__ = ("t", "f", "g", "gtd")

    def __init__(self, t, f, g, gtd):
        self.t, self.f, self.g, self.gtd = t, f, g, gtd


def strong_wolfe(
    evaluate: Evaluate,
    t,
    d: torch.Tensor,
    f: float,
    g: torch.Tensor,
    gtd: torch.Tensor,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
):
    """Search along ``d`` from the point with loss ``f``, gradient ``g`` and slope ``gtd``.

    ``evaluate(t)`` returns the loss and flat gradient at step ``t`` (and leaves the parameters
    as they were). Returns (loss, flat gradient, step, number of evaluations).
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    origin = _Point(0, f, g, gtd)

    def too_high(p: _Point):
        return p.f > f + c1 * p.t * gtd  # the Armijo (sufficient decrease) condition fails

    def curvature_ok(p: _Point):
        return abs(p.gtd) <= -c2 * gtd

    def trial(step) -> _Point:
        loss, grad = evaluate(step)
        return _Point(step, loss, grad, grad.dot(d))

    # Phase 1: extrapolate until [prev, new] brackets an acceptable step.
    new = trial(t)
    evals = 1
    prev = origin
    bracket: list[_Point] | None = None
    found = False
    iters = 0
    while iters < max_ls:
        if too_high(new) or (iters > 1 and new.f >= prev.f):
            bracket = [prev, _Point(new.t, new.f, new.g.clone(), new.gtd)]
            break
        if curvature_ok(new):
            bracket, found = [new], True
            break
        if new.gtd >= 0:
            bracket = [prev, _Point(new.t, new.f, new.g.clone(), new.gtd)]
            break
        # Cubic extrapolation, kept in [t + 0.01 (t - t_prev), 10 t].
        low = new.t + 0.01 * (new.t - prev.t)
        high = new.t * 10
        step = cubic_minimizer(prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd, bounds=(low, high))
        prev = _Point(new.t, new.f, new.g.clone(), new.gtd)
        new = trial(step)
        evals += 1
        iters += 1
    if iters == max_ls:
        bracket = [origin, new]

    # Phase 2: zoom into the bracket; `lo` is the end with the lower loss.
    assert bracket is not None
    lo, hi = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    stalled = False
    while not found and iters < max_ls:
        ends = bracket[0].t, bracket[1].t
        if abs(ends[1] - ends[0]) * d_norm < tolerance_change:
            break  # the bracket is too small to matter
        step = cubic_minimizer(
            bracket[0].t, bracket[0].f, bracket[0].gtd, bracket[1].t, bracket[1].f, bracket[1].gtd
        )
        step, stalled = _safeguard(step, ends, stalled)
        new = trial(step)
        evals += 1
        iters += 1
        if too_high(new) or new.f >= bracket[lo].f:
            bracket[hi] = _Point(new.t, new.f, new.g.clone(memory_format=torch.contiguous_format), new.gtd)
            lo, hi = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if curvature_ok(new):
                found = True
            elif new.gtd * (bracket[hi].t - bracket[lo].t) >= 0:
                bracket[hi] = bracket[lo]  # keep the bracket around a minimizer
            bracket[lo] = _Point(new.t, new.f, new.g.clone(memory_format=torch.contiguous_format), new.gtd)

    best = bracket[lo]
    return best.f, best.g, best.t, evals


def _safeguard(step, ends, stalled):
    """Keep a zoom step at least 10% of the bracket away from its ends.

    A step close to an end is accepted once; when it happens twice in a row (or the step lies
    outside the bracket) it is moved to 10% inside the nearer end. Returns (step, stalled).
    """
    top, bottom = max(ends), min(ends)
    margin = 0.1 * (top - bottom)
    if min(top - step, step - bottom) < margin:
        if stalled or step >= top or step <= bottom:
            if abs(step - top) < abs(step - bottom):
                step = top - margin
            else:
                step = bottom + margin
            return step, False
        return step, True
    return step, False
