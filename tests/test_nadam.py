"""NAdam parity with torch.optim across options, dtypes, backends and groups."""

import itertools

import pytest
import torch
from optim_checks import (
    assert_capturable_bitwise,
    assert_differentiable,
    assert_same_api,
    assert_same_error,
    assert_sparse_gradient_rejected,
    assert_traced_rule_matches,
)
from parity import assert_parity

import gradstep
from gradstep.algorithms.nadam import NAdamConfig, nadam_rule

# momentum_decay=0 keeps mu_t constant (beta1 / 2).
OPTIONS = [
    dict(zip(("maximize", "weight_decay", "decoupled_weight_decay", "momentum_decay"), combo))
    for combo in itertools.product([False, True], [0, 0.1], [False, True], [0, 4e-3])
]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


def parity(kwargs, **kw):
    return assert_parity(gradstep.NAdam, torch.optim.NAdam, kwargs, **kw)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_float32(options, backend):
    parity(dict(lr=0.01, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    parity(dict(lr=0.01, weight_decay=0.05, momentum_decay=0.01, **backend), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_groups_skipped_grads_and_cross_load(dtype, backend):
    parity(
        dict(lr=0.01, **backend),
        groups=[
            dict(lr=0.1, momentum_decay=0.01, maximize=True),
            dict(betas=(0.8, 0.99), weight_decay=0.2, decoupled_weight_decay=True, foreach=False),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("decoupled", [False, True])
def test_tensor_lr(dtype, backend, decoupled):
    kwargs = dict(lr=torch.tensor(0.01), weight_decay=0.1, decoupled_weight_decay=decoupled)
    parity(dict(kwargs, **backend), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_betas_changed_mid_run(backend):
    """mu_product accumulates each step's mu_t, computed from the current beta1."""

    def before_step(step, *optimizers):
        if step == 7:
            for opt in optimizers:
                opt.param_groups[0]["betas"] = (0.5, 0.9)

    parity(dict(lr=0.01, **backend), before_step=before_step, dtype=torch.float64)


def test_state_under_default_float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        oa, _ = parity(dict(lr=0.01), dtype=torch.float32, steps=4)
        state = next(iter(oa.state.values()))
        assert state["step"].dtype == state["mu_product"].dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_checkpoint_with_number_step_and_mu_product_loads():
    oa, _ = parity(dict(lr=0.01), steps=4)
    sd = oa.state_dict()
    for st in sd["state"].values():
        st["step"], st["mu_product"] = st["step"].item(), st["mu_product"].item()
    for cls in (gradstep.NAdam, torch.optim.NAdam):
        p = torch.nn.Parameter(torch.randn(5, 3))
        opt = cls([p, torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 3, 2))])
        opt.load_state_dict(sd)
        p.grad = torch.randn(5, 3)
        opt.step()
        assert torch.is_tensor(opt.state[p]["step"]) and torch.is_tensor(opt.state[p]["mu_product"])


def test_api_matches_torch():
    assert_same_api(gradstep.NAdam, torch.optim.NAdam)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(betas=(1.0, 0.0)), ValueError, "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(momentum_decay=-0.2), ValueError, "Invalid momentum_decay value: -0.2"),
    ],
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.NAdam, torch.optim.NAdam, kwargs, error, match)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(capturable=True), AssertionError, "params, mu_products and state_steps must be on"),
        (dict(foreach=True, differentiable=True), AssertionError, "_foreach ops don't support"),
    ],
)
def test_step_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.NAdam, torch.optim.NAdam, kwargs, error, match, step=True)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.NAdam)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.9),
        dict(lr=0.9, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.9, weight_decay=0.1, maximize=True),
    ],
    ids=str,
)
def test_differentiable(kwargs):
    # As torch's test-suite: the step is differentiable through mu_product too.
    f64 = dict(dtype=torch.float64)
    state = dict(
        step=torch.tensor(10.0, **f64),
        exp_avg=torch.rand(10, **f64).requires_grad_(),
        exp_avg_sq=torch.rand(10, **f64).requires_grad_(),
        mu_product=torch.tensor(1.0, **f64).requires_grad_(),
    )
    assert_differentiable(gradstep.NAdam, torch.optim.NAdam, state, kwargs)


@pytest.mark.parametrize("cfg", [NAdamConfig(*c) for c in itertools.product([False, True], repeat=4)])
def test_traced_rule_matches(cfg):
    scalars = dict(
        beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, param_decay=0.99,
        bias_correction2=0.3, grad_step=-0.05, momentum_step=-0.4,
    )
    if cfg.capturable_foreach:
        scalars["bias_correction2_sqrt"] = scalars.pop("bias_correction2") ** 0.5
    assert_traced_rule_matches(nadam_rule, cfg, 2, scalars)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("kwargs", [{}, dict(lr=torch.tensor(0.01)), dict(weight_decay=0.1, maximize=True),
                                    dict(weight_decay=0.1, decoupled_weight_decay=True)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capturable_math_bitwise_as_torch(foreach, kwargs, dtype):
    """capturable=True on torch's foreach path: its form of the update and the rounding of its
    device-side scalars (mu from step * decay, mu_next from that plus decay)."""
    assert_capturable_bitwise(gradstep.NAdam, torch.optim.NAdam,
                              dict(kwargs, foreach=foreach), dtype)
