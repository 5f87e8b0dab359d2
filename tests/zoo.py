"""Every gradstep optimizer that has a torch.optim twin, and how to feed each one.

Discovered from ``gradstep.__all__`` at import time, so algorithms that land later are tested
without editing this file; the few that need special inputs (a closure, sparse gradients,
matrices only) say so here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

import gradstep
from gradstep.algorithms._elementwise import ElementwiseOptimizer

BACKEND_FLAGS = ("foreach", "fused")


@dataclass
class Spec:
    name: str
    gs: type
    torch: type
    kwargs: dict = field(default_factory=dict)
    shapes: tuple = ((4, 3), (5,), (2, 2))
    closure: bool = False  # LBFGS: gradients come from a closure
    sparse: bool = False  # SparseAdam: sparse gradients only
    elementwise: bool = False

    @property
    def options(self) -> set[str]:
        """Constructor arguments both libraries accept (gradstep may offer more, e.g. fused)."""
        gs = inspect.signature(self.gs.__init__).parameters
        return set(gs) & set(inspect.signature(self.torch.__init__).parameters)

    def backends(self) -> list[dict]:
        """Default, and each backend flag both libraries accept for the algorithm."""
        out = [{}]
        if "foreach" in self.options:
            out += [dict(foreach=False), dict(foreach=True)]
        if "fused" in self.options:
            out.append(dict(fused=True))
        return out

    def make(self, lib, params, **kwargs):
        cls = self.gs if lib is gradstep else self.torch
        return cls(params, **{**self.kwargs, **kwargs})


_SPECIAL = {
    "LBFGS": dict(kwargs=dict(lr=0.5, max_iter=3), closure=True),
    "SparseAdam": dict(sparse=True),
    "Muon": dict(shapes=((4, 3), (3, 3))),
    "SGD": dict(kwargs=dict(lr=0.01, momentum=0.9)),
}


def discover() -> list[Spec]:
    specs = []
    for name in gradstep.__all__:
        cls = getattr(gradstep, name)
        if not (isinstance(cls, type) and issubclass(cls, gradstep.Optimizer)):
            continue
        if cls is gradstep.Optimizer or not hasattr(torch.optim, name):
            continue
        extra = dict(_SPECIAL.get(name, {}))
        extra.setdefault("kwargs", dict(lr=0.01))
        specs.append(
            Spec(name, cls, getattr(torch.optim, name), elementwise=issubclass(cls, ElementwiseOptimizer), **extra)
        )
    return specs


SPECS = discover()
NAMES = [s.name for s in SPECS]
BY_NAME = {s.name: s for s in SPECS}


def base_params(spec: Spec, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in spec.shapes]


def leaves(tensors) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(t.detach().clone()) for t in tensors]


def grads(spec: Spec, params, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        out.append(g.to_sparse() if spec.sparse else g)
    return out


def step(spec: Spec, opt, params, gs) -> None:
    """Give ``params`` the gradients ``gs`` (None: no gradient) and take one step."""

    def assign():
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.clone()

    if spec.closure:

        def closure():
            assign()
            return torch.tensor(1.0)

        opt.step(closure)
    else:
        assign()
        opt.step()


def outcome(fn):
    """(None, result) or (exception, None): lets a test compare what torch and gradstep did."""
    try:
        return None, fn()
    except Exception as error:  # noqa: BLE001 - the error itself is what is compared
        return error, None


def assert_same_error(torch_error, gs_error, where=""):
    """gradstep raises where torch raises: the same type, with torch's message inside."""
    assert (torch_error is None) == (gs_error is None), (where, torch_error, gs_error)
    if torch_error is None:
        return
    assert isinstance(gs_error, type(torch_error)), (where, torch_error, gs_error)
    assert str(torch_error) in str(gs_error), (where, str(torch_error), str(gs_error))
