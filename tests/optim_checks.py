"""Checks shared by the per-algorithm tests, besides numeric parity (parity.py).

- ``assert_same_api``: same constructor signature (names, order, kinds, defaults) and the same
  param_group keys in the same order (state_dict and repr show that order);
- ``assert_same_error``: gradstep and torch.optim reject the same constructor arguments with the
  same error type and message;
- ``assert_differentiable``: one step with ``differentiable=True`` passes ``gradcheck`` (the way
  PyTorch's own test-suite checks it) and gives torch.optim's values;
- ``assert_traced_rule_matches``: the traced graph of a rule (the fused backends' input)
  computes what the rule computes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.autograd import gradcheck

from gradstep.backends.graph import evaluate, trace
from gradstep.backends.reference import TorchOps


def assert_same_api(gs_cls, torch_cls):
    import inspect

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


def assert_same_error(gs_cls, torch_cls, kwargs, error, match, params=None):
    for cls in (gs_cls, torch_cls):
        with pytest.raises(error, match=match):
            cls(params if params is not None else [torch.nn.Parameter(torch.randn(2))], **kwargs)


def diff_step(p, grad, state, opt_class, kwargs, *ignored):
    """One step of a fresh optimizer on ``p`` with the given state; outputs p and the state
    tensors that require grad (``ignored`` makes gradcheck see the state as inputs)."""
    p = p.clone()
    p.grad = grad
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    opt = opt_class([p], **kwargs)
    opt.state[p].update(state)
    opt.step()
    return (p,) + tuple(
        v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.requires_grad
    )


def assert_differentiable(gs_cls, torch_cls, state, kwargs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(10, generator=gen, dtype=torch.float64).requires_grad_()
    grad = torch.rand(10, generator=gen, dtype=torch.float64).requires_grad_()
    kwargs = dict(kwargs, differentiable=True)
    args = (p, grad, state, gs_cls, kwargs, *state.values())
    assert gradcheck(diff_step, args)
    ours = diff_step(*args)
    theirs = diff_step(p, grad, state, torch_cls, kwargs, *state.values())
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _EvalOps(TorchOps):
    """TorchOps that also take a number as either operand of maximum/minimum, as the traced
    graph has them where a rule clamps."""

    @staticmethod
    def maximum(a, b):
        return torch.clamp(a, min=b) if not torch.is_tensor(b) else torch.maximum(a, b)

    @staticmethod
    def minimum(a, b):
        return torch.clamp(a, max=b) if not torch.is_tensor(b) else torch.minimum(a, b)


def assert_traced_rule_matches(rule, cfg, scalars: dict, n_states: int, positive_states=True):
    graph = trace(rule, cfg, tuple(scalars), n_states)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, generator=gen) for _ in range(2)]
    make = torch.rand if positive_states else torch.randn
    tensors += [make(7, generator=gen) for _ in range(n_states)]
    s = SimpleNamespace(**scalars)
    for a, b in zip(evaluate(graph, tensors, s, _EvalOps), rule(TorchOps, cfg, s, *tensors)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def assert_sparse_gradient_rejected(gs_cls):
    """A dense-only algorithm refuses a sparse gradient with torch's message."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3).to_sparse()
    with pytest.raises(RuntimeError, match=f"{gs_cls.__name__} does not support sparse gradients"):
        gs_cls([p]).step()
