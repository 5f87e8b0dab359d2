"""Rprop parity with torch.optim across options, dtypes, backends and groups."""

import itertools

import pytest
import torch
from optim_checks import (
    assert_differentiable,
    assert_same_api,
    assert_same_error,
    assert_sparse_gradient_rejected,
    assert_traced_rule_matches,
)
from parity import assert_parity

import gradstep
from gradstep.algorithms.rprop import RpropConfig, rprop_rule

# step_sizes=(1e-3, 0.05) makes both clamps bite within the run.
OPTIONS = [
    dict(zip(("maximize", "etas", "step_sizes"), combo))
    for combo in itertools.product([False, True], [(0.5, 1.2), (0.3, 1.5)], [(1e-6, 50), (1e-3, 0.05)])
]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


def parity(kwargs, **kw):
    return assert_parity(gradstep.Rprop, torch.optim.Rprop, kwargs, **kw)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_float32(options, backend):
    parity(dict(lr=0.01, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    parity(dict(lr=0.01, step_sizes=(1e-3, 0.05), **backend), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_groups_skipped_grads_and_cross_load(dtype, backend):
    parity(
        dict(lr=0.01, **backend),
        groups=[
            dict(lr=0.1, etas=(0.2, 1.7)),
            dict(step_sizes=(1e-3, 0.05), maximize=True, foreach=False),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_tensor_lr(dtype, backend):
    parity(dict(lr=torch.tensor(0.01), **backend), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_zero_gradient_elements(backend):
    """Exact zeros in the gradient: factor 1, no move, and a zero prev for the next step."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(20, generator=gen)
    pa, pb = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
    oa = gradstep.Rprop([pa], lr=0.01, **backend)
    ob = torch.optim.Rprop([pb], lr=0.01, **backend)
    for step in range(8):
        g = torch.randn(20, generator=gen)
        g[step % 3 :: 3] = 0
        pa.grad, pb.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    for key in ("prev", "step_size"):
        torch.testing.assert_close(oa.state[pa][key], ob.state[pb][key], rtol=1e-5, atol=1e-6)


def test_state_under_default_float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        oa, _ = parity(dict(lr=0.01), dtype=torch.float32, steps=4)
        assert next(iter(oa.state.values()))["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_api_matches_torch():
    assert_same_api(gradstep.Rprop, torch.optim.Rprop)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(etas=(1.0, 0.5)), ValueError, "Invalid eta values: 1.0, 0.5"),
        (dict(etas=(0.5, 1.0)), ValueError, "Invalid eta values: 0.5, 1.0"),
        (dict(etas=(0.0, 1.2)), ValueError, "Invalid eta values: 0.0, 1.2"),
        (dict(weight_decay=0.1), TypeError, "unexpected keyword argument 'weight_decay'"),
    ],
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.Rprop, torch.optim.Rprop, kwargs, error, match)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(capturable=True), AssertionError, "params and state_steps must be on"),
        (dict(foreach=True, differentiable=True), AssertionError, "_foreach ops don't support"),
    ],
)
def test_step_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.Rprop, torch.optim.Rprop, kwargs, error, match, step=True)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.Rprop)


@pytest.mark.parametrize("kwargs", [dict(lr=0.9), dict(lr=0.9, maximize=True)], ids=str)
def test_differentiable(kwargs):
    f64 = dict(dtype=torch.float64)
    state = dict(
        step=torch.tensor(10.0, **f64),
        prev=torch.rand(10, **f64).requires_grad_(),
        step_size=torch.rand(10, **f64).requires_grad_(),
    )
    assert_differentiable(gradstep.Rprop, torch.optim.Rprop, state, kwargs)


@pytest.mark.parametrize("cfg", [RpropConfig(m) for m in (False, True)])
def test_traced_rule_matches(cfg):
    scalars = dict(etaminus=0.5, etaplus=1.2, step_size_min=1e-3, step_size_max=0.05)
    assert_traced_rule_matches(rprop_rule, cfg, 2, scalars, positive_states=False)
