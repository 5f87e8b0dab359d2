"""Checks shared by the per-algorithm tests, besides the numeric parity runs of parity.py.

Each compares gradstep with torch.optim (the oracle) on the same inputs:

- ``assert_same_api``: same constructor signature (names, order, kinds, defaults), the same
  param_group keys in the same order (state_dict and repr show that order), defaults and repr;
- ``assert_same_error``: the same error type and message, at construction or at the first step;
- ``assert_differentiable`` (from a given state) and ``assert_differentiable_step`` (from a
  state built by ordinary steps, with gradients with respect to every input): a step with
  ``differentiable=True`` passes ``gradcheck`` and gives torch.optim's values;
- ``assert_traced_rule_matches``: the traced graph of a rule (the fused backends' input)
  computes what the rule computes;
- sparse gradients (``assert_sparse_parity``, ``assert_sparse_gradient_rejected``),
  ``capturable=True`` on the CPU (``assert_capturable_bitwise``), and torch's for-loop as the
  oracle for low-precision foreach runs (``forloop_oracle``).
"""

from __future__ import annotations

import inspect
import itertools
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch.autograd import gradcheck

from gradstep.backends.graph import evaluate, trace
from gradstep.backends.reference import TorchOps
from parity import assert_close_tol, assert_state_close, clone_params


def assert_same_api(gs_cls, torch_cls):
    def shape(cls):
        sig = inspect.signature(cls.__init__)
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    # gradstep has a fused backend for every algorithm: a keyword-only ``fused`` where torch has none
    extra = [("fused", inspect.Parameter.KEYWORD_ONLY, None)]
    assert shape(gs_cls) in (shape(torch_cls), shape(torch_cls) + extra)
    a = gs_cls([torch.nn.Parameter(torch.randn(2))])
    b = torch_cls([torch.nn.Parameter(torch.randn(2))])
    assert list(a.param_groups[0]) == list(b.param_groups[0])
    assert list(a.defaults.items()) == list(b.defaults.items())
    assert repr(a) == repr(b)


def assert_same_error(gs_cls, torch_cls, kwargs, error, match, *, params=None, step=False):
    """Both classes raise ``error`` matching ``match``, at construction or (``step``) at the
    first step; on ``params`` if given, else on one float64 parameter with a gradient."""
    for cls in (gs_cls, torch_cls):
        if params is None:
            p = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64))
            p.grad = torch.randn_like(p)
        with pytest.raises(error, match=match):
            opt = cls(params if params is not None else [p], **kwargs)
            if step:
                opt.step()


def _step_fn(cls, kwargs, p, grad, state, *state_values):
    """One differentiable step from ``state``; returns the new param and state tensors.

    ``state_values`` repeats the state's tensors so that gradcheck sees them as inputs.
    """
    p = p.clone()
    p.grad = grad
    opt = cls([p], **kwargs)
    opt.state[p].update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    opt.step()
    return (p,) + tuple(
        v for v in opt.state[p].values() if torch.is_tensor(v) and v.requires_grad
    )


def assert_differentiable(gs_cls, torch_cls, state, kwargs, seed=0):
    """gradcheck through one step from ``state``, and torch.optim's values."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(10, generator=gen, dtype=torch.float64).requires_grad_()
    grad = torch.rand(10, generator=gen, dtype=torch.float64).requires_grad_()
    kwargs = dict(kwargs, differentiable=True)
    args = (p, grad, state, *state.values())
    assert gradcheck(lambda *a: _step_fn(gs_cls, kwargs, *a), args)
    ours = _step_fn(gs_cls, kwargs, *args)
    theirs = _step_fn(torch_cls, kwargs, *args)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def assert_differentiable_step(gs_cls, torch_cls, kwargs, *, steps=2):
    """gradcheck through one step, from a state built by ``steps`` ordinary steps (as torch's
    test-suite does); and the step's outputs and their gradients, with respect to the param,
    the gradient and the state tensors, equal torch.optim's."""
    gen = torch.Generator().manual_seed(11)
    warm = torch.rand(10, generator=gen, dtype=torch.float64, requires_grad=True)
    warm_opt = torch_cls([warm], **kwargs)
    for _ in range(steps):
        warm.grad = torch.rand(10, generator=gen, dtype=torch.float64)
        warm_opt.step()
    state = warm_opt.state_dict()["state"].get(0, {})
    diff_kwargs = dict(kwargs, differentiable=True)
    p = torch.rand(10, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.rand(10, generator=gen, dtype=torch.float64, requires_grad=True)
    inputs = (p, grad, state, *state.values())
    torch.autograd.gradcheck(lambda *a: _step_fn(gs_cls, diff_kwargs, *a), inputs)

    # Analytic gradients against torch's, now also with respect to the state tensors.
    state = {
        k: v.detach().clone().requires_grad_(v.is_floating_point() and v.dim() > 0)
        if torch.is_tensor(v) else v
        for k, v in state.items()
    }
    inputs = (p, grad, state, *state.values())
    ours = _step_fn(gs_cls, diff_kwargs, *inputs)
    theirs = _step_fn(torch_cls, diff_kwargs, *inputs)
    assert len(ours) == len(theirs)
    wrt = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a.sum(), wrt, allow_unused=True, retain_graph=True)
        gb = torch.autograd.grad(b.sum(), wrt, allow_unused=True, retain_graph=True)
        for x, y in zip(ga, gb):
            if y is None:
                assert x is None or not x.any()
            else:
                torch.testing.assert_close(x, y)


