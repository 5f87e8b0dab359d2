"""Adadelta parity with torch.optim: options, dtypes, backends, groups, errors, autograd."""

import itertools

import pytest
import torch

import gradstep
from optim_checks import (
    assert_differentiable_step,
    assert_same_api,
    assert_same_error,
    assert_sparse_gradient_rejected,
    assert_traced_rule_matches,
    capturable_on_cpu,
    forloop_oracle,
)
from gradstep.algorithms.adadelta import AdadeltaConfig, adadelta_rule
from parity import assert_parity

NAMES = ("maximize", "weight_decay", "rho")
OPTIONS = [dict(zip(NAMES, c)) for c in itertools.product([False, True], [0, 0.1], [0.9, 0.5])]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_float32(options, backend):
    assert_parity(gradstep.Adadelta, torch.optim.Adadelta, dict(lr=0.5, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    options = dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.05, maximize=True)
    oracle = forloop_oracle(torch.optim.Adadelta) if dtype == torch.bfloat16 else torch.optim.Adadelta
    assert_parity(gradstep.Adadelta, oracle, dict(options, **backend), dtype=dtype)


def test_groups_skipped_grads_and_cross_load():
    assert_parity(
        gradstep.Adadelta,
        torch.optim.Adadelta,
        dict(lr=0.5),
        groups=[
            dict(rho=0.5),
            dict(lr=1.0, weight_decay=0.2, foreach=False),
            dict(eps=1e-3, maximize=True, foreach=True),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
def test_tensor_lr(backend):
    assert_parity(gradstep.Adadelta, torch.optim.Adadelta, dict(lr=torch.tensor(0.5), **backend))


def test_capturable_on_cpu_is_refused_at_step():
    match = r"If capturable=True, params and state_steps must be on supported devices: \['cuda', 'xpu', 'hpu', 'privateuseone'\]\."
    assert_same_error(gradstep.Adadelta, torch.optim.Adadelta, dict(capturable=True),
                      AssertionError, match, step=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
@pytest.mark.parametrize("lr", ["float", "tensor"])
def test_capturable_math(dtype, backend, lr):
    """capturable=True (tensor step counters and scalars) gives torch's numbers bit for bit."""
    kwargs = dict(dict(lr=0.5, weight_decay=0.1, maximize=True), capturable=True, **backend)
    if lr == "tensor":
        kwargs["lr"] = torch.tensor(kwargs["lr"])
    with capturable_on_cpu():
        assert_parity(gradstep.Adadelta, torch.optim.Adadelta, kwargs, dtype=dtype, steps=10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(rho=1.1), ValueError, "Invalid rho value: 1.1"),
        (dict(rho=-0.1), ValueError, "Invalid rho value: -0.1"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(rho=2, eps=-1, weight_decay=-1), ValueError, "Invalid rho value: 2"),
        (dict(eps=-1, weight_decay=-1), ValueError, "Invalid epsilon value: -1"),
    ],
    ids=str,
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.Adadelta, torch.optim.Adadelta, kwargs, error, match)


def test_rho_one_is_accepted():
    assert_parity(gradstep.Adadelta, torch.optim.Adadelta, dict(rho=1.0), steps=3)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.Adadelta)


def test_signature_matches_torch():
    assert_same_api(gradstep.Adadelta, torch.optim.Adadelta)


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1, maximize=True, rho=0.5)], ids=str)
def test_differentiable(kwargs):
    assert_differentiable_step(gradstep.Adadelta, torch.optim.Adadelta, dict(lr=0.5, **kwargs))


def test_traced_rule_matches():
    scalars = dict(lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.1)
    assert_traced_rule_matches(adadelta_rule, AdadeltaConfig, lambda c: 2, scalars)
