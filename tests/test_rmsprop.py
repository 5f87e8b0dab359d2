"""RMSprop parity with torch.optim: options, dtypes, backends, groups, errors, autograd."""

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
from gradstep.algorithms.rmsprop import RMSpropConfig, rmsprop_rule
from parity import assert_parity

NAMES = ("maximize", "weight_decay", "momentum", "centered")
OPTIONS = [dict(zip(NAMES, c)) for c in itertools.product([False, True], [0, 0.1], [0, 0.5], [False, True])]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_float32(options, backend):
    assert_parity(gradstep.RMSprop, torch.optim.RMSprop, dict(lr=0.01, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    options = dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.05, momentum=0.5, centered=True,
                   maximize=True)
    oracle = forloop_oracle(torch.optim.RMSprop) if dtype == torch.bfloat16 else torch.optim.RMSprop
    assert_parity(gradstep.RMSprop, oracle, dict(options, **backend), dtype=dtype)


def test_groups_skipped_grads_and_cross_load():
    assert_parity(
        gradstep.RMSprop,
        torch.optim.RMSprop,
        dict(lr=0.01),
        groups=[
            dict(momentum=0.9, centered=True),
            dict(lr=0.05, weight_decay=0.2, alpha=0.5, foreach=False),
            dict(eps=1e-3, maximize=True, centered=True, foreach=True),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
def test_tensor_lr(backend):
    kwargs = dict(lr=torch.tensor(0.01), momentum=0.5, **backend)
    assert_parity(gradstep.RMSprop, torch.optim.RMSprop, kwargs)


def test_capturable_on_cpu_is_refused_at_step():
    match = r"If capturable=True, params and state_steps must be on supported devices"
    assert_same_error(gradstep.RMSprop, torch.optim.RMSprop, dict(capturable=True),
                      AssertionError, match, step=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
@pytest.mark.parametrize("lr", ["float", "tensor"])
def test_capturable_math(dtype, backend, lr):
    """capturable=True (tensor step counters and scalars) gives torch's numbers bit for bit."""
    kwargs = dict(dict(lr=0.01, weight_decay=0.1, maximize=True, momentum=0.5, centered=True), capturable=True, **backend)
    if lr == "tensor":
        kwargs["lr"] = torch.tensor(kwargs["lr"])
    with capturable_on_cpu():
        assert_parity(gradstep.RMSprop, torch.optim.RMSprop, kwargs, dtype=dtype, steps=10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(momentum=-1.0), ValueError, "Invalid momentum value: -1.0"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(alpha=-1), ValueError, "Invalid alpha value: -1"),
        (dict(eps=-1, momentum=-1, weight_decay=-1, alpha=-1), ValueError, "Invalid epsilon value"),
        (dict(momentum=-1, weight_decay=-1, alpha=-1), ValueError, "Invalid momentum value"),
        (dict(weight_decay=-1, alpha=-1), ValueError, "Invalid weight_decay value"),
    ],
    ids=str,
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.RMSprop, torch.optim.RMSprop, kwargs, error, match)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.RMSprop)


def test_signature_matches_torch():
    assert_same_api(gradstep.RMSprop, torch.optim.RMSprop)


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1, maximize=True),
                                    dict(momentum=0.5, centered=True)], ids=str)
def test_differentiable(kwargs):
    assert_differentiable_step(gradstep.RMSprop, torch.optim.RMSprop, dict(lr=0.01, **kwargs))


def test_traced_rule_matches():
    scalars = dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.5)
    assert_traced_rule_matches(rmsprop_rule, RMSpropConfig, lambda c: 1 + c.momentum + c.centered,
                               scalars)
