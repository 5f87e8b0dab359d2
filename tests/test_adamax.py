"""Adamax parity with torch.optim: options, dtypes, backends, groups, errors, autograd."""

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
from gradstep.algorithms.adamax import AdamaxConfig, adamax_rule
from parity import assert_parity

NAMES = ("maximize", "weight_decay", "betas")
OPTIONS = [dict(zip(NAMES, c))
           for c in itertools.product([False, True], [0, 0.1], [(0.9, 0.999), (0.0, 0.5)])]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_float32(options, backend):
    assert_parity(gradstep.Adamax, torch.optim.Adamax, dict(lr=0.01, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    options = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, maximize=True)
    oracle = forloop_oracle(torch.optim.Adamax) if dtype == torch.bfloat16 else torch.optim.Adamax
    assert_parity(gradstep.Adamax, oracle, dict(options, **backend), dtype=dtype)


def test_groups_skipped_grads_and_cross_load():
    assert_parity(
        gradstep.Adamax,
        torch.optim.Adamax,
        dict(lr=0.01),
        groups=[
            dict(betas=(0.5, 0.9)),
            dict(lr=0.05, weight_decay=0.2, foreach=False),
            dict(eps=1e-3, maximize=True, foreach=True),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
def test_tensor_lr(backend):
    assert_parity(gradstep.Adamax, torch.optim.Adamax, dict(lr=torch.tensor(0.01), **backend))


def test_tensor_betas():
    # torch's foreach path fails with tensor betas; its for-loop is the oracle for both of ours.
    kwargs = dict(lr=0.01, betas=(torch.tensor(0.8), torch.tensor(0.99)))
    for backend in (dict(foreach=False), dict(foreach=True)):
        assert_parity(gradstep.Adamax, forloop_oracle(torch.optim.Adamax), dict(kwargs, **backend))


def test_capturable_on_cpu_is_refused_at_step():
    match = r"If capturable=True, params and state_steps must be on supported devices"
    assert_same_error(gradstep.Adamax, torch.optim.Adamax, dict(capturable=True),
                      AssertionError, match, step=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
@pytest.mark.parametrize("lr", ["float", "tensor"])
def test_capturable_math(dtype, backend, lr):
    """capturable=True (tensor step counters and scalars) gives torch's numbers bit for bit."""
    kwargs = dict(dict(lr=0.01, weight_decay=0.1, maximize=True), capturable=True, **backend)
    if lr == "tensor":
        kwargs["lr"] = torch.tensor(kwargs["lr"])
    with capturable_on_cpu():
        assert_parity(gradstep.Adamax, torch.optim.Adamax, kwargs, dtype=dtype, steps=10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(betas=(0.0, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
        (dict(betas=(-0.1, 0.5)), ValueError, "Invalid beta parameter at index 0: -0.1"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(eps=-1, betas=(2, 2), weight_decay=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(betas=(2, 2), weight_decay=-1), ValueError, "Invalid beta parameter at index 0: 2"),
    ],
    ids=str,
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.Adamax, torch.optim.Adamax, kwargs, error, match)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.Adamax)


def test_signature_matches_torch():
    assert_same_api(gradstep.Adamax, torch.optim.Adamax)


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1, maximize=True)], ids=str)
def test_differentiable(kwargs):
    assert_differentiable_step(gradstep.Adamax, torch.optim.Adamax, dict(lr=0.1, **kwargs))


def test_traced_rule_matches():
    scalars = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step_size=0.02,
                   neg_inv_step_size=-50.0)
    assert_traced_rule_matches(adamax_rule, AdamaxConfig, lambda c: 2, scalars)