class _EvalOps(TorchOps):
    """TorchOps that also take a number as either operand of maximum/minimum, as the traced
    graph has them where a rule clamps."""

    @staticmethod
    def maximum(a, b):
        return torch.clamp(a, min=b) if not torch.is_tensor(b) else torch.maximum(a, b)

    @staticmethod
    def minimum(a, b):
        return torch.clamp(a, max=b) if not torch.is_tensor(b) else torch.minimum(a, b)


def assert_traced_rule_matches(rule, configs, n_states, scalars: dict, *, positive_states=True):
    """For each configuration (``configs``: one, or a config class, meaning every combination of
    its boolean fields), the traced graph computes what the rule computes, in float64.
    ``n_states``: the rule's number of state tensors, or a function of the configuration."""
    if isinstance(configs, type):
        configs = [configs(*flags) for flags in itertools.product([False, True], repeat=len(configs._fields))]
    elif not isinstance(configs, (list, tuple)) or hasattr(configs, "_fields"):
        configs = [configs]
    names = tuple(scalars)
    s = SimpleNamespace(**scalars)
    for cfg in configs:
        k = n_states(cfg) if callable(n_states) else n_states
        graph = trace(rule, cfg, names, k)
        gen = torch.Generator().manual_seed(0)
        tensors = [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(2)]
        if positive_states:
            tensors += [torch.rand(7, generator=gen, dtype=torch.float64) + 0.5 for _ in range(k)]
        else:
            tensors += [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(k)]
        expected = rule(TorchOps, cfg, s, *tensors)
        for a, b in zip(evaluate(graph, tensors, s, _EvalOps), expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, equal_nan=True)


def assert_sparse_gradient_rejected(gs_cls):
    """A dense-only algorithm refuses a sparse gradient with torch's message."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3).to_sparse()
    with pytest.raises(RuntimeError, match=f"{gs_cls.__name__} does not support sparse gradients"):
        gs_cls([p]).step()


def forloop_oracle(torch_cls):
    """``torch_cls`` stepping with its for-loop whatever its ``foreach`` flag says.

    The oracle for gradstep's foreach backend in bf16: torch's CPU ``_foreach_mul_`` rounds
    its scalar to bf16 (0.9 becomes 0.8984375) where the for-loop multiplies by 0.9, so in
    bf16 torch's foreach drifts from its own for-loop by more than the bf16 tolerance on
    momentum-like recurrences; gradstep's foreach matches torch's for-loop bit for bit.
    """

    class ForLoop(torch_cls):
        def step(self, closure=None):
            flags = [g["foreach"] for g in self.param_groups]
            for g in self.param_groups:
                g["foreach"] = False
            try:
                return super().step(closure)
            finally:
                for g, flag in zip(self.param_groups, flags):
                    g["foreach"] = flag

    ForLoop.__name__ = torch_cls.__name__
    return ForLoop


def capturable_on_cpu():
    """Lets capturable=True step on the CPU, to compare its math (tensor step counters and
    scalars) with torch's: both skip their device check while torch.compile traces, and this
    makes them believe it does."""
    return mock.patch("torch.compiler.is_compiling", lambda: True)


def assert_capturable_bitwise(gs_cls, torch_cls, kwargs, dtype, steps=10):
    """``capturable=True`` runs of both libraries (on the CPU, see ``capturable_on_cpu``) give
    identical parameters, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen, dtype=dtype) for s in [(5, 3), (4,)]]
    grads = [[torch.randn(b.shape, generator=gen, dtype=dtype) for b in base] for _ in range(steps)]
    runs = []
    with capturable_on_cpu():
        for make in (gs_cls, torch_cls):
            ps = [torch.nn.Parameter(b.clone()) for b in base]
            opt = make(ps, capturable=True, **kwargs)
            for gs in grads:
                for p, g in zip(ps, gs):
                    p.grad = g.clone()
                opt.step()
            runs.append(ps)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def sparse_grad(shape, step, seed=7):
    """An uncoalesced sparse gradient (repeated rows) touching a few rows of a 2-d parameter."""
    gen = torch.Generator().manual_seed(seed * 1009 + step)
    rows = torch.randint(0, shape[0], (4,), generator=gen)
    rows = torch.cat([rows, rows[:1]])  # a duplicate index: must be summed
    values = torch.randn(len(rows), *shape[1:], generator=gen, dtype=torch.float64)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape)


def assert_sparse_parity(gs_cls, torch_cls, kwargs, *, steps=10, dtype=torch.float32):
    """Sparse gradients: same parameters and state as torch.optim after every step."""
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(6, 3, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2)]
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = gs_cls(pa, **kwargs), torch_cls(pb, **kwargs)
    for step in range(steps):
        for i, (x, y) in enumerate(zip(pa, pb)):
            g = sparse_grad(x.shape, step * 2 + i).to(dtype)
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        for x, y in zip(pa, pb):
            assert_close_tol(x.detach(), y.detach(), dtype, f"sparse step {step}")
    assert_state_close(oa, ob, dtype, "sparse final")
